//! Storage: SeaORM entities, migrations and queries. The same code runs on SQLite (embedded
//! default) and PostgreSQL (production).

pub mod audit;
pub mod changes;
pub mod decisions;
pub mod drift;
pub mod entities;
pub mod error;
pub mod identity;
pub mod invitations;
pub mod members;
pub mod migrations;
pub mod notify;
pub mod orgs;
pub mod outbox;
pub mod reachability;
pub mod roles;
pub mod scim;
pub mod sso;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::store::reachability::Reachability;

pub use error::StoreError;

/// A pool of database connections plus what is needed to write safely on either backend.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite allows one writer at a time; queueing writers here (instead of in SQLite's busy
    /// handler) keeps them fair and free of `database is locked` errors.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    reachability: Arc<Reachability>,
}

/// A write transaction. On SQLite it also holds the process-wide writer slot until dropped.
/// What store functions run on: the pool or an open transaction.
pub use sea_orm::ConnectionTrait as Connection;

/// An open transaction, as the use cases hand it to store functions.
pub type Tx = DatabaseTransaction;

pub struct WriteTx {
    pub txn: DatabaseTransaction,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().await.map_err(StoreError::from)
    }
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// PostgreSQL schema (search_path) to use; tests give each run its own.
    pub pg_schema: Option<String>,
}

/// Holds the PostgreSQL advisory lock named `key` until the transaction ends. Nothing on
/// SQLite, whose write transactions are serialized already.
pub async fn advisory_xact_lock<C: ConnectionTrait>(c: &C, key: &str) -> Result<(), StoreError> {
    if c.get_database_backend() == DbBackend::Postgres {
        c.execute_raw(sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            [key.into()],
        ))
        .await?;
    }
    Ok(())
}

/// How long a pooled connection may idle before it is pinged when handed out again.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(10);

impl Store {
    pub async fn connect(opts: &StoreOptions) -> Result<Store, StoreError> {
        let mut co = ConnectOptions::new(opts.url.clone());
        co.max_connections(opts.max_connections)
            .min_connections(1)
            .connect_timeout(opts.connect_timeout)
            .acquire_timeout(opts.connect_timeout)
            // sqlx pings every connection it hands out by default: a round trip more on
            // every write and every read. Only a connection idle long enough to have been
            // dropped (by the server, a proxy, a firewall) is pinged first.
            .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
            .sqlx_logging(false);
        if let Some(schema) = &opts.pg_schema {
            co.set_schema_search_path(schema.clone());
        }
        co.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
        let db = Database::connect(co).await.map_err(StoreError::from)?;
        let sqlite_writer = match db.get_database_backend() {
            DbBackend::Sqlite => Some(Arc::new(Mutex::new(()))),
            _ => None,
        };
        Ok(Store {
            db,
            sqlite_writer,
            reachability: Arc::new(Reachability::for_url(&opts.url)),
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::Migrator::up(&self.db, None)
            .await
            .map_err(StoreError::from)
    }

    /// Starts a write transaction. Callers lock the org row first (see `orgs::lock`) so that
    /// writes to one org are serialized on PostgreSQL too.
    pub async fn write(&self) -> Result<WriteTx, StoreError> {
        self.ensure_reachable()?;
        let writer = match &self.sqlite_writer {
            Some(m) => Some(m.clone().lock_owned().await),
            None => None,
        };
        let txn = self
            .db
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await
            .map_err(StoreError::from)?;
        Ok(WriteTx {
            txn,
            _writer: writer,
        })
    }

    /// Is the database reachable? Used by health reporting.
    /// Whether the last probe found the database server unreachable.
    pub fn unreachable(&self) -> bool {
        self.reachability.is_down()
    }

    /// `Err(Unavailable)` at once while the last probe found the database server unreachable.
    pub fn ensure_reachable(&self) -> Result<(), StoreError> {
        if self.unreachable() {
            return Err(StoreError::Unavailable(sea_orm::DbErr::Custom(
                "the database server refused or did not answer the last connection probe".into(),
            )));
        }
        Ok(())
    }

    /// Probes the database server with a TCP connect (see [`reachability`]); `None` when it
    /// cannot be probed that way (SQLite, Unix socket).
    pub async fn probe(&self, timeout: Duration) -> Option<bool> {
        self.reachability.probe(timeout).await
    }

    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    pub async fn close(self) {
        let _ = self.db.close().await;
    }

    /// Executes raw SQL; used by tests and start-up to create a PostgreSQL schema.
    pub async fn execute_unprepared(&self, sql: &str) -> Result<(), StoreError> {
        self.db
            .execute_unprepared(sql)
            .await
            .map(|_| ())
            .map_err(StoreError::from)
    }
}

/// Serializes a permission list for the `roles.permissions` column.
pub fn encode_permissions(perms: &[String]) -> String {
    serde_json::to_string(perms).unwrap_or_else(|_| "[]".into())
}

pub fn decode_permissions(raw: &str) -> Vec<String> {
    serde_json::from_str(raw).unwrap_or_default()
}
