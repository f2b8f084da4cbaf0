//! The domain's errors: every rule violation has a stable reason that callers can act on.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// A request field is malformed or out of range.
    #[error("{message}")]
    Invalid {
        field: String,
        reason: &'static str,
        message: String,
    },
    /// No acting user could be established.
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    /// The actor is not allowed to do this.
    #[error("{message}")]
    Denied {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    NotFound {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
    },
    /// The request is well-formed but the current state forbids it.
    #[error("{message}")]
    Precondition {
        reason: &'static str,
        message: String,
        /// Extra `ErrorInfo` metadata naming what the caller needs next (e.g. `org_id`).
        metadata: Vec<(&'static str, String)>,
    },
    /// The service cannot serve this now (shutting down, or something it depends on — an
    /// identity provider, a DNS server, the database — did not answer usably): the same
    /// request may succeed later or on another replica.
    #[error("{message}")]
    Unavailable {
        reason: &'static str,
        message: String,
    },
    /// Too many attempts: the caller must wait.
    #[error("{message}")]
    Exhausted {
        reason: &'static str,
        message: String,
    },
    /// A position outside what is kept (a change-feed cursor older than its retention).
    #[error("{message}")]
    OutOfRange {
        reason: &'static str,
        message: String,
    },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            reason: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    pub fn invalid_because(
        field: impl Into<String>,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        DomainError::Invalid {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }

    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::Denied {
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::NotFound {
            reason,
            message: message.into(),
        }
    }

    pub fn exists(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::AlreadyExists {
            reason,
            message: message.into(),
        }
    }

    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::Precondition {
            reason,
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// A precondition failure whose `ErrorInfo` also carries `metadata`.
    pub fn precondition_with(
        reason: &'static str,
        message: impl Into<String>,
        metadata: Vec<(&'static str, String)>,
    ) -> Self {
        DomainError::Precondition {
            reason,
            message: message.into(),
            metadata,
        }
    }

    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::Unavailable {
            reason,
            message: message.into(),
        }
    }

    pub fn exhausted(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::Exhausted {
            reason,
            message: message.into(),
        }
    }

    pub fn out_of_range(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::OutOfRange {
            reason,
            message: message.into(),
        }
    }

    /// The stable UPPER_SNAKE reason carried in `ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            DomainError::Invalid { reason, .. }
            | DomainError::Unauthenticated { reason, .. }
            | DomainError::Denied { reason, .. }
            | DomainError::NotFound { reason, .. }
            | DomainError::AlreadyExists { reason, .. }
            | DomainError::Precondition { reason, .. }
            | DomainError::Exhausted { reason, .. }
            | DomainError::OutOfRange { reason, .. }
            | DomainError::Unavailable { reason, .. } => reason,
        }
    }
}
