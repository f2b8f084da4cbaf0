//! The SCIM 2.0 server (RFC 7643 / 7644): a transport like `api/`, on its own HTTP port
//! (`scim.listen`), base path `/scim/v2`. Each request's bearer token names the directory and
//! so the organization; handlers parse SCIM JSON into the use cases' types (`app::scim`), call
//! one use case, and render the result as SCIM resources or errors. Nothing else.

mod discovery;
mod error;
mod groups;
mod listing;
mod patch;
mod search;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::app::scim::Directory;
use crate::app::{App, RequestCtx};
use crate::config::ScimConfig;
use crate::domain::consistency::ConsistencyToken;

pub use error::ScimError;

pub const CONTENT_TYPE: &str = "application/scim+json";

/// What every handler shares.
pub(crate) struct ScimState {
    app: Arc<App>,
    /// `…/scim/v2`, without a trailing slash: the prefix of every `meta.location`.
    base: String,
    max_results: u32,
}

type State = axum::extract::State<Arc<ScimState>>;

/// A running SCIM server.
pub struct ScimServer {
    pub addr: SocketAddr,
    /// The base URL directories are given (`http://ADDR/scim/v2` unless configured).
    pub base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ScimServer {
    /// Stops accepting requests and lets in-flight ones finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

/// The gRPC server's limits, applied to SCIM requests too.
pub struct Limits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
}

struct Guard {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

/// Refuses a request past the concurrency limit at once, and ends one that runs past the
/// timeout (its transaction, if any, rolls back as the use case is dropped).
async fn guard(
    axum::extract::State(g): axum::extract::State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_slot) = g.slots.clone().try_acquire_owned() else {
        return ScimError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "OVERLOADED: too many requests in flight: retry shortly",
        )
        .into_response();
    };
    match tokio::time::timeout(g.timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ScimError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "TIMEOUT: the request took too long and was abandoned: retry",
        )
        .into_response(),
    }
}

/// Binds `scim.listen` and serves until [`ScimServer::shutdown`]; `None` when SCIM is off.
pub async fn start(
    app: Arc<App>,
    config: &ScimConfig,
    limits: Limits,
) -> anyhow::Result<Option<ScimServer>> {
    let Some(listen) = config.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding scim.listen {listen}"))?;
    let addr = listener.local_addr()?;
    let base = if config.base_url.is_empty() {
        format!("http://{addr}/scim/v2")
    } else {
        config.base_url.trim_end_matches('/').to_owned()
    };
    let state = Arc::new(ScimState {
        app,
        base: base.clone(),
        max_results: config.max_results,
    });
    let guard_state = Arc::new(Guard {
        slots: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
        timeout: limits.request_timeout,
    });
    let router = routes()
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard_state, guard));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "SCIM server stopped");
        }
    });
    tracing::info!(%addr, base_url = %base, "serving SCIM 2.0");
    Ok(Some(ScimServer {
        addr,
        base_url: base,
        shutdown: Some(tx),
        task,
    }))
}

fn routes() -> Router<Arc<ScimState>> {
    let v2 = Router::new()
        .route(
            "/ServiceProviderConfig",
            get(discovery::service_provider_config),
        )
        .route("/ResourceTypes", get(discovery::resource_types))
        .route("/ResourceTypes/{id}", get(discovery::resource_type))
        .route("/Schemas", get(discovery::schemas))
        .route("/Schemas/{id}", get(discovery::schema))
        .route("/Users", get(users::list).post(users::create))
        .route("/Users/.search", axum::routing::post(users::search))
        .route(
            "/Users/{id}",
            get(users::get)
                .put(users::replace)
                .patch(users::patch)
                .delete(users::delete),
        )
        .route("/Groups", get(groups::list).post(groups::create))
        .route("/Groups/.search", axum::routing::post(groups::search))
        .route(
            "/Groups/{id}",
            get(groups::get)
                .put(groups::replace)
                .patch(groups::patch)
                .delete(groups::delete),
        )
        .route("/.search", axum::routing::post(search::root))
        .fallback(not_found);
    Router::new().nest("/scim/v2", v2).fallback(not_found)
}

async fn not_found() -> ScimError {
    ScimError::not_found("NOT_FOUND: no such SCIM endpoint (the base path is /scim/v2)")
}

/// A SCIM JSON response.
pub(crate) fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    res
}

/// A resource with its `ETag` (its `meta.version`) and, for a creation, its `Location`.
pub(crate) fn resource(status: StatusCode, body: &Value) -> Response {
    let mut res = scim_json(status, body);
    if let Some(v) = body["meta"]["version"].as_str()
        && let Ok(h) = HeaderValue::from_str(v)
    {
        res.headers_mut().insert(header::ETAG, h);
    }
    if status == StatusCode::CREATED
        && let Some(l) = body["meta"]["location"].as_str()
        && let Ok(h) = HeaderValue::from_str(l)
    {
        res.headers_mut().insert(header::LOCATION, h);
    }
    res
}

/// The header carrying a write's consistency token: pass it to Check (`consistency`) to read
/// at least this write, as with the gRPC writes' `consistency_token`.
pub const CONSISTENCY_HEADER: &str = "x-teamgate-consistency-token";

pub(crate) fn with_consistency(mut res: Response, token: &ConsistencyToken) -> Response {
    if let Ok(h) = HeaderValue::from_str(&token.encode()) {
        res.headers_mut().insert(CONSISTENCY_HEADER, h);
    }
    res
}

/// The bearer secret of a request; `401` without one.
fn bearer(headers: &HeaderMap) -> Result<String, ScimError> {
    let missing = || {
        ScimError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "SCIM_TOKEN_MISSING: send `Authorization: Bearer <token>` with a token from CreateScimToken",
        )
    };
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = raw.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim().to_owned())
}

/// The request's directory, for reads.
async fn directory(state: &ScimState, headers: &HeaderMap) -> Result<Directory, ScimError> {
    let secret = bearer(headers)?;
    Ok(state.app.directory(&secret).await?)
}

/// The request's context and bearer secret, for writes. The token is checked here, so that a
/// bad token is a 401 whatever the body, and again by the use case under the org's lock.
async fn write_ctx(
    state: &ScimState,
    headers: &HeaderMap,
) -> Result<(RequestCtx, String), ScimError> {
    let secret = bearer(headers)?;
    state.app.directory(&secret).await?;
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    Ok((
        RequestCtx {
            actor: None,
            request_id,
            key_name: None,
            operator: false,
        },
        secret,
    ))
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Parses a request body as JSON; `invalidSyntax` otherwise.
fn json_body(body: &[u8]) -> Result<Value, ScimError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ScimError::bad(
            "invalidSyntax",
            format!("INVALID_JSON: the request body is not JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(ScimError::bad(
            "invalidSyntax",
            "INVALID_JSON: the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Whether `schemas` of a request body names `urn`.
fn ensure_schema(body: &Value, urn: &str) -> Result<(), ScimError> {
    let named = body["schemas"]
        .as_array()
        .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(urn)));
    if named {
        Ok(())
    } else {
        Err(ScimError::bad(
            "invalidSyntax",
            format!("INVALID_SCHEMAS: `schemas` must contain {urn}"),
        ))
    }
}
