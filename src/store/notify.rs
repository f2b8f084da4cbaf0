//! PostgreSQL `LISTEN`/`NOTIFY`: the primitives the change feed's cross-replica wake-ups are
//! made of (see `feed::notify` for why and when they are used). Each side runs on a
//! connection of its own, outside the server's pool: a listening connection is held for good,
//! and the notifier must not queue behind busy writers for a connection.

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::{Store, StoreError};

fn failed(e: sea_orm::sqlx::Error) -> StoreError {
    StoreError::Db(sea_orm::DbErr::Custom(e.to_string()))
}

/// A pool of one connection with the server pool's connect options.
async fn own_pool(store: &Store) -> Result<PgPool, StoreError> {
    let pool = store.conn().get_postgres_connection_pool();
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with((*pool.connect_options()).clone())
        .await
        .map_err(failed)
}

/// The schema this deployment's tables live in (the server pool sets its search path).
pub async fn current_schema(store: &Store) -> Result<String, StoreError> {
    let row = store
        .conn()
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_schema()::text AS s",
        ))
        .await?;
    Ok(row
        .and_then(|r| r.try_get::<String>("", "s").ok())
        .unwrap_or_default())
}

/// Sends notifications on its own connection.
pub struct Notifier(PgPool);

impl Notifier {
    pub async fn connect(store: &Store) -> Result<Notifier, StoreError> {
        Ok(Notifier(own_pool(store).await?))
    }

    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.0)
            .await
            .map_err(failed)?;
        Ok(())
    }
}

/// Listens on one channel on its own connection.
pub struct Listener(PgListener);

impl Listener {
    pub async fn listen(store: &Store, channel: &str) -> Result<Listener, StoreError> {
        let pool = own_pool(store).await?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(failed)?;
        listener.listen(channel).await.map_err(failed)?;
        Ok(Listener(listener))
    }

    /// The next notification's payload; `Ok(None)` when the connection dropped and was
    /// re-established (notifications may have been lost meanwhile).
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .try_recv()
            .await
            .map_err(failed)?
            .map(|n| n.payload().to_owned()))
    }
}
