//! Policy drift: what the database still references that a policy no longer declares.
//!
//! A deployment may change its policy file between runs. If the new policy drops a built-in
//! role that members or pending invitations hold, a permission that custom roles list, or a
//! plan organizations are on, starting with it would silently change who may do what. The
//! store gathers a [`Snapshot`] of what the database references; [`compare`] lists every
//! mismatch, so start-up (and `teamgate policy check --database-url`) can refuse with a clear
//! report instead.

use std::collections::BTreeMap;
use std::fmt;

use super::permission::Permission;
use super::policy::Policy;

/// How many members (or pending invitations) hold a role that is not a custom role of their
/// organization, across all live organizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleUsage {
    pub role: String,
    pub holders: u64,
    pub orgs: u64,
    /// One organization where it is held, for the operator to start from.
    pub example_org: String,
}

/// A custom role as stored, with its permissions as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRoleRef {
    pub org_id: String,
    pub key: String,
    pub permissions: Vec<String>,
}

/// How many live organizations are on a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanUsage {
    pub plan: String,
    pub orgs: u64,
    pub example_org: String,
}

/// Live organizations in which nobody holds the policy's owner role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownerless {
    pub orgs: u64,
    pub example_org: String,
}

/// What the database references, as far as a policy is concerned. Soft-deleted
/// organizations are left out: they deny everything whatever the policy says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Roles held by members that are not a custom role of the member's organization.
    pub member_roles: Vec<RoleUsage>,
    /// Roles of pending (unexpired) invitations that are not a custom role of the organization.
    pub invitation_roles: Vec<RoleUsage>,
    pub custom_roles: Vec<CustomRoleRef>,
    pub plans: Vec<PlanUsage>,
    /// Organizations without a holder of the policy's `owner_role` (the store is asked about
    /// that role specifically); `None` when there are none.
    pub ownerless: Option<Ownerless>,
}

/// One mismatch between the policy and the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// Members or pending invitations hold a role that is neither a built-in role of the
    /// policy nor a custom role of their organization.
    MissingRole {
        role: String,
        members: u64,
        invitations: u64,
        orgs: u64,
        example_org: String,
    },
    /// Custom roles list a permission the catalog no longer declares.
    MissingPermission {
        permission: String,
        /// `(org_id, role key)` of every custom role listing it.
        roles: Vec<(String, String)>,
    },
    /// A custom role has the key of one of the policy's built-in roles, which would silently
    /// replace it for its holders.
    ShadowedCustomRole { org_id: String, key: String },
    /// Organizations are on a plan the policy does not declare.
    MissingPlan {
        plan: String,
        orgs: u64,
        example_org: String,
    },
    /// Organizations in which nobody holds the policy's owner role.
    NoOwner {
        owner_role: String,
        orgs: u64,
        example_org: String,
    },
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::MissingRole {
                role,
                members,
                invitations,
                orgs,
                example_org,
            } => write!(
                f,
                "role `{role}` is not declared by the policy but is held by {} and {} in {} \
                 (e.g. organization {example_org}): declare the role again, or move them to another \
                 role (UpdateMemberRole, revoke and re-invite) with the old policy first",
                plural(*members, "member", "members"),
                plural(*invitations, "pending invitation", "pending invitations"),
                plural(*orgs, "organization", "organizations"),
            ),
            Drift::MissingPermission { permission, roles } => {
                let shown: Vec<String> = roles
                    .iter()
                    .take(5)
                    .map(|(org, key)| format!("`{key}` in organization {org}"))
                    .collect();
                let more = roles.len().saturating_sub(shown.len());
                write!(
                    f,
                    "permission `{permission}` is not in the policy's catalog but {} it ({}{}): \
                     add it back to the catalog, or remove it from those roles (UpdateRole) with the \
                     old policy first",
                    plural(
                        u64::try_from(roles.len()).unwrap_or(u64::MAX),
                        "custom role lists",
                        "custom roles list"
                    ),
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    },
                )
            }
            Drift::ShadowedCustomRole { org_id, key } => write!(
                f,
                "custom role `{key}` of organization {org_id} has the key of a built-in role of the \
                 policy, which would replace it for its holders: rename the built-in role, or delete \
                 the custom role (DeleteRole with reassign_to) with the old policy first"
            ),
            Drift::MissingPlan {
                plan,
                orgs,
                example_org,
            } => write!(
                f,
                "plan `{plan}` is not declared by the policy but {} on it (e.g. organization \
                 {example_org}): declare the plan again, or move them to another plan \
                 (UpdateOrganization) with the old policy first",
                if *orgs == 1 {
                    "1 organization is".to_owned()
                } else {
                    format!("{orgs} organizations are")
                },
            ),
            Drift::NoOwner {
                owner_role,
                orgs,
                example_org,
            } => write!(
                f,
                "the policy's owner_role is `{owner_role}` but {} no member holding it (e.g. \
                 organization {example_org}): every organization needs at least one owner; keep \
                 owner_role as it was, or give each organization a `{owner_role}` first",
                if *orgs == 1 {
                    "1 organization has".to_owned()
                } else {
                    format!("{orgs} organizations have")
                },
            ),
        }
    }
}

/// Everything the database references that the policy does not declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftReport {
    pub problems: Vec<Drift>,
}

