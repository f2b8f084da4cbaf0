//! Conversions from use-case views to protobuf messages.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::app::audit::AuditEvent;
use crate::app::invitations::InvitationView;
use crate::app::orgs::{MemberView, OrgView};
use crate::app::roles::RoleView;
use crate::domain::decision::Reason;
use crate::domain::invitation::InvitationStatus;
use crate::proto::teamgate::v1 as pb;

pub use crate::proto::timestamp;

/// The one mapping of a decision's reason to the wire (`AuthzService` responses, and through
/// `as_str_name` the ext_authz reason header).
impl From<Reason> for pb::Reason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Allowed => Self::Allowed,
            Reason::NotMember => Self::NotMember,
            Reason::MissingPermission => Self::MissingPermission,
            Reason::OrgNotFound => Self::OrgNotFound,
            Reason::UserDisabled => Self::UserDisabled,
            Reason::MfaRequired => Self::MfaRequired,
        }
    }
}

pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::from_timestamp(t.seconds, nanos)
}

pub fn organization(v: &OrgView) -> pb::Organization {
    pb::Organization {
        id: v.id.to_string(),
        name: v.name.clone(),
        plan: v.plan.clone(),
        created_at: Some(timestamp(v.created_at)),
        member_count: i64::try_from(v.member_count).unwrap_or(i64::MAX),
        require_mfa: v.require_mfa,
    }
}

pub fn member(v: &MemberView) -> pb::Member {
    pb::Member {
        user_id: v.user.id.to_string(),
        org_id: v.org_id.to_string(),
        email: v.user.email.clone(),
        first_name: v.user.first_name.clone(),
        last_name: v.user.last_name.clone(),
        role: v.role.clone(),
        joined_at: Some(timestamp(v.joined_at)),
    }
}

pub fn invitation_status(s: InvitationStatus) -> pb::InvitationStatus {
    match s {
        InvitationStatus::Pending => pb::InvitationStatus::Pending,
        InvitationStatus::Accepted => pb::InvitationStatus::Accepted,
        InvitationStatus::Expired => pb::InvitationStatus::Expired,
        InvitationStatus::Revoked => pb::InvitationStatus::Revoked,
    }
}

pub fn invitation(v: &InvitationView) -> pb::Invitation {
    pb::Invitation {
        id: v.id.to_string(),
        org_id: v.org_id.to_string(),
        email: v.email.clone(),
        first_name: v.first_name.clone(),
        last_name: v.last_name.clone(),
        role: v.role.clone(),
        status: invitation_status(v.status).into(),
        invited_by_user_id: v.invited_by_user_id.to_string(),
        created_at: Some(timestamp(v.created_at)),
        expires_at: Some(timestamp(v.expires_at)),
        accepted_at: v.accepted_at.map(timestamp),
    }
}

pub fn role(v: &RoleView) -> pb::Role {
    pb::Role {
        key: v.role.key.clone(),
        display_name: v.role.display_name.clone(),
        permissions: v.role.permissions.to_strings(),
        built_in: v.role.built_in,
        member_count: i64::try_from(v.member_count).unwrap_or(i64::MAX),
    }
}

pub fn audit_event(r: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: r.id.clone(),
        org_id: r.org_id.clone(),
        actor_user_id: r.actor_user_id.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        before: r.before.clone().unwrap_or_default(),
        after: r.after.clone().unwrap_or_default(),
        occurred_at: Some(timestamp(r.occurred_at)),
        request_id: r.request_id.clone(),
    }
}

pub fn scim_token(org_id: &str, v: &crate::app::scim::admin::ScimTokenView) -> pb::ScimToken {
    pb::ScimToken {
        id: v.id.clone(),
        org_id: org_id.to_owned(),
        name: v.name.clone(),
        created_by_user_id: v.created_by.clone(),
        created_at: Some(timestamp(v.created_at)),
        revoked_at: v.revoked_at.map(timestamp),
    }
}

pub fn scim_group_mapping(
    org_id: &str,
    v: &crate::app::scim::admin::GroupMappingView,
) -> pb::ScimGroupMapping {
    pb::ScimGroupMapping {
        id: v.id.clone(),
        org_id: org_id.to_owned(),
        group_display_name: v.group_display_name.clone(),
        role_key: v.role_key.clone(),
        created_at: Some(timestamp(v.created_at)),
        updated_at: Some(timestamp(v.updated_at)),
    }
}
