//! teamgate: organizations, members, roles, invitations and an audit log behind gRPC, plus a
//! fast answer to "can user X do permission Y in org Z?".

pub mod app;
pub mod cache;
pub mod domain;
pub mod store;
