//! The change feed: `WatchChanges` streams and webhook deliveries, both read from the
//! `changes` table (see `store::changes`), so every replica serves the same feed and a
//! consumer resumes after its last cursor across restarts.
//!
//! One shared reader per replica (`hub`) reads the table after every change committed through
//! this replica (`App::on_commit` calls [`Feed::committed`] after each commit), after every
//! change another replica announces (PostgreSQL `LISTEN`/`NOTIFY`, `notify`), and every
//! `feed.poll_interval_ms` as a fallback, and fans the changes out to the open streams in
//! memory, so the database load does not grow with the number of streams. Streams are capped
//! per caller and per server (`limits`).

pub mod access;
pub mod hub;
pub mod limits;
pub mod notify;
pub mod stream;
pub mod webhook;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use http::{Request, Response};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tower::{Layer, Service};

use crate::app::App;
use crate::config::Scope;
use crate::config::{AuthConfig, FeedConfig, FeedWebhookConfig};
use crate::domain::clock::Clock;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::OrgId;
use crate::proto::teamgate::v1 as pb;
use crate::store::changes::{self, ChangeRow, Position};
use crate::store::{Store, StoreError};

pub use stream::FeedStream;

/// Cursor of a change written before the commit-order migration (and of every change on
/// SQLite, whose positions are sequence numbers): `c1.<seq>`.
pub const CURSOR_PREFIX: &str = "c1.";
/// Cursor of a change ordered by PostgreSQL's transaction ids: `c2.<pos>.<seq>`.
pub const CURSOR_PREFIX_V2: &str = "c2.";

/// Old `c1.` cursors name the same place they always did (every newer change sorts after
/// them), so consumers resume across the migration with no gap.
pub fn encode_cursor(p: Position) -> String {
    if p.pos == 0 {
        format!("{CURSOR_PREFIX}{}", p.seq)
    } else {
        format!("{CURSOR_PREFIX_V2}{}.{}", p.pos, p.seq)
    }
}

pub fn parse_cursor(raw: &str) -> Option<Position> {
    let number = |n: &str| n.parse::<i64>().ok().filter(|n| *n >= 0);
    if let Some(seq) = raw.strip_prefix(CURSOR_PREFIX) {
        return Some(Position::new(0, number(seq)?));
    }
    let (pos, seq) = raw.strip_prefix(CURSOR_PREFIX_V2)?.split_once('.')?;
    let pos = number(pos).filter(|p| *p > 0)?;
    Some(Position::new(pos, number(seq)?))
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Changes committed from now on.
    Now,
    /// Changes after this cursor.
    Cursor(Position),
    /// Changes after the one that produced this consistency token.
    Token(ConsistencyToken),
}

/// The feed's event for a change row.
pub fn event(row: &ChangeRow) -> pb::ChangeEvent {
    let consistency_token = OrgId::from_stored(&row.org_id)
        .map(|org| {
            ConsistencyToken {
                org,
                version: row.org_version,
            }
            .encode()
        })
        .unwrap_or_default();
    pb::ChangeEvent {
        cursor: encode_cursor(Position::of(row)),
        org_id: row.org_id.clone(),
        action: row.action.clone(),
        target: row.target.clone(),
        actor_user_id: row.actor_user_id.clone(),
        occurred_at: Some(crate::proto::timestamp(row.occurred_at)),
        consistency_token,
    }
}

#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub retention: Duration,
    pub buffer: usize,
    pub poll_interval: Duration,
    pub webhook_timeout: Duration,
    pub webhook_max_backoff: Duration,
    pub webhooks: Vec<FeedWebhookConfig>,
}

impl FeedSettings {
    pub fn from_config(c: &FeedConfig) -> FeedSettings {
        FeedSettings {
            retention: Duration::from_secs(c.retention_secs),
            buffer: c.buffer.max(1),
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(1)),
            webhook_timeout: Duration::from_millis(c.webhook_timeout_ms),
            webhook_max_backoff: Duration::from_millis(c.webhook_max_backoff_ms),
            webhooks: c.webhooks.clone(),
        }
    }
}

