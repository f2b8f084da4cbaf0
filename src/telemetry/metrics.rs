//! Metrics, built per server so that several servers in one process (the tests) each count
//! their own calls:
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `teamgate.rpc.duration` (s) | histogram | `method` (`/pkg.Service/Method`), `code` (`OK`, `NOT_FOUND`, …) |
//! | `teamgate.authz.decisions` | counter | `result`: `allowed`, `not_member`, `missing_permission`, `org_not_found` |
//! | `teamgate.cache.lookups` | counter | `level` that answered: `local`, `redis` (hits) or `db` (a miss) |
//! | `teamgate.cache.bypassed` | counter | — lookups that skipped the caches while Redis was down |
//! | `teamgate.cache.redis_errors` | counter | — |
//! | `teamgate.cache.entries` | gauge | — entries in this replica's in-process cache |
//! | `teamgate.outbox.backlog` | gauge | — undelivered outbox rows, counted every few seconds |
//!
//! They go to the OTLP collector when one is configured, and to a Prometheus registry served
//! as text on `telemetry.metrics_listen` (`teamgate_rpc_duration_seconds`,
//! `teamgate_authz_decisions_total`, …) when that is set. With neither, every instrument is a
//! no-op.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder as _, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Layer, Service};

use crate::config::TelemetryConfig;
use crate::domain::decision::Reason;

/// How often the outbox backlog is counted.
pub const OUTBOX_POLL: Duration = Duration::from_secs(5);

/// Latency buckets in seconds: 0.25 ms to 10 s (a cached check takes well under 1 ms, the
/// per-call timeout is 10 s by default).
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    7.5, 10.0,
];

/// The methods every caller sends many of, whose names are attribute values without an
/// allocation per call.
const HOT_METHODS: [&str; 3] = [
    "/teamgate.v1.AuthzService/Check",
    "/teamgate.v1.AuthzService/BatchCheck",
    "/envoy.service.auth.v3.Authorization/Check",
];

/// A call's method path, as a metric attribute and span field.
#[derive(Debug, Clone)]
pub struct Method(Cow<'static, str>);

impl Method {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Method {
    fn from(path: &str) -> Method {
        match HOT_METHODS.iter().find(|m| **m == path) {
            Some(hot) => Method(Cow::Borrowed(hot)),
            None => Method(Cow::Owned(path.to_owned())),
        }
    }
}

/// The instruments recorded on the request path. Cheap to clone; the default records nothing.
#[derive(Clone, Debug)]
pub struct Metrics {
    rpc_duration: Histogram<f64>,
    decisions: Counter<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&noop_meter())
    }
}

impl Metrics {
    pub fn new(meter: &Meter) -> Metrics {
        Metrics {
            rpc_duration: meter
                .f64_histogram("teamgate.rpc.duration")
                .with_unit("s")
                .with_description("Time to answer an RPC, by method and gRPC status code")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            decisions: meter
                .u64_counter("teamgate.authz.decisions")
                .with_description("Permission check decisions, by result")
                .build(),
        }
    }

    /// One finished call. `grpc_status` is the numeric `grpc-status`; calls to methods the
    /// server does not have are counted under `method="unknown"`, so a caller cannot grow the
    /// label set.
    pub fn record_rpc(&self, method: &Method, grpc_status: i32, elapsed: Duration) {
        let code = code_name(grpc_status);
        let method = match (&method.0, code) {
            (_, "UNIMPLEMENTED") => KeyValue::new("method", "unknown"),
            (Cow::Borrowed(hot), _) => KeyValue::new("method", *hot),
            (Cow::Owned(other), _) => KeyValue::new("method", other.clone()),
        };
        self.rpc_duration.record(
            elapsed.as_secs_f64(),
            &[method, KeyValue::new("code", code)],
        );
    }

    /// One permission check answered.
    pub fn decision(&self, reason: Reason) {
        self.decisions
            .add(1, &[KeyValue::new("result", reason.as_str())]);
    }

    /// A batch's checks, counted: one addition per result, not one per check.
    pub fn decisions(&self, tally: &DecisionTally) {
        for (reason, n) in Reason::ALL.iter().zip(tally.0) {
            if n > 0 {
                self.decisions
                    .add(n, &[KeyValue::new("result", reason.as_str())]);
            }
        }
    }
}

