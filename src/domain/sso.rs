//! Single sign-on rules: connection domains and their DNS proof, PKCE, redirect and issuer
//! URLs, and the checks an OpenID Connect ID token must pass before it signs anyone in.
//! Pure: the JWKS and the token arrive as values, the time as a parameter.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::email::Email;
use super::error::DomainError;
use super::permission::truncate;

/// What the TXT record holds before the token: `teamgate-verification=<token>`.
pub const VERIFICATION_PREFIX: &str = "teamgate-verification=";

/// Leeway for the provider's clock against ours, on `exp` and `iat`.
const CLOCK_SKEW_SECS: i64 = 60;

/// An email domain a connection claims: lower-case, no trailing dot, two labels at least.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SsoDomain(String);

impl SsoDomain {
    pub fn parse(field: &str, raw: &str) -> Result<SsoDomain, DomainError> {
        let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let invalid = |why: &str| {
            DomainError::invalid_because(
                field,
                "INVALID_DOMAIN",
                format!(
                    "{field} `{}` is not a domain name ({why})",
                    truncate(raw.trim(), 64)
                ),
            )
        };
        if d.is_empty() || d.len() > 253 {
            return Err(invalid("1 to 253 characters"));
        }
        let labels: Vec<&str> = d.split('.').collect();
        if labels.len() < 2 {
            return Err(invalid("it needs a dot, like example.com"));
        }
        for l in &labels {
            let ok = !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(invalid(
                    "labels of letters, digits and inner hyphens, each 1 to 63 long (write IDNs in their xn-- form)",
                ));
            }
        }
        Ok(SsoDomain(d))
    }

    pub fn from_stored(raw: String) -> SsoDomain {
        SsoDomain(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The domain of an address (after the last `@`).
pub fn email_domain(email: &Email) -> &str {
    email
        .as_str()
        .rsplit_once('@')
        .map_or("", |(_, domain)| domain)
}

/// The TXT record value that proves control of a domain.
pub fn verification_record(token: &str) -> String {
    format!("{VERIFICATION_PREFIX}{token}")
}

/// Whether one of a domain's TXT records carries `token`. Providers split long records into
/// strings of at most 255 bytes, so each record arrives as its strings joined.
pub fn txt_proves(records: &[String], token: &str) -> bool {
    let expected = verification_record(token);
    records
        .iter()
        .any(|r| bool::from(r.trim().as_bytes().ct_eq(expected.as_bytes())))
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An `https://` URL, or `http://` on a loopback host (a provider or web backend on the same
/// machine, as in development and the tests): nothing else may receive codes or secrets.
pub fn parse_endpoint(field: &str, raw: &str) -> Result<String, DomainError> {
    let raw = raw.trim();
    let invalid = |why: &str| {
        DomainError::invalid_because(
            field,
            "INVALID_URL",
            format!("{field} `{}` {why}", truncate(raw, 96)),
        )
    };
    if raw.is_empty() {
        return Err(DomainError::invalid_because(
            field,
            "MISSING_FIELD",
            format!("{field} is required"),
        ));
    }
    if raw.len() > 2048 {
        return Err(invalid("is longer than 2048 bytes"));
    }
    let uri: http::Uri = raw.parse().map_err(|_| invalid("is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() || raw.contains('#') {
        return Err(invalid("needs a host and no #fragment"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(raw.to_owned()),
        Some("http") if is_loopback(host) => Ok(raw.to_owned()),
        _ => Err(invalid(
            "must use https:// (http:// only on localhost or a loopback address)",
        )),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the ID token must say, from the connection and the sign-in attempt.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// Unix seconds.
    pub now: i64,
}

/// The ID token claims teamgate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Value,
    pub exp: i64,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// Some providers send `"true"` as a string.
    #[serde(default)]
    pub email_verified: Option<Value>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub family_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl IdClaims {
    fn email_is_verified(&self) -> bool {
        match &self.email_verified {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        }
    }
}

/// Why an ID token was refused; each becomes its own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    /// No key in the JWKS has the token's `kid`: fetch the JWKS again, then retry once.
    UnknownKey,
    Malformed,
    Signature,
    Issuer,
    Audience,
    Expired,
    Nonce,
}

impl IdTokenError {
    pub fn into_domain(self) -> DomainError {
        let (reason, message) = match self {
            IdTokenError::UnknownKey => (
                "SSO_TOKEN_SIGNATURE",
                "the ID token is signed with a key the provider does not publish",
            ),
            IdTokenError::Malformed => (
                "SSO_TOKEN_MALFORMED",
                "the provider's ID token is not a JWT teamgate can read",
            ),
            IdTokenError::Signature => (
                "SSO_TOKEN_SIGNATURE",
                "the ID token's signature does not verify against the provider's keys",
            ),
            IdTokenError::Issuer => (
                "SSO_TOKEN_ISSUER",
                "the ID token was issued by another issuer than the connection's",
            ),
            IdTokenError::Audience => (
                "SSO_TOKEN_AUDIENCE",
                "the ID token is for another client than the connection's client_id",
            ),
            IdTokenError::Expired => ("SSO_TOKEN_EXPIRED", "the ID token has expired"),
            IdTokenError::Nonce => (
                "SSO_NONCE_MISMATCH",
                "the ID token's nonce is not the one this sign-in sent: start again with StartSso",
            ),
        };
        DomainError::Unauthenticated {
            reason,
            message: message.into(),
        }
    }
}

/// Algorithms accepted from providers: asymmetric only (a symmetric `HS*` token would be
/// signed with the client secret, which the connection's admins also know).
fn accepted(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    )
}

fn key_for<'a>(keys: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys.find(kid),
        // Without a `kid`, only an unambiguous set names the key.
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
}

/// Verifies an ID token (OpenID Connect Core §3.1.3.7): signature against `keys`, `iss`,
/// `aud` (and `azp` when there are several audiences), `exp`, `nonce`.
pub fn verify_id_token(
    token: &str,
    keys: &JwkSet,
    expect: &Expected<'_>,
) -> Result<IdClaims, IdTokenError> {
    use jsonwebtoken::errors::ErrorKind;
    let header = jsonwebtoken::decode_header(token).map_err(|_| IdTokenError::Malformed)?;
    if !accepted(header.alg) {
        return Err(IdTokenError::Signature);
    }
    let jwk = key_for(keys, header.kid.as_deref()).ok_or(IdTokenError::UnknownKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| IdTokenError::Signature)?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.client_id]);
    // `exp` is checked below against the clock passed in, not the system's.
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => IdTokenError::Signature,
            ErrorKind::InvalidIssuer => IdTokenError::Issuer,
            ErrorKind::InvalidAudience => IdTokenError::Audience,
            ErrorKind::ExpiredSignature => IdTokenError::Expired,
            _ => IdTokenError::Malformed,
        })?
        .claims;
    if let Value::Array(auds) = &claims.aud
        && auds.len() > 1
        && claims.azp.as_deref() != Some(expect.client_id)
    {
        return Err(IdTokenError::Audience);
    }
    if claims.exp + CLOCK_SKEW_SECS < expect.now {
        return Err(IdTokenError::Expired);
    }
    let nonce_ok = claims
        .nonce
        .as_deref()
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(expect.nonce.as_bytes())));
    if !nonce_ok {
        return Err(IdTokenError::Nonce);
    }
    Ok(claims)
}

