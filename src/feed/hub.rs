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
    /// Only a stream that has accounted for every change up to here may apply the batch;
    /// one that has not re-reads the table (it lagged, or the reader jumped a pruned gap).
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

    /// Publishes a batch read after `from`, unless the position moved meanwhile (a new
    /// first subscriber reset it): then the read is dropped and done again.
    fn publish(&self, from: i64, batch: Batch) -> bool {
        let mut state = self.lock();
        if state.position != from {
            return false;
        }
        state.position = batch.through;
        if batch.through != from {
            // Sent under the lock, so a subscriber sees either this batch or its position.
            let _ = state.tx.send(Msg::Batch(Arc::new(batch)));
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
                            // Jump past the gap with a batch that starts after it: streams
                            // behind it re-read the table, which tells each whether its own
                            // position was pruned.
                            let to = page.extent.pruned_through;
                            let skip = Batch {
                                after: to,
                                through: to,
                                rows: Vec::new(),
                            };
                            self.hub.publish(from, skip);
                            continue;
                        }
                        let full = page.rows.len() as u64 >= PAGE;
                        let batch = Batch {
                            after: from,
                            through: page.next_position(from, PAGE),
                            rows: page.rows,
                        };
                        // Not published: a new first subscriber moved the position; read again.
                        more = !self.hub.publish(from, batch) || full;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(after: i64, through: i64) -> Batch {
        Batch {
            after,
            through,
            rows: Vec::new(),
        }
    }

    #[test]
    fn the_first_subscriber_sets_an_idle_readers_position() {
        let hub = Hub::default();
        let (rx, at) = hub.subscribe(40);
        assert_eq!(at, 40);
        // Later subscribers take the reader where it stands.
        let (_rx2, at) = hub.subscribe(10);
        assert_eq!(at, 40);
        drop(rx);
        drop(_rx2);
        assert_eq!(hub.subscribe(7).1, 7);
    }

    #[test]
    fn a_read_from_a_stale_position_is_dropped() {
        let hub = Hub::default();
        let (mut rx, _) = hub.subscribe(5);
        assert!(!hub.publish(3, batch(3, 9)), "the position is 5, not 3");
        assert!(hub.publish(5, batch(5, 9)));
        assert_eq!(hub.position(), 9);
        match rx.try_recv() {
            Ok(Msg::Batch(b)) => assert_eq!((b.after, b.through), (5, 9)),
            other => panic!("{other:?}"),
        }
        // Nothing new: the position stays and nothing is sent.
        assert!(hub.publish(9, batch(9, 9)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn subscribers_get_every_batch_after_their_position() {
        let hub = Hub::default();
        let (_first, _) = hub.subscribe(0);
        assert!(hub.publish(0, batch(0, 4)));
        let (mut rx, at) = hub.subscribe(2);
        assert_eq!(at, 4, "covered up to 2, so 3..=4 come from the table");
        assert!(hub.publish(4, batch(4, 6)));
        match rx.try_recv() {
            Ok(Msg::Batch(b)) => assert_eq!(b.after, at),
            other => panic!("{other:?}"),
        }
    }
}
