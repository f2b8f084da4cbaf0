//! Building and running the server: storage, policy, cache, services, reflection and health
//! on one port. `start` returns the bound address, so tests bind port 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::auth::{GuardLayer, Keys, ServiceKey};
use crate::api::authz::AuthzApi;
use crate::api::ext_authz::ExtAuthzApi;
use crate::api::identity::IdentityApi;
use crate::api::middleware::RequestIdLayer;
use crate::api::team::TeamApi;
use crate::app::authz::{Decisions, Grants};
use crate::app::{App, AppSettings};
use crate::cache::redis::RedisSettings;
use crate::cache::{CacheSettings, DecisionCache};
use crate::config::{Config, redact_url};
use crate::delivery::{LogSink, Sink, Worker, WorkerSettings};
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::policy::Policy;
use crate::feed::Feed;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::teamgate::v1::authz_service_server::AuthzServiceServer;
use crate::proto::teamgate::v1::identity_service_server::IdentityServiceServer;
use crate::proto::teamgate::v1::team_service_server::TeamServiceServer;
use crate::store::{Store, StoreOptions};
use crate::telemetry::metrics::{OUTBOX_POLL, ServerMetrics};

/// Reads and validates a policy file, or the embedded default when `path` is `None`.
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<Policy> {
    match path {
        None => Ok(Policy::embedded_default()),
        Some(p) => {
            let source = std::fs::read_to_string(p)
                .with_context(|| format!("reading policy file {}", p.display()))?;
            Policy::parse(&source)
                .map_err(|e| anyhow::anyhow!("policy file {} is invalid:\n{e}", p.display()))
        }
    }
}

/// Connects to the configured database, creating the PostgreSQL schema if one is named.
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database.url.expose();
    let schema = (!config.database.schema.is_empty()).then(|| config.database.schema.clone());
    let store = Store::connect(&StoreOptions {
        url: url.to_owned(),
        max_connections: config.database.max_connections,
        connect_timeout: config.connect_timeout(),
        pg_schema: schema.clone(),
    })
    .await
    .with_context(|| format!("connecting to {}", redact_url(url)))?;
    if let (Some(schema), true) = (&schema, store.is_postgres()) {
        store
            .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .with_context(|| format!("creating schema {schema}"))?;
    }
    Ok(store)
}

fn service_keys(config: &Config) -> Keys {
    Keys::new(
        config
            .auth
            .keys
            .iter()
            .map(|k| {
                (
                    k.hash.clone(),
                    ServiceKey {
                        name: k.name.clone(),
                        scopes: k.scopes.clone(),
                        rate_per_sec: k.rate_limit_per_sec,
                        trust_client_address: k.trust_client_address,
                    },
                )
            })
            .collect(),
    )
}

fn tls_config(tls: &crate::config::TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let read =
        |p: &Path| std::fs::read(p).with_context(|| format!("reading TLS file {}", p.display()));
    let identity = Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let mut out = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        out = out.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(out)
}

