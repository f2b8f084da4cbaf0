//! `teamgate.v1.TeamService`: thin handlers that validate, call the use case, convert.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::caller::caller_id;
use super::context::ctx;
use super::convert;
use super::error::with_reason;
use super::limits::FailureLimiter;
use super::paging::{next_token, page_request, page_request_keyed};
use crate::app::App;
use crate::app::audit::AuditFilter;
use crate::app::invitations::StatusFilter;
use crate::app::invitations::{Acceptance, NewInvitation};
use crate::app::orgs::{NewOrg, NewOwner, OrgChanges};
use crate::app::roles::RoleDefinition;
use crate::domain::DomainError;
use crate::domain::email::Email;
use crate::domain::ids::{InvitationId, OrgId, UserId};
use crate::domain::names::{parse_name, parse_optional_name};
use crate::domain::roles::RoleKey;
use crate::proto::teamgate::v1 as pb;
use crate::proto::teamgate::v1::team_service_server::TeamService;

pub struct TeamApi {
    app: Arc<App>,
    /// Bad invitation tokens per caller, for AcceptInvitation's brute-force limit.
    bad_tokens: FailureLimiter,
}

/// Bad invitation tokens one caller may send per [`BAD_TOKEN_WINDOW_MINUTES`].
const MAX_BAD_TOKENS: u32 = 10;
const BAD_TOKEN_WINDOW_MINUTES: i64 = 10;

impl TeamApi {
    pub fn new(app: Arc<App>) -> Self {
        let bad_tokens = FailureLimiter::new(
            app.clock.clone(),
            MAX_BAD_TOKENS,
            chrono::Duration::minutes(BAD_TOKEN_WINDOW_MINUTES),
        );
        TeamApi { app, bad_tokens }
    }
}

fn org_id(raw: &str) -> Result<OrgId, Status> {
    Ok(OrgId::parse("org_id", raw)?)
}

fn user_id(field: &str, raw: &str) -> Result<UserId, Status> {
    Ok(UserId::parse(field, raw)?)
}

fn role_key(field: &str, raw: &str) -> Result<RoleKey, Status> {
    RoleKey::parse(raw).map_err(|e| match e {
        DomainError::Invalid {
            reason, message, ..
        } => DomainError::invalid_because(field, reason, message).into(),
        other => other.into(),
    })
}

