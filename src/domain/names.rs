//! Human-entered names: organization names and people's names.

use super::error::DomainError;

pub const MAX_NAME_CHARS: usize = 200;

/// Whether `c` is invisible or reorders text: bidi embeddings, overrides, isolates and marks
/// ("Trojan Source" characters), zero-width spaces and joiners that carry no meaning between
/// letters, the byte-order mark, soft hyphens and Unicode tag characters. None of them belong
/// in a name or an email address, and each can make two different strings look identical (or
/// make one render backwards) in a member list, an audit log or an email client.
///
/// ZWNJ and ZWJ (U+200C, U+200D) are deliberately *not* here: Persian and Indic names and
/// emoji sequences need them.
pub fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                     // soft hyphen
            | '\u{061C}'               // Arabic letter mark
            | '\u{180E}'               // Mongolian vowel separator
            | '\u{200B}'               // zero-width space
            | '\u{200E}'..='\u{200F}'  // LRM, RLM
            | '\u{202A}'..='\u{202E}'  // LRE, RLE, PDF, LRO, RLO
            | '\u{2060}'..='\u{2064}'  // word joiner, invisible operators
            | '\u{2066}'..='\u{206F}'  // isolates, deprecated format characters
            | '\u{FEFF}'               // zero-width no-break space / BOM
            | '\u{FFF9}'..='\u{FFFB}'  // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tags
    )
}

/// Checks a required display name: trimmed, 1 to 200 characters, no control characters and
/// no invisible or bidi-control characters (see [`is_invisible_or_bidi`]).
pub fn parse_name(field: &str, raw: &str) -> Result<String, DomainError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid_because(
            field,
            "MISSING_FIELD",
            format!("{field} is required"),
        ));
    }
    check_name(field, trimmed)?;
    Ok(trimmed.to_owned())
}

/// Like [`parse_name`] but an empty value is allowed (and means "none given").
pub fn parse_optional_name(field: &str, raw: &str) -> Result<Option<String>, DomainError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    check_name(field, trimmed)?;
    Ok(Some(trimmed.to_owned()))
}

fn check_name(field: &str, trimmed: &str) -> Result<(), DomainError> {
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(DomainError::invalid_because(
            field,
            "NAME_TOO_LONG",
            format!("{field} is longer than {MAX_NAME_CHARS} characters: shorten it"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(DomainError::invalid_because(
            field,
            "INVALID_NAME",
            format!("{field} contains control characters"),
        ));
    }
    if let Some(c) = trimmed.chars().find(|&c| is_invisible_or_bidi(c)) {
        return Err(DomainError::invalid_because(
            field,
            "INVALID_NAME",
            format!(
                "{field} contains the invisible or text-direction character U+{:04X}: remove it",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trims_and_limits() {
        assert_eq!(parse_name("name", "  Acme ").unwrap(), "Acme");
        assert!(parse_name("name", "   ").is_err());
        assert!(parse_name("name", &"x".repeat(201)).is_err());
        assert!(parse_name("name", &"é".repeat(200)).is_ok());
        assert!(parse_name("name", "a\u{0}b").is_err());
        assert_eq!(parse_optional_name("name", " ").unwrap(), None);
    }

    #[test]
    fn sql_metacharacters_are_just_text() {
        for raw in [
            "Robert'); DROP TABLE members;--",
            "%_\\",
            "\"quoted\" ; `tick`",
            "O'Brien & Sons -- 100%",
        ] {
            assert_eq!(parse_name("name", raw).unwrap(), raw);
        }
    }

    #[test]
    fn refuses_invisible_and_bidi_characters() {
        for raw in [
            "Ali\u{200B}ce",
            "Mallory\u{202E}gnp.exe",
            "\u{2066}Admin\u{2069}",
            "Bob\u{FEFF}",
            "\u{200F}Eve",
            "Tag\u{E0041}",
        ] {
            let err = parse_name("name", raw).unwrap_err();
            assert_eq!(err.reason(), "INVALID_NAME", "{raw:?}");
            assert!(err.to_string().contains("U+"), "{err}");
            assert!(parse_optional_name("name", raw).is_err(), "{raw:?}");
        }
        // Joiners that real names and emoji need are kept.
        assert!(
            parse_name(
                "name",
                "\u{0645}\u{062D}\u{0645}\u{062F}\u{200C}\u{0631}\u{0636}\u{0627}"
            )
            .is_ok()
        );
        assert!(parse_name("name", "\u{1F469}\u{200D}\u{1F4BB} Dev").is_ok());
    }

    fn hostile_string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "\\PC{0,250}",
            "[ \t\n\r\u{0}-\u{1F}\u{7F}-\u{9F}\u{200B}-\u{200F}\u{202A}-\u{202E}a-z]{0,50}",
            proptest::collection::vec(any::<char>(), 150..400)
                .prop_map(|v| v.into_iter().collect::<String>()),
        ]
    }

    proptest! {
        /// Any string at all is refused or accepted trimmed, 1 to 200 characters, with no
        /// control, invisible or bidi characters; an accepted name re-parses to itself, and the
        /// optional variant agrees.
        #[test]
        fn never_panics_and_accepted_names_are_clean(raw in hostile_string()) {
            match parse_name("name", &raw) {
                Ok(name) => {
                    prop_assert_eq!(name.as_str(), raw.trim());
                    let n = name.chars().count();
                    prop_assert!((1..=MAX_NAME_CHARS).contains(&n));
                    prop_assert!(!name.chars().any(|c| c.is_control() || is_invisible_or_bidi(c)));
                    prop_assert_eq!(parse_name("name", &name).unwrap(), name.clone());
                    prop_assert_eq!(parse_optional_name("name", &raw).unwrap(), Some(name));
                }
                Err(e) => {
                    prop_assert!(
                        ["MISSING_FIELD", "NAME_TOO_LONG", "INVALID_NAME"].contains(&e.reason())
                    );
                    if raw.trim().is_empty() {
                        prop_assert_eq!(parse_optional_name("name", &raw).unwrap(), None);
                    } else {
                        prop_assert!(parse_optional_name("name", &raw).is_err());
                    }
                }
            }
        }

        /// The limit counts characters, not bytes: 200 of any printable character is fine,
        /// 201 is not.
        #[test]
        fn length_limit_is_in_characters(c in "[a-zé\u{4E00}-\u{4E10}\u{1F600}-\u{1F610}]", extra in 0usize..3) {
            let raw = c.repeat(MAX_NAME_CHARS + extra);
            prop_assert_eq!(parse_name("name", &raw).is_ok(), extra == 0);
        }

        /// Slipping an invisible or bidi-control character into a good name anywhere is refused.
        #[test]
        fn hidden_characters_are_refused(
            name in "[A-Za-z' -]{1,40}",
            at in 0usize..64,
            hidden in prop::sample::select(vec![
                '\u{00AD}', '\u{061C}', '\u{180E}', '\u{200B}', '\u{200E}', '\u{200F}',
                '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2060}',
                '\u{2064}', '\u{2066}', '\u{2069}', '\u{206F}', '\u{FEFF}', '\u{FFF9}',
                '\u{E0001}', '\u{E007F}',
            ]),
        ) {
            let mut chars: Vec<char> = name.chars().collect();
            let at = at % (chars.len() + 1);
            chars.insert(at, hidden);
            let tampered: String = chars.into_iter().collect();
            prop_assert!(parse_name("name", &tampered).is_err(), "{:?}", tampered);
        }
    }
}