/// Reports NOT_SERVING while the database cannot be reached, SERVING again once it can.
/// When a ping fails, a TCP probe tells a dead server from a busy pool; while the server
/// refuses connections outright, the store fails calls at once (see `store::reachability`)
/// and the probe repeats often, to notice the return quickly. (Probing only then keeps
/// PostgreSQL's log free of a bare connection every tick.)
async fn watch_database(store: Store, health: HealthReporter, every: Duration) {
    const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
    let ping = || async {
        tokio::time::timeout(every, store.ping())
            .await
            .unwrap_or(false)
    };
    let mut serving = true;
    loop {
        let wait = if store.unreachable() {
            Duration::from_millis(250)
        } else {
            every
        };
        tokio::time::sleep(wait).await;
        let ok = if store.unreachable() {
            store.probe(PROBE_TIMEOUT).await != Some(false) && ping().await
        } else if ping().await {
            true
        } else {
            store.probe(PROBE_TIMEOUT).await;
            false
        };
        if ok != serving {
            serving = ok;
            if ok {
                tracing::info!("database reachable again: health SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable: health NOT_SERVING");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// What a caller can swap when starting the server (tests inject a clock and a mail sink).
pub struct Dependencies {
    pub clock: Arc<dyn Clock>,
    /// Used when `mail.sink` is `log` (the default); an SMTP or webhook sink replaces it.
    pub sink: Arc<dyn Sink>,
}

impl Default for Dependencies {
    fn default() -> Self {
        Dependencies {
            clock: Arc::new(SystemClock),
            sink: Arc::new(LogSink),
        }
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// The outbox worker; `deliver_due` runs one delivery pass now (tests use it).
    pub outbox: Arc<Worker>,
    /// The change feed (WatchChanges streams, webhooks, pruning).
    pub feed: Arc<Feed>,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    /// Where Prometheus metrics are served (`telemetry.metrics_listen`), once bound.
    pub metrics_addr: Option<SocketAddr>,
    metrics: ServerMetrics,
    /// The SCIM server (`scim.listen`), when on.
    scim: Option<crate::scim::ScimServer>,
}

impl Running {
    /// Where the SCIM server listens and the base URL directories are given, when it is on.
    pub fn scim(&self) -> Option<(SocketAddr, &str)> {
        self.scim.as_ref().map(|s| (s.addr, s.base_url.as_str()))
    }

    /// Stops accepting calls, lets in-flight ones finish (up to the drain timeout), stops
    /// background work.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        set_health(&self.health, ServingStatus::NotServing).await;
        // Open WatchChanges streams end (UNAVAILABLE) so draining does not wait for them.
        self.feed.close();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let drained = tokio::time::timeout(self.drain_timeout, &mut self.server).await;
        for task in &self.background {
            task.abort();
        }
        match drained {
            Ok(joined) => joined.context("server task")?.context("serving")?,
            Err(_) => {
                tracing::warn!("drain timeout reached; exiting with calls in flight");
                self.server.abort();
            }
        }
        if let Some(scim) = self.scim.take() {
            scim.shutdown().await;
        }
        self.metrics.shutdown().await;
        self.app.store.clone().close().await;
        Ok(())
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for name in [
        "",
        "teamgate.v1.TeamService",
        "teamgate.v1.AuthzService",
        "teamgate.v1.IdentityService",
        "envoy.service.auth.v3.Authorization",
    ] {
        health.set_service_status(name, status).await;
    }
}

/// Envoy's `envoy.service.auth.v3.Authorization` and what it imports, compiled by `build.rs`
/// from proto/vendor: the `envoy-types` crate that serves it carries no descriptors.
const ENVOY_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_descriptor");

/// Every service served, for reflection (v1 for current clients, v1alpha for grpcurl 1.8).
/// Our descriptor set goes first: a file in two sets (`google/rpc/status.proto`) is served as
/// first registered.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(ENVOY_FILE_DESCRIPTOR_SET)
}

pub async fn start(config: &Config, deps: Dependencies) -> anyhow::Result<Running> {
    let policy = Arc::new(load_policy(config.policy.as_deref())?);
    tracing::info!(policy = %policy.summary(), "policy loaded");
    let store = connect_store(config).await?;
    if config.database.migrate_on_start {
        store.migrate().await.context("applying migrations")?;
    }
    {
        let tx = store.write().await?;
        // Refuse a policy that would silently change access: one dropping a role, permission
        // or plan the database still references (see `domain::drift`).
        let drift = crate::store::drift::compare(&*tx, &policy, deps.clock.now())
            .await
            .context("comparing the policy with the database")?;
        if !drift.is_empty() {
            let source = config.policy.as_deref().map_or_else(
                || "the embedded default policy".to_owned(),
                |p| format!("policy file {}", p.display()),
            );
            anyhow::bail!("refusing to start with {source}: {drift}");
        }
        crate::store::roles::sync_built_in(&*tx, &policy, deps.clock.now()).await?;
        tx.commit().await?;
    }
    let ttl = Duration::from_secs(config.cache.ttl_secs);
    let grants = Arc::new(Grants::new(policy.clone()));
    let cache = DecisionCache::new(
        &CacheSettings {
            max_entries: config.cache.max_entries,
            ttl,
            redis: config.redis.url.as_ref().map(|url| RedisSettings {
                url: url.expose().to_owned(),
                prefix: config.redis.key_prefix.clone(),
                timeout: Duration::from_millis(config.redis.timeout_ms),
                ttl,
            }),
        },
        grants.clone(),
    );
    let server_metrics = ServerMetrics::new(&config.telemetry)?;
    cache.export_metrics(server_metrics.meter());
    let decisions =
        Decisions::new(store.clone(), grants, cache).with_metrics(server_metrics.metrics());
    let app = Arc::new(App {
        store: store.clone(),
        policy,
        clock: deps.clock.clone(),
        settings: AppSettings {
            invitation_ttl: chrono::Duration::hours(
                i64::try_from(config.invitations.ttl_hours).unwrap_or(168),
            ),
            return_invitation_tokens: config.returns_invitation_tokens(),
            identity: crate::app::identity::IdentitySettings::from_config(&config.identity),
            max_custom_roles_per_org: config.roles.max_per_org,
        },
        decisions,
        on_commit: std::sync::OnceLock::new(),
        sso: crate::app::sso::Sso::new(crate::app::sso::SsoSettings::from_config(&config.sso))?,
    });

    // SMTP or a webhook when configured; otherwise the caller's sink (the log by default).
    let sink = crate::delivery::configured_sink(&config.mail, deps.clock.clone())?
        .unwrap_or_else(|| deps.sink.clone());
    let outbox = Arc::new(Worker::new(
        store.clone(),
        sink,
        deps.clock.clone(),
        WorkerSettings::from_config(&config.mail, &config.invitations.accept_url_base),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    let feed = Feed::new(
        store.clone(),
        deps.clock.clone(),
        &config.feed,
        &config.auth,
    );
    // Commits wake the feed at once (other replicas' commits are found by polling).
    let waker = feed.clone();
    let _ = app.on_commit.set(Box::new(move || waker.committed()));
    let mut background = vec![
        tokio::spawn(outbox.clone().run()),
        tokio::spawn(feed.clone().run_pruner(app.clone())),
        tokio::spawn(feed.clone().run_reader()),
        tokio::spawn(watch_database(
            store.clone(),
            health.clone(),
            Duration::from_secs(2),
        )),
    ];
    background.extend(feed.spawn_webhooks().await?);
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let max = config.server.max_message_bytes;
    let team = TeamServiceServer::new(TeamApi::new(app.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let authz = AuthzServiceServer::new(AuthzApi::new(app.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let identity = IdentityServiceServer::new(IdentityApi::new(app.clone(), &config.identity))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let ext_authz =
        AuthorizationServer::new(ExtAuthzApi::new(app.clone(), config.ext_authz.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let metrics_addr = match config.telemetry.metrics_listen {
        Some(at) => {
            let (bound, task) = server_metrics.serve_prometheus(at).await?;
            background.push(task);
            tracing::info!(metrics_addr = %bound, "serving Prometheus metrics on /metrics");
            Some(bound)
        }
        None => None,
    };
    if server_metrics.enabled() {
        let outbox_store = store.clone();
        background.push(server_metrics.watch_outbox(OUTBOX_POLL, move || {
            let store = outbox_store.clone();
            async move { crate::store::outbox::backlog(store.conn()).await }
        }));
    }
    let keys = Arc::new(service_keys(config));
    if keys.is_empty() {
        tracing::warn!(
            listen = %config.listen,
            "no service keys configured: every caller that can reach this port may call every RPC"
        );
    }
    // Bound before the gRPC server starts, so a port in use fails start-up with nothing running.
    let scim = crate::scim::start(
        app.clone(),
        &config.scim,
        crate::scim::Limits {
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
            max_concurrent_requests: config.server.max_concurrent_requests,
        },
    )
    .await?;
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls)?)?;
    }
    let router = builder
        .layer(server_metrics.layer())
        .layer(RequestIdLayer)
        .layer(GuardLayer::new(
            keys,
            config.server.max_concurrent_requests,
            Duration::from_millis(config.server.request_timeout_ms),
        ))
        .layer(feed.layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(team)
        .add_service(authz)
        .add_service(identity)
        .add_service(ext_authz);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        // Nagle's algorithm would hold small responses back for delayed ACKs (tens of ms).
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        async move {
            let _ = rx.await;
        },
    ));
    tracing::info!(%addr, database = %redact_url(config.database.url.expose()), "teamgate listening");
    Ok(Running {
        addr,
        app,
        outbox,
        feed,
        health,
        shutdown: Some(tx),
        server,
        background,
        drain_timeout: Duration::from_millis(config.server.drain_timeout_ms),
        metrics_addr,
        metrics: server_metrics,
        scim,
    })
}
