//! Session tokens: JWTs signed with EdDSA (Ed25519) by `jsonwebtoken`, and the JWKS entries
//! that verify them. Keys are kept as their 32-byte Ed25519 seed (sealed at rest); the public key
//! and the PKCS#8 form `jsonwebtoken` signs with are derived from it with `ed25519-dalek`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued the token (`identity.issuer`); verifiers check it.
    pub iss: String,
    /// Whom the token is for (`identity.audience`); verifiers check it.
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub email: String,
    /// Ids of the organizations the user belongs to.
    pub orgs: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// How the user signed in (RFC 8176), e.g. `["sso"]`; absent for password sign-ins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The single sign-on connection the user came through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_connection: Option<String>,
}

/// A new key: its 32-byte seed and its public key (base64url).
pub fn new_key() -> ([u8; 32], String) {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let public = public_key(&seed);
    (seed, public)
}

pub fn public_key(seed: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(SigningKey::from_bytes(seed).verifying_key().as_bytes())
}

/// A key id derived from the public key (the first 16 bytes of its SHA-256, base64url).
pub fn kid_for(public: &str) -> String {
    use sha2::{Digest, Sha256};
    URL_SAFE_NO_PAD.encode(&Sha256::digest(public.as_bytes())[..16])
}

/// Signs `claims` as a compact JWT (`alg` EdDSA, `typ` JWT, `kid`).
///
/// Signing fails only for a key ring cannot read, which no 32-byte seed gives (the tests sign
/// with random seeds); the token is then empty, which every verifier refuses.
pub fn sign(seed: &[u8; 32], kid: &str, claims: &Claims) -> String {
    let Ok(der) = SigningKey::from_bytes(seed).to_pkcs8_der() else {
        return String::new();
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .unwrap_or_default()
}

/// One JWK (RFC 8037 `OKP`/`Ed25519`) for a public key (base64url).
pub fn jwk(kid: &str, public: &str) -> Value {
    let jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: Some(kid.to_owned()),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: public.to_owned(),
        }),
    };
    serde_json::to_value(jwk).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn claims() -> Claims {
        Claims {
            iss: "teamgate".into(),
            aud: "teamgate-api".into(),
            sub: "u".into(),
            email: "a@b.c".into(),
            orgs: vec!["o".into()],
            iat: 1,
            exp: 4_000_000_000,
            jti: "j".into(),
            amr: vec!["sso".into()],
            sso_connection: Some("c".into()),
        }
    }

    fn verify(token: &str, jwk: &Value) -> jsonwebtoken::errors::Result<Claims> {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&["teamgate"]);
        validation.set_audience(&["teamgate-api"]);
        jsonwebtoken::decode(token, &DecodingKey::from_jwk(&jwk)?, &validation).map(|d| d.claims)
    }

    #[test]
    fn signed_tokens_verify_with_their_jwk_only() {
        for _ in 0..32 {
            let (seed, public) = new_key();
            let kid = kid_for(&public);
            let token = sign(&seed, &kid, &claims());
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, Algorithm::EdDSA);
            assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            let jwk = jwk(&kid, &public);
            assert_eq!(verify(&token, &jwk).unwrap(), claims());

            let (_, other) = new_key();
            assert!(verify(&token, &super::jwk(&kid, &other)).is_err());
            let (head, _) = token.rsplit_once('.').unwrap();
            let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
            assert!(verify(&forged, &jwk).is_err());
        }
    }

    #[test]
    fn jwk_is_an_ed25519_signing_key() {
        let (_, public) = new_key();
        let jwk = jwk("k1", &public);
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], "k1");
        assert_eq!(jwk["x"], public.as_str());
    }
}
