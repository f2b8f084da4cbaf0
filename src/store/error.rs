use sea_orm::{DbErr, RuntimeErr, SqlErr};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be reached or a connection could not be had in time.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// A uniqueness rule stopped a concurrent duplicate; the caller may retry.
    #[error("conflicting concurrent change: {0}")]
    Conflict(#[source] DbErr),
    #[error("database error: {0}")]
    Db(#[source] DbErr),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
            return StoreError::Conflict(e);
        }
        let unavailable = match &e {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
            DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
                is_connection_error(s)
            }
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(e)
        } else {
            StoreError::Db(e)
        }
    }
}

fn is_connection_error(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match e {
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed => true,
        Error::Tls(_) => true,
        Error::Database(db) => {
            // SQLITE_BUSY / SQLITE_LOCKED and PostgreSQL's admin shutdown / cannot-connect class.
            let code = db.code().unwrap_or_default();
            matches!(code.as_ref(), "5" | "6" | "517")
                || code.starts_with("08")
                || code.starts_with("57P")
        }
        _ => false,
    }
}
