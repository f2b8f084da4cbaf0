//! SCIM 2.0 provisioning: an organization's directory (its identity provider) creates,
//! updates and deprovisions members through the SCIM server (`crate::scim`), authenticated by
//! a per-org bearer token that decides the org. Owners manage tokens and the group → role
//! mappings over gRPC ([`admin`]).
//!
//! What a directory may do: it acts with the authority of the policy's role just below owner
//! (`Policy::role_below_owner`). It can grant a role only within that role's permissions and
//! never the owner role, and it cannot change or remove an owner: ownership stays a decision
//! of the org's owners. Whatever it does, the org keeps an owner (`LAST_OWNER`).

pub mod admin;
pub mod groups;
pub mod users;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{ActingMember, App, AppResult};
use crate::domain::DomainError;
use crate::domain::ids::{OrgId, UserId};
use crate::domain::token::{hash_secret, hex_encode};
use crate::store::{self, orgs, scim};

/// A directory as its bearer token names it.
#[derive(Debug, Clone)]
pub struct Directory {
    pub org_id: OrgId,
    pub token_id: String,
    pub token_name: String,
    pub(crate) token_hash: String,
}

/// One account as this org's directory sees it.
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    pub user_id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub external_id: Option<String>,
    /// A member of the org now.
    pub active: bool,
    /// The member's role; `None` when not a member.
    pub role: Option<String>,
    /// The mapped groups whose role the member holds: (group id, display name).
    pub groups: Vec<(String, String)>,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    /// Changes whenever anything shown here changes (the SCIM `meta.version`).
    pub version: String,
}

/// A mapped group: its members are the org's members holding its role.
#[derive(Debug, Clone)]
pub struct DirectoryGroup {
    pub id: String,
    pub display_name: String,
    pub role_key: String,
    /// (user id, email), ordered by user id.
    pub members: Vec<(String, String)>,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    pub version: String,
}

pub(crate) fn unknown_token() -> DomainError {
    DomainError::Unauthenticated {
        reason: "SCIM_TOKEN_INVALID",
        message:
            "the bearer token is not a live SCIM token: an owner creates one with CreateScimToken"
                .into(),
    }
}

pub(crate) fn user_not_found(user_id: &str) -> DomainError {
    DomainError::not_found(
        "SCIM_USER_NOT_FOUND",
        format!("no user {user_id} in this directory"),
    )
}

/// A caller-supplied SCIM user `{id}`: one that is not a user id names no user here.
pub(crate) fn directory_user_id(raw: &str) -> Result<UserId, DomainError> {
    UserId::from_stored(raw).ok_or_else(|| user_not_found(raw))
}

pub(crate) fn group_not_found(id: &str) -> DomainError {
    DomainError::not_found(
        "SCIM_GROUP_NOT_FOUND",
        format!("no group {id} in this directory: an owner maps groups with SetScimGroupMapping"),
    )
}

/// `VERSION_MISMATCH` unless `if_match` (an `If-Match` value) is absent, `*`, or names
/// `version`, weak or strong.
pub(crate) fn ensure_version(if_match: Option<&str>, version: &str) -> Result<(), DomainError> {
    let Some(wanted) = if_match else {
        return Ok(());
    };
    let matches = wanted
        .split(',')
        .map(str::trim)
        .any(|w| w == "*" || w.trim_start_matches("W/").trim_matches('"') == version);
    if matches {
        Ok(())
    } else {
        Err(DomainError::precondition(
            "VERSION_MISMATCH",
            "the resource changed since that version was read: GET it again",
        ))
    }
}

fn version_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex_encode(&h.finalize()[..8])
}

