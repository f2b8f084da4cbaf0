//! Domain rules: pure, no I/O. Everything here is testable without a server.

pub mod clock;
pub mod consistency;
pub mod decision;
pub mod drift;
pub mod email;
pub mod error;
pub mod ids;
pub mod invitation;
pub mod names;
pub mod password;
pub mod permission;
pub mod policy;
pub mod roles;
pub mod routes;
pub mod scim_filter;
pub mod sealed;
pub mod session;
pub mod sso;
pub mod token;
pub mod totp;

pub use error::DomainError;
