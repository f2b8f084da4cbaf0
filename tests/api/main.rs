//! Integration tests: one binary, each test with its own server, database and Redis prefix.

pub mod helpers;

mod audit;
mod authz;
mod bad_input;
mod cache;
mod ext_authz;
mod faults;
mod feed;
mod feed_scaling;
mod hostile;
mod identity;
mod invalidation;
mod invitations;
mod limits;
mod log_secrets;
mod maintenance;
mod members;
mod orgs;
mod policies;
mod races;
mod roles;
mod scim;
mod security;
mod server;
mod sso;
mod telemetry;
mod tenancy;
mod trust;
