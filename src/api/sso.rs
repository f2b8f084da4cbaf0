//! Single sign-on handlers: TeamService's connection RPCs and IdentityService's StartSso and
//! CompleteSso, called from those services' trait impls.

use tonic::{Request, Response, Status};

use super::context::ctx;
use super::convert::timestamp;
use super::identity::user;
use crate::app::App;
use crate::app::identity::SignIn;
use crate::app::sso::{
    ConnectionChanges, ConnectionView, NewConnection, SsoTarget, connections as parse,
};
use crate::domain::DomainError;
use crate::domain::email::Email;
use crate::domain::ids::{ConnectionId, OrgId};
use crate::domain::sso::SsoDomain;
use crate::proto::teamgate::v1 as pb;

/// Longest `state` or `code` accepted.
const MAX_FLOW_FIELD: usize = 2048;

pub fn connection(v: &ConnectionView) -> pb::SsoConnection {
    pb::SsoConnection {
        id: v.id.clone(),
        org_id: v.org_id.clone(),
        issuer: v.issuer.clone(),
        client_id: v.client_id.clone(),
        domains: v
            .domains
            .iter()
            .map(|d| pb::SsoDomain {
                domain: d.domain.clone(),
                verified: d.verified_at.is_some(),
                verification_record: d.record.clone(),
                verified_at: d.verified_at.map(timestamp),
                verified_by: d.verified_by.clone().unwrap_or_default(),
            })
            .collect(),
        redirect_uris: v.redirect_uris.clone(),
        default_role: v.default_role.clone(),
        jit_provisioning: v.jit_provisioning,
        enforce: v.enforce,
        has_client_secret: v.has_client_secret,
        created_at: Some(timestamp(v.created_at)),
        updated_at: Some(timestamp(v.updated_at)),
    }
}

fn org(raw: &str) -> Result<OrgId, DomainError> {
    OrgId::parse("org_id", raw)
}

fn connection_id(raw: &str) -> Result<ConnectionId, DomainError> {
    ConnectionId::parse("connection_id", raw)
}

fn role(raw: &str) -> Result<Option<String>, DomainError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    crate::domain::roles::RoleKey::parse(raw)
        .map(|k| Some(k.as_str().to_owned()))
        .map_err(|e| DomainError::invalid_because("default_role", e.reason(), e.to_string()))
}

fn session(s: SignIn) -> pb::AuthenticateResponse {
    pb::AuthenticateResponse {
        user: Some(user(&s.user)),
        session_token: s.token,
        expires_at: Some(timestamp(s.expires_at)),
    }
}

pub async fn create_connection(
    app: &App,
    request: Request<pb::CreateSsoConnectionRequest>,
) -> Result<Response<pb::CreateSsoConnectionResponse>, Status> {
    let ctx = ctx(&request)?;
    let req = request.into_inner();
    let org_id = org(&req.org_id)?;
    let new = NewConnection {
        issuer: parse::parse_issuer(&req.issuer)?,
        client_id: parse::parse_client_field("client_id", &req.client_id, true)?,
        client_secret: parse::parse_client_field("client_secret", &req.client_secret, false)?,
        domains: parse::parse_domains(&req.domains)?,
        redirect_uris: parse::parse_redirect_uris(&req.redirect_uris)?,
        default_role: role(&req.default_role)?,
        jit_provisioning: req.jit_provisioning,
        enforce: req.enforce,
    };
    let (view, consistency_token) = app.create_sso_connection(&ctx, &org_id, new).await?;
    Ok(Response::new(pb::CreateSsoConnectionResponse {
        connection: Some(connection(&view)),
        consistency_token: consistency_token.encode(),
    }))
}

pub async fn list_connections(
    app: &App,
    request: Request<pb::ListSsoConnectionsRequest>,
) -> Result<Response<pb::ListSsoConnectionsResponse>, Status> {
    let ctx = ctx(&request)?;
    let org_id = org(&request.get_ref().org_id)?;
    let views = app.list_sso_connections(&ctx, &org_id).await?;
    Ok(Response::new(pb::ListSsoConnectionsResponse {
        connections: views.iter().map(connection).collect(),
    }))
}

