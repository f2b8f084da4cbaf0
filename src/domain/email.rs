//! Email addresses: trimmed, lower-cased and syntax-checked before they are stored or compared.

use std::fmt;
use std::str::FromStr;

use super::error::DomainError;
use super::permission::truncate;

const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, raw: &str) -> Result<Email, DomainError> {
        let normalized = raw.trim().to_lowercase();
        let invalid = |why: &str| {
            DomainError::invalid_because(
                field,
                "INVALID_EMAIL",
                format!(
                    "{field} `{}` is not a valid email address ({why})",
                    truncate(raw.trim(), 64)
                ),
            )
        };
        if normalized.is_empty() {
            return Err(DomainError::invalid_because(
                field,
                "MISSING_FIELD",
                format!("{field} is required"),
            ));
        }
        if normalized.len() > MAX_EMAIL_LEN {
            return Err(invalid("longer than 254 bytes"));
        }
        if normalized
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("it contains spaces or control characters"));
        }
        // Display-name forms ("Ann <ann@x.com>") and domain literals are valid RFC 5322 but
        // are never what a person types into an invite box.
        if normalized.contains(['<', '>', '[', ']', '"']) {
            return Err(invalid("write the bare address, like ann@example.com"));
        }
        let parsed = email_address::EmailAddress::from_str(&normalized)
            .map_err(|e| invalid(&e.to_string()))?;
        if !parsed.domain().contains('.') {
            return Err(invalid("the domain needs a dot, like example.com"));
        }
        Ok(Email(normalized))
    }

    /// An address read back from storage, where only valid ones are written.
    pub fn from_stored(raw: String) -> Email {
        Email(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes() {
        let e = Email::parse("email", "  Ann.Lee@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "ann.lee@example.com");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "ann@x",
            "a b@x.com",
            "Ann <a@x.com>",
            "a@[1.2.3.4]",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_is_idempotent(s in "\\PC{0,300}") {
            if let Ok(e) = Email::parse("email", &s) {
                let again = Email::parse("email", e.as_str()).unwrap();
                prop_assert_eq!(again, e);
            }
        }
    }
}