/// Counters of what streams hold in memory (for metrics and tests).
#[derive(Debug, Default)]
pub struct Stats {
    streams: AtomicUsize,
    buffered: AtomicUsize,
    high_water: AtomicUsize,
    produced: AtomicU64,
    emitted: AtomicU64,
    shared_reads: AtomicU64,
    pending_reads: AtomicU64,
    catch_up_reads: AtomicU64,
    reauthorized: AtomicU64,
    lagged: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Open WatchChanges streams.
    pub streams: usize,
    /// Events read from the database and waiting in stream buffers right now.
    pub buffered: usize,
    /// The most events one stream's buffer has held.
    pub high_water: usize,
    /// Events read from the database for streams, in total.
    pub produced: u64,
    /// Events handed to the transport, in total.
    pub emitted: u64,
    /// Reads of the `changes` table by the shared reader (one per wake-up, whatever the
    /// number of streams).
    pub shared_reads: u64,
    /// Of those, reads again shortly after one that found committed changes still above the
    /// watermark (waiting for older transactions, possibly of other deployments, to end).
    pub pending_reads: u64,
    /// Reads of the `changes` table by single streams catching up from an older position.
    pub catch_up_reads: u64,
    /// Times a stream re-authorized its actor because of a change that might revoke access.
    pub reauthorized: u64,
    /// Times a stream fell too far behind the shared reader and went back to the table.
    pub lagged: u64,
}

/// The change feed of one server.
pub struct Feed {
    store: Store,
    clock: Arc<dyn Clock>,
    settings: FeedSettings,
    wake: Arc<Notify>,
    closing: watch::Sender<bool>,
    /// Service keys with the `admin` scope: they may watch every org.
    admin_keys: HashSet<String>,
    /// No service keys configured: every caller is trusted (loopback only).
    open: bool,
    stats: Arc<Stats>,
    hub: Arc<hub::Hub>,
    slots: Arc<limits::Slots>,
    link: Arc<notify::Link>,
}

