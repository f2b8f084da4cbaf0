//! Human-entered names: organization names and people's names.

use super::error::DomainError;

pub const MAX_NAME_CHARS: usize = 200;

/// Checks a required display name: trimmed, 1 to 200 characters, no control characters.
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_limits() {
        assert_eq!(parse_name("name", "  Acme ").unwrap(), "Acme");
        assert!(parse_name("name", "   ").is_err());
        assert!(parse_name("name", &"x".repeat(201)).is_err());
        assert!(parse_name("name", &"é".repeat(200)).is_ok());
        assert!(parse_name("name", "a\u{0}b").is_err());
        assert_eq!(parse_optional_name("name", " ").unwrap(), None);
    }
}
