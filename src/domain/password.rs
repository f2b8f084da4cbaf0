//! Passwords: the rules a new one must meet, and Argon2id hashing and verification.
//!
//! A `NewPassword` can only be made by `NewPassword::parse`, which applies the minimum length
//! and the common-password list. Hashes are PHC strings, so the parameters they were made with
//! travel with them and a sign-in can tell when they are out of date.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

use super::DomainError;

/// Longer inputs are refused before hashing so nobody can make the server hash megabytes.
pub const MAX_BYTES: usize = 1024;

const COMMON: &str = include_str!("common_passwords.txt");

fn common() -> &'static HashSet<String> {
    static SET: OnceLock<HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_lowercase)
            .collect()
    })
}

/// A password that meets the rules. Never printed.
pub struct NewPassword(String);

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

impl NewPassword {
    pub fn parse(field: &str, raw: &str, min_chars: usize) -> Result<NewPassword, DomainError> {
        if raw.len() > MAX_BYTES {
            return Err(DomainError::invalid_because(
                field,
                "PASSWORD_TOO_LONG",
                format!("{field} must be at most {MAX_BYTES} bytes"),
            ));
        }
        if raw.chars().count() < min_chars {
            return Err(DomainError::invalid_because(
                field,
                "PASSWORD_TOO_SHORT",
                format!("{field} must be at least {min_chars} characters long"),
            ));
        }
        if common().contains(&raw.trim().to_lowercase()) {
            return Err(DomainError::invalid_because(
                field,
                "PASSWORD_TOO_COMMON",
                format!(
                    "{field} is on the list of commonly used passwords: choose a less guessable one"
                ),
            ));
        }
        Ok(NewPassword(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    /// OWASP's recommended minimum for Argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        HashParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashParams {
    fn argon2(&self) -> Result<Argon2<'static>, DomainError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| {
                DomainError::precondition(
                    "PASSWORD_HASHING_MISCONFIGURED",
                    format!("argon2 parameters are invalid: {e}"),
                )
            })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Hashes a password with a fresh random salt; returns the PHC string.
pub fn hash(params: &HashParams, password: &str) -> Result<String, DomainError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| DomainError::precondition("PASSWORD_HASHING_FAILED", format!("salt: {e}")))?;
    params
        .argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DomainError::precondition("PASSWORD_HASHING_FAILED", e.to_string()))
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, but hashed with other parameters than `params`: store a new hash.
    YesRehash,
}

/// Checks `password` against a PHC string (the comparison inside is constant-time).
pub fn verify(params: &HashParams, stored: &str, password: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verified::No;
    };
    if Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Verified::No;
    }
    let current = parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(u32::from(Version::V0x13))
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == params.memory_kib
                && p.t_cost() == params.iterations
                && p.p_cost() == params.parallelism
        });
    if current {
        Verified::Yes
    } else {
        Verified::YesRehash
    }
}

/// A hash of nothing anyone knows, verified against when an account does not exist so that
/// answering takes about as long as for a real account.
pub fn decoy_hash(params: &HashParams) -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash(params, &super::token::new_secret()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> HashParams {
        HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn rules_apply() {
        assert_eq!(
            NewPassword::parse("p", "short", 12).unwrap_err().reason(),
            "PASSWORD_TOO_SHORT"
        );
        assert_eq!(
            NewPassword::parse("p", "Password123", 8)
                .unwrap_err()
                .reason(),
            "PASSWORD_TOO_COMMON"
        );
        assert!(NewPassword::parse("p", "correct horse battery", 12).is_ok());
        assert!(
            format!(
                "{:?}",
                NewPassword::parse("p", "correct horse battery", 12).unwrap()
            )
            .contains("***")
        );
    }

    #[test]
    fn hashes_verify_and_report_stale_parameters() {
        let h = hash(&cheap(), "correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert_eq!(verify(&cheap(), &h, "correct horse battery"), Verified::Yes);
        assert_eq!(verify(&cheap(), &h, "wrong"), Verified::No);
        let stronger = HashParams {
            memory_kib: 128,
            ..cheap()
        };
        assert_eq!(
            verify(&stronger, &h, "correct horse battery"),
            Verified::YesRehash
        );
        assert_eq!(verify(&cheap(), "garbage", "x"), Verified::No);
    }
}
