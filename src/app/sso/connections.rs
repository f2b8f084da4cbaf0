//! Connection RPCs: create, list, update, delete, and verifying a domain (DNS or operator).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;
use crate::app::RequestCtx;
use crate::app::write::{Authority, Effect, Event};
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::{ConnectionId, OrgId};
use crate::domain::roles::ResolvedRole;
use crate::domain::sso::{SsoDomain, parse_endpoint, txt_proves};
use crate::domain::token::new_secret;
use crate::store::orgs::OrgRow;
use crate::store::sso::DomainRow;

const MAX_DOMAINS: usize = 100;
const MAX_REDIRECT_URIS: usize = 20;
const MAX_CLIENT_FIELD: usize = 1024;

/// A connection as CreateSsoConnection asks for it, fields already parsed.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub domains: Vec<SsoDomain>,
    pub redirect_uris: Vec<String>,
    /// `None`: the policy's invite role.
    pub default_role: Option<String>,
    pub jit_provisioning: bool,
    pub enforce: bool,
}

/// UpdateSsoConnection: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ConnectionChanges {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub domains: Option<Vec<SsoDomain>>,
    pub redirect_uris: Option<Vec<String>>,
    pub default_role: Option<String>,
    pub jit_provisioning: Option<bool>,
    pub enforce: Option<bool>,
}

/// Parses an issuer URL.
pub fn parse_issuer(raw: &str) -> Result<String, DomainError> {
    parse_endpoint("issuer", raw)
}

