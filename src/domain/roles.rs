//! Roles and the rules about who may grant, change or take them away.

use std::fmt;

use super::error::DomainError;
use super::permission::{Permission, PermissionSet, truncate};

/// A role key: `[a-z][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleKey(String);

impl RoleKey {
    pub fn parse(raw: &str) -> Result<RoleKey, DomainError> {
        let mut chars = raw.chars();
        let valid = raw.len() <= 63
            && matches!(chars.next(), Some('a'..='z'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'));
        if valid {
            Ok(RoleKey(raw.to_owned()))
        } else {
            Err(DomainError::invalid_because(
                "role",
                "INVALID_ROLE_KEY",
                format!(
                    "`{}` is not a role key: use 1 to 63 of a-z, 0-9, `_` and `-`, starting with a letter",
                    truncate(raw, 64)
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role with its permissions resolved (built-in from the policy, or the org's custom role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRole {
    pub key: String,
    pub display_name: String,
    pub permissions: PermissionSet,
    pub built_in: bool,
}

/// The acting member as the rules see them.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub org: &'a str,
    pub role: &'a ResolvedRole,
    pub is_owner: bool,
}

impl Actor<'_> {
    /// Fails with the permission named unless the actor holds it.
    pub fn require(&self, permission: &str) -> Result<(), DomainError> {
        if self.role.permissions.contains_str(permission) {
            Ok(())
        } else {
            Err(DomainError::denied(
                "MISSING_PERMISSION",
                format!(
                    "actor lacks {permission} in org {}: ask a member who has it (for example an owner)",
                    self.org
                ),
            ))
        }
    }

    /// May the actor give someone `role`? Only owners grant the owner role, and nobody grants
    /// a role carrying a permission they do not hold themselves.
    pub fn may_grant(&self, role: &ResolvedRole, owner_role: &str) -> Result<(), DomainError> {
        if role.key == owner_role && !self.is_owner {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!("only holders of `{owner_role}` can grant `{owner_role}`"),
            ));
        }
        let missing = role.permissions.missing_from(&self.role.permissions);
        if !missing.is_empty() {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!(
                    "role `{}` carries permissions you do not hold ({}): pick a role within your own permissions",
                    role.key,
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// May the actor change or remove a member who now holds `current`? Only owners touch
    /// owners, and nobody demotes someone more privileged than themselves.
    pub fn may_manage(&self, current: &ResolvedRole, owner_role: &str) -> Result<(), DomainError> {
        if current.key == owner_role && !self.is_owner {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!("only holders of `{owner_role}` can change or remove an `{owner_role}`"),
            ));
        }
        let missing = current.permissions.missing_from(&self.role.permissions);
        if !missing.is_empty() {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!(
                    "the member's role `{}` carries permissions you do not hold ({}): ask an owner",
                    current.key,
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// May the actor create or widen a custom role to `permissions`?
    pub fn may_define(&self, permissions: &PermissionSet) -> Result<(), DomainError> {
        let missing = permissions.missing_from(&self.role.permissions);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!(
                    "you cannot define a role with permissions you do not hold ({})",
                    missing.join(", ")
                ),
            ))
        }
    }
}

/// After a change, at least one owner must remain.
pub fn ensure_owner_remains(owners_after: u64, owner_role: &str) -> Result<(), DomainError> {
    if owners_after == 0 {
        Err(DomainError::precondition(
            "LAST_OWNER",
            format!(
                "this would leave the organization without an `{owner_role}`: make another member `{owner_role}` first, or transfer ownership"
            ),
        ))
    } else {
        Ok(())
    }
}

/// Parses a list of permission names against the catalog, naming every unknown one.
pub fn parse_permissions(
    raw: &[String],
    knows: impl Fn(&Permission) -> bool,
) -> Result<PermissionSet, DomainError> {
    let mut set = PermissionSet::default();
    let mut unknown = Vec::new();
    for name in raw {
        let p = Permission::parse(name).map_err(|_| {
            DomainError::invalid_because(
                "permissions",
                "UNKNOWN_PERMISSION",
                format!("`{}` is not a permission name", truncate(name, 64)),
            )
        })?;
        if knows(&p) {
            set.insert(p);
        } else {
            unknown.push(p.as_str().to_owned());
        }
    }
    if unknown.is_empty() {
        Ok(set)
    } else {
        Err(DomainError::invalid_because(
            "permissions",
            "UNKNOWN_PERMISSION",
            format!(
                "unknown permissions: {} (see the policy's permission catalog)",
                unknown.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn role(key: &str, perms: &[&str]) -> ResolvedRole {
        ResolvedRole {
            key: key.into(),
            display_name: key.into(),
            permissions: perms
                .iter()
                .map(|p| Permission::parse(p).unwrap())
                .collect(),
            built_in: true,
        }
    }

    #[test]
    fn grant_rules() {
        let admin = role("admin", &["members.manage", "members.view"]);
        let owner = role("owner", &["members.manage", "members.view", "org.delete"]);
        let member = role("member", &["members.view"]);
        let actor = Actor {
            org: "o",
            role: &admin,
            is_owner: false,
        };
        assert!(actor.may_grant(&member, "owner").is_ok());
        assert_eq!(
            actor.may_grant(&owner, "owner").unwrap_err().reason(),
            "PRIVILEGE_ESCALATION"
        );
        assert_eq!(
            actor.may_manage(&owner, "owner").unwrap_err().reason(),
            "PRIVILEGE_ESCALATION"
        );
        let wide = role("wide", &["org.delete"]);
        assert_eq!(
            actor.may_grant(&wide, "owner").unwrap_err().reason(),
            "PRIVILEGE_ESCALATION"
        );
        assert_eq!(
            actor.require("org.delete").unwrap_err().reason(),
            "MISSING_PERMISSION"
        );
        assert!(ensure_owner_remains(0, "owner").is_err());
        assert!(ensure_owner_remains(1, "owner").is_ok());
    }

    #[test]
    fn role_keys() {
        assert!(RoleKey::parse("finance_ops-2").is_ok());
        for bad in [
            "",
            "Finance",
            "1x",
            "a b",
            &"a".repeat(64),
            "admin'--",
            "admin%",
            "adm_n\\",
            "\u{0430}dmin",
            "admin\u{200B}",
            "\u{FF41}dmin",
        ] {
            assert_eq!(
                RoleKey::parse(bad).unwrap_err().reason(),
                "INVALID_ROLE_KEY",
                "{bad:?}"
            );
        }
        assert!(RoleKey::parse(&"a".repeat(63)).is_ok());
    }

    proptest! {
        /// Arbitrary strings never panic; accepted keys match `[a-z][a-z0-9_-]{0,62}`, are
        /// exactly the input, and re-parse to themselves.
        #[test]
        fn role_key_never_panics_and_round_trips(
            raw in prop_oneof![
                any::<String>(),
                "[a-z][a-z0-9_-]{0,70}",
                "[a-zA-Z0-9_ %'\\-]{0,70}",
                proptest::collection::vec(any::<char>(), 60..70)
                    .prop_map(|v| v.into_iter().collect::<String>()),
            ],
        ) {
            if let Ok(k) = RoleKey::parse(&raw) {
                prop_assert_eq!(k.as_str(), raw.as_str());
                prop_assert!((1..=63).contains(&k.as_str().len()));
                prop_assert!(k.as_str().starts_with(|c: char| c.is_ascii_lowercase()));
                prop_assert!(k.as_str().chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')));
                prop_assert_eq!(RoleKey::parse(k.as_str()).unwrap(), k.clone());
                prop_assert_eq!(k.to_string(), raw);
            }
        }

        /// Every key of the documented shape is accepted.
        #[test]
        fn every_well_formed_key_is_accepted(raw in "[a-z][a-z0-9_-]{0,62}") {
            prop_assert!(RoleKey::parse(&raw).is_ok());
        }

        /// `parse_permissions` never panics on arbitrary names and never lets an unknown or
        /// malformed name through.
        #[test]
        fn parse_permissions_only_admits_known(
            raw in proptest::collection::vec(
                prop_oneof![any::<String>(), "[a-z]{1,8}\\.[a-z]{1,8}"],
                0..6,
            ),
        ) {
            let known = |p: &Permission| p.as_str() == "members.view";
            if let Ok(set) = parse_permissions(&raw, known) {
                prop_assert!(set.iter().all(|p| p.as_str() == "members.view"));
                prop_assert!(raw.iter().all(|r| r == "members.view"));
            }
        }
    }

    #[test]
    fn names_every_unknown_permission() {
        let raw = vec!["members.view".to_string(), "x.y".into(), "z.w".into()];
        let err = parse_permissions(&raw, |p| p.as_str() == "members.view").unwrap_err();
        assert!(err.to_string().contains("x.y") && err.to_string().contains("z.w"));
    }
}
