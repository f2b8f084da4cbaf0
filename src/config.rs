//! Configuration: built-in defaults → TOML file → `TEAMGATE__`-prefixed environment → flags.
//! Unknown keys are rejected with their name; ranges are checked at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A value that must never be printed (URLs with passwords, keys).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(#[serde(deserialize_with = "text")] String);

/// Reads a string that the environment layer may have parsed as a number or boolean
/// (`TEAMGATE__REDIS__KEY_PREFIX=12345` is meant as text).
pub fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::I(n) => n.to_string(),
        Text::U(n) => n.to_string(),
        Text::F(n) => n.to_string(),
        Text::B(b) => b.to_string(),
    })
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Shows a connection URL without its credentials, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve gRPC on.
    pub listen: SocketAddr,
    /// Policy file; the embedded default policy when absent.
    pub policy: Option<PathBuf>,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub invitations: InvitationConfig,
    /// Custom roles each organization may define.
    pub roles: RolesConfig,
    /// Accounts and sign-in: password hashing, session tokens, TOTP, rate limits.
    pub identity: IdentityConfig,
    pub mail: MailConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    /// OpenTelemetry export and the Prometheus `/metrics` endpoint.
    pub telemetry: TelemetryConfig,
    /// Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`).
    pub ext_authz: ExtAuthzConfig,
    pub auth: AuthConfig,
    /// TLS for the gRPC port; plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// The change feed: WatchChanges streams and webhooks.
    pub feed: FeedConfig,
    /// Single sign-on through organizations' OpenID Connect providers.
    pub sso: SsoConfig,
    /// The SCIM 2.0 server for directory provisioning; off unless `scim.listen` is set.
    pub scim: ScimConfig,
}

/// Single sign-on (`[sso]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig {
    /// The DNS server (`host:port`, UDP) that domain verification asks for TXT records; the
    /// system's resolvers when absent.
    pub dns_resolver: Option<SocketAddr>,
    /// How long a sign-in started with StartSso may take to complete.
    pub state_ttl_secs: u64,
    /// Timeout of one request to a provider (discovery, keys, token exchange).
    pub http_timeout_ms: u64,
    /// How long a provider's discovery document and keys are reused (a token signed with an
    /// unknown key fetches the keys again at once).
    pub metadata_ttl_secs: u64,
    /// StartSso calls one caller may make per 10 minutes (each stores a pending sign-in).
    pub max_starts_per_caller: u32,
}

impl Default for SsoConfig {
    fn default() -> Self {
        SsoConfig {
            dns_resolver: None,
            state_ttl_secs: 600,
            http_timeout_ms: 10_000,
            metadata_ttl_secs: 3600,
            max_starts_per_caller: 300,
        }
    }
}

/// SCIM 2.0 (RFC 7643/7644) on its own HTTP port, base path `/scim/v2`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScimConfig {
    /// Serve SCIM on `http://ADDR/scim/v2`; off when unset.
    pub listen: Option<SocketAddr>,
    /// The base URL directories reach the server at (behind a TLS proxy, say
    /// `https://scim.example.com/scim/v2`), used in `meta.location`; `http://<listen>/scim/v2`
    /// when empty.
    #[serde(deserialize_with = "text")]
    pub base_url: String,
    /// The most resources one list response returns (a larger `count` is lowered to it).
    pub max_results: u32,
}

impl Default for ScimConfig {
    fn default() -> Self {
        ScimConfig {
            listen: None,
            base_url: String::new(),
            max_results: 200,
        }
    }
}

impl SsoConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        if !(10..=3600).contains(&self.state_ttl_secs) {
            return range("sso.state_ttl_secs", "must be 10 to 3600");
        }
        if !(100..=120_000).contains(&self.http_timeout_ms) {
            return range("sso.http_timeout_ms", "must be 100 to 120000");
        }
        if !(1..=7 * 24 * 3600).contains(&self.metadata_ttl_secs) {
            return range("sso.metadata_ttl_secs", "must be 1 to 604800");
        }
        if self.max_starts_per_caller == 0 {
            return range("sso.max_starts_per_caller", "must be at least 1");
        }
        Ok(())
    }
}

