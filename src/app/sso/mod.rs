//! Single sign-on through each organization's OpenID Connect provider: connections and
//! their domains (`connections`), the code flow with PKCE (`flow`), the provider's metadata
//! and keys (`provider`) and the DNS proof of a domain (`dns`).

pub mod connections;
mod dns;
mod flow;
mod provider;

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{App, AppResult};
use crate::domain::DomainError;
use crate::domain::email::Email;
use crate::domain::ids::{OrgId, UserId};
use crate::domain::sso::{email_domain, verification_record};
use crate::store::Connection as ConnectionTrait;
use crate::store::sso::{ConnectionRow, DomainRow};
use crate::store::users::UserRow;
use crate::store::{members, orgs, sso};

pub use connections::{ConnectionChanges, NewConnection};
pub use flow::{SsoTarget, StartedSso};
use provider::Providers;

/// The permission every connection RPC needs.
pub const MANAGE: &str = "sso.manage";

/// `[sso]` settings.
#[derive(Debug, Clone)]
pub struct SsoSettings {
    pub state_ttl: chrono::Duration,
    pub http_timeout: Duration,
    pub metadata_ttl: Duration,
    pub dns_resolver: Option<SocketAddr>,
    /// StartSso calls per caller per 10 minutes (enforced by the transport).
    pub max_starts_per_caller: u32,
}

impl Default for SsoSettings {
    fn default() -> Self {
        SsoSettings::from_config(&crate::config::SsoConfig::default())
    }
}

impl SsoSettings {
    pub fn from_config(c: &crate::config::SsoConfig) -> SsoSettings {
        SsoSettings {
            state_ttl: chrono::Duration::seconds(i64::try_from(c.state_ttl_secs).unwrap_or(600)),
            http_timeout: Duration::from_millis(c.http_timeout_ms),
            metadata_ttl: Duration::from_secs(c.metadata_ttl_secs),
            dns_resolver: c.dns_resolver,
            max_starts_per_caller: c.max_starts_per_caller,
        }
    }
}

/// The single sign-on machinery shared by every request: settings, the HTTP client and the
/// providers' cached metadata.
pub struct Sso {
    settings: SsoSettings,
    providers: Providers,
}

impl Sso {
    pub fn new(settings: SsoSettings) -> anyhow::Result<Sso> {
        let providers = Providers::new(settings.http_timeout, settings.metadata_ttl)?;
        Ok(Sso {
            settings,
            providers,
        })
    }

    pub fn settings(&self) -> &SsoSettings {
        &self.settings
    }
}

/// One domain of a connection as callers see it.
#[derive(Debug, Clone)]
pub struct DomainView {
    pub domain: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub verified_by: Option<String>,
    /// The TXT record that proves it.
    pub record: String,
}

/// A connection as callers see it: never the client secret.
#[derive(Debug, Clone)]
pub struct ConnectionView {
    pub id: String,
    pub org_id: String,
    pub issuer: String,
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    pub default_role: String,
    pub jit_provisioning: bool,
    pub enforce: bool,
    pub has_client_secret: bool,
    pub domains: Vec<DomainView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `FAILED_PRECONDITION` / `SSO_REQUIRED`, naming the organization in `ErrorInfo`.
pub fn sso_required(org_id: &str) -> DomainError {
    DomainError::precondition_with(
        "SSO_REQUIRED",
        format!(
            "organization {org_id} requires single sign-on for this account: sign in through StartSso"
        ),
        vec![("org_id", org_id.to_owned())],
    )
}

fn connection_not_found() -> DomainError {
    DomainError::not_found(
        "SSO_CONNECTION_NOT_FOUND",
        "no such single sign-on connection in this organization: ListSsoConnections shows them",
    )
}

fn secret_context(connection_id: &str) -> String {
    format!("sso-client-secret:{connection_id}")
}

fn verifier_context(state_hash: &str) -> String {
    format!("sso-pkce:{state_hash}")
}

fn decode_uris(raw: &str) -> Vec<String> {
    serde_json::from_str(raw).unwrap_or_default()
}

fn encode_uris(uris: &[String]) -> String {
    serde_json::to_string(uris).unwrap_or_else(|_| "[]".into())
}

fn verified_domains(domains: &[DomainRow]) -> Vec<String> {
    domains
        .iter()
        .filter(|d| d.verified_at.is_some())
        .map(|d| d.domain.clone())
        .collect()
}

impl App {
    fn view_connection(&self, row: &ConnectionRow, domains: Vec<DomainRow>) -> ConnectionView {
        let has_client_secret = self
            .settings
            .identity
            .sealer
            .open(&secret_context(&row.id), &row.client_secret)
            .is_some_and(|s| !s.is_empty());
        ConnectionView {
            id: row.id.clone(),
            org_id: row.org_id.clone(),
            issuer: row.issuer.clone(),
            client_id: row.client_id.clone(),
            redirect_uris: decode_uris(&row.redirect_uris),
            default_role: row.default_role.clone(),
            jit_provisioning: row.jit_provisioning,
            enforce: row.enforce,
            has_client_secret,
            domains: domains
                .into_iter()
                .map(|d| DomainView {
                    record: verification_record(&d.verification_token),
                    domain: d.domain,
                    verified_at: d.verified_at,
                    verified_by: d.verified_by,
                })
                .collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    async fn load_view<C: ConnectionTrait>(
        &self,
        c: &C,
        row: &ConnectionRow,
    ) -> AppResult<ConnectionView> {
        let domains = sso::domains_of(c, &row.id).await?;
        Ok(self.view_connection(row, domains))
    }

    /// The organization whose enforcing connection owns the verified domain of `user`'s
    /// email, when `user` is a member of it: that account signs in only through single
    /// sign-on.
    pub(crate) async fn sso_required_for<C: ConnectionTrait>(
        &self,
        c: &C,
        user: &UserRow,
    ) -> AppResult<Option<String>> {
        let email = Email::from_stored(user.email.clone());
        let Some(domain) = sso::find_domain(c, email_domain(&email)).await? else {
            return Ok(None);
        };
        if domain.verified_at.is_none() {
            return Ok(None);
        }
        let Some(conn) = sso::find_connection(c, &domain.connection_id).await? else {
            return Ok(None);
        };
        if !conn.enforce
            || members::find(
                c,
                &OrgId::from_row(&conn.org_id),
                &UserId::from_row(&user.id),
            )
            .await?
            .is_none()
            || orgs::find_live(c, &OrgId::from_row(&conn.org_id))
                .await?
                .is_none()
        {
            return Ok(None);
        }
        Ok(Some(conn.org_id))
    }
}
