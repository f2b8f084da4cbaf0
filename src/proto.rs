//! Code generated from `proto/` by `build.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod teamgate {
    pub mod v1 {
        tonic::include_proto!("teamgate.v1");
    }
}

/// Every message and service teamgate defines, plus `google.rpc` error details, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("teamgate_descriptor");
