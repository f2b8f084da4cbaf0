//! Delivery of outbox messages (invitation emails) by a background worker, with retries and
//! exponential backoff. A message stays in the outbox until a sink accepts it, so a failed
//! delivery or a restart loses nothing.
//!
//! Sinks: the log (default), SMTP (`smtp`), or a signed JSON webhook (`webhook`), chosen by
//! the `[mail]` config section.

pub mod email;
pub mod signing;
pub mod smtp;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::config::{MailConfig, MailSinkKind};
use crate::domain::clock::Clock;
use crate::domain::ids::OrgId;
use crate::domain::invitation::{InvitationStatus, StoredState};
use crate::domain::token::hash_secret;
use crate::store::{Store, StoreError, invitations, orgs, outbox};

pub use email::{
    EmailMessage, INVITATION_EMAIL, InvitationEmail, PASSWORD_RESET_EMAIL, PasswordResetEmail,
};

/// Where messages go.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    async fn send(&self, message: &EmailMessage) -> Result<(), String>;
    fn name(&self) -> &'static str;
}

/// The default sink: writes each email to the log. The accept link carries a secret, so the
/// body is logged at debug level only: in development, `RUST_LOG=info,teamgate::delivery=debug`
/// shows it; at the default `info` level it never appears.
pub struct LogSink;

#[async_trait]
impl Sink for LogSink {
    async fn send(&self, m: &EmailMessage) -> Result<(), String> {
        tracing::info!(kind = m.kind, to = %m.to, subject = %m.subject, "email delivered to the log sink");
        tracing::debug!(kind = m.kind, to = %m.to, body = %m.text, "email body");
        Ok(())
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

/// The sink the config asks for, or `None` for `log` (the caller's default sink is used then,
/// so tests can capture what would have been logged).
pub fn configured_sink(
    mail: &MailConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Option<Arc<dyn Sink>>> {
    let timeout = Duration::from_millis(mail.send_timeout_ms);
    Ok(match mail.sink {
        MailSinkKind::Log => None,
        MailSinkKind::Smtp => Some(Arc::new(smtp::SmtpSink::new(&mail.smtp, timeout)?)),
        MailSinkKind::Webhook => Some(Arc::new(webhook::WebhookSink::new(
            &mail.webhook,
            timeout,
            clock,
        )?)),
    })
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub poll_interval: Duration,
    pub batch: u64,
    pub max_backoff: Duration,
    /// How long a claimed message is hidden from other workers while it is being sent. Each
    /// message is claimed just before its own attempt, so this only has to outlast one send;
    /// it is also how long a message claimed by a worker that died waits to be picked up again.
    pub lease: Duration,
    /// One attempt is abandoned after this long; must be well below `lease`.
    pub send_timeout: Duration,
    pub accept_url_base: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            poll_interval: Duration::from_millis(500),
            batch: 50,
            max_backoff: Duration::from_secs(3600),
            lease: Duration::from_secs(25),
            send_timeout: Duration::from_secs(15),
            accept_url_base: String::new(),
        }
    }
}

impl WorkerSettings {
    pub fn from_config(mail: &MailConfig, accept_url_base: &str) -> WorkerSettings {
        let send_timeout = Duration::from_millis(mail.send_timeout_ms);
        WorkerSettings {
            poll_interval: Duration::from_millis(mail.poll_interval_ms),
            max_backoff: Duration::from_secs(mail.max_backoff_secs),
            lease: send_timeout + Duration::from_secs(10),
            send_timeout,
            accept_url_base: accept_url_base.to_owned(),
            ..WorkerSettings::default()
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

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What one pass did with one message.
enum Outcome {
    Delivered,
    /// The invitation is no longer pending under this token (resent, revoked, accepted or
    /// expired): the email would carry a dead link, so it is dropped.
    Superseded(&'static str),
    Failed(String),
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

    /// Notifying it makes the worker look for due messages at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn sink_name(&self) -> &'static str {
        self.sink.name()
    }

    /// Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
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

    /// Delivers every invitation email that is due; returns how many were attempted. Safe to
    /// run from several workers (replicas) at once: each message is claimed before sending.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let due = outbox::due_of_kinds(
            self.store.conn(),
            &[INVITATION_EMAIL, PASSWORD_RESET_EMAIL],
            now,
            self.settings.batch,
        )
        .await?;
        let mut attempted = 0;
        for row in due {
            let until = now + chrono_duration(self.settings.lease);
            if !outbox::claim(self.store.conn(), &row, until).await? {
                continue;
            }
            attempted += 1;
            let outcome = if row.kind == PASSWORD_RESET_EMAIL {
                self.attempt_reset(&row.payload, &row.id).await
            } else {
                self.attempt(&row.payload, &row.id).await?
            };
            match outcome {
                Outcome::Delivered => {
                    tracing::info!(outbox_id = %row.id, kind = %row.kind, sink = self.sink.name(), attempts = row.attempts + 1, "email delivered");
                    outbox::mark_delivered(self.store.conn(), &row.id, self.clock.now()).await?;
                }
                Outcome::Superseded(why) => {
                    tracing::info!(outbox_id = %row.id, why, "invitation email dropped: the invitation is no longer pending under this link");
                    outbox::mark_delivered(self.store.conn(), &row.id, self.clock.now()).await?;
                }
                Outcome::Failed(error) => {
                    let wait = backoff(row.attempts, self.settings.max_backoff);
                    tracing::warn!(outbox_id = %row.id, attempts = row.attempts + 1, sink = self.sink.name(), %error, retry_in_s = wait.as_secs(), "delivery failed; will retry");
                    let next = self.clock.now() + chrono_duration(wait);
                    outbox::mark_failed(self.store.conn(), &row.id, &error, next).await?;
                }
            }
        }
        Ok(attempted)
    }

    async fn attempt_reset(&self, payload: &str, outbox_id: &str) -> Outcome {
        let reset = match PasswordResetEmail::from_payload(payload) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("unreadable payload: {e}")),
        };
        let mut message = reset.render();
        message.id = outbox_id.to_owned();
        self.send(&message).await
    }

