//! Identifiers: UUIDs at the edge, validated once.

use std::fmt;

use uuid::Uuid;

use super::error::DomainError;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of ", $what, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) id.
            pub fn generate() -> Self {
                $name(Uuid::now_v7())
            }

            /// Parses a caller-supplied id; `field` names the request field in the error.
            pub fn parse(field: &str, raw: &str) -> Result<Self, DomainError> {
                if raw.is_empty() {
                    return Err(DomainError::invalid_because(
                        field,
                        "MISSING_FIELD",
                        format!("{field} is required"),
                    ));
                }
                Uuid::try_parse(raw).map($name).map_err(|_| {
                    DomainError::invalid_because(
                        field,
                        "INVALID_ID",
                        format!(
                            "{field} `{}` is not an id: ids are UUIDs such as 0192f0c2-5b1e-7c3a-8f00-5c7d2a1b3c4d",
                            super::permission::truncate(raw, 64)
                        ),
                    )
                })
            }

            /// Reads an id that this service stored itself.
            pub fn from_stored(raw: &str) -> Option<Self> {
                Uuid::try_parse(raw).ok().map($name)
            }

            /// An id read from one of teamgate's own rows, for the views it answers with.
            /// teamgate writes only UUIDs; a row edited by hand to hold anything else reads
            /// as the nil id rather than failing every answer that lists it.
            pub fn from_row(raw: &str) -> Self {
                Self::from_stored(raw).unwrap_or($name(Uuid::nil()))
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(OrgId, "an organization");
uuid_id!(UserId, "a user");
uuid_id!(InvitationId, "an invitation");
uuid_id!(ConnectionId, "a single sign-on connection");
uuid_id!(EventId, "an audit event");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_canonically() {
        let id = OrgId::generate();
        let again = OrgId::parse("org_id", &id.to_string()).unwrap();
        assert_eq!(id, again);
        let upper = id.to_string().to_uppercase();
        assert_eq!(
            OrgId::parse("org_id", &upper).unwrap().to_string(),
            id.to_string()
        );
    }

    #[test]
    fn names_the_field() {
        let err = UserId::parse("user_id", "nope").unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if field == "user_id"));
        let err = UserId::parse("user_id", "").unwrap_err();
        assert_eq!(err.reason(), "MISSING_FIELD");
    }

    #[test]
    fn refuses_injection_and_look_alikes() {
        let id = OrgId::generate().to_string();
        for raw in [
            format!("{id}' OR '1'='1"),
            format!("{id};--"),
            format!("{id}%"),
            format!(" {id}"),
            id.replace('-', "\u{2010}"),
            id.replacen('0', "\u{FF10}", 1),
            format!("{id}\u{200B}"),
            "%".into(),
        ] {
            assert_eq!(
                OrgId::parse("org_id", &raw).unwrap_err().reason(),
                "INVALID_ID",
                "{raw:?}"
            );
        }
    }

    proptest! {
        /// Arbitrary strings never panic; whatever is accepted prints canonically (lower-case,
        /// hyphenated), and that form re-parses to the same id, for every id type.
        #[test]
        fn never_panics_and_round_trips(
            raw in prop_oneof![
                any::<String>(),
                "[0-9a-fA-F-]{30,40}",
                "(urn:uuid:|\\{)?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\\}?",
            ],
        ) {
            match OrgId::parse("org_id", &raw) {
                Ok(id) => {
                    let printed = id.to_string();
                    prop_assert_eq!(printed.len(), 36);
                    prop_assert!(printed.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f' | '-')));
                    prop_assert_eq!(OrgId::parse("org_id", &printed).unwrap(), id);
                    prop_assert_eq!(OrgId::from_stored(&printed), Some(id));
                }
                Err(e) => prop_assert!(["MISSING_FIELD", "INVALID_ID"].contains(&e.reason())),
            }
            let user = UserId::parse("user_id", &raw);
            prop_assert_eq!(user.is_ok(), OrgId::parse("org_id", &raw).is_ok());
            if let Err(DomainError::Invalid { field, .. }) = user {
                prop_assert_eq!(field, "user_id");
            }
        }

        /// Any UUID, in any case, parses to itself.
        #[test]
        fn every_uuid_round_trips(bits in any::<u128>(), upper in any::<bool>()) {
            let u = Uuid::from_u128(bits);
            let text = if upper { u.to_string().to_uppercase() } else { u.to_string() };
            let id = InvitationId::parse("invitation_id", &text).unwrap();
            prop_assert_eq!(id.as_uuid(), u);
            prop_assert_eq!(id.to_string(), u.hyphenated().to_string());
        }
    }
}
