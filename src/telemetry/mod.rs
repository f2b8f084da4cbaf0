//! Logs, traces and metrics.
//!
//! - Logs: human-readable on a terminal, JSON otherwise (or as configured), filtered by
//!   `log.filter` or `RUST_LOG`.
//! - Traces: when an OTLP endpoint is configured (`telemetry.otlp_endpoint` or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`), a `tracing-opentelemetry` layer sends spans — one per RPC,
//!   store query and cache lookup — to the collector through a batch exporter (see [`otel`]).
//!   The layer has its own filter, so turning logs down never turns traces off, and the
//!   exporter's own `tonic`/`h2`/`hyper` activity never becomes spans. [`TelemetryGuard`]
//!   flushes what is buffered on shutdown.
//! - Metrics: built per server in `startup` ([`metrics::ServerMetrics`]), exported over OTLP
//!   and/or served as Prometheus text on `telemetry.metrics_listen`.

pub mod metrics;
pub mod otel;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{self, FilterExt as _};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// What the trace layer sees, whatever the log filter says: our spans and events, one span per
/// store query (sea-orm's `tracing-spans`), and nothing from the transport crates the
/// exporter itself runs on.
pub const TRACE_FILTER: &str = "info,sqlx=warn,sea_orm=warn,sea_orm::database=info,h2=warn,\
    hyper=warn,hyper_util=warn,tonic=warn,tower=warn,redis=warn,opentelemetry=warn,\
    opentelemetry_sdk=warn,opentelemetry_otlp=warn";

/// Installs the global subscriber with logs only. `RUST_LOG` overrides `filter`. Safe to call
/// twice (the second call is ignored), which tests rely on.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans go to an exporter: span fields recorded after the work is done (an RPC's
/// latency and status) matter only then, since the logs never print a span after its call.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The target of spans that only traces record (the check path's inner spans), never logs.
pub const TRACE_ONLY: &str = "teamgate::trace";

pub fn init(format: &LogFormat, filter: &str) {
    let _ = install(format, filter, None);
}

/// Installs the global subscriber: logs, plus traces over OTLP when an endpoint is
/// configured. Keep the guard until the process ends; [`TelemetryGuard::shutdown`] (or
/// dropping it) flushes buffered spans.
pub fn init_with(log: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(otel::tracer_provider(endpoint, &telemetry.service_name)?),
        None => None,
    };
    let installed = install(&log.format, &log.filter, provider.clone());
    if installed.is_ok() && provider.is_some() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let guard = TelemetryGuard { provider };
    match (installed, &guard.provider, &telemetry.otlp_endpoint) {
        (Ok(()), Some(_), Some(endpoint)) => tracing::info!(
            %endpoint,
            service = %telemetry.service_name,
            "exporting traces over OTLP"
        ),
        (Err(e), Some(_), _) => tracing::warn!(
            error = %e,
            "a subscriber was already installed; traces are not exported"
        ),
        _ => {}
    }
    Ok(guard)
}

fn install(
    format: &LogFormat,
    filter: &str,
    provider: Option<SdkTracerProvider>,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let traces = provider.map(|p| {
        // Query spans only inside a traced call: the outbox worker's polling and other
        // background queries would otherwise each start a trace of their own.
        let queries_in_calls = filter::dynamic_filter_fn(|meta, cx| {
            !meta.target().starts_with("sea_orm") || cx.lookup_current().is_some()
        });
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("teamgate"))
            .with_filter(EnvFilter::new(TRACE_FILTER).and(queries_in_calls))
    });
    // The check path's inner spans are for traces; in logs, the `rpc` span already says
    // which call a line belongs to. Left out of the logs by a filter whose answer is fixed
    // per call site (a closure filter would make every call site a per-call question), they
    // are disabled outright when no exporter is set: not even created.
    let not_trace_only = filter::Targets::new()
        .with_default(filter::LevelFilter::TRACE)
        .with_target(TRACE_ONLY, filter::LevelFilter::OFF);
    tracing_subscriber::registry()
        .with(logs.with_filter(log_filter.and(not_trace_only)))
        .with(traces)
        .try_init()
}

/// Owns the tracer provider; flushes and stops the exporter on [`shutdown`](Self::shutdown)
/// or, failing that, on drop.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every buffered span, then stops the exporter. Runs the blocking SDK call off
    /// the async workers, which the gRPC exporter needs to make progress.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("teamgate: flushing traces failed: {e}"),
                Err(e) => eprintln!("teamgate: flushing traces failed: {e}"),
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = otel::blocking_shutdown(move || provider.shutdown())
        {
            eprintln!("teamgate: flushing traces failed: {e}");
        }
    }
}