/// Parses redirect URIs: 1 to 20 distinct https (or loopback http) URLs.
pub fn parse_redirect_uris(raw: &[String]) -> Result<Vec<String>, DomainError> {
    if raw.is_empty() || raw.len() > MAX_REDIRECT_URIS {
        return Err(DomainError::invalid_because(
            "redirect_uris",
            "INVALID_REDIRECT_URIS",
            format!(
                "redirect_uris needs 1 to {MAX_REDIRECT_URIS} URLs: where your web backend receives the provider's answer"
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for uri in raw {
        let uri = parse_endpoint("redirect_uris", uri)?;
        if !out.contains(&uri) {
            out.push(uri);
        }
    }
    Ok(out)
}

/// Parses domains: at most 100, duplicates dropped.
pub fn parse_domains(raw: &[String]) -> Result<Vec<SsoDomain>, DomainError> {
    if raw.len() > MAX_DOMAINS {
        return Err(DomainError::invalid_because(
            "domains",
            "TOO_MANY_DOMAINS",
            format!("a connection has at most {MAX_DOMAINS} domains"),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for d in raw {
        let d = SsoDomain::parse("domains", d)?;
        if seen.insert(d.as_str().to_owned()) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Client id and secret: bounded, printable.
pub fn parse_client_field(field: &str, raw: &str, required: bool) -> Result<String, DomainError> {
    let v = raw.trim();
    if required && v.is_empty() {
        return Err(DomainError::invalid_because(
            field,
            "MISSING_FIELD",
            format!("{field} is required: the provider shows it where the client is registered"),
        ));
    }
    if v.len() > MAX_CLIENT_FIELD || v.chars().any(char::is_control) {
        return Err(DomainError::invalid_because(
            field,
            "INVALID_ARGUMENT",
            format!("{field} must be at most {MAX_CLIENT_FIELD} bytes without control characters"),
        ));
    }
    Ok(v.to_owned())
}

fn connection_json(row: &ConnectionRow, domains: &[String]) -> Value {
    // Never the client secret, sealed or not.
    json!({
        "connection_id": row.id,
        "issuer": row.issuer,
        "client_id": row.client_id,
        "domains": domains,
        "redirect_uris": decode_uris(&row.redirect_uris),
        "default_role": row.default_role,
        "jit_provisioning": row.jit_provisioning,
        "enforce": row.enforce,
    })
}

fn domain_taken(domain: &str, ours: bool) -> DomainError {
    DomainError::exists(
        "DOMAIN_TAKEN",
        if ours {
            format!(
                "{domain} is already on another single sign-on connection of this organization: remove it there first"
            )
        } else {
            format!("{domain} already belongs to another organization's single sign-on connection")
        },
    )
}

/// `domain` when it is on connection `conn_id` of org `org_id`.
async fn domain_of<C: ConnectionTrait>(
    c: &C,
    domain: &SsoDomain,
    conn_id: &str,
    org_id: &str,
) -> AppResult<Option<DomainRow>> {
    Ok(sso::find_domain(c, domain.as_str())
        .await?
        .filter(|d| d.connection_id == conn_id && d.org_id == org_id))
}

impl App {
    /// The role a connection provisions: it must exist, never be the owner role, and be one
    /// the admin setting it could grant themselves.
    async fn provisioned_role<C: ConnectionTrait>(
        &self,
        c: &C,
        actor: &crate::app::ActingMember,
        org_id: &str,
        key: &str,
    ) -> AppResult<ResolvedRole> {
        let role = self.role_for_request(c, org_id, key).await?;
        if role.key == self.policy.owner_role() {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!(
                    "a connection cannot provision `{}`: anyone the provider vouches for would own the organization",
                    role.key
                ),
            )
            .into());
        }
        actor.actor().may_grant(&role, self.policy.owner_role())?;
        Ok(role)
    }

    /// Claims `domains` for `connection`; a domain held by a deleted organization is freed
    /// first. `DOMAIN_TAKEN` if another live connection holds one.
    async fn claim_domains<C: ConnectionTrait>(
        &self,
        c: &C,
        org: &OrgRow,
        connection_id: &str,
        domains: &[SsoDomain],
    ) -> AppResult<()> {
        let now = self.now();
        for d in domains {
            if let Some(existing) = sso::find_domain(c, d.as_str()).await? {
                if existing.connection_id == connection_id {
                    continue;
                }
                if orgs::find_live(c, &OrgId::from_row(&existing.org_id))
                    .await?
                    .is_some()
                {
                    return Err(domain_taken(d.as_str(), existing.org_id == org.id).into());
                }
                sso::delete_domain(c, d.as_str()).await?;
            }
            sso::insert_domain(
                c,
                DomainRow {
                    domain: d.as_str().to_owned(),
                    connection_id: connection_id.to_owned(),
                    org_id: org.id.clone(),
                    verification_token: new_secret(),
                    verified_at: None,
                    verified_by: None,
                    created_at: now,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Fetches the issuer's discovery document once the actor may manage the org's
    /// connections (never for anyone else: the server would fetch any URL it was given).
    async fn check_issuer(&self, ctx: &RequestCtx, org_id: &OrgId, issuer: &str) -> AppResult<()> {
        self.readable_org(ctx, org_id, MANAGE).await?;
        self.sso.providers.metadata(issuer).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn create_sso_connection(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        new: NewConnection,
    ) -> AppResult<(ConnectionView, ConsistencyToken)> {
        let id = org_id.to_string();
        self.check_issuer(ctx, org_id, &new.issuer).await?;
        // Connections change no Check answer: caches stay warm.
        let w = self
            .org_write(ctx, org_id, Authority::Permission(MANAGE), Effect::Records)
            .await?;
        let role_key = new
            .default_role
            .unwrap_or_else(|| self.policy.invite_role().to_owned());
        let role = self
            .provisioned_role(w.conn(), &w.actor, &id, &role_key)
            .await?;
        let now = self.now();
        let connection_id = ConnectionId::generate().to_string();
        let row = ConnectionRow {
            id: connection_id.clone(),
            org_id: id.clone(),
            issuer: new.issuer,
            client_id: new.client_id,
            client_secret: self.settings.identity.sealer.seal(
                &secret_context(&connection_id),
                new.client_secret.as_bytes(),
            ),
            redirect_uris: encode_uris(&new.redirect_uris),
            default_role: role.key,
            jit_provisioning: new.jit_provisioning,
            enforce: new.enforce,
            created_at: now,
            updated_at: now,
        };
        sso::insert_connection(w.conn(), row.clone()).await?;
        self.claim_domains(w.conn(), &w.org, &connection_id, &new.domains)
            .await?;
        let view = self.load_view(w.conn(), &row).await?;
        let names: Vec<String> = new.domains.iter().map(|d| d.as_str().to_owned()).collect();
        let token = w
            .commit([Event::new(
                "sso.connection_created",
                format!("sso_connection:{connection_id}"),
            )
            .after(connection_json(&row, &names))])
            .await?;
        Ok((view, token))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn list_sso_connections(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
    ) -> AppResult<Vec<ConnectionView>> {
        let org = self.readable_org(ctx, org_id, MANAGE).await?;
        let c = self.store.conn();
        let mut out = Vec::new();
        for row in sso::connections_of(c, &org.id).await? {
            out.push(self.load_view(c, &row).await?);
        }
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn update_sso_connection(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        connection_id: &ConnectionId,
        changes: ConnectionChanges,
    ) -> AppResult<(ConnectionView, ConsistencyToken)> {
        let id = org_id.to_string();
        if let Some(issuer) = &changes.issuer {
            self.check_issuer(ctx, org_id, issuer).await?;
        }
        let w = self
            .org_write(ctx, org_id, Authority::Permission(MANAGE), Effect::Records)
            .await?;
        let before = sso::find_connection(w.conn(), &connection_id.to_string())
            .await?
            .filter(|r| r.org_id == id)
            .ok_or_else(connection_not_found)?;
        let old_domains: Vec<String> = sso::domains_of(w.conn(), &before.id)
            .await?
            .into_iter()
            .map(|d| d.domain)
            .collect();
        let mut row = before.clone();
        if let Some(v) = changes.issuer {
            row.issuer = v;
        }
        if let Some(v) = changes.client_id {
            row.client_id = v;
        }
        if let Some(v) = changes.client_secret {
            row.client_secret = self
                .settings
                .identity
                .sealer
                .seal(&secret_context(&row.id), v.as_bytes());
        }
        if let Some(v) = changes.redirect_uris {
            row.redirect_uris = encode_uris(&v);
        }
        if let Some(key) = changes.default_role {
            row.default_role = self
                .provisioned_role(w.conn(), &w.actor, &id, &key)
                .await?
                .key;
        }
        if let Some(v) = changes.jit_provisioning {
            row.jit_provisioning = v;
        }
        if let Some(v) = changes.enforce {
            row.enforce = v;
        }
        let mut new_domains = old_domains.clone();
        if let Some(domains) = changes.domains {
            let keep: BTreeSet<&str> = domains.iter().map(SsoDomain::as_str).collect();
            for old in &old_domains {
                if !keep.contains(old.as_str()) {
                    sso::delete_domain(w.conn(), old).await?;
                }
            }
            self.claim_domains(w.conn(), &w.org, &row.id, &domains)
                .await?;
            new_domains = domains.iter().map(|d| d.as_str().to_owned()).collect();
        }
        row.updated_at = self.now();
        sso::update_connection(w.conn(), row.clone()).await?;
        let view = self.load_view(w.conn(), &row).await?;
        let token = w
            .commit([Event::new(
                "sso.connection_updated",
                format!("sso_connection:{}", row.id),
            )
            .before(connection_json(&before, &old_domains))
            .after(connection_json(&row, &new_domains))])
            .await?;
        Ok((view, token))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn delete_sso_connection(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        connection_id: &ConnectionId,
    ) -> AppResult<ConsistencyToken> {
        let id = org_id.to_string();
        let w = self
            .org_write(ctx, org_id, Authority::Permission(MANAGE), Effect::Records)
            .await?;
        let row = sso::find_connection(w.conn(), &connection_id.to_string())
            .await?
            .filter(|r| r.org_id == id)
            .ok_or_else(connection_not_found)?;
        let domains: Vec<String> = sso::domains_of(w.conn(), &row.id)
            .await?
            .into_iter()
            .map(|d| d.domain)
            .collect();
        sso::delete_connection(w.conn(), &row.id).await?;
        w.commit([Event::new(
            "sso.connection_deleted",
            format!("sso_connection:{}", row.id),
        )
        .before(connection_json(&row, &domains))])
            .await
    }

    /// Verifies `domain` of a connection: by its DNS TXT record, or, for the platform
    /// operator (`operator_override`, a service key with the `admin` scope), by decree.
    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn verify_sso_domain(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        connection_id: &ConnectionId,
        domain: &SsoDomain,
        operator_override: bool,
    ) -> AppResult<(ConnectionView, ConsistencyToken)> {
        let id = org_id.to_string();
        let conn_id = connection_id.to_string();
        let not_on_connection = || {
            DomainError::not_found(
                "SSO_DOMAIN_NOT_FOUND",
                format!(
                    "{} is not a domain of this connection: add it with UpdateSsoConnection",
                    domain.as_str()
                ),
            )
        };
        if operator_override {
            if !ctx.operator {
                return Err(DomainError::denied(
                    "NOT_AN_OPERATOR",
                    "only the platform operator (a service key with the admin scope) can mark a domain verified without DNS",
                )
                .into());
            }
            let tx = self.store.write().await?;
            let org = orgs::lock_unchanged(&*tx, org_id)
                .await?
                .ok_or_else(|| crate::app::org_not_found(&id))?;
            let row = domain_of(&*tx, domain, &conn_id, &id)
                .await?
                .ok_or_else(not_on_connection)?;
            let conn = sso::find_connection(&*tx, &conn_id)
                .await?
                .ok_or_else(connection_not_found)?;
            let now = self.now();
            if row.verified_at.is_none() {
                sso::mark_verified(&*tx, &row.domain, now, "operator").await?;
            }
            let view = self.load_view(&*tx, &conn).await?;
            let actor = ctx.actor.map(|a| a.to_string()).unwrap_or_default();
            let event = Event::new("sso.domain_verified", format!("sso_domain:{}", row.domain))
                .after(json!({"domain": row.domain, "connection_id": conn_id, "by": "operator"}));
            let token = self
                .commit_org_events(tx, ctx, &org, &actor, [event], Effect::Records)
                .await?;
            return Ok((view, token));
        }
        // The lookup runs outside the transaction, once the actor is shown to manage the
        // org's connections; the write then re-reads the domain under the org's lock.
        self.readable_org(ctx, org_id, MANAGE).await?;
        let pending = domain_of(self.store.conn(), domain, &conn_id, &id)
            .await?
            .ok_or_else(not_on_connection)?;
        if pending.verified_at.is_none() {
            let records = dns::txt_records(
                self.sso.settings.dns_resolver,
                domain.as_str(),
                self.sso.settings.http_timeout,
            )
            .await?;
            if !txt_proves(&records, &pending.verification_token) {
                return Err(DomainError::precondition(
                    "DOMAIN_VERIFICATION_FAILED",
                    format!(
                        "no TXT record `{}` at {}: publish it, wait for DNS to carry it, then retry",
                        verification_record(&pending.verification_token),
                        domain.as_str()
                    ),
                )
                .into());
            }
        }
        let w = self
            .org_write(ctx, org_id, Authority::Permission(MANAGE), Effect::Records)
            .await?;
        let row = domain_of(w.conn(), domain, &conn_id, &id)
            .await?
            .ok_or_else(not_on_connection)?;
        let conn = sso::find_connection(w.conn(), &conn_id)
            .await?
            .ok_or_else(connection_not_found)?;
        if row.verified_at.is_some() {
            let view = self.load_view(w.conn(), &conn).await?;
            return Ok((view, w.unchanged()));
        }
        if row.verification_token != pending.verification_token {
            // Removed and added again meanwhile: the record proved the old token.
            return Err(DomainError::precondition(
                "DOMAIN_VERIFICATION_FAILED",
                "the domain's verification record changed meanwhile: publish the new one and retry",
            )
            .into());
        }
        sso::mark_verified(w.conn(), &row.domain, self.now(), "dns").await?;
        let view = self.load_view(w.conn(), &conn).await?;
        let token = w
            .commit([
                Event::new("sso.domain_verified", format!("sso_domain:{}", row.domain))
                    .after(json!({"domain": row.domain, "connection_id": conn_id, "by": "dns"})),
            ])
            .await?;
        Ok((view, token))
    }
}
