//! Wake-ups across replicas on PostgreSQL: `LISTEN`/`NOTIFY` on channel [`CHANNEL`], so a
//! change committed through one replica wakes the shared reader and the webhook tasks of
//! every other replica at once; `feed.poll_interval_ms` stays only as the fallback for a lost
//! notification (a dropped connection, a replica that died between its commit and its notify).
//!
//! Why the notification is sent right after the commit and not inside the writing
//! transaction: PostgreSQL serializes the commits of all notifying transactions on one
//! database-wide lock, held until each commit has been flushed (so that notifications queue
//! in commit order). A `NOTIFY` in every audited write would bring back exactly the global
//! queue the change feed lost its counter row to remove (see the benchmark report in
//! `bench/results/`). So each replica has one notifier task that sends a `NOTIFY` after its
//! own commits, coalescing a burst into one, on a connection of its own (a statement without a
//! transaction id writes no commit record, so its turn on that lock is short), and one
//! listening connection.
//!
//! Payload: `<schema>/<replica>` — the PostgreSQL schema the deployment lives in (replicas of
//! other deployments sharing the database ignore it) and a random id of the sending replica
//! (which has woken its own reader already).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Feed;
use crate::store::notify::{Listener, Notifier, current_schema};

/// The `LISTEN`/`NOTIFY` channel of the change feed.
pub const CHANNEL: &str = "teamgate_feed";

/// How long a broken listening or notifying connection waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// This replica's side of the cross-replica wake-ups.
pub struct Link {
    /// Set when this replica committed something the others should read.
    poke: Notify,
    /// Random per process: a replica's own notifications are not wake-ups for it.
    replica: String,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            poke: Notify::new(),
            replica: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

impl Link {
    /// Asks the notifier to tell the other replicas; many calls before it runs make one
    /// notification.
    pub fn poke(&self) {
        self.poke.notify_one();
    }
}

/// Runs the notifier and the listener until the feed closes; nothing on SQLite, whose
/// replicas (processes sharing one file) keep polling.
pub async fn run(feed: Arc<Feed>) {
    if !feed.store.is_postgres() {
        return;
    }
    let schema = loop {
        match current_schema(&feed.store).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "change feed wake-ups: reading the schema failed; will retry");
                if sleep_or_close(&feed, RETRY).await {
                    return;
                }
            }
        }
    };
    let link = feed.link.clone();
    let payload = format!("{schema}/{}", link.replica);
    let own = payload.clone();
    tokio::join!(notifier(&feed, &payload), listener(&feed, &schema, &own));
}

/// `true` when the feed closed meanwhile.
async fn sleep_or_close(feed: &Feed, d: Duration) -> bool {
    let mut closing = feed.closing();
    let closed = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = closing.wait_for(|c| *c) => true,
    };
    closed || *closing.borrow()
}

async fn notifier(feed: &Feed, payload: &str) {
    let mut closing = feed.closing();
    let mut notifier: Option<Notifier> = None;
    loop {
        tokio::select! {
            _ = feed.link.poke.notified() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        if notifier.is_none() {
            match Notifier::connect(&feed.store).await {
                Ok(n) => notifier = Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "change feed wake-ups: connecting the notifier failed; other replicas poll meanwhile");
                    if sleep_or_close(feed, RETRY).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(n) = &notifier else { continue };
        if let Err(e) = n.notify(CHANNEL, payload).await {
            tracing::warn!(error = %e, "change feed wake-ups: NOTIFY failed; other replicas poll meanwhile");
        }
    }
}

async fn listener(feed: &Feed, schema: &str, own: &str) {
    let prefix = format!("{schema}/");
    loop {
        let mut listener = match Listener::listen(&feed.store, CHANNEL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "change feed wake-ups: LISTEN failed; polling meanwhile");
                if sleep_or_close(feed, RETRY).await {
                    return;
                }
                continue;
            }
        };
        // Changes committed while nobody listened were not announced.
        feed.wake();
        let mut closing = feed.closing();
        loop {
            let got = tokio::select! {
                n = listener.next() => n,
                _ = closing.wait_for(|c| *c) => return,
            };
            match got {
                Ok(Some(payload)) if payload.starts_with(&prefix) && payload != own => {
                    feed.wake();
                }
                Ok(Some(_)) => {}
                // The connection dropped and was re-established: wake-ups may be lost.
                Ok(None) => feed.wake(),
                Err(e) => {
                    tracing::warn!(error = %e, "change feed wake-ups: the listening connection failed; polling meanwhile");
                    break;
                }
            }
        }
        if sleep_or_close(feed, RETRY).await {
            return;
        }
    }
}
