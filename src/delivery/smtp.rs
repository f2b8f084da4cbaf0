//! Sending invitation emails through an SMTP server with `lettre` (rustls for TLS).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{EmailMessage, Sink};
use crate::config::{SmtpConfig, SmtpTls};

pub struct SmtpSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// The usual port of each TLS mode.
fn default_port(tls: SmtpTls) -> u16 {
    match tls {
        SmtpTls::None => 25,
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
    }
}

impl SmtpSink {
    /// Builds the transport; connections are made (and pooled) on the first send, so a mail
    /// server that is down at start-up only delays delivery. Call it inside the Tokio runtime
    /// (the pool starts a task).
    pub fn new(c: &SmtpConfig, timeout: Duration) -> anyhow::Result<SmtpSink> {
        let host = c.host.trim();
        let builder = match c.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .with_context(|| format!("mail.smtp.host `{host}`: setting up STARTTLS"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .with_context(|| format!("mail.smtp.host `{host}`: setting up TLS"))?,
        };
        let port = if c.port == 0 {
            default_port(c.tls)
        } else {
            c.port
        };
        let mut builder = builder.port(port).timeout(Some(timeout));
        if !c.username.expose().is_empty() {
            builder = builder.credentials(Credentials::new(
                c.username.expose().to_owned(),
                c.password.expose().to_owned(),
            ));
        }
        let from: Mailbox = c
            .from
            .trim()
            .parse()
            .with_context(|| format!("mail.smtp.from `{}` is not a mailbox", c.from))?;
        tracing::info!(%host, port, tls = ?c.tls, "invitation emails go to SMTP");
        Ok(SmtpSink {
            transport: builder.build(),
            from,
        })
    }

    fn message(&self, m: &EmailMessage) -> Result<Message, String> {
        let to: Mailbox =
            m.to.parse()
                .map_err(|e| format!("recipient is not a mailbox: {e}"))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone());
        if !m.id.is_empty() {
            // Stable across retries, so a relay or inbox can spot a duplicate.
            let domain = self.from.email.domain().to_owned();
            builder = builder.message_id(Some(format!("<{}@{domain}>", m.id)));
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                m.text.clone(),
                m.html.clone(),
            ))
            .map_err(|e| format!("building the message: {e}"))
    }
}

#[async_trait]
impl Sink for SmtpSink {
    async fn send(&self, m: &EmailMessage) -> Result<(), String> {
        let message = self.message(m)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("smtp: {e}"))
    }

    fn name(&self) -> &'static str {
        "smtp"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(tls: SmtpTls) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: 0,
            tls,
            username: Secret::default(),
            password: Secret::default(),
            from: "Teamgate <no-reply@example.com>".into(),
        }
    }

    // Building the transport starts its connection pool, which needs a runtime.
    #[tokio::test]
    async fn builds_every_tls_mode_and_rejects_a_bad_sender() {
        for tls in [SmtpTls::None, SmtpTls::Starttls, SmtpTls::Tls] {
            assert!(SmtpSink::new(&config(tls), Duration::from_secs(1)).is_ok());
        }
        let mut bad = config(SmtpTls::None);
        bad.from = "not a mailbox".into();
        let err = SmtpSink::new(&bad, Duration::from_secs(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("mail.smtp.from"), "{err}");
    }

    #[tokio::test]
    async fn message_has_both_bodies_and_a_stable_id() {
        let sink = SmtpSink::new(&config(SmtpTls::None), Duration::from_secs(1)).unwrap();
        let m = EmailMessage {
            kind: crate::delivery::INVITATION_EMAIL,
            id: "0190-abc".into(),
            to: "ann@example.com".into(),
            subject: "Hi".into(),
            text: "plain".into(),
            html: "<p>html</p>".into(),
        };
        let raw = String::from_utf8(sink.message(&m).unwrap().formatted()).unwrap();
        assert!(raw.contains("Message-ID: <0190-abc@example.com>"), "{raw}");
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("text/html"));
    }
}
