//! Delivering invitation and password-reset emails to an HTTP endpoint as signed JSON, for
//! deployments that send mail through their own service. Signed and sent like the
//! change-feed webhooks (see [`super::signing`]); `x-teamgate-delivery` is the message id.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::signing::{Delivery, WebhookClient, parse_url};
use super::{EmailMessage, Sink};
use crate::config::{Secret, WebhookConfig};
use crate::domain::clock::Clock;

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

pub struct WebhookSink {
    client: WebhookClient,
    url: reqwest::Url,
    secret: Secret,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl WebhookSink {
    pub fn new(
        c: &WebhookConfig,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<WebhookSink> {
        let url = parse_url(&c.url, "mail.webhook.url")?;
        tracing::info!(
            host = url.host_str().unwrap_or(""),
            "invitation emails go to a webhook"
        );
        Ok(WebhookSink {
            client: WebhookClient::new()?,
            url,
            secret: c.secret.clone(),
            timeout,
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
        self.client
            .post(Delivery {
                url: &self.url,
                secret: &self.secret,
                timestamp: self.clock.now().timestamp(),
                id: &m.id,
                body,
                timeout: self.timeout,
            })
            .await
            .map_err(|e| format!("webhook {e}"))
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}
