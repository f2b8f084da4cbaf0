//! TOTP (RFC 6238): HMAC-SHA1, 6 digits, 30-second steps, computed by `totp-rs`.
//!
//! What the crate leaves to us is the acceptance rule: the previous and next step count too (clock
//! drift), and a step is accepted once only. `TOTP::check` answers yes or no and stops at the first
//! match, so `verify` walks the window itself with the crate's `generate` to learn which step
//! matched and to take the same time whichever did.

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

pub const STEP_SECS: u64 = 30;
pub const DIGITS: usize = 6;
/// Steps either side of the current one that still count.
const SKEW: u8 = 1;

fn totp(secret: &[u8], issuer: Option<&str>, account: &str) -> TOTP {
    // Unchecked: the checked constructor refuses a `:` in the issuer or account, which the
    // otpauth URI percent-encodes anyway; the digits and secret length are ours and valid.
    TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        SKEW,
        STEP_SECS,
        secret.to_vec(),
        issuer.map(str::to_owned),
        account.to_owned(),
    )
}

/// A new random secret: 160 bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    match Secret::generate_secret() {
        Secret::Raw(bytes) => bytes,
        // generate_secret always returns raw bytes.
        encoded @ Secret::Encoded(_) => encoded.to_bytes().unwrap_or_default(),
    }
}

/// The secret as users type it into an authenticator app (base32, no padding).
pub fn encode_secret(secret: &[u8]) -> String {
    Secret::Raw(secret.to_vec()).to_encoded().to_string()
}

/// The enrolment URI that authenticator apps read from a QR code.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    totp(secret, Some(issuer), account).get_url()
}

/// The step `now` falls in.
pub fn step_at(now: DateTime<Utc>) -> u64 {
    u64::try_from(now.timestamp()).unwrap_or(0) / STEP_SECS
}

/// The code an authenticator shows at `now`.
pub fn code_at(secret: &[u8], now: DateTime<Utc>) -> String {
    totp(secret, None, "").generate(step_at(now) * STEP_SECS)
}

/// Checks a code; returns the step it matched, which must be later than `last_used`.
pub fn verify(
    secret: &[u8],
    code: &str,
    now: DateTime<Utc>,
    last_used: Option<i64>,
) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, None, "");
    let current = step_at(now);
    let skew = u64::from(SKEW);
    let mut matched = None;
    // Every candidate is computed and compared (no early exit), so timing says nothing about
    // which one matched.
    for step in current.saturating_sub(skew)..=current + skew {
        let candidate = totp.generate(step * STEP_SECS);
        if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) && matched.is_none() {
            matched = i64::try_from(step).ok();
        }
    }
    matched.filter(|s| last_used.is_none_or(|last| *s > last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA-1), truncated to our 6 digits.
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(code_at(secret, at(time)), code, "at {time}");
        }
        // RFC 4226 appendix D: the HOTP values of counters 0..5 are the codes of steps 0..5.
        for (step, code) in ["755224", "287082", "359152", "969429", "338314"]
            .iter()
            .enumerate()
        {
            assert_eq!(code_at(secret, at(30 * step as i64)), *code);
        }
    }

    #[test]
    fn codes_verify_once_within_the_window() {
        let secret = new_secret();
        assert_eq!(secret.len(), 20);
        let now = Utc::now();
        let code = code_at(&secret, now);
        let step = verify(&secret, &code, now, None).unwrap();
        assert_eq!(u64::try_from(step).unwrap(), step_at(now));
        assert_eq!(verify(&secret, &code, now, Some(step)), None, "no replay");
        assert_eq!(verify(&secret, &code, now, Some(step - 1)), Some(step));
        let later = now + chrono::Duration::seconds(30);
        assert_eq!(
            verify(&secret, &code, later, None),
            Some(step),
            "previous step"
        );
        let earlier = now - chrono::Duration::seconds(30);
        assert_eq!(
            verify(&secret, &code, earlier, None),
            Some(step),
            "next step"
        );
        assert!(verify(&secret, &code, now + chrono::Duration::seconds(120), None).is_none());
        assert!(verify(&secret, &format!(" {code} "), now, None).is_some());
        assert!(verify(&secret, "abcdef", now, None).is_none());
        assert!(verify(&secret, "12345", now, None).is_none());
    }

    #[test]
    fn secrets_are_base32_and_the_uri_names_issuer_and_account() {
        let secret = b"12345678901234567890";
        assert_eq!(encode_secret(secret), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            otpauth_uri("Team Gate", "a@b.c", secret),
            "otpauth://totp/Team%20Gate:a%40b.c?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Team%20Gate"
        );
        // A colon would split the label: it is encoded.
        assert!(otpauth_uri("a:b", "x", secret).starts_with("otpauth://totp/a%3Ab:x?"));
    }
}
