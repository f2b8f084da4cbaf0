//! The shared reader: one task per replica reads the `changes` table (all orgs) and fans the
//! batches out to every live stream in memory, so the database sees one read per wake-up
//! however many streams are open.
//!
//! A batch says which range of the feed it covers (`after < seq <= through`); a stream that
//! has accounted for every change up to `after` applies it, and one that has not (it lagged,
//! or the reader jumped past pruned changes) goes back to reading the table from its own
//! position. That way a stream never skips a change it did not see in a batch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use super::Feed;
use crate::store::changes::{self, ChangeRow};

/// Changes read at once by the shared reader.
const PAGE: u64 = 200;
/// Batches kept for streams that are momentarily behind; a stream further behind falls back
/// to reading the table on its own.
const BACKLOG: usize = 256;
/// Consecutive failed reads after which streams are ended (to reconnect, maybe elsewhere)
/// rather than kept waiting on a database that is not answering.
const FAILURES_BEFORE_GIVING_UP: u32 = 3;

#[derive(Debug)]
pub struct Batch {
    /// Every change with `seq <= after` was published before this batch.
    pub after: i64,
    /// This batch holds every change with `after < seq <= through`.
    pub through: i64,
    pub rows: Vec<ChangeRow>,
}

#[derive(Debug, Clone)]
pub enum Msg {
    Batch(Arc<Batch>),
    /// The table could not be read: streams end with UNAVAILABLE.
    Failed,
}

struct State {
    /// Every change up to here has been published.
    position: i64,
    tx: broadcast::Sender<Msg>,
}

pub struct Hub {
    state: Mutex<State>,
}

impl Default for Hub {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        Hub {
            state: Mutex::new(State { position: 0, tx }),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the reader stands: a stream behind this reads the table before subscribing.
    pub fn position(&self) -> i64 {
        self.lock().position
    }

    /// Subscribes a stream that has accounted for every change up to `covered`. Returns the
    /// receiver and the reader's position at that instant: every change after it arrives on
    /// the receiver, so once the stream has read the table up to it, nothing is missed.
    pub fn subscribe(&self, covered: i64) -> (broadcast::Receiver<Msg>, i64) {
        let mut state = self.lock();
        if state.tx.receiver_count() == 0 {
            // Nobody listened while the reader idled, so its position is stale: start where
            // this stream stands instead of re-reading what no one needs.
            state.position = covered;
        }
        let rx = state.tx.subscribe();
        (rx, state.position)
    }

    fn listened(&self) -> Option<i64> {
        let state = self.lock();
        (state.tx.receiver_count() > 0).then_some(state.position)
    }

    /// Publishes what was read after `from`, unless the position moved meanwhile (a new
    /// first subscriber reset it): then the read is dropped and done again.
    fn publish(&self, from: i64, through: i64, rows: Vec<ChangeRow>) -> bool {
        let mut state = self.lock();
        if state.position != from {
            return false;
        }
        state.position = through;
        if through != from {
            // Sent under the lock, so a subscriber sees either this batch or its position.
            let _ = state.tx.send(Msg::Batch(Arc::new(Batch {
                after: from,
                through,
                rows,
            })));
        }
        true
    }

    fn fail(&self) {
        let _ = self.lock().tx.send(Msg::Failed);
    }
}

impl Feed {
    /// The shared reader: reads after every commit on this replica and every poll interval,
    /// while at least one stream listens.
    pub async fn run_reader(self: Arc<Self>) {
        let mut closing = self.closing();
        let mut failures = 0u32;
        loop {
            if *closing.borrow() {
                return;
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut more = false;
            if let Some(from) = self.hub.listened() {
                match changes::page(&self.store, from, None, PAGE).await {
                    Ok(page) => {
                        failures = 0;
                        self.stats.shared_reads.fetch_add(1, Ordering::Relaxed);
                        if page.pruned_past(from) {
                            // Streams see a batch that starts past them and re-read the table,
                            // which tells each whether its own position was pruned.
                            self.hub
                                .publish(from, page.extent.pruned_through, Vec::new());
                            continue;
                        }
                        let full = page.rows.len() as u64 >= PAGE;
                        let through = page.next_position(from, PAGE);
                        // Not published: a new first subscriber moved the position; read again.
                        more = !self.hub.publish(from, through, page.rows) || full;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "reading the change feed failed");
                        if failures >= FAILURES_BEFORE_GIVING_UP {
                            failures = 0;
                            self.hub.fail();
                        }
                    }
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = closing.changed() => {}
            }
        }
    }
}