/// The verified email an ID token vouches for, if its domain is one of `verified_domains`.
pub fn verified_email(
    claims: &IdClaims,
    verified_domains: &[String],
) -> Result<Email, DomainError> {
    let email = claims
        .email
        .as_deref()
        .and_then(|e| Email::parse("email", e).ok())
        .ok_or_else(|| {
            DomainError::denied(
                "SSO_EMAIL_MISSING",
                "the provider sent no usable email for this account: configure it to release the `email` claim",
            )
        })?;
    if !claims.email_is_verified() {
        return Err(DomainError::denied(
            "SSO_EMAIL_NOT_VERIFIED",
            "the provider does not vouch for this account's email (email_verified is not true)",
        ));
    }
    let domain = email_domain(&email);
    if !verified_domains.iter().any(|d| d == domain) {
        return Err(DomainError::denied(
            "SSO_DOMAIN_NOT_VERIFIED",
            format!(
                "the email's domain `{domain}` is not a verified domain of this connection: verify it with VerifySsoDomain"
            ),
        ));
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized_and_checked() {
        assert_eq!(
            SsoDomain::parse("d", " Example.COM. ").unwrap().as_str(),
            "example.com"
        );
        for bad in [
            "",
            "com",
            "a..b",
            "-a.com",
            "a-.com",
            "ex ample.com",
            "a_b.com",
        ] {
            assert!(SsoDomain::parse("d", bad).is_err(), "{bad}");
        }
        assert!(SsoDomain::parse("d", &format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn txt_proof_needs_the_exact_record() {
        let records = vec![
            "v=spf1 -all".to_owned(),
            "teamgate-verification=abc".to_owned(),
        ];
        assert!(txt_proves(&records, "abc"));
        assert!(!txt_proves(&records, "abd"));
        assert!(!txt_proves(
            &["teamgate-verification=abcd".to_owned()],
            "abc"
        ));
        assert!(!txt_proves(&[], "abc"));
    }

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn endpoints_need_https_except_on_loopback() {
        assert!(parse_endpoint("u", "https://idp.example.com").is_ok());
        assert!(parse_endpoint("u", "http://127.0.0.1:8080/cb").is_ok());
        assert!(parse_endpoint("u", "http://localhost/cb").is_ok());
        assert!(parse_endpoint("u", "http://[::1]:9/cb").is_ok());
        for bad in [
            "",
            "http://idp.example.com",
            "ftp://x.example.com",
            "https://x.example.com/#frag",
            "not a url",
            "javascript:alert(1)",
        ] {
            assert!(parse_endpoint("u", bad).is_err(), "{bad}");
        }
    }

    fn claims(email: &str, verified: Value) -> IdClaims {
        IdClaims {
            iss: "i".into(),
            sub: "s".into(),
            aud: Value::String("c".into()),
            exp: 0,
            azp: None,
            nonce: None,
            email: Some(email.into()),
            email_verified: Some(verified),
            given_name: None,
            family_name: None,
            name: None,
        }
    }

    #[test]
    fn email_must_be_verified_and_in_a_verified_domain() {
        let domains = vec!["acme.test".to_owned()];
        assert!(verified_email(&claims("a@acme.test", Value::Bool(true)), &domains).is_ok());
        assert!(verified_email(&claims("a@acme.test", "true".into()), &domains).is_ok());
        let e = verified_email(&claims("a@acme.test", Value::Bool(false)), &domains).unwrap_err();
        assert_eq!(e.reason(), "SSO_EMAIL_NOT_VERIFIED");
        let e = verified_email(&claims("a@other.test", Value::Bool(true)), &domains).unwrap_err();
        assert_eq!(e.reason(), "SSO_DOMAIN_NOT_VERIFIED");
        let e =
            verified_email(&claims("a@sub.acme.test", Value::Bool(true)), &domains).unwrap_err();
        assert_eq!(e.reason(), "SSO_DOMAIN_NOT_VERIFIED");
    }

    #[test]
    fn symmetric_and_unsigned_tokens_are_refused() {
        let keys = JwkSet { keys: vec![] };
        let expect = Expected {
            issuer: "i",
            client_id: "c",
            nonce: "n",
            now: 0,
        };
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "i", "aud": "c", "sub": "s", "exp": 10, "nonce": "n"}),
            &jsonwebtoken::EncodingKey::from_secret(b"client-secret"),
        )
        .unwrap();
        assert_eq!(
            verify_id_token(&hs, &keys, &expect).unwrap_err(),
            IdTokenError::Signature
        );
        assert_eq!(
            verify_id_token("not.a.jwt", &keys, &expect).unwrap_err(),
            IdTokenError::Malformed
        );
    }

    /// A provider key: an ES256 signing key (PKCS#8) and its JWK.
    fn provider_key(kid: &str) -> (jsonwebtoken::EncodingKey, Jwk) {
        use jsonwebtoken::jwk::{
            AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
            EllipticCurveKeyType,
        };
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
        let jwk = Jwk {
            common: CommonParameters {
                key_id: Some(kid.into()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(&raw[1..33]),
                y: URL_SAFE_NO_PAD.encode(&raw[33..]),
            }),
        };
        let key = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
        (key, jwk)
    }

    fn id_token(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    #[test]
    fn id_tokens_are_checked_claim_by_claim() {
        let (key, jwk) = provider_key("k1");
        let keys = JwkSet { keys: vec![jwk] };
        let expect = Expected {
            issuer: "https://idp.example.com",
            client_id: "client-1",
            nonce: "nonce-1",
            now: 1_000_000,
        };
        let good = serde_json::json!({
            "iss": "https://idp.example.com", "aud": "client-1", "sub": "u1",
            "exp": 1_000_300, "nonce": "nonce-1", "email": "a@acme.test", "email_verified": true,
        });
        let claims = verify_id_token(&id_token(&key, "k1", &good), &keys, &expect).unwrap();
        assert_eq!(claims.sub, "u1");

        let with = |field: &str, v: Value| {
            let mut c = good.clone();
            c[field] = v;
            id_token(&key, "k1", &c)
        };
        let cases = [
            (with("aud", "client-2".into()), IdTokenError::Audience),
            (
                with("iss", "https://evil.example.com".into()),
                IdTokenError::Issuer,
            ),
            (with("exp", (1_000_000 - 61).into()), IdTokenError::Expired),
            (with("nonce", "nonce-2".into()), IdTokenError::Nonce),
            (with("nonce", Value::Null), IdTokenError::Nonce),
            (
                with("aud", serde_json::json!(["client-1", "client-2"])),
                IdTokenError::Audience,
            ),
            (id_token(&key, "k2", &good), IdTokenError::UnknownKey),
        ];
        for (token, want) in cases {
            assert_eq!(verify_id_token(&token, &keys, &expect).unwrap_err(), want);
        }
        // Several audiences are fine when the token was issued to us (azp).
        let mut multi = good.clone();
        multi["aud"] = serde_json::json!(["client-1", "client-2"]);
        multi["azp"] = "client-1".into();
        assert!(verify_id_token(&id_token(&key, "k1", &multi), &keys, &expect).is_ok());
        // Signed by another key under the same kid: a bad signature.
        let (other, _) = provider_key("k1");
        assert_eq!(
            verify_id_token(&id_token(&other, "k1", &good), &keys, &expect).unwrap_err(),
            IdTokenError::Signature
        );
        // Tampered payload.
        let token = id_token(&key, "k1", &good);
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({
                "iss": "https://idp.example.com", "aud": "client-1", "sub": "admin",
                "exp": 1_000_300, "nonce": "nonce-1",
            }))
            .unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            verify_id_token(&parts.join("."), &keys, &expect).unwrap_err(),
            IdTokenError::Signature
        );
    }
}
