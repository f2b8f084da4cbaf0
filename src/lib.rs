//! teamgate: organizations, members, roles, invitations and an audit log behind gRPC, plus a
//! fast answer to "can user X do permission Y in org Z?".

pub mod api;
pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod feed;
pub mod proto;
pub mod scim;
pub mod startup;
pub mod store;
pub mod telemetry;
