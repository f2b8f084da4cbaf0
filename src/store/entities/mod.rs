//! SeaORM entities, one per table.

pub mod audit_events;
pub mod auth_failures;
pub mod changes;
pub mod feed_sequence;
pub mod invitations;
pub mod memberships;
pub mod organizations;
pub mod outbox;
pub mod password_reset_tokens;
pub mod roles;
pub mod scim_group_mappings;
pub mod scim_tokens;
pub mod scim_users;
pub mod signing_keys;
pub mod sso_connections;
pub mod sso_domains;
pub mod sso_identities;
pub mod sso_states;
pub mod users;
pub mod webhook_cursors;
