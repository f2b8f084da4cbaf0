//! Pushing the change feed to configured HTTP endpoints.
//!
//! Each change is one `POST` of the `ChangeEvent` as JSON, signed and sent like every teamgate
//! webhook (see [`crate::delivery::signing`]: `x-teamgate-timestamp`, `x-teamgate-signature:
//! sha256=…`); `x-teamgate-delivery` is the change's cursor.
//!
//! Any 2xx answer counts as delivered; anything else is retried with exponential backoff.
//! Every endpoint has its own task and its own position in `webhook_cursors`, so a failing
//! endpoint delays only itself, never a mutation or another endpoint. Delivery is
//! at-least-once: replicas share the position, and a change may arrive twice around a
//! restart or when two replicas race.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Feed, encode_cursor};
use crate::config::{FeedWebhookConfig, Secret};
use crate::delivery::signing::{Delivery, WebhookClient, parse_url};
use crate::store::changes::{self, ChangeRow, Position};

const PAGE: u64 = 100;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

pub type HttpClient = WebhookClient;

/// The client all endpoints share. Called once at start-up, where only a TLS set-up failure
/// can stop it, and then no webhook could ever be delivered.
pub fn client() -> HttpClient {
    WebhookClient::new().expect("building the webhook HTTP client")
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
    url: reqwest::Url,
    secret: Secret,
    client: HttpClient,
}

impl Endpoint {
    pub fn new(c: &FeedWebhookConfig, client: HttpClient) -> anyhow::Result<Endpoint> {
        let url = parse_url(&c.url, &format!("feed.webhooks `{}`: url", c.name))?;
        Ok(Endpoint {
            name: c.name.trim().to_owned(),
            url,
            secret: c.secret.clone(),
            client,
        })
    }

    async fn post(&self, feed: &Feed, row: &ChangeRow) -> Result<(), String> {
        self.client
            .post(Delivery {
                url: &self.url,
                secret: &self.secret,
                timestamp: feed.clock.now().timestamp(),
                id: &encode_cursor(Position::of(row)),
                body: body(row),
                timeout: feed.settings.webhook_timeout,
            })
            .await
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
