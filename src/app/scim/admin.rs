//! Owners' side of SCIM, over gRPC: directory tokens and group → role mappings. Each needs
//! `sso.manage` and is audited.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::super::write::{Authority, Effect, Event};
use super::super::{App, AppResult, RequestCtx};
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::{OrgId, UserId};
use crate::domain::token::{hash_secret, new_secret};
use crate::store::scim::{self, GroupMappingRow, ScimTokenRow};

const PERMISSION: &str = "sso.manage";

/// A token as listed: never its secret.
#[derive(Debug, Clone)]
pub struct ScimTokenView {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ScimTokenRow> for ScimTokenView {
    fn from(r: ScimTokenRow) -> Self {
        ScimTokenView {
            id: r.id,
            name: r.name,
            created_by: r.created_by,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupMappingView {
    pub id: String,
    pub group_display_name: String,
    pub role_key: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<GroupMappingRow> for GroupMappingView {
    fn from(r: GroupMappingRow) -> Self {
        GroupMappingView {
            id: r.id,
            group_display_name: r.display_name,
            role_key: r.role_key,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn mapping_json(m: &GroupMappingRow) -> serde_json::Value {
    json!({"group_id": m.id, "group_display_name": m.display_name, "role": m.role_key})
}

impl App {
    /// Creates a directory token; the secret is returned here only and stored hashed.
    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn create_scim_token(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        name: &str,
    ) -> AppResult<(ScimTokenView, String, ConsistencyToken)> {
        let org = org_id.to_string();
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission(PERMISSION),
                Effect::Records,
            )
            .await?;
        let secret = format!("tgscim_{}", new_secret());
        let row = ScimTokenRow {
            // A UUID, so that the directory's audit actor (`scim:<id>`) is as well-formed as a
            // user's id.
            id: UserId::generate().to_string(),
            org_id: org.clone(),
            name: name.to_owned(),
            token_hash: hash_secret(&secret),
            created_by: w.actor_id(),
            created_at: self.now(),
            revoked_at: None,
        };
        scim::insert_token(w.conn(), row.clone()).await?;
        let token = w
            .commit([
                Event::new("scim_token.created", format!("scim_token:{}", row.id))
                    .after(json!({"token_id": row.id, "name": row.name})),
            ])
            .await?;
        Ok((row.into(), secret, token))
    }

    pub async fn list_scim_tokens(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
    ) -> AppResult<Vec<ScimTokenView>> {
        let org = org_id.to_string();
        self.readable_org(ctx, org_id, PERMISSION).await?;
        let rows = scim::list_tokens(self.store.conn(), &org).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Revokes a token at once: the next SCIM call with it gets 401. Revoking twice is a no-op.
    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn revoke_scim_token(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        token_id: &str,
    ) -> AppResult<(ScimTokenView, ConsistencyToken)> {
        let org = org_id.to_string();
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission(PERMISSION),
                Effect::Records,
            )
            .await?;
        let mut row = scim::find_token(w.conn(), &org, token_id)
            .await?
            .ok_or_else(|| {
                DomainError::not_found(
                    "SCIM_TOKEN_NOT_FOUND",
                    format!("no SCIM token {token_id} in organization {org}"),
                )
            })?;
        if row.revoked_at.is_some() {
            return Ok((row.into(), w.unchanged()));
        }
        let now = self.now();
        scim::revoke_token(w.conn(), &row.id, now).await?;
        row.revoked_at = Some(now);
        let token = w
            .commit([
                Event::new("scim_token.revoked", format!("scim_token:{}", row.id))
                    .before(json!({"token_id": row.id, "name": row.name})),
            ])
            .await?;
        Ok((row.into(), token))
    }

    /// Maps a directory group to a role. The role must exist, must not be the owner role, and
    /// must be one a directory may grant (see `app::scim`), so a mapping can never become a
    /// path to privileges the directory does not have.
    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn set_scim_group_mapping(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        group_display_name: &str,
        role_key: &str,
    ) -> AppResult<(GroupMappingView, ConsistencyToken)> {
        let org = org_id.to_string();
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission(PERMISSION),
                Effect::Records,
            )
            .await?;
        let role = self.role_for_request(w.conn(), &org, role_key).await?;
        let owner_role = self.policy.owner_role();
        if role.key == owner_role {
            return Err(DomainError::denied(
                "SCIM_OWNER_NOT_MAPPABLE",
                format!(
                    "a directory group cannot grant `{owner_role}`: ownership is given with TransferOwnership or UpdateMemberRole by an owner"
                ),
            )
            .into());
        }
        w.actor.actor().may_grant(&role, owner_role)?;
        let directory = self.directory_actor(&org, &w.actor_id())?;
        directory.actor().may_grant(&role, owner_role)?;
        let now = self.now();
        let existing = scim::find_mapping_by_name(w.conn(), &org, group_display_name).await?;
        let (row, event) = match existing {
            Some(m) if m.role_key == role.key => return Ok((m.into(), w.unchanged())),
            Some(mut m) => {
                let before = mapping_json(&m);
                scim::set_mapping_role(w.conn(), &m.id, &role.key, now).await?;
                m.role_key = role.key.clone();
                m.updated_at = now;
                let e = Event::new("scim_group_mapping.set", format!("scim_group:{}", m.id))
                    .before(before)
                    .after(mapping_json(&m));
                (m, e)
            }
            None => {
                let m = GroupMappingRow {
                    id: UserId::generate().to_string(),
                    org_id: org.clone(),
                    display_name: group_display_name.to_owned(),
                    role_key: role.key.clone(),
                    created_at: now,
                    updated_at: now,
                };
                scim::insert_mapping(w.conn(), m.clone()).await?;
                let e = Event::new("scim_group_mapping.set", format!("scim_group:{}", m.id))
                    .after(mapping_json(&m));
                (m, e)
            }
        };
        let token = w.commit([event]).await?;
        Ok((row.into(), token))
    }

    pub async fn list_scim_group_mappings(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
    ) -> AppResult<Vec<GroupMappingView>> {
        let org = org_id.to_string();
        self.readable_org(ctx, org_id, PERMISSION).await?;
        let rows = scim::list_mappings(self.store.conn(), &org).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Removes a mapping: the group disappears from SCIM; its members keep their roles.
    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn delete_scim_group_mapping(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        group_display_name: &str,
    ) -> AppResult<ConsistencyToken> {
        let org = org_id.to_string();
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission(PERMISSION),
                Effect::Records,
            )
            .await?;
        let m = scim::find_mapping_by_name(w.conn(), &org, group_display_name)
            .await?
            .ok_or_else(|| {
                DomainError::not_found(
                    "SCIM_GROUP_MAPPING_NOT_FOUND",
                    format!(
                        "no mapping for the group `{group_display_name}` in organization {org}"
                    ),
                )
            })?;
        scim::delete_mapping(w.conn(), &m.id).await?;
        w.commit([
            Event::new("scim_group_mapping.deleted", format!("scim_group:{}", m.id))
                .before(mapping_json(&m)),
        ])
        .await
    }
}
