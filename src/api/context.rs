//! Reading the caller's context (actor, request id) from request metadata.

use tonic::Request;
use tonic::metadata::MetadataMap;

use crate::app::RequestCtx;
use crate::domain::DomainError;
use crate::domain::ids::UserId;

pub const ACTOR_HEADER: &str = "x-actor-user-id";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The service key that authenticated the call, put in request extensions by the
/// authentication layer.
#[derive(Debug, Clone)]
pub struct CallerKey {
    pub name: String,
    /// Whether the key may name the end client in `x-client-address` (see `api::caller`).
    pub trust_client_address: bool,
    /// Whether the key holds the `admin` scope: the platform operator, who may act on any
    /// account.
    pub operator: bool,
}

/// The request id assigned by the middleware (or echoed from the caller).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn header<'a>(md: &'a MetadataMap, name: &str) -> Option<&'a str> {
    md.get(name).and_then(|v| v.to_str().ok())
}

/// Builds the context; an actor header that is present but malformed is rejected.
pub fn ctx<T>(req: &Request<T>) -> Result<RequestCtx, DomainError> {
    let md = req.metadata();
    let actor =
        match header(md, ACTOR_HEADER).map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(UserId::parse(ACTOR_HEADER, raw).map_err(|_| {
                DomainError::Unauthenticated {
                    reason: "INVALID_ACTOR",
                    message: format!("{ACTOR_HEADER} must be a user id (a UUID)"),
                }
            })?),
        };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .or_else(|| header(md, REQUEST_ID_HEADER).map(|s| s.chars().take(128).collect()))
        .unwrap_or_default();
    let key = req.extensions().get::<CallerKey>();
    let key_name = key.map(|k| k.name.clone());
    let operator = key.is_some_and(|k| k.operator);
    Ok(RequestCtx {
        actor,
        request_id,
        key_name,
        operator,
    })
}