/// A role named in a request: must look like a role key; whether it exists is the use case's.
fn optional_role(field: &str, raw: &str) -> Result<Option<String>, Status> {
    if raw.is_empty() {
        Ok(None)
    } else {
        role_key(field, raw).map(|k| Some(k.as_str().to_owned()))
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::ChangeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl TeamService for TeamApi {
    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::CreateOrganizationResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let name = parse_name("name", &req.name)?;
        let plan = if req.plan.trim().is_empty() {
            None
        } else {
            Some(req.plan.trim().to_owned())
        };
        let owner = match req.owner_ref {
            Some(pb::create_organization_request::OwnerRef::Owner(o)) => NewOwner::Person {
                email: Email::parse("owner.email", &o.email)?,
                first_name: parse_name("owner.first_name", &o.first_name)?,
                last_name: parse_optional_name("owner.last_name", &o.last_name)?
                    .unwrap_or_default(),
            },
            Some(pb::create_organization_request::OwnerRef::OwnerUserId(id)) => {
                NewOwner::Existing(user_id("owner_user_id", &id)?)
            }
            None => {
                return Err(DomainError::invalid_because(
                    "owner",
                    "MISSING_FIELD",
                    "owner is required: pass owner {email, first_name, last_name} or owner_user_id",
                )
                .into());
            }
        };
        let (org, owner, token) = self
            .app
            .create_org(&ctx, NewOrg { name, plan, owner })
            .await?;
        Ok(Response::new(pb::CreateOrganizationResponse {
            organization: Some(convert::organization(&org)),
            owner: Some(convert::member(&owner)),
            consistency_token: token.encode(),
        }))
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let ctx = ctx(&request)?;
        let id = org_id(&request.get_ref().org_id)?;
        let org = self.app.get_org(&ctx, &id).await?;
        Ok(Response::new(convert::organization(&org)))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::UpdateOrganizationResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let changes = OrgChanges {
            name: req
                .name
                .as_deref()
                .map(|n| parse_name("name", n))
                .transpose()?,
            plan: req.plan.map(|p| p.trim().to_owned()),
            require_mfa: req.require_mfa,
        };
        if changes.name.is_none() && changes.plan.is_none() && changes.require_mfa.is_none() {
            return Err(DomainError::invalid_because(
                "name",
                "NOTHING_TO_UPDATE",
                "set at least one of name, plan or require_mfa",
            )
            .into());
        }
        let (org, token) = self.app.update_org(&ctx, &id, changes).await?;
        Ok(Response::new(pb::UpdateOrganizationResponse {
            organization: Some(convert::organization(&org)),
            consistency_token: token.encode(),
        }))
    }

    async fn delete_organization(
        &self,
        request: Request<pb::DeleteOrganizationRequest>,
    ) -> Result<Response<pb::DeleteOrganizationResponse>, Status> {
        let ctx = ctx(&request)?;
        let id = org_id(&request.get_ref().org_id)?;
        let token = self.app.delete_org(&ctx, &id).await?;
        Ok(Response::new(pb::DeleteOrganizationResponse {
            consistency_token: token.encode(),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let user = user_id("user_id", &req.user_id)?;
        let scope = user.to_string();
        let page = page_request("organizations", &scope, req.page_size, &req.page_token)?;
        let page = self.app.list_orgs(&ctx, &user, page).await?;
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: page
                .items
                .iter()
                .map(|(o, role)| pb::UserOrganization {
                    organization: Some(convert::organization(o)),
                    role: role.clone(),
                })
                .collect(),
            next_page_token: next_token("organizations", &scope, page.next),
        }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let role = optional_role("role", req.role.as_deref().unwrap_or(""))?;
        let scope = id.to_string();
        let page = page_request("members", &scope, req.page_size, &req.page_token)?;
        let page = self.app.list_members(&ctx, &id, role, page).await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: page.items.iter().map(convert::member).collect(),
            next_page_token: next_token("members", &scope, page.next),
        }))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let ctx = ctx(&request)?;
        let req = request.get_ref();
        let id = org_id(&req.org_id)?;
        let user = user_id("user_id", &req.user_id)?;
        let m = self.app.get_member(&ctx, &id, &user).await?;
        Ok(Response::new(convert::member(&m)))
    }

    async fn update_member_role(
        &self,
        request: Request<pb::UpdateMemberRoleRequest>,
    ) -> Result<Response<pb::UpdateMemberRoleResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.get_ref();
        let id = org_id(&req.org_id)?;
        let user = user_id("user_id", &req.user_id)?;
        let role = role_key("role", &req.role)?;
        let (m, token) = self
            .app
            .update_member_role(&ctx, &id, &user, role.as_str())
            .await?;
        Ok(Response::new(pb::UpdateMemberRoleResponse {
            member: Some(convert::member(&m)),
            consistency_token: token.encode(),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.get_ref();
        let id = org_id(&req.org_id)?;
        let user = user_id("user_id", &req.user_id)?;
        let token = self.app.remove_member(&ctx, &id, &user).await?;
        Ok(Response::new(pb::RemoveMemberResponse {
            consistency_token: token.encode(),
        }))
    }

    async fn transfer_ownership(
        &self,
        request: Request<pb::TransferOwnershipRequest>,
    ) -> Result<Response<pb::TransferOwnershipResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.get_ref();
        let id = org_id(&req.org_id)?;
        let user = user_id("new_owner_user_id", &req.new_owner_user_id)?;
        let (previous, next, token) = self.app.transfer_ownership(&ctx, &id, &user).await?;
        Ok(Response::new(pb::TransferOwnershipResponse {
            previous_owner: Some(convert::member(&previous)),
            new_owner: Some(convert::member(&next)),
            consistency_token: token.encode(),
        }))
    }

    async fn invite_member(
        &self,
        request: Request<pb::InviteMemberRequest>,
    ) -> Result<Response<pb::InviteMemberResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let invitation = NewInvitation {
            email: Email::parse("email", &req.email)?,
            first_name: parse_name("first_name", &req.first_name)?,
            last_name: parse_optional_name("last_name", &req.last_name)?.unwrap_or_default(),
            role: optional_role("role", &req.role)?,
        };
        let (inv, secret, token) = self.app.invite_member(&ctx, &id, invitation).await?;
        Ok(Response::new(pb::InviteMemberResponse {
            invitation: Some(convert::invitation(&inv)),
            token: secret.unwrap_or_default(),
            consistency_token: token.encode(),
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let status = match req.status.map(pb::InvitationStatus::try_from) {
            None => None,
            Some(Ok(pb::InvitationStatus::Unspecified)) => None,
            Some(Ok(pb::InvitationStatus::Pending)) => Some(StatusFilter::Pending),
            Some(Ok(pb::InvitationStatus::Accepted)) => Some(StatusFilter::Accepted),
            Some(Ok(pb::InvitationStatus::Expired)) => Some(StatusFilter::Expired),
            Some(Ok(pb::InvitationStatus::Revoked)) => Some(StatusFilter::Revoked),
            Some(Err(_)) => {
                return Err(DomainError::invalid_because(
                    "status",
                    "INVALID_STATUS",
                    "status must be one of INVITATION_STATUS_PENDING, _ACCEPTED, _EXPIRED, _REVOKED",
                )
                .into());
            }
        };
        let scope = id.to_string();
        let page = page_request("invitations", &scope, req.page_size, &req.page_token)?;
        let page = self.app.list_invitations(&ctx, &id, status, page).await?;
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: page.items.iter().map(convert::invitation).collect(),
            next_page_token: next_token("invitations", &scope, page.next),
        }))
    }

    async fn resend_invitation(
        &self,
        request: Request<pb::ResendInvitationRequest>,
    ) -> Result<Response<pb::ResendInvitationResponse>, Status> {
        let ctx = ctx(&request)?;
        let id = InvitationId::parse("invitation_id", &request.get_ref().invitation_id)?;
        let (inv, secret, token) = self.app.resend_invitation(&ctx, &id).await?;
        Ok(Response::new(pb::ResendInvitationResponse {
            invitation: Some(convert::invitation(&inv)),
            token: secret.unwrap_or_default(),
            consistency_token: token.encode(),
        }))
    }

    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Result<Response<pb::RevokeInvitationResponse>, Status> {
        let ctx = ctx(&request)?;
        let id = InvitationId::parse("invitation_id", &request.get_ref().invitation_id)?;
        let (inv, token) = self.app.revoke_invitation(&ctx, &id).await?;
        Ok(Response::new(pb::RevokeInvitationResponse {
            invitation: Some(convert::invitation(&inv)),
            consistency_token: token.encode(),
        }))
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        let ctx = ctx(&request)?;
        let caller = caller_id(&request)?;
        let req = request.into_inner();
        let secret = req.token.trim();
        if secret.is_empty() || secret.len() > 256 {
            return Err(DomainError::invalid_because(
                "token",
                "MISSING_FIELD",
                "token is required: pass the token from the invitation",
            )
            .into());
        }
        let password = req
            .password
            .as_deref()
            .map(|p| self.app.new_password("password", p))
            .transpose()?;
        let mut acceptance = Acceptance {
            first_name: req
                .first_name
                .as_deref()
                .map(|n| parse_optional_name("first_name", n))
                .transpose()?
                .flatten(),
            last_name: req
                .last_name
                .as_deref()
                .map(|n| parse_optional_name("last_name", n))
                .transpose()?
                .flatten(),
            password_hash: None,
        };
        let accept = async {
            // Hashed only once the caller is within its budget: hashing is deliberately costly.
            if let Some(p) = &password {
                acceptance.password_hash = Some(self.app.hash_password(p).await?);
            }
            self.app.accept_invitation(&ctx, secret, acceptance).await
        };
        let (member, org, token) = self
            .bad_tokens
            .limit(&caller, accept, |e| e.has_reason("INVITATION_NOT_FOUND"))
            .await
            .map_err(|wait| {
                with_reason(
                    tonic::Code::ResourceExhausted,
                    "TOO_MANY_ATTEMPTS",
                    format!(
                        "too many invalid invitation tokens from this caller: retry in {wait} s, with the link from the invitation email"
                    ),
                )
            })??;
        Ok(Response::new(pb::AcceptInvitationResponse {
            member: Some(convert::member(&member)),
            organization: Some(convert::organization(&org)),
            consistency_token: token.encode(),
        }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let scope = id.to_string();
        let page = page_request_keyed("roles", &scope, req.page_size, &req.page_token, |a| {
            RoleKey::parse(a).is_ok()
        })?;
        let page = self.app.list_roles(&ctx, &id, page).await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: page.items.iter().map(convert::role).collect(),
            next_page_token: next_token("roles", &scope, page.next),
        }))
    }

    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let def = RoleDefinition {
            key: role_key("key", &req.key)?,
            display_name: parse_optional_name("display_name", &req.display_name)?,
            permissions: req.permissions,
        };
        let (role, token) = self.app.create_role(&ctx, &id, def).await?;
        Ok(Response::new(pb::CreateRoleResponse {
            role: Some(convert::role(&role)),
            consistency_token: token.encode(),
        }))
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::UpdateRoleResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let def = RoleDefinition {
            key: role_key("key", &req.key)?,
            display_name: req
                .display_name
                .as_deref()
                .map(|n| parse_name("display_name", n))
                .transpose()?,
            permissions: req.permissions,
        };
        let (role, token) = self.app.update_role(&ctx, &id, def).await?;
        Ok(Response::new(pb::UpdateRoleResponse {
            role: Some(convert::role(&role)),
            consistency_token: token.encode(),
        }))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let key = role_key("key", &req.key)?;
        let reassign = optional_role("reassign_to", &req.reassign_to)?;
        let token = self
            .app
            .delete_role(&ctx, &id, &key, reassign.as_deref())
            .await?;
        Ok(Response::new(pb::DeleteRoleResponse {
            consistency_token: token.encode(),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let actor_user_id = match req.actor_user_id.as_deref() {
            None | Some("") => None,
            Some(a) => Some(user_id("actor_user_id", a)?.to_string()),
        };
        let action = match req.action.as_deref() {
            None | Some("") => None,
            Some(a) if a.len() <= 64 => Some(a.to_owned()),
            Some(_) => {
                return Err(
                    DomainError::invalid("action", "action is longer than 64 characters").into(),
                );
            }
        };
        let time = |field: &str, t: &Option<prost_types::Timestamp>| match t {
            None => Ok(None),
            Some(ts) => convert::from_timestamp(ts).map(Some).ok_or_else(|| {
                Status::from(DomainError::invalid(
                    field,
                    format!("{field} is not a valid timestamp"),
                ))
            }),
        };
        let filter = AuditFilter {
            actor_user_id,
            action,
            since: time("since", &req.since)?,
            until: time("until", &req.until)?,
        };
        let scope = id.to_string();
        let page = page_request("audit", &scope, req.page_size, &req.page_token)?;
        let page = self.app.list_audit_events(&ctx, &id, filter, page).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.items.iter().map(convert::audit_event).collect(),
            next_page_token: next_token("audit", &scope, page.next),
        }))
    }

    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let ctx = ctx(&request)?;
        let actor = ctx.actor.map(|a| a.to_string());
        let caller = crate::feed::limits::caller_key(
            actor.as_deref(),
            ctx.key_name.as_deref(),
            request.remote_addr().map(|a| a.ip()),
        );
        let feed = request
            .extensions()
            .get::<crate::feed::FeedHandle>()
            .map(|h| h.0.clone())
            .ok_or_else(|| {
                with_reason(
                    tonic::Code::Unavailable,
                    "FEED_UNAVAILABLE",
                    "the change feed is not running on this server",
                )
            })?;
        let req = request.into_inner();
        let org = match req.org_id.trim() {
            "" => None,
            raw => Some(org_id(raw)?),
        };
        let after = match req.after.trim() {
            "" => crate::feed::After::Now,
            raw if raw.starts_with("ct1.") => crate::feed::After::Token(
                crate::domain::consistency::ConsistencyToken::decode(raw).map_err(|_| {
                    DomainError::invalid_because(
                        "after",
                        "INVALID_CURSOR",
                        "after is not a consistency_token returned by teamgate: pass one unchanged",
                    )
                })?,
            ),
            raw => crate::feed::After::Cursor(crate::feed::parse_cursor(raw).ok_or_else(|| {
                DomainError::invalid_because(
                    "after",
                    "INVALID_CURSOR",
                    "after is not a cursor from WatchChanges: pass an event's `cursor` unchanged, or leave it empty to start from now",
                )
            })?),
        };
        let stream = feed
            .watch(self.app.clone(), ctx, &caller, org, after)
            .await?
            .map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream) as ChangeStream))
    }

    async fn create_sso_connection(
        &self,
        request: Request<pb::CreateSsoConnectionRequest>,
    ) -> Result<Response<pb::CreateSsoConnectionResponse>, Status> {
        super::sso::create_connection(&self.app, request).await
    }

    async fn list_sso_connections(
        &self,
        request: Request<pb::ListSsoConnectionsRequest>,
    ) -> Result<Response<pb::ListSsoConnectionsResponse>, Status> {
        super::sso::list_connections(&self.app, request).await
    }

    async fn update_sso_connection(
        &self,
        request: Request<pb::UpdateSsoConnectionRequest>,
    ) -> Result<Response<pb::UpdateSsoConnectionResponse>, Status> {
        super::sso::update_connection(&self.app, request).await
    }

    async fn delete_sso_connection(
        &self,
        request: Request<pb::DeleteSsoConnectionRequest>,
    ) -> Result<Response<pb::DeleteSsoConnectionResponse>, Status> {
        super::sso::delete_connection(&self.app, request).await
    }

    async fn verify_sso_domain(
        &self,
        request: Request<pb::VerifySsoDomainRequest>,
    ) -> Result<Response<pb::VerifySsoDomainResponse>, Status> {
        super::sso::verify_domain(&self.app, request).await
    }

    async fn create_scim_token(
        &self,
        request: Request<pb::CreateScimTokenRequest>,
    ) -> Result<Response<pb::CreateScimTokenResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let name = parse_name("name", &req.name)?;
        let (view, secret, token) = self.app.create_scim_token(&ctx, &id, &name).await?;
        Ok(Response::new(pb::CreateScimTokenResponse {
            scim_token: Some(convert::scim_token(&req.org_id, &view)),
            token: secret,
            consistency_token: token.encode(),
        }))
    }

    async fn list_scim_tokens(
        &self,
        request: Request<pb::ListScimTokensRequest>,
    ) -> Result<Response<pb::ListScimTokensResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let views = self.app.list_scim_tokens(&ctx, &id).await?;
        Ok(Response::new(pb::ListScimTokensResponse {
            scim_tokens: views
                .iter()
                .map(|v| convert::scim_token(&req.org_id, v))
                .collect(),
        }))
    }

    async fn revoke_scim_token(
        &self,
        request: Request<pb::RevokeScimTokenRequest>,
    ) -> Result<Response<pb::RevokeScimTokenResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let token_id = uuid::Uuid::parse_str(req.token_id.trim()).map_err(|_| {
            DomainError::invalid_because(
                "token_id",
                "INVALID_ID",
                "token_id is not a SCIM token id: ListScimTokens shows them",
            )
        })?;
        let (view, token) = self
            .app
            .revoke_scim_token(&ctx, &id, &token_id.to_string())
            .await?;
        Ok(Response::new(pb::RevokeScimTokenResponse {
            scim_token: Some(convert::scim_token(&req.org_id, &view)),
            consistency_token: token.encode(),
        }))
    }

    async fn set_scim_group_mapping(
        &self,
        request: Request<pb::SetScimGroupMappingRequest>,
    ) -> Result<Response<pb::SetScimGroupMappingResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let group = parse_name("group_display_name", &req.group_display_name)?;
        let role = role_key("role_key", &req.role_key)?;
        let (view, token) = self
            .app
            .set_scim_group_mapping(&ctx, &id, &group, role.as_str())
            .await?;
        Ok(Response::new(pb::SetScimGroupMappingResponse {
            mapping: Some(convert::scim_group_mapping(&req.org_id, &view)),
            consistency_token: token.encode(),
        }))
    }

    async fn list_scim_group_mappings(
        &self,
        request: Request<pb::ListScimGroupMappingsRequest>,
    ) -> Result<Response<pb::ListScimGroupMappingsResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let views = self.app.list_scim_group_mappings(&ctx, &id).await?;
        Ok(Response::new(pb::ListScimGroupMappingsResponse {
            mappings: views
                .iter()
                .map(|v| convert::scim_group_mapping(&req.org_id, v))
                .collect(),
        }))
    }

    async fn delete_scim_group_mapping(
        &self,
        request: Request<pb::DeleteScimGroupMappingRequest>,
    ) -> Result<Response<pb::DeleteScimGroupMappingResponse>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = org_id(&req.org_id)?;
        let group = parse_name("group_display_name", &req.group_display_name)?;
        let token = self
            .app
            .delete_scim_group_mapping(&ctx, &id, &group)
            .await?;
        Ok(Response::new(pb::DeleteScimGroupMappingResponse {
            consistency_token: token.encode(),
        }))
    }
}