impl ScimConfig {
    fn validate(&self, grpc: SocketAddr) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        if self
            .listen
            .is_some_and(|a| a.port() != 0 && a.port() == grpc.port())
        {
            return range("scim.listen", "must not use the gRPC port");
        }
        let url = &self.base_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return range("scim.base_url", "must start with http:// or https://");
        }
        if !(1..=1000).contains(&self.max_results) {
            return range("scim.max_results", "must be between 1 and 1000");
        }
        Ok(())
    }
}

/// The change feed (`WatchChanges` and webhooks).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// How long changes are kept; a cursor older than this is `OUT_OF_RANGE`.
    pub retention_secs: u64,
    /// Events a WatchChanges stream buffers for a slow consumer before the server stops
    /// reading ahead for it.
    pub buffer: usize,
    /// How often streams and webhook deliveries look for changes committed on other replicas
    /// (changes committed on this replica wake them at once).
    pub poll_interval_ms: u64,
    /// Open WatchChanges streams one caller may hold (counted by acting user, else service
    /// key, else peer address); more are `RESOURCE_EXHAUSTED` / `TOO_MANY_STREAMS`.
    pub max_streams_per_caller: usize,
    /// Open WatchChanges streams one server holds in total.
    pub max_streams: usize,
    /// Timeout of one webhook POST.
    pub webhook_timeout_ms: u64,
    /// The longest wait between retries of a failing webhook endpoint.
    pub webhook_max_backoff_ms: u64,
    /// Endpoints that receive every change as a signed JSON POST (`[[feed.webhooks]]`).
    pub webhooks: Vec<FeedWebhookConfig>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            retention_secs: 7 * 24 * 3600,
            buffer: 256,
            poll_interval_ms: 200,
            max_streams_per_caller: 16,
            max_streams: 10_000,
            webhook_timeout_ms: 10_000,
            webhook_max_backoff_ms: 300_000,
            webhooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedWebhookConfig {
    /// Names the endpoint's delivery position; renaming it starts delivery from now.
    pub name: String,
    /// `https://…` (or `http://…`) endpoint.
    pub url: String,
    /// HMAC-SHA256 key for `x-teamgate-signature`; usually set through the environment.
    pub secret: Secret,
}

impl FeedConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        if self.retention_secs == 0 {
            return range("feed.retention_secs", "must be at least 1");
        }
        if !(1..=100_000).contains(&self.buffer) {
            return range("feed.buffer", "must be 1 to 100000");
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return range("feed.poll_interval_ms", "must be 10 to 60000");
        }
        if !(1..=1_000_000).contains(&self.max_streams) {
            return range("feed.max_streams", "must be 1 to 1000000");
        }
        if !(1..=self.max_streams).contains(&self.max_streams_per_caller) {
            return range(
                "feed.max_streams_per_caller",
                "must be 1 to feed.max_streams",
            );
        }
        if !(100..=240_000).contains(&self.webhook_timeout_ms) {
            return range("feed.webhook_timeout_ms", "must be 100 to 240000");
        }
        if self.webhook_max_backoff_ms < 100 {
            return range("feed.webhook_max_backoff_ms", "must be at least 100");
        }
        let mut names = std::collections::HashSet::new();
        for hook in &self.webhooks {
            let name = hook.name.trim();
            if name.is_empty() || name.len() > 128 {
                return range("feed.webhooks.name", "must be 1 to 128 characters");
            }
            if !names.insert(name) {
                return range("feed.webhooks.name", "must be unique");
            }
            if !(hook.url.starts_with("https://") || hook.url.starts_with("http://"))
                || hook.url.parse::<http::Uri>().is_err()
            {
                return range("feed.webhooks.url", "must be an https:// or http:// URL");
            }
            if hook.secret.expose().len() < 16 {
                return range("feed.webhooks.secret", "must be at least 16 characters");
            }
        }
        Ok(())
    }
}

/// Who may call: service keys with scopes. With no keys the server only listens on loopback
/// unless `insecure_allow_remote` is set.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub keys: Vec<ServiceKeyConfig>,
    pub insecure_allow_remote: bool,
}

