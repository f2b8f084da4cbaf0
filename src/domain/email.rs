//! Email addresses: trimmed, lower-cased and syntax-checked before they are stored or compared.

use std::fmt;
use std::str::FromStr;

use super::error::DomainError;
use super::names::is_invisible_or_bidi;
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
        // Zero-width and bidi-control characters make an address render like another one (or
        // backwards) in every list and email client; no real mailbox needs them.
        if normalized.chars().any(is_invisible_or_bidi) {
            return Err(invalid(
                "it contains invisible or text-direction characters",
            ));
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

    #[test]
    fn look_alikes_are_distinct_or_rejected() {
        let ascii = Email::parse("email", "admin@example.com").unwrap();
        // Homoglyphs (Cyrillic а, Greek ο, fullwidth ａ) are internationalized addresses: each is
        // accepted as an address of its own and never normalized onto the ASCII one.
        for lookalike in [
            "\u{0430}dmin@example.com",
            "adm\u{0456}n@example.com",
            "admin@exam\u{03BF}ple.com",
            "\u{FF41}dmin@example.com",
        ] {
            let e = Email::parse("email", lookalike).unwrap();
            assert_ne!(e, ascii, "{lookalike:?}");
        }
        // A fullwidth @ is no separator at all.
        assert!(Email::parse("email", "admin\u{FF20}example.com").is_err());
        // Invisible and bidi-control characters are refused wherever they are.
        for hidden in [
            "a\u{200B}dmin@example.com",
            "admin@example.com\u{202E}",
            "\u{2066}admin@example.com",
            "admin\u{FEFF}@example.com",
            "admin@exa\u{00AD}mple.com",
            "admin\u{E0041}@example.com",
        ] {
            let err = Email::parse("email", hidden).unwrap_err();
            assert_eq!(err.reason(), "INVALID_EMAIL", "{hidden:?}");
        }
        // Unicode case folding that lands on ASCII (the Kelvin sign) is the same address, so it
        // can never pose as a second account beside `kim@example.com`.
        assert_eq!(
            Email::parse("email", "\u{212A}im@example.com")
                .unwrap()
                .as_str(),
            "kim@example.com"
        );
    }

    /// A plausible ASCII address, sometimes valid.
    fn ascii_email() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._%+'-]{1,30}@[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z]{2,6}){0,2}"
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_is_idempotent(s in "\\PC{0,300}") {
            if let Ok(e) = Email::parse("email", &s) {
                let again = Email::parse("email", e.as_str()).unwrap();
                prop_assert_eq!(again, e);
            }
        }

        /// Any string at all (control characters, surrogates' neighbours, very long) is either
        /// refused or normalized: trimmed, lower-cased, at most 254 bytes, one `@`, no
        /// whitespace, control, invisible or bidi characters.
        #[test]
        fn arbitrary_strings_are_refused_or_normalized(
            s in prop_oneof![any::<String>(), "\\PC{0,40}@\\PC{0,40}", ".{250,400}"],
        ) {
            if let Ok(e) = Email::parse("email", &s) {
                let v = e.as_str();
                prop_assert_eq!(v, s.trim().to_lowercase());
                prop_assert!(v.len() <= MAX_EMAIL_LEN);
                prop_assert!(v.contains('@'));
                prop_assert!(!v.chars().any(|c| c.is_whitespace()
                    || c.is_control()
                    || is_invisible_or_bidi(c)));
                prop_assert_eq!(Email::parse("email", v).unwrap(), e.clone());
            }
        }

        /// Case and surrounding whitespace never make a second identity out of an address.
        #[test]
        fn case_and_padding_do_not_matter(
            s in ascii_email(),
            flips in proptest::collection::vec(any::<bool>(), 80),
            pad in "[ \t\n]{0,3}",
        ) {
            if let Ok(e) = Email::parse("email", &s) {
                let shouted: String = e
                    .as_str()
                    .chars()
                    .zip(flips.iter().cycle())
                    .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
                    .collect();
                let again = Email::parse("email", &format!("{pad}{shouted}{pad}")).unwrap();
                prop_assert_eq!(again, e);
            }
        }

        /// An invisible or bidi-control character anywhere in a valid address is refused.
        #[test]
        fn hidden_characters_are_refused(
            s in ascii_email(),
            at in 0usize..80,
            hidden in prop::sample::select(vec![
                '\u{200B}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2060}',
                '\u{2066}', '\u{2069}', '\u{FEFF}', '\u{00AD}', '\u{061C}', '\u{E0020}',
            ]),
        ) {
            if Email::parse("email", &s).is_ok() {
                let mut chars: Vec<char> = s.chars().collect();
                let at = at % (chars.len() + 1);
                chars.insert(at, hidden);
                let tampered: String = chars.into_iter().collect();
                prop_assert!(Email::parse("email", &tampered).is_err(), "{:?}", tampered);
            }
        }
    }
}