impl Feed {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        config: &FeedConfig,
        auth: &AuthConfig,
    ) -> Arc<Feed> {
        let (closing, _) = watch::channel(false);
        Arc::new(Feed {
            store,
            clock,
            settings: FeedSettings::from_config(config),
            wake: Arc::new(Notify::new()),
            closing,
            admin_keys: auth
                .keys
                .iter()
                .filter(|k| k.scopes.contains(&Scope::Admin))
                .map(|k| k.name.clone())
                .collect(),
            open: auth.keys.is_empty(),
            stats: Arc::new(Stats::default()),
            hub: Arc::new(hub::Hub::default()),
            slots: limits::Slots::new(config.max_streams_per_caller, config.max_streams),
            link: Arc::new(notify::Link::default()),
        })
    }

    pub fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    /// Whether a caller authenticated by `key` may watch every organization at once.
    pub fn may_watch_all(&self, key: Option<&str>) -> bool {
        self.open || key.is_some_and(|k| self.admin_keys.contains(k))
    }

    /// Wakes this replica's streams and webhook deliveries to look for new changes now.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Something may have been committed through this replica: wakes its own reader and
    /// webhooks, and (PostgreSQL) tells the other replicas.
    pub fn committed(&self) {
        self.wake();
        self.link.poke();
    }

    /// Ends every stream (with UNAVAILABLE, so consumers reconnect elsewhere) and stops
    /// webhook deliveries; used on shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
        self.wake.notify_waiters();
    }

    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            streams: self.stats.streams.load(Ordering::Relaxed),
            buffered: self.stats.buffered.load(Ordering::Relaxed),
            high_water: self.stats.high_water.load(Ordering::Relaxed),
            produced: self.stats.produced.load(Ordering::Relaxed),
            emitted: self.stats.emitted.load(Ordering::Relaxed),
            shared_reads: self.stats.shared_reads.load(Ordering::Relaxed),
            pending_reads: self.stats.pending_reads.load(Ordering::Relaxed),
            catch_up_reads: self.stats.catch_up_reads.load(Ordering::Relaxed),
            reauthorized: self.stats.reauthorized.load(Ordering::Relaxed),
            lagged: self.stats.lagged.load(Ordering::Relaxed),
        }
    }

    /// Deletes changes older than the retention window now; returns the pruned-through
    /// position.
    pub async fn prune_now(&self) -> Result<Position, StoreError> {
        let retention = chrono::Duration::from_std(self.settings.retention)
            .unwrap_or_else(|_| chrono::Duration::days(7));
        changes::prune(&self.store, self.clock.now() - retention).await
    }

    /// The server's maintenance loop: prunes the change feed, and sign-in failures past
    /// their window, periodically (every tenth of the retention, between 1 s and 1 min).
    pub async fn run_pruner(self: Arc<Self>, app: Arc<App>) {
        let every =
            (self.settings.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut closing = self.closing();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = closing.wait_for(|c| *c) => return,
            }
            if let Err(e) = self.prune_now().await {
                tracing::warn!(error = %e, "pruning the change feed failed; will retry");
            }
            if let Err(e) = app.prune_auth_failures().await {
                tracing::warn!(error = %e, "pruning sign-in failures failed; will retry");
            }
        }
    }

    /// Starts one delivery task per configured webhook endpoint. An endpoint seen for the
    /// first time gets every change committed from now on.
    pub async fn spawn_webhooks(self: &Arc<Self>) -> anyhow::Result<Vec<JoinHandle<()>>> {
        if self.settings.webhooks.is_empty() {
            return Ok(Vec::new());
        }
        let client = webhook::client();
        let mut tasks = Vec::new();
        for hook in &self.settings.webhooks {
            let endpoint = webhook::Endpoint::new(hook, client.clone())?;
            let from = webhook::position(self, &endpoint.name)
                .await
                .with_context(|| format!("feed.webhooks `{}`: reading its position", hook.name))?;
            tasks.push(tokio::spawn(webhook::run(self.clone(), endpoint, from)));
        }
        Ok(tasks)
    }

    /// The tower layer that hands handlers the feed (commits wake it through
    /// `App::on_commit`, not the transport).
    pub fn layer(self: &Arc<Self>) -> WakeLayer {
        WakeLayer { feed: self.clone() }
    }
}

/// Put in request extensions by [`WakeLayer`], so the WatchChanges handler finds the feed.
#[derive(Clone)]
pub struct FeedHandle(pub Arc<Feed>);

#[derive(Clone)]
pub struct WakeLayer {
    feed: Arc<Feed>,
}

impl<S> Layer<S> for WakeLayer {
    type Service = WakeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WakeService {
            inner,
            feed: self.feed.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WakeService<S> {
    inner: S,
    feed: Arc<Feed>,
}

impl<S, B, RB> Service<Request<B>> for WakeService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(FeedHandle(self.feed.clone()));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let old = Position::new(0, 42);
        assert_eq!(encode_cursor(old), "c1.42");
        assert_eq!(parse_cursor("c1.42"), Some(old));
        let new = Position::new(7_000_123, 9);
        assert_eq!(encode_cursor(new), "c2.7000123.9");
        assert_eq!(parse_cursor(&encode_cursor(new)), Some(new));
        assert_eq!(parse_cursor("c1.-1"), None);
        assert_eq!(parse_cursor("42"), None);
        assert_eq!(parse_cursor("c1.x"), None);
        assert_eq!(parse_cursor("c2.0.5"), None);
        assert_eq!(parse_cursor("c2.5"), None);
        assert_eq!(parse_cursor("c2.5.-1"), None);
    }
}