/// What a key may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// AuthzService and Envoy ext_authz.
    Authz,
    /// TeamService.
    Team,
    /// Everything.
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceKeyConfig {
    /// Shown in traces and audit events.
    pub name: String,
    /// `sha256:<hex>` as printed by `teamgate keys hash`.
    pub hash: String,
    /// `authz`, `team` and/or `admin`.
    pub scopes: Vec<Scope>,
    /// Calls per second allowed for this key; unlimited when absent.
    #[serde(default)]
    pub rate_limit_per_sec: Option<u32>,
    /// Whether calls with this key may name their end client in `x-client-address`, which
    /// per-caller limits then key on instead of the key. Only for callers that set it
    /// themselves from the connection (a gateway or Envoy), never pass on a client's own.
    #[serde(default)]
    pub trust_client_address: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://FILE?mode=rwc` or `postgres://user:pass@host/db`.
    pub url: Secret,
    /// PostgreSQL schema to use (created if missing); empty means the server's default.
    #[serde(deserialize_with = "text")]
    pub schema: String,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    /// Apply pending migrations at start-up.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Shared decision cache and invalidation; in-process cache only when absent.
    pub url: Option<Secret>,
    #[serde(deserialize_with = "text")]
    pub key_prefix: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvitationConfig {
    pub ttl_hours: u64,
    /// The accept link in invitation emails is this URL followed by the token.
    pub accept_url_base: String,
    /// Whether InviteMember and ResendInvitation put the token in their response. Whoever
    /// holds a token can accept the invitation, so by default it travels only by the
    /// invitation email; unset, it is returned only on a loopback server without service keys
    /// (development). Turn it on for a calling backend that delivers the email itself.
    /// While it is on, AcceptInvitation refuses a `password` (the inviter knew the token).
    pub return_token: Option<bool>,
}

/// Custom roles (CreateRole).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolesConfig {
    /// Custom roles one organization may have; CreateRole beyond it is `FAILED_PRECONDITION`
    /// / `ROLE_LIMIT`. Bounds the rows one org's admins can make the service store and list.
    /// 0 turns custom roles off.
    pub max_per_org: u32,
}

impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig { max_per_org: 100 }
    }
}

/// Accounts and sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Shorter passwords are refused (counted in characters).
    pub min_password_length: usize,
    /// How long a session token is valid.
    pub session_ttl_secs: u64,
    /// A new signing key is made when the newest is this old; the old one stays in the JWKS
    /// until the tokens it signed have expired.
    pub key_rotation_secs: u64,
    /// 32 bytes, base64: seals TOTP secrets and signing keys in the database. When empty a
    /// random key is used, so enrolments and signing keys do not survive a restart.
    pub secret_key: Secret,
    /// Failed sign-ins per account within `failure_window_secs` before further attempts
    /// are refused with RESOURCE_EXHAUSTED.
    pub max_failed_sign_ins: u32,
    pub failure_window_secs: u64,
    /// Failed sign-ins, bad reset tokens and wrong TOTP codes per caller (across accounts)
    /// within `caller_failure_window_secs`, per process, before further attempts are refused.
    pub max_failed_sign_ins_per_caller: u32,
    pub caller_failure_window_secs: u64,
    /// Password-reset requests (each may send an email) per caller within
    /// `caller_failure_window_secs`, per process.
    pub max_reset_requests_per_caller: u32,
    /// How long a password reset link is valid.
    pub reset_ttl_secs: u64,
    /// The link in password reset emails is this URL followed by the token.
    pub reset_url_base: String,
    /// The issuer shown by authenticator apps.
    pub totp_issuer: String,
    /// The `iss` claim of session tokens; verifiers check it.
    pub issuer: String,
    /// The `aud` claim of session tokens; verifiers check it.
    pub audience: String,
    /// Password reset requests per email address within `failure_window_secs`; further
    /// requests are answered as usual but send nothing.
    pub max_reset_requests_per_email: u32,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            min_password_length: 12,
            session_ttl_secs: 15 * 60,
            key_rotation_secs: 7 * 24 * 3600,
            secret_key: Secret::default(),
            max_failed_sign_ins: 10,
            failure_window_secs: 15 * 60,
            max_failed_sign_ins_per_caller: 50,
            caller_failure_window_secs: 10 * 60,
            max_reset_requests_per_caller: 20,
            reset_ttl_secs: 3600,
            reset_url_base: "http://localhost:3000/password/reset?token=".into(),
            totp_issuer: "teamgate".into(),
            issuer: "teamgate".into(),
            audience: "teamgate".into(),
            max_reset_requests_per_email: 3,
        }
    }
}

