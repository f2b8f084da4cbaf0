//! SeaORM entities, one per table.

pub mod audit_events;
pub mod invitations;
pub mod memberships;
pub mod organizations;
pub mod outbox;
pub mod roles;
pub mod users;
