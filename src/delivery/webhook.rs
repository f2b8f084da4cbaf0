//! Delivering invitation emails to an HTTP endpoint as signed JSON, for deployments that send
//! mail through their own service.
//!
//! Each delivery is a `POST` with `content-type: application/json` and
//! - `x-teamgate-timestamp`: Unix seconds when it was signed;
//! - `x-teamgate-signature`: `v1=` + hex HMAC-SHA256, keyed with `mail.webhook.secret`, over
//!   `"{timestamp}.{body}"` (so a captured request cannot be replayed later with a new time);
//! - `x-teamgate-delivery`: the message id, the same on every retry (drop duplicates by it).
//!
//! Any 2xx answer counts as delivered; anything else is retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{EmailMessage, Sink};
use crate::config::{Secret, WebhookConfig};
use crate::domain::clock::Clock;

pub const TIMESTAMP_HEADER: &str = "x-teamgate-timestamp";
pub const SIGNATURE_HEADER: &str = "x-teamgate-signature";
pub const DELIVERY_HEADER: &str = "x-teamgate-delivery";

/// The JSON body of a delivery.
#[derive(Debug, Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
    to: &'a str,
    subject: &'a str,
    text: &'a str,
    html: &'a str,
}

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    secret: Secret,
    clock: Arc<dyn Clock>,
}

impl WebhookSink {
    pub fn new(
        c: &WebhookConfig,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<WebhookSink> {
        let url = reqwest::Url::parse(c.url.trim())
            .with_context(|| format!("mail.webhook.url `{}` is not a URL", c.url))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would re-send the signed body somewhere else: refuse it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("teamgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("mail.webhook: building the HTTP client")?;
        tracing::info!(
            host = url.host_str().unwrap_or(""),
            "invitation emails go to a webhook"
        );
        Ok(WebhookSink {
            client,
            url: url.to_string(),
            secret: c.secret.clone(),
            clock,
        })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn send(&self, m: &EmailMessage) -> Result<(), String> {
        let body = serde_json::to_vec(&Body {
            kind: m.kind,
            id: &m.id,
            to: &m.to,
            subject: &m.subject,
            text: &m.text,
            html: &m.html,
        })
        .map_err(|e| format!("encoding the body: {e}"))?;
        let timestamp = self.clock.now().timestamp();
        let sig = signature(self.secret.expose().as_bytes(), timestamp, &body);
        let resp = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, sig)
            .header(DELIVERY_HEADER, m.id.as_str())
            .body(body)
            .send()
            .await
            // Without the URL: it may carry a key in its query.
            .map_err(|e| format!("webhook request failed: {}", e.without_url()))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered HTTP {}", status.as_u16()))
        }
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_key_and_body() {
        let sig = signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        assert_ne!(sig, signature(b"Jefe", 1, b"what do ya want for nothing?"));
        assert_ne!(sig, signature(b"Jeff", 0, b"what do ya want for nothing?"));
        assert_ne!(sig, signature(b"Jefe", 0, b"what do ya want for nothing!"));
        // The signed data is "{timestamp}.{body}".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sig, format!("v1={hex}"));
    }

    #[test]
    fn hmac_is_sha256() {
        // RFC 4231 test case 2, straight through the same primitive.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
