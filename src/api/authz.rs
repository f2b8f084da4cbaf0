//! `teamgate.v1.AuthzService`: the check path.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::invalid;
use super::paging::{next_token, page_request};
use crate::app::App;
use crate::app::authz::{Freshness, Pair, Reason, Subject};
use crate::domain::consistency::{ConsistencyToken, decode_all};
use crate::domain::ids::{OrgId, UserId};
use crate::proto::teamgate::v1 as pb;
use crate::proto::teamgate::v1::authz_service_server::AuthzService;
use crate::telemetry::metrics::DecisionTally;

pub const MAX_BATCH: usize = 1000;

pub struct AuthzApi {
    app: Arc<App>,
}

impl AuthzApi {
    pub fn new(app: Arc<App>) -> Self {
        AuthzApi { app }
    }
}

fn freshness(c: &Option<pb::Consistency>) -> Result<Freshness, Status> {
    use pb::consistency::Requirement;
    Ok(match c.as_ref().and_then(|c| c.requirement.as_ref()) {
        None | Some(Requirement::MinimizeLatency(_)) => Freshness::MinimizeLatency,
        Some(Requirement::FullyConsistent(false)) => Freshness::MinimizeLatency,
        Some(Requirement::FullyConsistent(true)) => Freshness::FullyConsistent,
        Some(Requirement::AtLeastAsFresh(t)) if t.is_empty() => Freshness::MinimizeLatency,
        Some(Requirement::AtLeastAsFresh(t)) => Freshness::AtLeast(decode_all(t)?.into()),
    })
}

fn ids(org: &str, user: &str, prefix: &str) -> Result<Pair, Status> {
    Ok((
        OrgId::parse(&format!("{prefix}org_id"), org)?,
        UserId::parse(&format!("{prefix}user_id"), user)?,
    ))
}

/// `ids` for the hot path: the field names (`items[7].org_id`) are made only for an error.
fn item_ids(org: &str, user: &str, prefix: impl Fn() -> String) -> Result<Pair, Status> {
    match (OrgId::from_stored(org), UserId::from_stored(user)) {
        (Some(o), Some(u)) => Ok((o, u)),
        _ => ids(org, user, &prefix()),
    }
}

#[tonic::async_trait]
impl AuthzService for AuthzApi {
    #[tracing::instrument(target = "teamgate::trace", skip_all, fields(org_id = %request.get_ref().org_id, permission = %request.get_ref().permission, allowed))]
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let req = request.get_ref();
        let (org, user) = item_ids(&req.org_id, &req.user_id, String::new)?;
        let permission = self
            .app
            .decisions
            .permission_bit(|| "permission".to_owned(), &req.permission)?;
        let fresh = freshness(&req.consistency)?;
        let (r, token) = self
            .app
            .decisions
            .check(org, user, permission, &fresh)
            .await?;
        tracing::Span::current().record("allowed", r == Reason::Allowed);
        Ok(Response::new(pb::CheckResponse {
            allowed: r == Reason::Allowed,
            reason: pb::Reason::from(r).into(),
            consistency_token: token.map(|t| t.encode()).unwrap_or_default(),
        }))
    }

    /// Items are grouped by (org, user): one cache lookup per distinct pair, then a bit test
    /// per item.
    #[tracing::instrument(target = "teamgate::trace", skip_all, fields(items = request.get_ref().items.len()))]
    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let req = request.get_ref();
        if req.items.is_empty() || req.items.len() > MAX_BATCH {
            return Err(invalid(
                "items",
                "INVALID_BATCH_SIZE",
                format!(
                    "items must hold 1 to {MAX_BATCH} checks (got {}): split larger batches",
                    req.items.len()
                ),
            ));
        }
        let fresh = freshness(&req.consistency)?;
        let decisions = &self.app.decisions;
        let mut pairs = Vec::with_capacity(req.items.len());
        let mut permissions = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.iter().enumerate() {
            pairs.push(item_ids(&item.org_id, &item.user_id, || {
                format!("items[{i}].")
            })?);
            permissions.push(
                decisions.permission_bit(|| format!("items[{i}].permission"), &item.permission)?,
            );
        }
        let (unique, subjects) = decisions.subjects(&pairs, &fresh).await?;
        let mut tally = DecisionTally::default();
        let results = pairs
            .iter()
            .zip(permissions)
            .map(|(pair, permission)| {
                let r = unique
                    .binary_search(pair)
                    .map_or(Reason::OrgNotFound, |i| subjects[i].decide(permission));
                tally.add(r);
                pb::CheckResult {
                    allowed: r == Reason::Allowed,
                    reason: pb::Reason::from(r).into(),
                }
            })
            .collect();
        decisions.metrics().decisions(&tally);
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }

    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let req = request.get_ref();
        let pair = ids(&req.org_id, &req.user_id, "")?;
        let fresh = freshness(&req.consistency)?;
        let subject = self.app.decisions.subject(pair, &fresh).await?;
        let token = subject
            .org_version()
            .map(|version| {
                ConsistencyToken {
                    org: pair.0,
                    version,
                }
                .encode()
            })
            .unwrap_or_default();
        let resp = match subject {
            Subject::OrgNotFound => pb::ListPermissionsResponse {
                reason: pb::Reason::OrgNotFound.into(),
                consistency_token: token,
                ..Default::default()
            },
            Subject::NotMember { .. } => pb::ListPermissionsResponse {
                reason: pb::Reason::NotMember.into(),
                consistency_token: token,
                ..Default::default()
            },
            Subject::UserDisabled { .. } => pb::ListPermissionsResponse {
                reason: pb::Reason::UserDisabled.into(),
                consistency_token: token,
                ..Default::default()
            },
            Subject::MfaRequired { .. } => pb::ListPermissionsResponse {
                reason: pb::Reason::MfaRequired.into(),
                consistency_token: token,
                ..Default::default()
            },
            Subject::Member { grant, .. } => pb::ListPermissionsResponse {
                role: grant.role.clone(),
                permissions: grant.permissions.to_strings(),
                reason: pb::Reason::Allowed.into(),
                consistency_token: token,
            },
        };
        Ok(Response::new(resp))
    }

    async fn lookup_organizations(
        &self,
        request: Request<pb::LookupOrganizationsRequest>,
    ) -> Result<Response<pb::LookupOrganizationsResponse>, Status> {
        let req = request.get_ref();
        let user = UserId::parse("user_id", &req.user_id)?;
        let permission = self
            .app
            .decisions
            .permission("permission", &req.permission)?;
        let bit = self
            .app
            .decisions
            .permission_bit(|| "permission".to_owned(), permission.as_str())?;
        let scope = format!("{user}/{}", permission.as_str());
        let page = page_request("lookup", &scope, req.page_size, &req.page_token)?;
        let page = self.app.decisions.lookup_orgs(user, bit, page).await?;
        Ok(Response::new(pb::LookupOrganizationsResponse {
            org_ids: page.items,
            next_page_token: next_token("lookup", &scope, page.next),
        }))
    }
}