impl IdentityConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        if !(8..=1024 * 1024).contains(&self.argon2_memory_kib) {
            return range("identity.argon2_memory_kib", "must be 8 to 1048576 (1 GiB)");
        }
        if !(1..=100).contains(&self.argon2_iterations) {
            return range("identity.argon2_iterations", "must be 1 to 100");
        }
        if !(1..=16).contains(&self.argon2_parallelism) {
            return range("identity.argon2_parallelism", "must be 1 to 16");
        }
        if self.argon2_memory_kib < 8 * self.argon2_parallelism {
            return range(
                "identity.argon2_memory_kib",
                "must be at least 8 × identity.argon2_parallelism",
            );
        }
        if !(8..=256).contains(&self.min_password_length) {
            return range("identity.min_password_length", "must be 8 to 256");
        }
        if !(60..=7 * 24 * 3600).contains(&self.session_ttl_secs) {
            return range("identity.session_ttl_secs", "must be 60 to 604800 (a week)");
        }
        if self.key_rotation_secs < 3600 {
            return range(
                "identity.key_rotation_secs",
                "must be at least 3600 (an hour)",
            );
        }
        if !self.secret_key.expose().is_empty()
            && crate::domain::sealed::Sealer::from_base64(self.secret_key.expose()).is_none()
        {
            return range(
                "identity.secret_key",
                "must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)",
            );
        }
        if self.max_failed_sign_ins == 0 {
            return range("identity.max_failed_sign_ins", "must be at least 1");
        }
        if self.failure_window_secs == 0 {
            return range("identity.failure_window_secs", "must be at least 1");
        }
        if self.max_failed_sign_ins_per_caller == 0 {
            return range(
                "identity.max_failed_sign_ins_per_caller",
                "must be at least 1",
            );
        }
        if self.caller_failure_window_secs == 0 {
            return range("identity.caller_failure_window_secs", "must be at least 1");
        }
        if self.max_reset_requests_per_caller == 0 {
            return range(
                "identity.max_reset_requests_per_caller",
                "must be at least 1",
            );
        }
        if !(60..=7 * 24 * 3600).contains(&self.reset_ttl_secs) {
            return range("identity.reset_ttl_secs", "must be 60 to 604800 (a week)");
        }
        Ok(())
    }
}

/// Where invitation emails go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MailSinkKind {
    /// Write each email to the log: subject and recipient at info level, the body (with the
    /// accept link, a secret) only at debug level (`RUST_LOG=info,teamgate::delivery=debug`).
    #[default]
    Log,
    /// Send through an SMTP server (`[mail.smtp]`).
    Smtp,
    /// POST each email as signed JSON to an HTTP endpoint (`[mail.webhook]`).
    Webhook,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text: only for a relay on the same host or a trusted network.
    None,
    /// Upgrade with STARTTLS (required, not opportunistic); port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS); port 465 by default.
    Tls,
}

/// Invitation email delivery: an outbox drained by a background worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    pub sink: MailSinkKind,
    /// How often the worker looks for due messages.
    pub poll_interval_ms: u64,
    /// Retries back off exponentially from 1 s up to this.
    pub max_backoff_secs: u64,
    /// One delivery attempt is abandoned (and retried later) after this long. A message being
    /// sent is hidden from other replicas for this plus 10 s, which is also how soon one whose
    /// worker died mid-send is picked up again.
    pub send_timeout_ms: u64,
    pub smtp: SmtpConfig,
    pub webhook: WebhookConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub host: String,
    /// 0 means the TLS mode's usual port: 25 (none), 587 (starttls), 465 (tls).
    pub port: u16,
    pub tls: SmtpTls,
    /// Empty means no authentication. Usually set through `TEAMGATE__MAIL__SMTP__USERNAME`.
    pub username: Secret,
    /// Usually set through `TEAMGATE__MAIL__SMTP__PASSWORD`.
    pub password: Secret,
    /// The sender, e.g. `Acme <no-reply@acme.example>`.
    pub from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `https://…` endpoint that receives each email as JSON.
    pub url: String,
    /// HMAC-SHA256 key for the `x-teamgate-signature` header. Usually set through
    /// `TEAMGATE__MAIL__WEBHOOK__SECRET`.
    pub secret: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub max_message_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_concurrent_requests: usize,
    /// How long SIGTERM waits for in-flight RPCs before exiting anyway.
    pub drain_timeout_ms: u64,
    /// Threads serving requests; 0 means one per CPU. Fewer than the CPUs leaves room for
    /// a database or a load generator sharing the machine.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