impl DirectoryUser {
    fn build(
        user: &store::users::UserRow,
        membership: Option<&store::members::MembershipRow>,
        link: Option<&scim::ScimUserRow>,
        mappings: &[scim::GroupMappingRow],
    ) -> DirectoryUser {
        let role = membership.map(|m| m.role.clone());
        let groups: Vec<(String, String)> = mappings
            .iter()
            .filter(|g| role.as_deref() == Some(g.role_key.as_str()))
            .map(|g| (g.id.clone(), g.display_name.clone()))
            .collect();
        let created = link.map_or_else(
            || membership.map_or(user.created_at, |m| m.joined_at),
            |l| l.created_at,
        );
        let last_modified = [
            link.map(|l| l.updated_at),
            user.updated_at,
            membership.map(|m| m.joined_at),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(created);
        let link_version = link.map_or(0, |l| l.version).to_string();
        let external_id = link.and_then(|l| l.external_id.clone());
        let group_ids: Vec<&str> = groups.iter().map(|(id, _)| id.as_str()).collect();
        let version = version_of(&[
            &user.email,
            &user.first_name,
            &user.last_name,
            role.as_deref().unwrap_or(""),
            external_id.as_deref().unwrap_or(""),
            &link_version,
            &group_ids.join(","),
        ]);
        DirectoryUser {
            user_id: user.id.clone(),
            email: user.email.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            external_id,
            active: membership.is_some(),
            role,
            groups,
            created,
            last_modified,
            version,
        }
    }
}

impl DirectoryGroup {
    fn build(mapping: &scim::GroupMappingRow, members: Vec<(String, String)>) -> DirectoryGroup {
        let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        let version = version_of(&[
            &mapping.display_name,
            &mapping.role_key,
            &mapping.updated_at.to_rfc3339(),
            &ids.join(","),
        ]);
        DirectoryGroup {
            id: mapping.id.clone(),
            display_name: mapping.display_name.clone(),
            role_key: mapping.role_key.clone(),
            members,
            created: mapping.created_at,
            last_modified: mapping.updated_at,
            version,
        }
    }
}

impl App {
    /// The directory a bearer token belongs to; `SCIM_TOKEN_INVALID` for an unknown or revoked
    /// token, or one whose org was deleted.
    pub async fn directory(&self, secret: &str) -> AppResult<Directory> {
        let hash = hash_secret(secret);
        let c = self.store.conn();
        let token = scim::live_token_by_hash(c, &hash)
            .await?
            .ok_or_else(unknown_token)?;
        let org_id = OrgId::from_stored(&token.org_id).ok_or_else(unknown_token)?;
        orgs::find_live(c, &org_id)
            .await?
            .ok_or_else(unknown_token)?;
        Ok(Directory {
            org_id,
            token_id: token.id,
            token_name: token.name,
            token_hash: hash,
        })
    }

    /// The authority a directory acts with (see the module docs).
    pub(crate) fn directory_actor(&self, org_id: &str, token_id: &str) -> AppResult<ActingMember> {
        let key = self.policy.role_below_owner();
        let built_in = self.policy.built_in(key).ok_or_else(|| {
            DomainError::precondition(
                "NO_DIRECTORY_ROLE",
                "the policy has no role below owner for a directory to act with",
            )
        })?;
        Ok(ActingMember {
            user_id: UserId::from_stored(token_id).unwrap_or_else(UserId::generate),
            role: crate::domain::roles::ResolvedRole {
                key: built_in.key.clone(),
                display_name: built_in.display_name.clone(),
                permissions: built_in.permissions.clone(),
                built_in: true,
            },
            is_owner: false,
            org: org_id.to_owned(),
        })
    }

    /// Every account the directory sees: the org's members, and the accounts it linked and
    /// deactivated. Ordered by user id.
    pub async fn directory_users(&self, dir: &Directory) -> AppResult<Vec<DirectoryUser>> {
        self.directory_users_in(self.store.conn(), &dir.org_id)
            .await
    }

