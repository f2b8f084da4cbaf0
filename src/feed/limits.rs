//! Caps on open WatchChanges streams, per caller and per server. Each stream holds a task
//! and a subscription to the shared reader, so without a cap one member with `members.view`
//! could open streams until the server runs out of memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::DomainError;

/// Who a stream is counted against: the acting user when there is one (whatever key or
/// connection they come through), else the service key, else the peer's address.
pub fn caller_key(
    actor: Option<&str>,
    key: Option<&str>,
    peer: Option<std::net::IpAddr>,
) -> String {
    match (actor, key, peer) {
        (Some(a), _, _) => format!("user:{a}"),
        (None, Some(k), _) => format!("key:{k}"),
        (None, None, Some(p)) => format!("peer:{p}"),
        (None, None, None) => "unknown".to_owned(),
    }
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_caller: HashMap<String, usize>,
}

/// The open-stream counts of one server.
#[derive(Debug)]
pub struct Slots {
    per_caller: usize,
    total: usize,
    held: Mutex<Held>,
}

impl Slots {
    pub fn new(per_caller: usize, total: usize) -> Arc<Slots> {
        Arc::new(Slots {
            per_caller: per_caller.max(1),
            total: total.max(1),
            held: Mutex::new(Held::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent even if a holder panicked: every update is one statement.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `caller`, released when the returned guard is dropped.
    pub fn acquire(self: &Arc<Self>, caller: &str) -> Result<Slot, DomainError> {
        let mut held = self.lock();
        if held.total >= self.total {
            return Err(DomainError::exhausted(
                "TOO_MANY_STREAMS",
                format!(
                    "this server already serves its limit of {} change-feed streams: retry later, or on another replica",
                    self.total
                ),
            ));
        }
        let mine = held.by_caller.get(caller).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(DomainError::exhausted(
                "TOO_MANY_STREAMS",
                format!(
                    "at most {} change-feed streams per caller may be open: close one, or watch all your orgs through fewer streams",
                    self.per_caller
                ),
            ));
        }
        held.total += 1;
        *held.by_caller.entry(caller.to_owned()).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Streams open on this server now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// One open stream's place in the counts.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                // Callers come and go: keep the map as small as the set of open streams.
                held.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_caller_and_in_total() {
        let slots = Slots::new(2, 3);
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        let e = slots.acquire("a").unwrap_err();
        assert!(matches!(e, DomainError::Exhausted { .. }), "{e:?}");
        assert_eq!(e.reason(), "TOO_MANY_STREAMS");
        let _b1 = slots.acquire("b").unwrap();
        assert_eq!(slots.acquire("c").unwrap_err().reason(), "TOO_MANY_STREAMS");
        drop(a1);
        assert_eq!(slots.open(), 2);
        let _c1 = slots.acquire("c").unwrap();
        assert_eq!(slots.open(), 3);
    }

    #[test]
    fn released_callers_leave_no_entry() {
        let slots = Slots::new(1, 10);
        drop(slots.acquire("a").unwrap());
        assert!(slots.lock().by_caller.is_empty());
        assert!(slots.acquire("a").is_ok());
    }

    #[test]
    fn caller_prefers_the_actor() {
        let ip = "10.0.0.1".parse().ok();
        assert_eq!(caller_key(Some("u"), Some("k"), ip), "user:u");
        assert_eq!(caller_key(None, Some("k"), ip), "key:k");
        assert_eq!(caller_key(None, None, ip), "peer:10.0.0.1");
    }
}
