//! One WatchChanges stream: a task that feeds a bounded channel, only when the channel has
//! room, so a consumer that stops reading makes the server stop reading for it too.
//!
//! A stream starting behind the shared reader (an old cursor) first reads the table on its
//! own, in pages, until it has caught up; then it subscribes to the reader and takes its
//! batches, skipping what it already sent. Which rows it already sent is one position,
//! `covered`: every change at or before it was either sent or is of another org.
//!
//! A stream "from now" on PostgreSQL starts at the watermark (every change below it is
//! final), and until it has passed the snapshot's `xmax` also skips the changes of
//! transactions that snapshot saw as ended: they committed before the stream opened.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{broadcast, mpsc, watch};

use super::hub::{Batch, Msg};
use super::limits::Slot;
use super::{After, Feed, Stats, access};
use crate::app::{App, AppError, RequestCtx};
use crate::domain::DomainError;
use crate::domain::ids::OrgId;
use crate::proto::teamgate::v1 as pb;
use crate::store::changes::{self, ChangeRow, Position, Snapshot};

/// The most changes a catching-up stream reads from the database at once.
const PAGE: usize = 100;

/// A change, or the error that ends the stream (the transport turns it into a status).
pub type Item = Result<pb::ChangeEvent, AppError>;

/// What the transport reads: the receiving end of a stream's bounded buffer.
pub struct FeedStream {
    rx: mpsc::Receiver<Item>,
    stats: Arc<Stats>,
    /// The stream's place under the caps, given back when the transport drops the stream.
    _slot: Slot,
}