    async fn send(&self, message: &EmailMessage) -> Outcome {
        let sent = tokio::time::timeout(self.settings.send_timeout, self.sink.send(message)).await;
        match sent {
            Ok(Ok(())) => Outcome::Delivered,
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Failed(format!(
                "{} sink did not answer within {} ms",
                self.sink.name(),
                self.settings.send_timeout.as_millis()
            )),
        }
    }

    async fn attempt(&self, payload: &str, outbox_id: &str) -> Result<Outcome, StoreError> {
        let inv = match InvitationEmail::from_payload(payload) {
            Ok(inv) => inv,
            Err(e) => return Ok(Outcome::Failed(format!("unreadable payload: {e}"))),
        };
        let conn = self.store.conn();
        let Some(current) = invitations::find_by_token_hash(conn, &hash_secret(&inv.token)).await?
        else {
            return Ok(Outcome::Superseded("resent"));
        };
        match StoredState::from_stored(&current.state).status(current.expires_at, self.clock.now())
        {
            InvitationStatus::Pending => {}
            InvitationStatus::Accepted => return Ok(Outcome::Superseded("accepted")),
            InvitationStatus::Revoked => return Ok(Outcome::Superseded("revoked")),
            InvitationStatus::Expired => return Ok(Outcome::Superseded("expired")),
        }
        if orgs::find_live(conn, &OrgId::from_row(&current.org_id))
            .await?
            .is_none()
        {
            return Ok(Outcome::Superseded("organization deleted"));
        }
        let mut message = inv.render(&self.settings.accept_url_base);
        message.id = outbox_id.to_owned();
        Ok(self.send(&message).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// What the log sink writes for one invitation email with the log at `level`.
    fn log_sink_output(level: tracing::Level) -> String {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        let message = InvitationEmail {
            invitation_id: "i".into(),
            to: "ann@example.com".into(),
            first_name: "Ann".into(),
            org_name: "Acme".into(),
            inviter_name: "Bob".into(),
            role: "member".into(),
            token: "SECRET-TOKEN-0123456789".into(),
            expires_at: "2026-12-01T00:00:00Z".into(),
        }
        .render("https://app.example.com/accept?token=");
        tracing::subscriber::with_default(subscriber, || {
            futures::executor::block_on(LogSink.send(&message))
        })
        .unwrap();
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn log_sink_never_logs_the_token_at_info() {
        let info = log_sink_output(tracing::Level::INFO);
        assert!(info.contains("ann@example.com"), "{info}");
        assert!(!info.contains("SECRET-TOKEN"), "{info}");
        let debug = log_sink_output(tracing::Level::DEBUG);
        assert!(
            debug.contains("SECRET-TOKEN-0123456789"),
            "visible at debug level for development: {debug}"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(0, max), Duration::from_secs(1));
        assert_eq!(backoff(3, max), Duration::from_secs(8));
        assert_eq!(backoff(30, max), max);
    }
}
