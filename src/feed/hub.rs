//! The shared reader: one task per replica reads the `changes` table (all orgs) and fans the
//! batches out to every live stream in memory, so the database sees one read per wake-up
//! however many streams are open.
//!
//! A batch says which range of the feed it covers (`after < position <= through`); a stream that
//! has accounted for every change up to `after` applies it, and one that has not (it lagged,
//! or the reader jumped past pruned changes) goes back to reading the table from its own
//! position. That way a stream never skips a change it did not see in a batch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

use super::Feed;
use crate::store::changes::{self, ChangeRow, Position};

/// Changes read at once by the shared reader.
const PAGE: u64 = 200;
/// Batches kept for streams that are momentarily behind; a stream further behind falls back
/// to reading the table on its own.
const BACKLOG: usize = 256;
/// First wait before reading again when committed changes sit above the watermark (they wait
/// for older transactions to end, which takes milliseconds unless one of them is long); it
/// doubles up to the poll interval, so a long transaction costs a few reads, not a spin.
pub(crate) const PENDING_FIRST: Duration = Duration::from_millis(1);
pub(crate) const PENDING_MAX: Duration = Duration::from_secs(1);
/// Consecutive failed reads after which streams are ended (to reconnect, maybe elsewhere)
/// rather than kept waiting on a database that is not answering.
const FAILURES_BEFORE_GIVING_UP: u32 = 3;

#[derive(Debug)]
pub struct Batch {
    /// Only a stream that has accounted for every change up to here may apply the batch;
    /// one that has not re-reads the table (it lagged, or the reader jumped a pruned gap).
    pub after: Position,
    /// This batch holds every change with `after < position <= through`.
    pub through: Position,
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
    position: Position,
    tx: broadcast::Sender<Msg>,
}

pub struct Hub {
    state: Mutex<State>,
}

impl Default for Hub {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        Hub {
            state: Mutex::new(State {
                position: Position::START,
                tx,
            }),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the reader stands: a stream behind this reads the table before subscribing.
    pub fn position(&self) -> Position {
        self.lock().position
    }

    /// Subscribes a stream that has accounted for every change up to `covered`. Returns the
    /// receiver and the reader's position at that instant: every change after it arrives on
    /// the receiver, so once the stream has read the table up to it, nothing is missed.
    pub fn subscribe(&self, covered: Position) -> (broadcast::Receiver<Msg>, Position) {
        let mut state = self.lock();
        if state.tx.receiver_count() == 0 {
            // Nobody listened while the reader idled, so its position is stale: start where
            // this stream stands instead of re-reading what no one needs.
            state.position = covered;
        }
        let rx = state.tx.subscribe();
        (rx, state.position)
    }

    fn listened(&self) -> Option<Position> {
        let state = self.lock();
        (state.tx.receiver_count() > 0).then_some(state.position)
    }

    /// Publishes a batch read after `from`, unless the position moved meanwhile (a new
    /// first subscriber reset it): then the read is dropped and done again.
    fn publish(&self, from: Position, batch: Batch) -> bool {
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
    /// The shared reader: reads after every commit on this replica, every change another
    /// replica announces and every poll interval, while at least one stream listens.
    pub async fn run_reader(self: Arc<Self>) {
        // The cross-replica wake-ups live as long as the reader.
        let link = tokio::spawn(super::notify::run(self.clone()));
        self.read_until_closed().await;
        link.abort();
    }

    async fn read_until_closed(self: &Arc<Self>) {
        let mut closing = self.closing();
        let mut failures = 0u32;
        let mut pending_wait = PENDING_FIRST;
        let mut retrying = false;
        loop {
            if *closing.borrow() {
                return;
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut more = false;
            let mut pending = false;
            if let Some(from) = self.hub.listened() {
                match changes::page(&self.store, from, None, PAGE).await {
                    Ok(page) => {
                        failures = 0;
                        self.stats.shared_reads.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut retrying) {
                            self.stats.pending_reads.fetch_add(1, Ordering::Relaxed);
                        }
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
                        pending = page.extent.pending;
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
            let wait = if pending {
                let w = pending_wait.min(self.settings.poll_interval);
                pending_wait = (pending_wait * 2).min(PENDING_MAX);
                w
            } else {
                pending_wait = PENDING_FIRST;
                self.settings.poll_interval
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => retrying = pending,
                _ = closing.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: i64) -> Position {
        Position::new(0, seq)
    }

    fn batch(after: i64, through: i64) -> Batch {
        Batch {
            after: at(after),
            through: at(through),
            rows: Vec::new(),
        }
    }

    #[test]
    fn the_first_subscriber_sets_an_idle_readers_position() {
        let hub = Hub::default();
        let (rx, pos) = hub.subscribe(at(40));
        assert_eq!(pos, at(40));
        // Later subscribers take the reader where it stands.
        let (_rx2, pos) = hub.subscribe(at(10));
        assert_eq!(pos, at(40));
        drop(rx);
        drop(_rx2);
        assert_eq!(hub.subscribe(at(7)).1, at(7));
    }

    #[test]
    fn a_read_from_a_stale_position_is_dropped() {
        let hub = Hub::default();
        let (mut rx, _) = hub.subscribe(at(5));
        assert!(!hub.publish(at(3), batch(3, 9)), "the position is 5, not 3");
        assert!(hub.publish(at(5), batch(5, 9)));
        assert_eq!(hub.position(), at(9));
        match rx.try_recv() {
            Ok(Msg::Batch(b)) => assert_eq!((b.after, b.through), (at(5), at(9))),
            other => panic!("{other:?}"),
        }
        // Nothing new: the position stays and nothing is sent.
        assert!(hub.publish(at(9), batch(9, 9)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn subscribers_get_every_batch_after_their_position() {
        let hub = Hub::default();
        let (_first, _) = hub.subscribe(at(0));
        assert!(hub.publish(at(0), batch(0, 4)));
        let (mut rx, pos) = hub.subscribe(at(2));
        assert_eq!(pos, at(4), "covered up to 2, so 3..=4 come from the table");
        assert!(hub.publish(at(4), batch(4, 6)));
        match rx.try_recv() {
            Ok(Msg::Batch(b)) => assert_eq!(b.after, pos),
            other => panic!("{other:?}"),
        }
    }
}