/// What ext_authz answers for a request no `[[routes]]` entry maps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnmappedRoute {
    /// HTTP 403: a route nobody mapped is not reachable.
    #[default]
    Deny,
    /// Let it through without a check (the upstream decides).
    Allow,
}

/// Envoy ext_authz: which request headers name the subject and the organization, and what
/// happens to requests on routes the policy does not map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExtAuthzConfig {
    /// Header carrying the user id (set by the mesh after authenticating the end user).
    pub user_header: String,
    /// Header carrying the organization id.
    pub org_header: String,
    pub unmapped: UnmappedRoute,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        ExtAuthzConfig {
            user_header: "x-user-id".into(),
            org_header: "x-org-id".into(),
            unmapped: UnmappedRoute::Deny,
        }
    }
}

impl ExtAuthzConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("ext_authz.user_header", &self.user_header),
            ("ext_authz.org_header", &self.org_header),
        ] {
            if http::HeaderName::from_bytes(value.as_bytes()).is_err() {
                return Err(ConfigError::Range {
                    key,
                    message: format!("`{value}` is not an HTTP header name"),
                });
            }
        }
        if self.user_header.eq_ignore_ascii_case(&self.org_header) {
            return Err(ConfigError::Range {
                key: "ext_authz.org_header",
                message: "must differ from ext_authz.user_header".into(),
            });
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            policy: None,
            database: DatabaseConfig::default(),
            redis: RedisConfig {
                url: None,
                key_prefix: "teamgate".into(),
                timeout_ms: 5,
            },
            cache: CacheConfig::default(),
            invitations: InvitationConfig::default(),
            roles: RolesConfig::default(),
            identity: IdentityConfig::default(),
            mail: MailConfig::default(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            ext_authz: ExtAuthzConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            feed: FeedConfig::default(),
            sso: SsoConfig::default(),
            scim: ScimConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::new("sqlite://teamgate.db?mode=rwc"),
            schema: String::new(),
            max_connections: 16,
            connect_timeout_ms: 5_000,
            migrate_on_start: true,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 200_000,
            ttl_secs: 300,
        }
    }
}

impl Config {
    /// Whether invitation tokens go back to the inviting caller (see
    /// [`InvitationConfig::return_token`]).
    pub fn returns_invitation_tokens(&self) -> bool {
        self.invitations
            .return_token
            .unwrap_or_else(|| self.auth.keys.is_empty() && self.listen.ip().is_loopback())
    }
}

impl Default for InvitationConfig {
    fn default() -> Self {
        InvitationConfig {
            ttl_hours: 7 * 24,
            accept_url_base: "http://localhost:3000/invitations/accept?token=".into(),
            return_token: None,
        }
    }
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            sink: MailSinkKind::Log,
            poll_interval_ms: 500,
            max_backoff_secs: 3600,
            send_timeout_ms: 15_000,
            smtp: SmtpConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: String::new(),
            port: 0,
            tls: SmtpTls::Starttls,
            username: Secret::default(),
            password: Secret::default(),
            from: String::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 10_000,
            max_concurrent_requests: 1024,
            drain_timeout_ms: 20_000,
            worker_threads: 0,
        }
    }
}

/// Traces and metrics: OTLP/gRPC export when an endpoint is set, Prometheus text on
/// `metrics_listen` when set. Both are off by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is used when this is unset.
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span and metric.
    #[serde(deserialize_with = "text")]
    pub service_name: String,
    /// Serve Prometheus text format on `http://ADDR/metrics` (its own port).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "teamgate".into(),
            metrics_listen: None,
        }
    }
}

