//! Delivery of outbox messages (invitation emails) by a background worker, with retries and
//! exponential backoff. A message stays in the outbox until a sink accepts it, so a failed
//! delivery or a restart loses nothing.

pub mod email;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::Notify;

use crate::domain::clock::Clock;
use crate::store::entities::outbox as outbox_entity;
use crate::store::{Store, outbox};

pub use email::{EmailMessage, InvitationEmail};

/// Where messages go.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    async fn send(&self, message: &EmailMessage) -> Result<(), String>;
    fn name(&self) -> &'static str;
}

/// The default sink: writes each email to the log. The accept link carries a secret, so it is
/// logged at debug level only (`RUST_LOG=teamgate::delivery=debug` shows it in development).
pub struct LogSink;

#[async_trait]
impl Sink for LogSink {
    async fn send(&self, m: &EmailMessage) -> Result<(), String> {
        tracing::info!(to = %m.to, subject = %m.subject, "invitation email delivered to the log sink");
        tracing::debug!(to = %m.to, body = %m.text, "invitation email body");
        Ok(())
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub poll_interval: Duration,
    pub batch: u64,
    pub max_backoff: Duration,
    /// How long a claimed message is hidden from other workers while it is being sent.
    pub lease: Duration,
    pub accept_url_base: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            poll_interval: Duration::from_millis(500),
            batch: 50,
            max_backoff: Duration::from_secs(3600),
            lease: Duration::from_secs(300),
            accept_url_base: String::new(),
        }
    }
}

pub struct Worker {
    store: Store,
    sink: Arc<dyn Sink>,
    clock: Arc<dyn Clock>,
    settings: WorkerSettings,
    wake: Arc<Notify>,
}

fn backoff(attempts: i32, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    Duration::from_secs(1u64 << exp).min(max)
}

impl Worker {
    pub fn new(
        store: Store,
        sink: Arc<dyn Sink>,
        clock: Arc<dyn Clock>,
        settings: WorkerSettings,
    ) -> Worker {
        Worker {
            store,
            sink,
            clock,
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until the task is aborted.
    pub async fn run(self) {
        loop {
            match self.deliver_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox delivery pass failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Delivers every message that is due; returns how many were attempted.
    pub async fn deliver_due(&self) -> Result<usize, crate::store::StoreError> {
        let now = self.clock.now();
        let due = outbox::due(self.store.conn(), now, self.settings.batch).await?;
        let mut attempted = 0;
        for row in due {
            // Claim by moving the next attempt past the lease, only if nobody else has.
            let lease = chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
            let claimed = outbox_entity::Entity::update_many()
                .col_expr(
                    outbox_entity::Column::NextAttemptAt,
                    Expr::value(now + lease),
                )
                .filter(outbox_entity::Column::Id.eq(row.id.as_str()))
                .filter(outbox_entity::Column::NextAttemptAt.eq(row.next_attempt_at))
                .filter(outbox_entity::Column::DeliveredAt.is_null())
                .exec(self.store.conn())
                .await
                .map_err(crate::store::StoreError::from)?;
            if claimed.rows_affected == 0 {
                continue;
            }
            attempted += 1;
            let result = match InvitationEmail::from_payload(&row.payload) {
                Ok(inv) => {
                    let message = inv.render(&self.settings.accept_url_base);
                    self.sink.send(&message).await
                }
                Err(e) => Err(format!("unreadable payload: {e}")),
            };
            match result {
                Ok(()) => outbox::mark_delivered(self.store.conn(), &row.id, Utc::now()).await?,
                Err(error) => {
                    let wait = backoff(row.attempts, self.settings.max_backoff);
                    tracing::warn!(outbox_id = %row.id, attempts = row.attempts + 1, sink = self.sink.name(), %error, retry_in_s = wait.as_secs(), "delivery failed; will retry");
                    let next =
                        self.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
                    outbox::mark_failed(self.store.conn(), &row.id, &error, next).await?;
                }
            }
        }
        Ok(attempted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(0, max), Duration::from_secs(1));
        assert_eq!(backoff(3, max), Duration::from_secs(8));
        assert_eq!(backoff(30, max), max);
    }
}
