//! Code generated from `proto/` by `build.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod teamgate {
    pub mod v1 {
        tonic::include_proto!("teamgate.v1");
    }
}

/// Every message and service teamgate defines, plus `google.rpc` error details, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("teamgate_descriptor");

/// Statuses with `google.rpc.ErrorInfo` (domain `teamgate`) and `BadRequest` details: the wire
/// form of every error, shared by the gRPC services and the change feed's streams.
pub mod status {
    use std::collections::HashMap;

    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    pub const ERROR_DOMAIN: &str = "teamgate";

    pub fn status(code: Code, message: String, reason: &str, field: Option<&str>) -> Status {
        status_with(code, message, reason, field, &[])
    }

    /// [`status`] with `ErrorInfo` metadata.
    pub fn status_with(
        code: Code,
        message: String,
        reason: &str,
        field: Option<&str>,
        metadata: &[(&str, String)],
    ) -> Status {
        let mut details = ErrorDetails::new();
        let metadata: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        if let Some(field) = field {
            details.add_bad_request_violation(field, message.clone());
        }
        Status::with_error_details(code, message, details)
    }

    pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
        status(code, message.into(), reason, None)
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
