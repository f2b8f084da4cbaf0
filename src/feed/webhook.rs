//! Pushing the change feed to configured HTTP endpoints.
//!
//! Each change is one `POST` with `content-type: application/json`, the body being the
//! `ChangeEvent` as JSON, and the headers
//! - `x-teamgate-timestamp`: Unix seconds when it was signed;
//! - `x-teamgate-signature`: `sha256=` + hex HMAC-SHA256, keyed with the endpoint's secret,
//!   over `"{timestamp}.{body}"` (reject old timestamps to stop replays);
//! - `x-teamgate-delivery`: the change's cursor, the same on every retry (drop duplicates by it).
//!
//! Any 2xx answer counts as delivered; anything else is retried with exponential backoff.
//! Every endpoint has its own task and its own position in `webhook_cursors`, so a failing
//! endpoint delays only itself, never a mutation or another endpoint. Delivery is
//! at-least-once: replicas share the position, and a change may arrive twice around a
//! restart or when two replicas race.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;

use super::{Feed, encode_cursor};
use crate::config::{FeedWebhookConfig, Secret};
use crate::store::changes::{self, ChangeRow, Position};

pub const TIMESTAMP_HEADER: &str = "x-teamgate-timestamp";
pub const SIGNATURE_HEADER: &str = "x-teamgate-signature";
pub const DELIVERY_HEADER: &str = "x-teamgate-delivery";

const PAGE: u64 = 100;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP/1.1 client for `https://` (web PKI roots) and `http://` endpoints.
pub fn client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// `sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The JSON body of a delivery.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    pub cursor: String,
    pub org_id: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub actor_user_id: &'a str,
    pub occurred_at: String,
    pub consistency_token: String,
}

pub fn body(row: &ChangeRow) -> Vec<u8> {
    let event = super::event(row);
    let body = Body {
        cursor: encode_cursor(Position::of(row)),
        org_id: &row.org_id,
        action: &row.action,
        target: &row.target,
        actor_user_id: &row.actor_user_id,
        occurred_at: row
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        consistency_token: event.consistency_token,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One configured endpoint.
pub struct Endpoint {
    pub(super) name: String,
    uri: http::Uri,
    secret: Secret,
    client: HttpClient,
}

impl Endpoint {
    pub fn new(c: &FeedWebhookConfig, client: HttpClient) -> anyhow::Result<Endpoint> {
        let uri: http::Uri = c
            .url
            .trim()
            .parse()
            .with_context(|| format!("feed.webhooks `{}`: url is not a URL", c.name))?;
        Ok(Endpoint {
            name: c.name.trim().to_owned(),
            uri,
            secret: c.secret.clone(),
            client,
        })
    }

    async fn post(&self, feed: &Feed, row: &ChangeRow) -> Result<(), String> {
        let body = body(row);
        let timestamp = feed.clock.now().timestamp();
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("teamgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                SIGNATURE_HEADER,
                signature(self.secret.expose().as_bytes(), timestamp, &body),
            )
            .header(DELIVERY_HEADER, encode_cursor(Position::of(row)))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let response =
            tokio::time::timeout(feed.settings.webhook_timeout, self.client.request(request))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| format!("{e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", status.as_u16()))
        }
    }
}

/// Delivers one change, retrying with backoff until it succeeds; `false` when shutting down.
async fn deliver(feed: &Feed, endpoint: &Endpoint, row: &ChangeRow) -> bool {
    let mut closing = feed.closing();
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        match endpoint.post(feed, row).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(
                    webhook = %endpoint.name,
                    cursor = %encode_cursor(Position::of(row)),
                    attempt,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    error = %e,
                    "webhook delivery failed; will retry"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closing.wait_for(|c| *c) => return false,
        }
        backoff = (backoff * 2).min(feed.settings.webhook_max_backoff);
        attempt = attempt.saturating_add(1);
    }
}

/// Loads (or creates, at the feed's head) the endpoint's delivery position. On PostgreSQL the
/// head is the watermark, so changes committed just before may be delivered too (delivery is
/// at least once anyway).
pub(super) async fn position(
    feed: &Feed,
    name: &str,
) -> Result<Position, crate::store::StoreError> {
    let conn = feed.store.conn();
    if let Some(p) = changes::webhook_cursor(conn, name).await? {
        return Ok(p);
    }
    let head = changes::extent(conn).await?.head;
    changes::init_webhook_cursor(conn, name, head, feed.clock.now()).await
}

/// Delivers an endpoint's changes in order, forever (until shutdown).
pub async fn run(feed: Arc<Feed>, endpoint: Endpoint, from: Position) {
    let endpoint = Arc::new(endpoint);
    let mut closing = feed.closing();
    let poll = feed.settings.poll_interval;
    let mut at = Some(from);
    let mut pending_wait = super::hub::PENDING_FIRST;
    loop {
        if *closing.borrow() {
            return;
        }
        let notified = feed.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let result = async {
            let from = match at {
                Some(p) => p,
                None => position(&feed, &endpoint.name).await?,
            };
            at = Some(from);
            let page = changes::page(&feed.store, from, None, PAGE).await?;
            Ok::<_, crate::store::StoreError>((from, page))
        }
        .await;
        let (from, page) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(webhook = %endpoint.name, error = %e, "reading the change feed failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = closing.changed() => {}
                }
                continue;
            }
        };
        if page.pruned_past(from) {
            let to = page.extent.pruned_through;
            tracing::error!(
                webhook = %endpoint.name,
                from = %encode_cursor(from),
                to = %encode_cursor(to),
                "webhook endpoint fell behind the retention window: pruned changes were skipped"
            );
            at = advance(&feed, &endpoint.name, from, to).await;
            continue;
        }
        if page.rows.is_empty() {
            // Committed changes above the watermark are read again shortly, not at the poll.
            let wait = if page.extent.pending {
                let w = pending_wait.min(poll);
                pending_wait = (pending_wait * 2).min(super::hub::PENDING_MAX);
                w
            } else {
                poll
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = closing.changed() => {}
            }
            continue;
        }
        pending_wait = super::hub::PENDING_FIRST;
        let mut current = from;
        for row in &page.rows {
            if !deliver(&feed, &endpoint, row).await {
                return;
            }
            let to = Position::of(row);
            match advance(&feed, &endpoint.name, current, to).await {
                Some(p) if p == to => current = p,
                // Another replica moved the position (or the database failed): reload it.
                _ => {
                    at = None;
                    break;
                }
            }
            at = Some(current);
        }
    }
}

/// Moves the stored position; `Some(to)` on success, `None` when it must be reloaded.
async fn advance(feed: &Feed, name: &str, from: Position, to: Position) -> Option<Position> {
    match changes::advance_webhook_cursor(feed.store.conn(), name, from, to, feed.clock.now()).await
    {
        Ok(true) => Some(to),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(webhook = %name, error = %e, "saving the webhook position failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_over_timestamp_and_body() {
        let sig = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_ne!(sig, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
    }
}