impl DriftReport {
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for DriftReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return f.write_str("the policy covers everything the database references");
        }
        writeln!(
            f,
            "the policy does not cover what the database references ({}); starting with it would \
             silently change access:",
            plural(
                u64::try_from(self.problems.len()).unwrap_or(u64::MAX),
                "problem",
                "problems"
            )
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DriftReport {}

/// Compares what the database references with a policy; an empty report means the policy can
/// be used without changing anyone's access behind their back.
pub fn compare(policy: &Policy, snapshot: &Snapshot) -> DriftReport {
    let mut problems = Vec::new();

    // Roles held by members or pending invitations, merged per role key.
    let mut missing: BTreeMap<&str, (u64, u64, u64, &str)> = BTreeMap::new();
    for (usage, is_member) in snapshot
        .member_roles
        .iter()
        .map(|u| (u, true))
        .chain(snapshot.invitation_roles.iter().map(|u| (u, false)))
    {
        if policy.built_in(&usage.role).is_some() {
            continue;
        }
        let entry =
            missing
                .entry(usage.role.as_str())
                .or_insert((0, 0, 0, usage.example_org.as_str()));
        if is_member {
            entry.0 += usage.holders;
        } else {
            entry.1 += usage.holders;
        }
        // Members and invitations may be in the same organizations: the larger count is a
        // lower bound on the organizations affected, which is what the message says.
        entry.2 = entry.2.max(usage.orgs);
    }
    for (role, (members, invitations, orgs, example)) in missing {
        problems.push(Drift::MissingRole {
            role: role.to_owned(),
            members,
            invitations,
            orgs,
            example_org: example.to_owned(),
        });
    }

    // Custom roles: permissions no longer in the catalog, keys now taken by a built-in role.
    let mut unknown: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for role in &snapshot.custom_roles {
        if policy.built_in(&role.key).is_some() {
            problems.push(Drift::ShadowedCustomRole {
                org_id: role.org_id.clone(),
                key: role.key.clone(),
            });
        }
        for name in &role.permissions {
            let known = Permission::parse(name).is_ok_and(|p| policy.knows(&p));
            if !known {
                unknown
                    .entry(name.clone())
                    .or_default()
                    .push((role.org_id.clone(), role.key.clone()));
            }
        }
    }
    for (permission, mut roles) in unknown {
        roles.sort();
        roles.dedup();
        problems.push(Drift::MissingPermission { permission, roles });
    }

    for usage in &snapshot.plans {
        if policy.plan(&usage.plan).is_none() {
            problems.push(Drift::MissingPlan {
                plan: usage.plan.clone(),
                orgs: usage.orgs,
                example_org: usage.example_org.clone(),
            });
        }
    }

    if let Some(o) = snapshot.ownerless.as_ref().filter(|o| o.orgs > 0) {
        problems.push(Drift::NoOwner {
            owner_role: policy.owner_role().to_owned(),
            orgs: o.orgs,
            example_org: o.example_org.clone(),
        });
    }

    DriftReport { problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(role: &str, holders: u64, orgs: u64) -> RoleUsage {
        RoleUsage {
            role: role.into(),
            holders,
            orgs,
            example_org: "org-1".into(),
        }
    }

    #[test]
    fn a_matching_database_has_no_drift() {
        let policy = Policy::embedded_default();
        let snapshot = Snapshot {
            member_roles: vec![usage("owner", 3, 3), usage("manager", 2, 1)],
            invitation_roles: vec![usage("member", 1, 1)],
            custom_roles: vec![CustomRoleRef {
                org_id: "org-1".into(),
                key: "finance".into(),
                permissions: vec!["reports.view".into(), "billing.manage".into()],
            }],
            plans: vec![PlanUsage {
                plan: "free".into(),
                orgs: 3,
                example_org: "org-1".into(),
            }],
            ownerless: None,
        };
        let report = compare(&policy, &snapshot);
        assert!(report.is_empty(), "{report}");
    }

    #[test]
    fn names_every_kind_of_drift() {
        let policy = Policy::embedded_default();
        let snapshot = Snapshot {
            member_roles: vec![usage("owner", 1, 1), usage("supervisor", 2, 1)],
            invitation_roles: vec![usage("supervisor", 1, 1), usage("intern", 4, 2)],
            custom_roles: vec![
                CustomRoleRef {
                    org_id: "org-1".into(),
                    key: "finance".into(),
                    permissions: vec!["payouts.process".into(), "reports.view".into()],
                },
                CustomRoleRef {
                    org_id: "org-2".into(),
                    key: "admin".into(),
                    permissions: vec!["reports.view".into()],
                },
            ],
            plans: vec![PlanUsage {
                plan: "enterprise".into(),
                orgs: 2,
                example_org: "org-2".into(),
            }],
            ownerless: Some(Ownerless {
                orgs: 1,
                example_org: "org-3".into(),
            }),
        };
        let report = compare(&policy, &snapshot);
        assert!(report.problems.contains(&Drift::MissingRole {
            role: "supervisor".into(),
            members: 2,
            invitations: 1,
            orgs: 1,
            example_org: "org-1".into(),
        }));
        assert!(report.problems.contains(&Drift::MissingRole {
            role: "intern".into(),
            members: 0,
            invitations: 4,
            orgs: 2,
            example_org: "org-1".into(),
        }));
        assert!(report.problems.contains(&Drift::MissingPermission {
            permission: "payouts.process".into(),
            roles: vec![("org-1".into(), "finance".into())],
        }));
        assert!(report.problems.contains(&Drift::ShadowedCustomRole {
            org_id: "org-2".into(),
            key: "admin".into(),
        }));
        assert_eq!(report.problems.len(), 6, "{report}");
        let text = report.to_string();
        for needle in [
            "`supervisor`",
            "2 members and 1 pending invitation",
            "`payouts.process`",
            "`enterprise`",
            "2 organizations are",
            "owner_role is `owner`",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
