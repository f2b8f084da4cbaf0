//! Domain rules: pure, no I/O. Everything here is testable without a server.

pub mod clock;
pub mod consistency;
pub mod drift;
pub mod email;
pub mod error;
pub mod ids;
pub mod invitation;
pub mod names;
pub mod permission;
pub mod policy;
pub mod roles;
pub mod routes;
pub mod token;

pub use error::DomainError;
