//! gRPC transport: tonic services, conversions, error mapping, middleware.

pub mod auth;
pub mod authz;
pub mod caller;
pub mod context;
pub mod convert;
pub mod error;
pub mod ext_authz;
pub mod identity;
pub mod limits;
pub mod middleware;
pub mod paging;
pub mod sso;
pub mod team;
