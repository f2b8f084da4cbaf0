//! OpenTelemetry pipelines over OTLP/gRPC, on the same tonic as the server: a batch span
//! exporter and a periodic metric reader, both labelled with a `Resource` that carries
//! `service.name` and `service.version`.
//!
//! Standard `OTEL_*` variables tune them: `OTEL_BSP_SCHEDULE_DELAY` (how often spans are
//! sent, 5 s by default), `OTEL_METRIC_EXPORT_INTERVAL` (metrics, 60 s by default),
//! `OTEL_RESOURCE_ATTRIBUTES` (more resource attributes, e.g. `deployment.environment`).

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// `service.name` from the configuration, `service.version` from this build.
pub fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Spans batched and sent to `endpoint` (e.g. `http://otel-collector:4317`). Must be called
/// inside a Tokio runtime: the gRPC channel's connection runs on it.
pub fn tracer_provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = SpanExporter::builder().with_tonic().with_endpoint(endpoint);
    if let Some(tls) = tls_for(endpoint) {
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder.build().with_context(|| {
        format!("telemetry.otlp_endpoint {endpoint}: building the span exporter")
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service_name))
        .build())
}

/// Metrics collected periodically and sent to `endpoint`. Must be called inside a Tokio
/// runtime, like [`tracer_provider`].
pub fn metric_reader(endpoint: &str) -> anyhow::Result<PeriodicReader<MetricExporter>> {
    let mut builder = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if let Some(tls) = tls_for(endpoint) {
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder.build().with_context(|| {
        format!("telemetry.otlp_endpoint {endpoint}: building the metric exporter")
    })?;
    Ok(PeriodicReader::builder(exporter).build())
}

/// TLS with the Web PKI roots for an `https://` collector (the exporter's own default for
/// `https` trusts no root at all).
fn tls_for(endpoint: &str) -> Option<tonic::transport::ClientTlsConfig> {
    endpoint
        .starts_with("https://")
        .then(|| tonic::transport::ClientTlsConfig::new().with_enabled_roots())
}

/// Runs a blocking SDK shutdown from a synchronous context (a `Drop`). On a multi-threaded
/// Tokio runtime the current worker is handed over first, so the exporter's connection task
/// can still run while this thread waits for the final export.
pub(crate) fn blocking_shutdown(f: impl FnOnce() -> OTelSdkResult) -> OTelSdkResult {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exporters_build_for_http_and_https() {
        for endpoint in [
            "http://127.0.0.1:4317",
            "https://collector.example.com:4317",
        ] {
            let traces = tracer_provider(endpoint, "teamgate").unwrap();
            let metrics = metric_reader(endpoint).unwrap();
            drop(metrics);
            tokio::task::spawn_blocking(move || traces.shutdown())
                .await
                .unwrap()
                .unwrap();
        }
        assert!(tls_for("http://x:4317").is_none());
        assert!(tls_for("https://x:4317").is_some());
    }

    #[test]
    fn resource_names_the_service() {
        let r = resource("svc");
        let get = |k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(
            get("service.name").map(|v| v.to_string()),
            Some("svc".into())
        );
        assert_eq!(
            get("service.version").map(|v| v.to_string()),
            Some(env!("CARGO_PKG_VERSION").into())
        );
    }
}