impl Stream for FeedStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.stats.buffered.fetch_sub(1, Ordering::Relaxed);
            self.stats.emitted.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl Drop for FeedStream {
    fn drop(&mut self) {
        self.rx.close();
        let mut left = 0;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        self.stats.buffered.fetch_sub(left, Ordering::Relaxed);
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn out_of_range(after: Position, pruned_through: Position) -> AppError {
    DomainError::out_of_range(
        "CURSOR_EXPIRED",
        format!(
            "cursor {} is older than the change feed's retention window (changes up to {} were pruned): \
             resync from the source of truth, then watch again with an empty `after`",
            super::encode_cursor(after),
            super::encode_cursor(pruned_through),
        ),
    )
    .into()
}

fn unreadable() -> AppError {
    DomainError::unavailable(
        "DATABASE_UNAVAILABLE",
        "the change feed could not be read: reconnect with your last cursor",
    )
    .into()
}

fn shutting_down() -> AppError {
    DomainError::unavailable(
        "SHUTTING_DOWN",
        "this server is shutting down: reconnect with your last cursor",
    )
    .into()
}

impl Feed {
    /// Opens a stream of changes after `after`, of one org (the actor needs `members.view`
    /// in it) or of all orgs (needs an admin service key, or no keys configured). `caller`
    /// is who the stream counts against under `feed.max_streams_per_caller`.
    pub async fn watch(
        self: &Arc<Self>,
        app: Arc<App>,
        ctx: RequestCtx,
        caller: &str,
        org: Option<OrgId>,
        after: After,
    ) -> Result<FeedStream, AppError> {
        // Before any database work, so refused streams cost nothing.
        let slot = self.slots.acquire(caller)?;
        match &org {
            Some(org) => {
                app.get_org(&ctx, org).await?;
            }
            None => {
                if !self.may_watch_all(ctx.key_name.as_deref()) {
                    return Err(DomainError::denied(
                        "MISSING_SCOPE",
                        "watching every organization needs a service key with the `admin` scope: \
                         pass org_id to watch one organization",
                    )
                    .into());
                }
            }
        }
        let conn = self.store.conn();
        let extent = changes::extent(conn).await?;
        let mut skip = None;
        let start = match after {
            After::Now => {
                skip = extent.snapshot.clone();
                extent.head
            }
            After::Cursor(c) => {
                if !extent.knows(c) {
                    return Err(DomainError::invalid_because(
                        "after",
                        "UNKNOWN_CURSOR",
                        "`after` is ahead of this change feed: pass a cursor this deployment returned",
                    )
                    .into());
                }
                c
            }
            // Taken from the table itself; it may sit above the watermark, which is fine.
            After::Token(t) => {
                match changes::position_of_version(conn, &t.org.to_string(), t.version).await? {
                    Some(p) => p,
                    None => {
                        return Err(DomainError::out_of_range(
                            "CURSOR_EXPIRED",
                            "the changes around this consistency_token were pruned (older than the change feed's retention window): \
                             resync from the source of truth, then watch again with an empty `after`",
                        )
                        .into());
                    }
                }
            }
        };
        if start < extent.pruned_through {
            return Err(out_of_range(start, extent.pruned_through));
        }
        let (tx, rx) = mpsc::channel(self.settings.buffer);
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let stream = FeedStream {
            rx,
            stats: self.stats.clone(),
            _slot: slot,
        };
        // Org streams re-check their actor; an all-org stream is the key's, not an actor's.
        let actor = match (&org, ctx.actor) {
            (Some(_), Some(a)) => Some(access::user_target(&a.to_string())),
            _ => None,
        };
        let producer = Producer {
            closing: self.closing(),
            feed: self.clone(),
            app,
            ctx,
            org: org.map(|o| o.to_string()),
            actor,
            covered: start,
            skip,
            tx,
        };
        tokio::spawn(producer.run());
        Ok(stream)
    }
}

/// Why following the shared reader stopped.
enum Stop {
    /// End the stream with this status (or quietly, with `None`: the consumer left).
    End(Option<AppError>),
    /// Go back to the table: the stream lagged or a batch does not join up with `covered`.
    Reread,
}

struct Producer {
    feed: Arc<Feed>,
    app: Arc<App>,
    ctx: RequestCtx,
    /// The watched org; `None` for every org.
    org: Option<String>,
    /// The actor as a change target (`user:…`), for org streams that re-authorize.
    actor: Option<String>,
    covered: Position,
    /// Streams from now: changes of transactions this snapshot saw as ended came before.
    skip: Option<Snapshot>,
    tx: mpsc::Sender<Item>,
    closing: watch::Receiver<bool>,
}

impl Producer {
    async fn run(mut self) {
        let hub = self.feed.hub.clone();
        // Behind the reader: read the table before subscribing, or the subscription would
        // only fill up (and lag) while the table is read.
        let mut behind = hub.position() > self.covered;
        let mut live: Option<(broadcast::Receiver<Msg>, Position)> = None;
        let mut stalled = super::hub::PENDING_FIRST;
        loop {
            if *self.closing.borrow() {
                self.last_word(shutting_down());
                return;
            }
            if live.is_none() && !behind {
                live = Some(hub.subscribe(self.covered));
            }
            let step = match live.take() {
                // Everything up to the reader's position at subscription is sent, and the
                // rest is on the receiver: follow it.
                Some((mut rx, at)) if self.covered >= at => {
                    behind = true;
                    Err(self.follow(&mut rx).await)
                }
                waiting => {
                    live = waiting;
                    let before = self.covered;
                    let step = self.catch_up().await.map(|full| behind = full);
                    if step.is_ok() && self.covered == before {
                        // The table cannot give more yet: the reader is ahead of the watermark
                        // (a stream started from a consistency token above it, or a write
                        // transaction is still open). Wait instead of reading in a loop.
                        let wait = stalled.min(self.feed.settings.poll_interval);
                        stalled = (stalled * 2).min(super::hub::PENDING_MAX);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.closing.changed() => {}
                        }
                    } else {
                        stalled = super::hub::PENDING_FIRST;
                    }
                    step
                }
            };
            match step {
                Ok(()) | Err(Stop::Reread) => {}
                Err(Stop::End(status)) => {
                    if let Some(status) = status {
                        self.last_word(status);
                    }
                    return;
                }
            }
        }
    }

    /// Sends a final status if there is room; a consumer that is not reading will not see it,
    /// but its stream ends all the same.
    fn last_word(&self, status: AppError) {
        if let Ok(permit) = self.tx.try_reserve() {
            self.send(permit, Err(status));
        }
    }

    fn send(&self, permit: mpsc::Permit<'_, Item>, item: Item) {
        let stats = &self.feed.stats;
        permit.send(item);
        stats.buffered.fetch_add(1, Ordering::Relaxed);
        stats.produced.fetch_add(1, Ordering::Relaxed);
        let held = self.feed.settings.buffer.saturating_sub(self.tx.capacity());
        stats.high_water.fetch_max(held, Ordering::Relaxed);
    }

    fn wanted(&self, row: &ChangeRow) -> bool {
        Position::of(row) > self.covered
            && self.org.as_deref().is_none_or(|o| o == row.org_id)
            && !self.skip.as_ref().is_some_and(|s| s.had_ended(row.xid))
    }

    /// Moves `covered` forward; past the snapshot's `xmax` nothing is skipped any more.
    fn cover(&mut self, to: Position) {
        self.covered = std::cmp::max(self.covered, to);
        if self
            .skip
            .as_ref()
            .is_some_and(|s| self.covered >= Position::below(s.xmax))
        {
            self.skip = None;
        }
    }

    /// Re-authorizes the actor if one of `rows` may have taken their access away.
    async fn still_allowed(&self, rows: &[&ChangeRow]) -> Result<(), Stop> {
        let (Some(org), Some(actor)) = (&self.org, &self.actor) else {
            return Ok(());
        };
        if !rows.iter().any(|r| access::may_affect(r, actor)) {
            return Ok(());
        }
        self.feed.stats.reauthorized.fetch_add(1, Ordering::Relaxed);
        match self
            .app
            .authorize(self.app.store.conn(), &self.ctx, org, "members.view")
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(Stop::End(Some(e))),
        }
    }

    /// After delivering an org's deletion there is nothing more to watch: reconnecting would
    /// answer ORG_NOT_FOUND, so the stream says so now.
    fn org_deleted(&self, rows: &[&ChangeRow]) -> Result<(), Stop> {
        match &self.org {
            Some(org) if rows.iter().any(|r| access::deletes_org(r)) => Err(Stop::End(Some(
                crate::app::AppError::from(crate::app::org_not_found(org)),
            ))),
            _ => Ok(()),
        }
    }

    /// Reads one page of the table after `covered` into the room the consumer has; `true`
    /// when the page was full (more may be waiting).
    async fn catch_up(&mut self) -> Result<bool, Stop> {
        let tx = self.tx.clone();
        let permits = tokio::select! {
            p = tx.reserve_many(tx.capacity().clamp(1, PAGE)) => p,
            _ = self.closing.changed() => return Ok(false),
        };
        let Ok(permits) = permits else {
            return Err(Stop::End(None)); // the consumer went away
        };
        let limit = u64::try_from(permits.len()).unwrap_or(1);
        self.feed
            .stats
            .catch_up_reads
            .fetch_add(1, Ordering::Relaxed);
        let page =
            match changes::page(&self.feed.store, self.covered, self.org.as_deref(), limit).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the change feed failed; ending the stream");
                    return Err(Stop::End(Some(unreadable())));
                }
            };
        if page.pruned_past(self.covered) {
            return Err(Stop::End(Some(out_of_range(
                self.covered,
                page.extent.pruned_through,
            ))));
        }
        let rows: Vec<&ChangeRow> = page.rows.iter().filter(|r| self.wanted(r)).collect();
        self.still_allowed(&rows).await?;
        let next = page.next_position(self.covered, limit);
        for (row, permit) in rows.iter().zip(permits) {
            self.send(permit, Ok(super::event(row)));
        }
        self.cover(next);
        self.org_deleted(&rows)?;
        Ok(page.rows.len() as u64 >= limit)
    }

    /// Takes the shared reader's batches until the stream ends or has to re-read the table.
    async fn follow(&mut self, rx: &mut broadcast::Receiver<Msg>) -> Stop {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = self.closing.changed() => return Stop::Reread,
                _ = self.tx.closed() => return Stop::End(None),
            };
            match msg {
                Ok(Msg::Batch(batch)) => {
                    if let Err(stop) = self.apply(&batch).await {
                        return stop;
                    }
                }
                Ok(Msg::Failed) => return Stop::End(Some(unreadable())),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.feed.stats.lagged.fetch_add(1, Ordering::Relaxed);
                    return Stop::Reread;
                }
                // The reader stopped: the server is shutting down.
                Err(broadcast::error::RecvError::Closed) => {
                    return Stop::End(Some(shutting_down()));
                }
            }
        }
    }

    async fn apply(&mut self, batch: &Batch) -> Result<(), Stop> {
        if batch.after > self.covered {
            // Changes between `covered` and the batch were published before this stream
            // listened, or skipped as pruned: the table has the truth.
            return Err(Stop::Reread);
        }
        let rows: Vec<&ChangeRow> = batch.rows.iter().filter(|r| self.wanted(r)).collect();
        self.still_allowed(&rows).await?;
        for row in &rows {
            let permit = tokio::select! {
                p = self.tx.reserve() => p,
                _ = self.closing.changed() => return Err(Stop::Reread),
            };
            let Ok(permit) = permit else {
                return Err(Stop::End(None));
            };
            self.send(permit, Ok(super::event(row)));
            self.covered = Position::of(row);
        }
        self.cover(batch.through);
        self.org_deleted(&rows)
    }
}
