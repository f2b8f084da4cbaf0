//! The server's tower stack: a request id for every call (accepted from `x-request-id` or
//! made here, echoed back, recorded in audit events) and a span per RPC with its latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use super::context::{REQUEST_ID_HEADER, RequestId};
use crate::telemetry::metrics::{Method, Metrics};

#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

/// A new request id: a UUIDv7 (time-ordered, so ids sort by arrival) whose random bits come
/// from the thread's generator rather than a system call per request.
fn new_request_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn usable(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?.trim();
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    ok.then(|| s.to_owned())
}

impl<S, B, RB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(usable)
            .unwrap_or_else(new_request_id);
        req.extensions_mut().insert(RequestId(id.clone()));
        let metrics = req.extensions().get::<Metrics>().cloned();
        let method = Method::from(req.uri().path());
        let span = tracing::info_span!("rpc", method = %method.as_str(), request_id = %id, grpc_status = tracing::field::Empty, latency_ms = tracing::field::Empty, service_key = tracing::field::Empty);
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let started = Instant::now();
                let result = inner.call(req).await;
                let span = tracing::Span::current();
                let elapsed = started.elapsed();
                // Recording into a span the logs format costs a JSON re-parse per field.
                let exported = crate::telemetry::exporting();
                if exported {
                    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
                }
                if let Some(metrics) = &metrics {
                    // No grpc-status in the headers: the status follows in the trailers (OK
                    // for a unary call that returned a message).
                    let code = result.as_ref().map_or(2, |r| {
                        r.headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0)
                    });
                    metrics.record_rpc(&method, code, elapsed);
                }
                match result {
                    Ok(mut resp) => {
                        if let (true, Some(code)) = (exported, resp.headers().get("grpc-status")) {
                            span.record("grpc_status", code.to_str().unwrap_or("?"));
                        }
                        if let Ok(v) = HeaderValue::from_str(&id) {
                            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
                        }
                        tracing::debug!("rpc finished");
                        Ok(resp)
                    }
                    Err(e) => Err(e),
                }
            }
            .instrument(span),
        )
    }
}