pub async fn update_connection(
    app: &App,
    request: Request<pb::UpdateSsoConnectionRequest>,
) -> Result<Response<pb::UpdateSsoConnectionResponse>, Status> {
    let ctx = ctx(&request)?;
    let req = request.into_inner();
    let org_id = org(&req.org_id)?;
    let id = connection_id(&req.connection_id)?;
    let changes = ConnectionChanges {
        issuer: req.issuer.as_deref().map(parse::parse_issuer).transpose()?,
        client_id: req
            .client_id
            .as_deref()
            .map(|v| parse::parse_client_field("client_id", v, true))
            .transpose()?,
        client_secret: req
            .client_secret
            .as_deref()
            .map(|v| parse::parse_client_field("client_secret", v, false))
            .transpose()?,
        domains: req
            .domains
            .map(|l| parse::parse_domains(&l.values))
            .transpose()?,
        redirect_uris: req
            .redirect_uris
            .map(|l| parse::parse_redirect_uris(&l.values))
            .transpose()?,
        default_role: match req.default_role.as_deref() {
            Some(r) => Some(role(r)?.ok_or_else(|| {
                DomainError::invalid_because(
                    "default_role",
                    "MISSING_FIELD",
                    "default_role, when present, names a role",
                )
            })?),
            None => None,
        },
        jit_provisioning: req.jit_provisioning,
        enforce: req.enforce,
    };
    let (view, consistency_token) = app
        .update_sso_connection(&ctx, &org_id, &id, changes)
        .await?;
    Ok(Response::new(pb::UpdateSsoConnectionResponse {
        connection: Some(connection(&view)),
        consistency_token: consistency_token.encode(),
    }))
}

pub async fn delete_connection(
    app: &App,
    request: Request<pb::DeleteSsoConnectionRequest>,
) -> Result<Response<pb::DeleteSsoConnectionResponse>, Status> {
    let ctx = ctx(&request)?;
    let req = request.get_ref();
    let org_id = org(&req.org_id)?;
    let id = connection_id(&req.connection_id)?;
    let consistency_token = app.delete_sso_connection(&ctx, &org_id, &id).await?;
    Ok(Response::new(pb::DeleteSsoConnectionResponse {
        consistency_token: consistency_token.encode(),
    }))
}

pub async fn verify_domain(
    app: &App,
    request: Request<pb::VerifySsoDomainRequest>,
) -> Result<Response<pb::VerifySsoDomainResponse>, Status> {
    let ctx = ctx(&request)?;
    let req = request.get_ref();
    let org_id = org(&req.org_id)?;
    let id = connection_id(&req.connection_id)?;
    let domain = SsoDomain::parse("domain", &req.domain)?;
    let (view, consistency_token) = app
        .verify_sso_domain(&ctx, &org_id, &id, &domain, req.operator_override)
        .await?;
    Ok(Response::new(pb::VerifySsoDomainResponse {
        connection: Some(connection(&view)),
        consistency_token: consistency_token.encode(),
    }))
}

pub async fn start(
    app: &App,
    request: Request<pb::StartSsoRequest>,
) -> Result<Response<pb::StartSsoResponse>, Status> {
    let req = request.into_inner();
    let wanted = match req.connection_id.trim() {
        "" => None,
        raw => Some(connection_id(raw)?),
    };
    let target = match req.target {
        Some(pb::start_sso_request::Target::Email(e)) => {
            SsoTarget::Email(Email::parse("email", &e)?)
        }
        Some(pb::start_sso_request::Target::OrgId(o)) => SsoTarget::Org(org(&o)?, wanted),
        None => {
            return Err(DomainError::invalid_because(
                "target",
                "MISSING_FIELD",
                "pass the email of the person signing in, or the org_id",
            )
            .into());
        }
    };
    let redirect_uri = req.redirect_uri.trim();
    if redirect_uri.is_empty() || redirect_uri.len() > MAX_FLOW_FIELD {
        return Err(DomainError::invalid_because(
            "redirect_uri",
            "MISSING_FIELD",
            "redirect_uri is required: where the provider sends the browser back",
        )
        .into());
    }
    let started = app.start_sso(target, redirect_uri).await?;
    Ok(Response::new(pb::StartSsoResponse {
        authorization_url: started.authorization_url,
        expires_at: Some(timestamp(started.expires_at)),
        connection_id: started.connection_id,
    }))
}

/// Parses CompleteSso's fields; the caller runs it under the failure limit.
pub fn flow_fields(req: &pb::CompleteSsoRequest) -> Result<(&str, &str), DomainError> {
    let field = |name: &str, v: &'_ str| -> Result<(), DomainError> {
        if v.trim().is_empty() || v.len() > MAX_FLOW_FIELD {
            return Err(DomainError::invalid_because(
                name,
                "MISSING_FIELD",
                format!("{name} is required: pass it as the provider returned it"),
            ));
        }
        Ok(())
    };
    field("state", &req.state)?;
    field("code", &req.code)?;
    Ok((req.state.trim(), req.code.trim()))
}

pub fn completed(s: SignIn) -> Response<pb::AuthenticateResponse> {
    Response::new(session(s))
}
