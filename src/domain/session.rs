//! Session tokens: JWTs signed with EdDSA (Ed25519), and the JWKS that verifies them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

/// Signs `claims` as a compact JWT.
pub fn sign(seed: &[u8; 32], kid: &str, claims: &Claims) -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = SigningKey::from_bytes(seed).sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// One JWK for a public key.
pub fn jwk(kid: &str, public: &str) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid,
        "x": public,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn signed_tokens_verify_with_the_public_key() {
        let (seed, public) = new_key();
        let kid = kid_for(&public);
        let claims = Claims {
            iss: "teamgate".into(),
            aud: "teamgate".into(),
            sub: "u".into(),
            email: "a@b.c".into(),
            orgs: vec!["o".into()],
            iat: 1,
            exp: 2,
            jti: "j".into(),
        };
        let token = sign(&seed, &kid, &claims);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let key: [u8; 32] = URL_SAFE_NO_PAD.decode(&public).unwrap().try_into().unwrap();
        let sig: [u8; 64] = URL_SAFE_NO_PAD.decode(sig).unwrap().try_into().unwrap();
        VerifyingKey::from_bytes(&key)
            .unwrap()
            .verify(input.as_bytes(), &Signature::from_bytes(&sig))
            .unwrap();
        assert_eq!(jwk(&kid, &public)["kid"], kid.as_str());
    }
}
