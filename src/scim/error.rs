//! SCIM errors (RFC 7644 §3.12): the `urn:ietf:params:scim:api:messages:2.0:Error` body with
//! the HTTP status, a `scimType` where the RFC has one, and a `detail` that starts with the
//! service's reason (`LAST_OWNER: …`), as gRPC's `ErrorInfo` would carry it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::{AppError, StoreError};
use crate::domain::DomainError;

pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

#[derive(Debug)]
pub struct ScimError {
    pub status: StatusCode,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(
        status: StatusCode,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Self {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        ScimError::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ScimError::new(StatusCode::NOT_FOUND, None, detail)
    }
}

impl From<DomainError> for ScimError {
    fn from(e: DomainError) -> Self {
        let reason = e.reason();
        let detail = format!("{reason}: {e}");
        let (status, scim_type) = match &e {
            DomainError::Invalid { .. } if reason == "SCIM_IMMUTABLE" => {
                (StatusCode::BAD_REQUEST, Some("mutability"))
            }
            DomainError::Invalid { .. } => (StatusCode::BAD_REQUEST, Some("invalidValue")),
            DomainError::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, None),
            DomainError::Denied { .. } => (StatusCode::FORBIDDEN, None),
            DomainError::NotFound { .. } => (StatusCode::NOT_FOUND, None),
            DomainError::AlreadyExists { .. } => (StatusCode::CONFLICT, Some("uniqueness")),
            DomainError::Precondition { .. } if reason == "VERSION_MISMATCH" => {
                (StatusCode::PRECONDITION_FAILED, None)
            }
            DomainError::Precondition { .. } => (StatusCode::CONFLICT, None),
            DomainError::Exhausted { .. } => (StatusCode::TOO_MANY_REQUESTS, Some("tooMany")),
            DomainError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, None),
            DomainError::OutOfRange { .. } => (StatusCode::BAD_REQUEST, Some("invalidValue")),
        };
        ScimError::new(status, scim_type, detail)
    }
}

impl From<AppError> for ScimError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Domain(d) => d.into(),
            AppError::Store(s) => match &s {
                StoreError::Unavailable(_) => {
                    tracing::warn!(error = %s, "database unavailable");
                    ScimError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        None,
                        "DATABASE_UNAVAILABLE: the database is unavailable: retry shortly",
                    )
                }
                StoreError::Conflict(_) => ScimError::new(
                    StatusCode::CONFLICT,
                    None,
                    "CONCURRENT_CHANGE: a concurrent change conflicted with this one: retry",
                ),
                StoreError::Db(_) => {
                    tracing::error!(error = ?anyhow::Error::from(s), "database error");
                    ScimError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        None,
                        "INTERNAL: internal error: it has been logged",
                    )
                }
            },
        }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        let mut res = super::scim_json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"teamgate-scim\""),
            );
        }
        res
    }
}
