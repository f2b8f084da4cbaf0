//! The one mapping from the service's errors to gRPC statuses with `ErrorInfo` details.

use tonic::{Code, Status};

use crate::app::AppError;
use crate::app::StoreError;
use crate::domain::DomainError;

pub use crate::proto::status::{ERROR_DOMAIN, with_reason};
use crate::proto::status::{status, status_with};

impl From<DomainError> for Status {
    fn from(e: DomainError) -> Status {
        let reason = e.reason();
        match e {
            DomainError::Invalid { field, message, .. } => {
                status(Code::InvalidArgument, message, reason, Some(&field))
            }
            DomainError::Unauthenticated { message, .. } => {
                status(Code::Unauthenticated, message, reason, None)
            }
            DomainError::Denied { message, .. } => {
                status(Code::PermissionDenied, message, reason, None)
            }
            DomainError::NotFound { message, .. } => status(Code::NotFound, message, reason, None),
            DomainError::AlreadyExists { message, .. } => {
                status(Code::AlreadyExists, message, reason, None)
            }
            DomainError::Precondition {
                message, metadata, ..
            } => status_with(Code::FailedPrecondition, message, reason, None, &metadata),
            DomainError::Unavailable { message, .. } => {
                status(Code::Unavailable, message, reason, None)
            }
            DomainError::Exhausted { message, .. } => {
                status(Code::ResourceExhausted, message, reason, None)
            }
            DomainError::OutOfRange { message, .. } => {
                status(Code::OutOfRange, message, reason, None)
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match &e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                status(
                    Code::Unavailable,
                    "the database is unavailable: retry shortly".into(),
                    "DATABASE_UNAVAILABLE",
                    None,
                )
            }
            StoreError::Conflict(_) => {
                tracing::info!(error = %e, "concurrent change");
                status(
                    Code::Aborted,
                    "a concurrent change conflicted with this one: retry".into(),
                    "CONCURRENT_CHANGE",
                    None,
                )
            }
            StoreError::Db(_) => {
                tracing::error!(error = ?anyhow::Error::from(e), "database error");
                status(
                    Code::Internal,
                    "internal error: it has been logged".into(),
                    "INTERNAL",
                    None,
                )
            }
        }
    }
}

impl From<AppError> for Status {
    fn from(e: AppError) -> Status {
        match e {
            AppError::Domain(d) => d.into(),
            AppError::Store(s) => s.into(),
        }
    }
}

/// A status for a request-level problem that is not a domain rule (sizes, limits).
pub fn invalid(field: &str, reason: &str, message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, message.into(), reason, Some(field))
}
