//! The decision model: what the check path knows about a user in an org (the subject), what
//! it answers (the reason), and how fresh an answer must be. Pure: the cache, telemetry, the
//! use cases and the transport all speak these types, and none of them owns them.

use std::sync::Arc;

use super::consistency::ConsistencyToken;
use super::ids::{OrgId, UserId};
use super::permission::{Permission, PermissionBit, PermissionBits, PermissionSet};
use super::policy::Policy;

/// One question's key: a user in an org.
pub type Pair = (OrgId, UserId);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Allowed,
    NotMember,
    MissingPermission,
    OrgNotFound,
    /// The user's account is disabled: every check is denied.
    UserDisabled,
    /// The org requires two-factor sign-in and the user has not enrolled.
    MfaRequired,
}

impl Reason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [Reason; 6] = [
        Reason::Allowed,
        Reason::NotMember,
        Reason::MissingPermission,
        Reason::OrgNotFound,
        Reason::UserDisabled,
        Reason::MfaRequired,
    ];

    /// Why, in words, for people reading a denial (ext_authz's response body).
    pub fn explanation(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NotMember => "the user is not a member of the organization",
            Reason::MissingPermission => "the user's role lacks the permission this route needs",
            Reason::OrgNotFound => "the organization does not exist",
            Reason::UserDisabled => "the user's account is disabled",
            Reason::MfaRequired => {
                "the organization requires two-factor sign-in and the user has not enrolled"
            }
        }
    }
}

/// What a role grants: its name, its permissions, and the same as catalog bits. One `Arc` per
/// built-in role is shared by every member holding it; a custom role gets one per load.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub permissions: PermissionSet,
    bits: PermissionBits,
}

impl Grant {
    pub fn new(role: String, permissions: PermissionSet, policy: &Policy) -> Grant {
        let bits = policy.bits_of(permissions.iter().map(|p| p.as_str()));
        Grant {
            role,
            permissions,
            bits,
        }
    }

    pub fn allows(&self, permission: PermissionBit) -> bool {
        self.bits.contains(permission)
    }
}

/// The grants of the policy's built-in roles, made once, so subjects share them.
#[derive(Debug)]
pub struct Grants {
    built_in: Vec<Arc<Grant>>,
    policy: Arc<Policy>,
}

impl Grants {
    pub fn new(policy: Arc<Policy>) -> Grants {
        let built_in = policy
            .roles()
            .iter()
            .map(|r| Arc::new(Grant::new(r.key.clone(), r.permissions.clone(), &policy)))
            .collect();
        Grants { built_in, policy }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn built_in(&self, role: &str) -> Option<&Arc<Grant>> {
        self.built_in.iter().find(|g| g.role == role)
    }

    /// The grant of `role`: the shared one for a built-in role, else a new one of
    /// `permissions` (names outside the catalog are dropped).
    pub fn grant<'a>(
        &self,
        role: &str,
        permissions: impl IntoIterator<Item = &'a str>,
    ) -> Arc<Grant> {
        if let Some(g) = self.built_in(role) {
            return g.clone();
        }
        let set: PermissionSet = permissions
            .into_iter()
            .filter_map(|p| Permission::parse(p).ok())
            .filter(|p| self.policy.knows(p))
            .collect();
        Arc::new(Grant::new(role.to_owned(), set, &self.policy))
    }
}

/// What the check path knows about one user in one org. Cheap to clone: a member's grant
/// is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    OrgNotFound,
    NotMember {
        org_version: i64,
    },
    Member {
        org_version: i64,
        grant: Arc<Grant>,
    },
    /// The user's account is disabled (whether or not they are a member).
    UserDisabled {
        org_version: i64,
    },
    /// A member of an org that requires MFA, without TOTP enrolled.
    MfaRequired {
        org_version: i64,
    },
}

impl Subject {
    pub fn decide(&self, permission: PermissionBit) -> Reason {
        match self {
            Subject::OrgNotFound => Reason::OrgNotFound,
            Subject::NotMember { .. } => Reason::NotMember,
            Subject::Member { grant, .. } if grant.allows(permission) => Reason::Allowed,
            Subject::Member { .. } => Reason::MissingPermission,
            Subject::UserDisabled { .. } => Reason::UserDisabled,
            Subject::MfaRequired { .. } => Reason::MfaRequired,
        }
    }

    pub fn org_version(&self) -> Option<i64> {
        match self {
            Subject::OrgNotFound => None,
            Subject::NotMember { org_version }
            | Subject::Member { org_version, .. }
            | Subject::UserDisabled { org_version }
            | Subject::MfaRequired { org_version } => Some(*org_version),
        }
    }
}

/// How fresh an answer must be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Freshness {
    #[default]
    MinimizeLatency,
    /// At least the versions a token names (one per org; orgs it does not name are read
    /// with minimal latency).
    AtLeast(Arc<[ConsistencyToken]>),
    FullyConsistent,
}

impl Freshness {
    pub fn min_version(&self, org: &OrgId) -> Option<i64> {
        match self {
            Freshness::AtLeast(ts) => ts.iter().find(|t| t.org == *org).map(|t| t.version),
            _ => None,
        }
    }
}

impl Reason {
    /// The stable lower-case name used in metrics and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NotMember => "not_member",
            Reason::MissingPermission => "missing_permission",
            Reason::OrgNotFound => "org_not_found",
            Reason::UserDisabled => "user_disabled",
            Reason::MfaRequired => "mfa_required",
        }
    }
}

impl Subject {
    /// Whether a cached subject may answer a request that needs at least `min_version`.
    pub fn fresh_enough(&self, min_version: Option<i64>) -> bool {
        match (min_version, self.org_version()) {
            (None, _) => true,
            (Some(min), Some(v)) => v >= min,
            // A cached "org not found" is never fresh enough for a token naming that org.
            (Some(_), None) => false,
        }
    }
}