/// Decisions counted by result, for [`Metrics::decisions`].
#[derive(Debug, Default)]
pub struct DecisionTally([u64; Reason::ALL.len()]);

impl DecisionTally {
    pub fn add(&mut self, reason: Reason) {
        self.0[reason as usize] += 1;
    }
}

/// The canonical name of a numeric gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn noop_meter() -> Meter {
    opentelemetry::metrics::noop::NoopMeterProvider::new().meter("teamgate")
}

/// One server's metrics pipeline: the meter provider with its readers (OTLP, Prometheus),
/// the instruments, and the Prometheus registry to serve.
pub struct ServerMetrics {
    provider: Option<SdkMeterProvider>,
    registry: Option<prometheus::Registry>,
    meter: Meter,
    metrics: Metrics,
}

impl ServerMetrics {
    /// Builds the readers `config` asks for. Call inside a Tokio runtime (the OTLP exporter's
    /// connection runs on it).
    pub fn new(config: &TelemetryConfig) -> anyhow::Result<ServerMetrics> {
        if config.otlp_endpoint.is_none() && config.metrics_listen.is_none() {
            let meter = noop_meter();
            return Ok(ServerMetrics {
                provider: None,
                registry: None,
                metrics: Metrics::new(&meter),
                meter,
            });
        }
        let mut builder =
            SdkMeterProvider::builder().with_resource(super::otel::resource(&config.service_name));
        if let Some(endpoint) = &config.otlp_endpoint {
            builder = builder.with_reader(super::otel::metric_reader(endpoint)?);
        }
        let registry = match config.metrics_listen {
            Some(_) => {
                let registry = prometheus::Registry::new();
                let exporter = opentelemetry_prometheus::exporter()
                    .with_registry(registry.clone())
                    .build()
                    .context("building the Prometheus exporter")?;
                builder = builder.with_reader(exporter);
                Some(registry)
            }
            None => None,
        };
        let provider = builder.build();
        let meter = provider.meter("teamgate");
        Ok(ServerMetrics {
            metrics: Metrics::new(&meter),
            meter,
            registry,
            provider: Some(provider),
        })
    }

    /// Whether anything is collected at all.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// For instruments registered elsewhere (the cache's observable counters).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The tower layer that hands this server's [`Metrics`] to each call (as a request
    /// extension), where the RPC middleware records latency by method and code.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.metrics.clone(),
        }
    }

    /// Serves `GET /metrics` (Prometheus text format) on its own port; returns the bound
    /// address (so port 0 works) and the serving task.
    pub async fn serve_prometheus(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
        let registry = self
            .registry
            .clone()
            .context("telemetry.metrics_listen: no Prometheus registry was built")?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding telemetry.metrics_listen {addr}"))?;
        let bound = listener.local_addr()?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move { render(&registry) }
            }),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the /metrics endpoint stopped");
            }
        });
        Ok((bound, task))
    }

    /// Records `count()` every `every` into `teamgate.outbox.backlog` (the caller knows where
    /// the outbox lives; telemetry only records).
    pub fn watch_outbox<F, Fut, E>(&self, every: Duration, count: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<u64, E>> + Send,
        E: std::fmt::Display,
    {
        let gauge = self
            .meter
            .u64_gauge("teamgate.outbox.backlog")
            .with_description("Outbox messages (invitation emails) not yet delivered")
            .build();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                match count().await {
                    Ok(n) => gauge.record(n, &[]),
                    Err(e) => tracing::debug!(error = %e, "counting the outbox backlog failed"),
                }
            }
        })
    }

    /// Exports what is left (OTLP) and stops the readers.
    pub async fn shutdown(&self) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing metrics failed"),
            Err(e) => tracing::warn!(error = %e, "flushing metrics failed"),
        }
    }
}

impl Drop for ServerMetrics {
    fn drop(&mut self) {
        // A server dropped without `Running::shutdown` still sends what it has.
        if let Some(provider) = self.provider.take() {
            let _ = super::otel::blocking_shutdown(move || provider.shutdown());
        }
    }
}

fn render(registry: &prometheus::Registry) -> axum::response::Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

/// Puts the server's [`Metrics`] into every request's extensions (see [`ServerMetrics::layer`]).
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.metrics.clone());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(Reason::MissingPermission.as_str(), "missing_permission");
    }
}