    pub(crate) async fn directory_users_in<C: crate::store::Connection>(
        &self,
        c: &C,
        org_id: &OrgId,
    ) -> AppResult<Vec<DirectoryUser>> {
        let limit = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
        let org = org_id.to_string();
        let members = store::members::list(c, org_id, None, None, limit).await?;
        let links = scim::list_users(c, &org).await?;
        let mappings = scim::list_mappings(c, &org).await?;
        let link_of = |id: &str| links.iter().find(|l| l.user_id == id);
        let mut out: Vec<DirectoryUser> = members
            .iter()
            .map(|(m, u)| DirectoryUser::build(u, Some(m), link_of(&u.id), &mappings))
            .collect();
        let inactive: Vec<String> = links
            .iter()
            .filter(|l| !members.iter().any(|(m, _)| m.user_id == l.user_id))
            .map(|l| l.user_id.clone())
            .collect();
        let accounts = store::users::find_many(c, &inactive).await?;
        for id in &inactive {
            if let Some(u) = accounts.get(id) {
                out.push(DirectoryUser::build(u, None, link_of(id), &mappings));
            }
        }
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(out)
    }

    /// One account of the directory; `SCIM_USER_NOT_FOUND` for a `user_id` that is not one.
    pub async fn directory_user(&self, dir: &Directory, user_id: &str) -> AppResult<DirectoryUser> {
        let user_id = directory_user_id(user_id)?;
        self.directory_user_in(self.store.conn(), &dir.org_id, &user_id)
            .await
    }

    pub(crate) async fn directory_user_in<C: crate::store::Connection>(
        &self,
        c: &C,
        org_id: &OrgId,
        user_id: &UserId,
    ) -> AppResult<DirectoryUser> {
        let (org, user) = (org_id.to_string(), user_id.to_string());
        let membership = store::members::find(c, org_id, user_id).await?;
        let link = scim::find_user(c, &org, &user).await?;
        if membership.is_none() && link.is_none() {
            return Err(user_not_found(&user).into());
        }
        let user_row = store::users::find(c, &user)
            .await?
            .ok_or_else(|| user_not_found(&user))?;
        let mappings = scim::list_mappings(c, &org).await?;
        Ok(DirectoryUser::build(
            &user_row,
            membership.as_ref(),
            link.as_ref(),
            &mappings,
        ))
    }

    pub async fn directory_groups(&self, dir: &Directory) -> AppResult<Vec<DirectoryGroup>> {
        let c = self.store.conn();
        let mappings = scim::list_mappings(c, &dir.org_id.to_string()).await?;
        let mut out = Vec::with_capacity(mappings.len());
        for m in &mappings {
            out.push(self.group_view(c, m).await?);
        }
        Ok(out)
    }

    pub async fn directory_group(&self, dir: &Directory, id: &str) -> AppResult<DirectoryGroup> {
        let c = self.store.conn();
        let m = scim::find_mapping(c, &dir.org_id.to_string(), id)
            .await?
            .ok_or_else(|| group_not_found(id))?;
        self.group_view(c, &m).await
    }

    pub(crate) async fn group_view<C: crate::store::Connection>(
        &self,
        c: &C,
        mapping: &scim::GroupMappingRow,
    ) -> AppResult<DirectoryGroup> {
        let limit = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
        let org_id = OrgId::from_row(&mapping.org_id);
        let members = store::members::list(c, &org_id, Some(&mapping.role_key), None, limit)
            .await?
            .into_iter()
            .map(|(m, u)| (m.user_id, u.email))
            .collect();
        Ok(DirectoryGroup::build(mapping, members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_weak_strong_and_star() {
        assert!(ensure_version(None, "abc").is_ok());
        assert!(ensure_version(Some("W/\"abc\""), "abc").is_ok());
        assert!(ensure_version(Some("\"abc\""), "abc").is_ok());
        assert!(ensure_version(Some("*"), "abc").is_ok());
        assert!(ensure_version(Some("W/\"x\", W/\"abc\""), "abc").is_ok());
        assert!(ensure_version(Some("W/\"abd\""), "abc").is_err());
    }
}
