//! Schema migrations, applied in order; the same ones run on SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;

mod m20261126_000001_initial;
mod m20261126_000002_changes;
mod m20261126_000003_identity;
mod m20261201_000004_feed_commit_order;
mod m20261202_000005_sso;
mod m20261202_000006_scim;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_initial::Migration),
            Box::new(m20261126_000002_changes::Migration),
            Box::new(m20261126_000003_identity::Migration),
            Box::new(m20261201_000004_feed_commit_order::Migration),
            Box::new(m20261202_000005_sso::Migration),
            Box::new(m20261202_000006_scim::Migration),
        ]
    }
}
