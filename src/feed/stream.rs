//! One WatchChanges stream: a task reads the feed in pages into a bounded channel, only when
//! the channel has room, so a consumer that stops reading makes the server stop reading too.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::{After, Feed, Stats};
use crate::api::error::with_reason;
use crate::app::{App, RequestCtx};
use crate::domain::DomainError;
use crate::domain::ids::OrgId;
use crate::proto::teamgate::v1 as pb;
use crate::store::changes;

/// The most changes read from the database at once.
const PAGE: usize = 100;

type Item = Result<pb::ChangeEvent, Status>;

/// What the transport reads: the receiving end of a stream's bounded buffer.
pub struct FeedStream {
    rx: mpsc::Receiver<Item>,
    stats: Arc<Stats>,
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

fn out_of_range(after: i64, pruned_through: i64) -> Status {
    with_reason(
        Code::OutOfRange,
        "CURSOR_EXPIRED",
        format!(
            "cursor {} is older than the change feed's retention window (changes up to {} were pruned): \
             resync from the source of truth, then watch again with an empty `after`",
            super::encode_cursor(after),
            super::encode_cursor(pruned_through),
        ),
    )
}

impl Feed {
    /// Opens a stream of changes after `after`, of one org (the actor needs `members.view`
    /// in it) or of all orgs (needs an admin service key, or no keys configured).
    pub async fn watch(
        self: &Arc<Self>,
        app: Arc<App>,
        ctx: RequestCtx,
        org: Option<OrgId>,
        after: After,
    ) -> Result<FeedStream, Status> {
        match &org {
            Some(org) => {
                app.get_org(&ctx, org).await?;
            }
            None => {
                if !self.may_watch_all(ctx.key_name.as_deref()) {
                    return Err(with_reason(
                        Code::PermissionDenied,
                        "MISSING_SCOPE",
                        "watching every organization needs a service key with the `admin` scope: \
                         pass org_id to watch one organization",
                    ));
                }
            }
        }
        let conn = self.store.conn();
        let extent = changes::extent(conn).await?;
        let start = match after {
            After::Now => extent.head,
            After::Cursor(c) => c,
            After::Token(t) => {
                match changes::position_of_version(conn, &t.org.to_string(), t.version).await? {
                    Some(p) => p,
                    None => {
                        return Err(with_reason(
                            Code::OutOfRange,
                            "CURSOR_EXPIRED",
                            "the changes around this consistency_token were pruned (older than the change feed's retention window): \
                             resync from the source of truth, then watch again with an empty `after`",
                        ));
                    }
                }
            }
        };
        if start > extent.head {
            return Err(DomainError::invalid_because(
                "after",
                "UNKNOWN_CURSOR",
                "`after` is ahead of this change feed: pass a cursor this deployment returned",
            )
            .into());
        }
        if start < extent.pruned_through {
            return Err(out_of_range(start, extent.pruned_through));
        }
        let (tx, rx) = mpsc::channel(self.settings.buffer);
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let stream = FeedStream {
            rx,
            stats: self.stats.clone(),
        };
        tokio::spawn(produce(
            self.clone(),
            app,
            ctx,
            org.map(|o| o.to_string()),
            start,
            tx,
        ));
        Ok(stream)
    }
}

/// Sends an item with a reserved slot, keeping the buffer counters right.
fn send(
    stats: &Stats,
    buffer: usize,
    tx: &mpsc::Sender<Item>,
    permit: mpsc::Permit<'_, Item>,
    item: Item,
) {
    permit.send(item);
    stats.buffered.fetch_add(1, Ordering::Relaxed);
    stats.produced.fetch_add(1, Ordering::Relaxed);
    let held = buffer.saturating_sub(tx.capacity());
    stats.high_water.fetch_max(held, Ordering::Relaxed);
}

async fn produce(
    feed: Arc<Feed>,
    app: Arc<App>,
    ctx: RequestCtx,
    org: Option<String>,
    mut position: i64,
    tx: mpsc::Sender<Item>,
) {
    let buffer = feed.settings.buffer;
    let stats = feed.stats.clone();
    let mut closing = feed.closing();
    loop {
        if *closing.borrow() {
            if let Ok(permit) = tx.try_reserve() {
                let status = with_reason(
                    Code::Unavailable,
                    "SHUTTING_DOWN",
                    "this server is shutting down: reconnect with your last cursor",
                );
                send(&stats, buffer, &tx, permit, Err(status));
            }
            return;
        }
        // Read only when there is room: a consumer that is not reading holds the producer here.
        let permits = tokio::select! {
            p = tx.reserve_many(tx.capacity().clamp(1, PAGE)) => p,
            _ = closing.changed() => continue,
        };
        let Ok(permits) = permits else {
            return; // the consumer went away
        };
        let room = permits.len();
        let notified = feed.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let limit = u64::try_from(room).unwrap_or(1);
        let page = match changes::page(&feed.store, position, org.as_deref(), limit).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading the change feed failed; ending the stream");
                let status = with_reason(
                    Code::Unavailable,
                    "DATABASE_UNAVAILABLE",
                    "the change feed could not be read: reconnect with your last cursor",
                );
                if let Some(p) = permits.into_iter().next() {
                    send(&stats, buffer, &tx, p, Err(status));
                }
                return;
            }
        };
        if page.pruned_past(position) {
            if let Some(p) = permits.into_iter().next() {
                send(
                    &stats,
                    buffer,
                    &tx,
                    p,
                    Err(out_of_range(position, page.extent.pruned_through)),
                );
            }
            return;
        }
        if !page.rows.is_empty()
            && let Some(org) = &org
        {
            // Membership can change while a stream is open: check before every delivery.
            if let Err(e) = app
                .authorize(app.store.conn(), &ctx, org, "members.view")
                .await
            {
                if let Some(p) = permits.into_iter().next() {
                    send(&stats, buffer, &tx, p, Err(e.into()));
                }
                return;
            }
        }
        let next = page.next_position(position, limit);
        let got = page.rows.len();
        for (row, permit) in page.rows.iter().zip(permits) {
            send(&stats, buffer, &tx, permit, Ok(super::event(row)));
        }
        position = next;
        if got > 0 {
            continue;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(feed.settings.poll_interval) => {}
            _ = closing.changed() => {}
            _ = tx.closed() => return,
        }
    }
}