impl TelemetryConfig {
    fn validate(&self, grpc: SocketAddr) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return range(
                "telemetry.otlp_endpoint",
                "must start with http:// or https:// (OTLP over gRPC, usually port 4317)",
            );
        }
        if self.service_name.trim().is_empty() {
            return range("telemetry.service_name", "must not be empty");
        }
        if self
            .metrics_listen
            .is_some_and(|a| a.port() != 0 && a.port() == grpc.port())
        {
            return range("telemetry.metrics_listen", "must not use the gRPC port");
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            filter: "info,sqlx=warn,sea_orm=warn,h2=warn,hyper=warn,tonic=warn,tower=warn".into(),
        }
    }
}

/// Values given on the command line; each overrides every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub policy: Option<PathBuf>,
    pub log_format: Option<String>,
    pub insecure_allow_remote: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration key `{key}`: {message}")]
    Range { key: &'static str, message: String },
}

impl Config {
    /// Loads every layer. `file` is optional; when given it must exist.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(Env::prefixed("TEAMGATE__").split("__"));
        let set = |fig: Figment, key: &str, v: &Option<String>| match v {
            Some(v) => fig.merge(Serialized::default(key, v)),
            None => fig,
        };
        fig = set(fig, "listen", &overrides.listen);
        fig = set(fig, "database.url", &overrides.database_url);
        fig = set(fig, "redis.url", &overrides.redis_url);
        fig = set(fig, "log.format", &overrides.log_format);
        if overrides.insecure_allow_remote {
            fig = fig.merge(Serialized::default("auth.insecure_allow_remote", true));
        }
        if let Some(p) = &overrides.policy {
            fig = fig.merge(Serialized::default("policy", p));
        }
        let mut config: Config = fig.extract().map_err(Box::new)?;
        if config.telemetry.otlp_endpoint.is_none() {
            config.telemetry.otlp_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|v| !v.trim().is_empty());
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return range(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            return range("database.max_connections", "must be 1 to 1000");
        }
        if !self
            .database
            .schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return range(
                "database.schema",
                "may only contain ASCII letters, digits and `_`",
            );
        }
        if self.cache.max_entries == 0 {
            return range("cache.max_entries", "must be at least 1");
        }
        if self.invitations.ttl_hours == 0 || self.invitations.ttl_hours > 24 * 365 {
            return range("invitations.ttl_hours", "must be 1 to 8760 (a year)");
        }
        if self.roles.max_per_org > 10_000 {
            return range("roles.max_per_org", "must be 0 to 10000");
        }
        self.validate_mail()?;
        self.identity.validate()?;
        self.telemetry.validate(self.listen)?;
        self.ext_authz.validate()?;
        self.feed.validate()?;
        self.sso.validate()?;
        self.scim.validate(self.listen)?;
        if self.server.max_message_bytes < 1024 {
            return range("server.max_message_bytes", "must be at least 1024");
        }
        if self.server.worker_threads > 1024 {
            return range("server.worker_threads", "must be 0 (one per CPU) to 1024");
        }
        if self.server.max_concurrent_requests == 0 {
            return range("server.max_concurrent_requests", "must be at least 1");
        }
        if self.server.request_timeout_ms == 0 {
            return range("server.request_timeout_ms", "must be at least 1");
        }
        for key in &self.auth.keys {
            let hex = key.hash.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return range(
                    "auth.keys.hash",
                    "must be `sha256:<64 hex digits>` as printed by `teamgate keys hash`",
                );
            }
            if key.name.trim().is_empty() || key.scopes.is_empty() {
                return range("auth.keys", "every key needs a name and at least one scope");
            }
        }
        if self.auth.keys.is_empty()
            && !self.listen.ip().is_loopback()
            && !self.auth.insecure_allow_remote
        {
            return range(
                "listen",
                "with no service keys configured teamgate only listens on loopback: add [[auth.keys]] or pass --insecure-allow-remote",
            );
        }
        // An unset key means a random one per process: sealed TOTP secrets and signing keys
        // would not survive a restart, nor be readable by another replica. Fine on a
        // developer's loopback, not where others depend on it.
        if self.identity.secret_key.expose().is_empty()
            && !self.listen.ip().is_loopback()
            && !self.auth.insecure_allow_remote
        {
            return range(
                "identity.secret_key",
                "must be set when listening beyond loopback (32 bytes in base64, e.g. `openssl rand -base64 32`, the same on every replica)",
            );
        }
        if self.redis.timeout_ms == 0 {
            return range("redis.timeout_ms", "must be at least 1");
        }
        if let Some(u) = &self.redis.url
            && !(u.expose().starts_with("redis://") || u.expose().starts_with("rediss://"))
        {
            return range("redis.url", "must start with redis:// or rediss://");
        }
        Ok(())
    }

    fn validate_mail(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, message: &str| {
            Err(ConfigError::Range {
                key,
                message: message.into(),
            })
        };
        let mail = &self.mail;
        if mail.poll_interval_ms == 0 {
            return range("mail.poll_interval_ms", "must be at least 1");
        }
        if mail.max_backoff_secs == 0 {
            return range("mail.max_backoff_secs", "must be at least 1");
        }
        if !(100..=240_000).contains(&mail.send_timeout_ms) {
            return range("mail.send_timeout_ms", "must be 100 to 240000 (4 minutes)");
        }
        match mail.sink {
            MailSinkKind::Log => {}
            MailSinkKind::Smtp => {
                if mail.smtp.host.trim().is_empty() {
                    return range("mail.smtp.host", "is required when mail.sink = \"smtp\"");
                }
                if mail.smtp.from.trim().is_empty() {
                    return range("mail.smtp.from", "is required when mail.sink = \"smtp\"");
                }
                if mail.smtp.username.expose().is_empty() != mail.smtp.password.expose().is_empty()
                {
                    return range(
                        "mail.smtp.password",
                        "set both mail.smtp.username and mail.smtp.password, or neither",
                    );
                }
            }
            MailSinkKind::Webhook => {
                let url = mail.webhook.url.as_str();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return range(
                        "mail.webhook.url",
                        "must start with https:// or http:// when mail.sink = \"webhook\"",
                    );
                }
                if mail.webhook.secret.expose().len() < 16 {
                    return range(
                        "mail.webhook.secret",
                        "must be at least 16 characters when mail.sink = \"webhook\"",
                    );
                }
            }
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.database.connect_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert!(c.database.url.expose().starts_with("sqlite://teamgate.db"));
        assert_eq!(format!("{:?}", c.database.url), "Secret(***)");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[database]\nurll = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n[cache]\nttl_secs = 9\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&path), &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.cache.ttl_secs, 9);
    }

    #[test]
    fn ranges_are_checked() {
        let o = Overrides {
            database_url: Some("mysql://x".into()),
            ..Default::default()
        };
        let err = Config::load(None, &o).unwrap_err();
        assert!(err.to_string().contains("database.url"));
    }

    #[test]
    fn worker_threads_are_bounded() {
        let mut c = Config::default();
        assert_eq!(c.server.worker_threads, 0, "one per CPU by default");
        c.server.worker_threads = 1;
        assert!(c.validate().is_ok());
        c.server.worker_threads = 5000;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("server.worker_threads"), "{err}");
    }

    #[test]
    fn mail_settings_are_checked() {
        let mut c = Config::default();
        c.mail.sink = MailSinkKind::Smtp;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("mail.smtp.host"), "{err}");
        c.mail.smtp.host = "mail.example.com".into();
        c.mail.smtp.from = "Acme <no-reply@example.com>".into();
        assert!(c.validate().is_ok());
        c.mail.sink = MailSinkKind::Webhook;
        c.mail.webhook.url = "https://hooks.example.com/mail".into();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("mail.webhook.secret"), "{err}");
        assert_eq!(
            format!("{:?}", c.mail.smtp.password),
            "Secret(***)",
            "secrets never print"
        );
    }

    #[test]
    fn remote_listeners_need_a_secret_key() {
        let mut c = Config {
            listen: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        c.auth.keys.push(ServiceKeyConfig {
            name: "svc".into(),
            hash: format!("sha256:{}", "0".repeat(64)),
            scopes: vec![Scope::Authz],
            rate_limit_per_sec: None,
            trust_client_address: false,
        });
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("identity.secret_key"), "{err}");
        c.identity.secret_key = Secret::new("REVWLU9OTFkgdGVhbWdhdGUgY29tcG9zZSBrZXkhISE=");
        assert!(c.validate().is_ok());
        c.identity.secret_key = Secret::new("");
        c.listen = "127.0.0.1:50051".parse().unwrap();
        assert!(
            c.validate().is_ok(),
            "a loopback listener may use a per-process key"
        );
    }

    #[test]
    fn mail_sink_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[mail]\nsink = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\nfrom = \"t <t@example.com>\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.mail.sink, MailSinkKind::Smtp);
        assert_eq!(c.mail.smtp.tls, SmtpTls::None);
        assert_eq!(c.mail.smtp.port, 2525);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn numeric_env_values_stay_text() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TEAMGATE__REDIS__KEY_PREFIX", "12345");
            jail.set_env("TEAMGATE__DATABASE__MAX_CONNECTIONS", "7");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.redis.key_prefix, "12345");
            assert_eq!(c.database.max_connections, 7);
            Ok(())
        });
    }

    #[test]
    fn ext_authz_settings() {
        let c = Config::default();
        assert_eq!(c.ext_authz.user_header, "x-user-id");
        assert_eq!(c.ext_authz.org_header, "x-org-id");
        assert_eq!(c.ext_authz.unmapped, UnmappedRoute::Deny);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[ext_authz]\nuser_header = \"x-subject\"\nunmapped = \"allow\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.ext_authz.user_header, "x-subject");
        assert_eq!(c.ext_authz.org_header, "x-org-id");
        assert_eq!(c.ext_authz.unmapped, UnmappedRoute::Allow);
        std::fs::write(&path, "[ext_authz]\nuser_header = \"bad header\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("ext_authz.user_header"), "{err}");
        std::fs::write(&path, "[ext_authz]\norg_header = \"X-User-Id\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("ext_authz.org_header"), "{err}");
        std::fs::write(&path, "[ext_authz]\nunmaped = \"allow\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("unmaped"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn telemetry_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                c.telemetry.otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4317")
            );
            assert_eq!(c.telemetry.service_name, "teamgate");
            jail.set_env(
                "TEAMGATE__TELEMETRY__OTLP_ENDPOINT",
                "http://collector:4317",
            );
            jail.set_env("TEAMGATE__TELEMETRY__METRICS_LISTEN", "127.0.0.1:9464");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                c.telemetry.otlp_endpoint.as_deref(),
                Some("http://collector:4317"),
                "the config wins over the OTel variable"
            );
            assert_eq!(c.telemetry.metrics_listen.map(|a| a.port()), Some(9464));
            jail.set_env("TEAMGATE__TELEMETRY__OTLP_ENDPOINT", "collector:4317");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn roles_settings() {
        assert_eq!(Config::default().roles.max_per_org, 100);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[roles]\nmax_per_org = 3\n").unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.roles.max_per_org, 3);
        std::fs::write(&path, "[roles]\nmax_per_org = 10001\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("roles.max_per_org"), "{err}");
    }

    #[test]
    fn scim_settings() {
        let d = Config::default();
        assert!(d.scim.listen.is_none(), "SCIM is off by default");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |body: &str| {
            std::fs::write(&path, body).unwrap();
            Config::load(Some(&path), &Overrides::default())
        };
        let c = load("[scim]\nlisten = \"127.0.0.1:8090\"\nbase_url = \"https://scim.example.com/scim/v2\"\n")
            .unwrap();
        assert_eq!(c.scim.listen.map(|a| a.port()), Some(8090));
        assert_eq!(c.scim.base_url, "https://scim.example.com/scim/v2");
        for (body, key) in [
            ("[scim]\nlisten = \"127.0.0.1:50051\"\n", "scim.listen"),
            ("[scim]\nbase_url = \"scim.example.com\"\n", "scim.base_url"),
            ("[scim]\nmax_results = 0\n", "scim.max_results"),
            ("[scim]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
        ] {
            let err = load(body).unwrap_err();
            assert!(err.to_string().contains(key), "{body}: {err}");
        }
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact_url("postgres://u:p@h/db"), "postgres://***@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
