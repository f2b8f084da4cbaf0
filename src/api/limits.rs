//! Per-caller budgets for failures (bad tokens, wrong passwords or codes) and for costly
//! requests (reset emails), so one caller cannot guess secrets or flood inboxes.
//!
//! These live at the transport edge, not in the use cases: they are keyed by who is calling
//! ([`CallerId`]: peer, service key or the end client a trusted caller names), which only the
//! transport knows, they answer with a transport status (RESOURCE_EXHAUSTED with a wait), and
//! they are per-process memory rather than rules about accounts. The per-account limits, which
//! must hold across replicas, stay in the use cases and the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use super::caller::CallerId;
use crate::config::IdentityConfig;
use crate::domain::clock::Clock;

/// Counts events per caller in a fixed window that opens at the caller's first event, and
/// refuses the caller once the window holds `max` of them, until it closes.
///
/// Hand-written rather than `governor`: a failure budget has to be *read* before an attempt
/// and *charged* only once the attempt has failed, and governor's GCRA can only test by
/// consuming a cell; it also runs on its own clock, while ours follows the app's `Clock`
/// (tests move it). A fixed window is also what the per-account limits use, so both read
/// the same way in the docs ("N failures within the window").
///
/// Only failures that happened are counted, never attempts in flight, so a burst of valid
/// calls from one caller never spends its budget. The cost is that attempts already running
/// when the budget is reached can still fail and push the count past it, by at most the
/// caller's concurrency (itself bounded by `server.max_concurrent_requests` and the key's
/// rate limit). That buys nothing against tokens of 128 bits or more, and guesses at one account's
/// password or code are bounded by the per-account limits, which are transactional.
pub struct FailureLimiter {
    clock: Arc<dyn Clock>,
    max: u32,
    window: Duration,
    state: Mutex<Windows>,
}

struct Windows {
    callers: HashMap<CallerId, Window>,
    /// Size at which stale windows are next swept: doubles with the live ones, so a flood
    /// of distinct callers costs amortized O(1) per event rather than a sweep every time.
    sweep_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: DateTime<Utc>,
    count: u32,
}

/// Entries kept before stale ones are first swept.
const SWEEP_AT: usize = 10_000;

impl FailureLimiter {
    pub fn new(clock: Arc<dyn Clock>, max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            clock,
            max,
            window,
            state: Mutex::new(Windows {
                callers: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// `Err(seconds to wait)` while `caller` is over its budget.
    pub fn check(&self, caller: &CallerId) -> Result<(), u64> {
        let now = self.clock.now();
        let state = self.lock();
        match state.callers.get(caller) {
            Some(w) => self.refusal(w, now),
            None => Ok(()),
        }
    }

    /// Counts a failure that happened.
    pub fn record_failure(&self, caller: &CallerId) {
        let now = self.clock.now();
        let mut state = self.lock();
        self.count(&mut state, caller, now);
    }

    /// Checks and counts in one step, for budgets on requests rather than on failures
    /// (every request costs, e.g. an email sent).
    pub fn take(&self, caller: &CallerId) -> Result<(), u64> {
        let now = self.clock.now();
        let mut state = self.lock();
        if let Some(w) = state.callers.get(caller) {
            self.refusal(w, now)?;
        }
        self.count(&mut state, caller, now);
        Ok(())
    }

    /// Runs `attempt` if `caller` is within its budget (`Err(seconds to wait)` if not), and
    /// counts it when `failed` says its error is a failure.
    pub async fn limit<T, E>(
        &self,
        caller: &CallerId,
        attempt: impl Future<Output = Result<T, E>>,
        failed: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, u64> {
        self.check(caller)?;
        let outcome = attempt.await;
        if matches!(&outcome, Err(e) if failed(e)) {
            self.record_failure(caller);
        }
        Ok(outcome)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // The map stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refusal(&self, w: &Window, now: DateTime<Utc>) -> Result<(), u64> {
        let ends = w.started + self.window;
        if w.count >= self.max && now < ends {
            let wait = (ends - now).num_seconds().max(1);
            return Err(u64::try_from(wait).unwrap_or(1));
        }
        Ok(())
    }

    fn count(&self, state: &mut Windows, caller: &CallerId, now: DateTime<Utc>) {
        let window = self.window;
        if state.callers.len() >= state.sweep_at {
            state.callers.retain(|_, w| now < w.started + window);
            state.sweep_at = SWEEP_AT.max(state.callers.len().saturating_mul(2));
        }
        let fresh = Window {
            started: now,
            count: 0,
        };
        let w = state.callers.entry(caller.clone()).or_insert(fresh);
        if now >= w.started + window {
            *w = fresh;
        }
        w.count = w.count.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().callers.len()
    }
}

/// The identity service's per-caller budgets, from `[identity]`.
pub struct IdentityLimits {
    /// Failed sign-ins, bad reset tokens and wrong TOTP codes.
    pub failures: FailureLimiter,
    /// Password-reset requests, each of which may send an email.
    pub reset_requests: FailureLimiter,
}

impl IdentityLimits {
    pub fn from_config(clock: Arc<dyn Clock>, c: &IdentityConfig) -> IdentityLimits {
        let window = Duration::seconds(
            i64::try_from(c.caller_failure_window_secs).unwrap_or(i64::MAX / 1000),
        );
        IdentityLimits {
            failures: FailureLimiter::new(clock.clone(), c.max_failed_sign_ins_per_caller, window),
            reset_requests: FailureLimiter::new(clock, c.max_reset_requests_per_caller, window),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::domain::clock::ManualClock;

    fn limiter(clock: &ManualClock) -> FailureLimiter {
        FailureLimiter::new(Arc::new(clock.clone()), 3, Duration::minutes(5))
    }

    fn peer(last: u8) -> CallerId {
        CallerId::Peer(Some(IpAddr::from([10, 0, 0, last])))
    }

    #[test]
    fn holds_off_a_caller_until_the_window_passes() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        let (a, b) = (peer(1), peer(2));
        for _ in 0..3 {
            assert!(limiter.check(&a).is_ok());
            limiter.record_failure(&a);
        }
        assert_eq!(limiter.check(&a), Err(300));
        assert!(limiter.check(&b).is_ok(), "other callers are not affected");
        clock.advance(Duration::minutes(4));
        assert_eq!(limiter.check(&a), Err(60));
        clock.advance(Duration::minutes(1));
        assert!(limiter.check(&a).is_ok());
        limiter.record_failure(&a);
        limiter.record_failure(&a);
        assert!(limiter.check(&a).is_ok(), "a new window starts from zero");
    }

    #[test]
    fn checks_alone_never_spend_the_budget() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        let a = peer(1);
        for _ in 0..1000 {
            assert!(limiter.check(&a).is_ok());
        }
        assert_eq!(
            limiter.tracked(),
            0,
            "nothing is kept for callers that never failed"
        );
    }

    #[tokio::test]
    async fn limit_counts_only_attempts_that_failed() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        let a = peer(1);
        // Successes and errors that are not failures (e.g. an expired invitation) are free.
        for _ in 0..10 {
            let ok = limiter
                .limit(&a, async { Ok::<_, &str>(()) }, |_| true)
                .await;
            assert_eq!(ok, Ok(Ok(())));
            let other = limiter
                .limit(&a, async { Err::<(), _>("expired") }, |e| *e == "bad")
                .await;
            assert_eq!(other, Ok(Err("expired")));
        }
        for _ in 0..3 {
            let bad = limiter
                .limit(&a, async { Err::<(), _>("bad") }, |e| *e == "bad")
                .await;
            assert_eq!(bad, Ok(Err("bad")));
        }
        let refused = limiter
            .limit(&a, async { Ok::<_, &str>(()) }, |_| true)
            .await;
        assert_eq!(refused, Err(300), "refused before the attempt runs");
    }

    #[tokio::test]
    async fn concurrent_attempts_in_flight_are_not_failures() {
        let clock = ManualClock::starting_now();
        let limiter = Arc::new(limiter(&clock));
        let a = peer(1);
        let gate = Arc::new(tokio::sync::Barrier::new(50));
        let calls = (0..50).map(|_| {
            let (limiter, gate, a) = (limiter.clone(), gate.clone(), a.clone());
            tokio::spawn(async move {
                let attempt = async {
                    // Every attempt is in flight at once before any finishes.
                    gate.wait().await;
                    Ok::<_, ()>(())
                };
                limiter.limit(&a, attempt, |_| true).await
            })
        });
        for call in futures::future::join_all(calls).await {
            assert_eq!(call.unwrap(), Ok(Ok(())));
        }
        assert!(limiter.check(&a).is_ok());
    }

    #[test]
    fn take_counts_every_request() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        let a = CallerId::ServiceKey("web".into());
        for _ in 0..3 {
            assert!(limiter.take(&a).is_ok());
        }
        assert_eq!(limiter.take(&a), Err(300));
        assert_eq!(
            limiter.check(&a),
            Err(300),
            "a refused request is not counted"
        );
        clock.advance(Duration::minutes(5));
        assert!(limiter.take(&a).is_ok());
    }

    #[test]
    fn stale_callers_are_swept() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        for i in 0..SWEEP_AT {
            let ip = IpAddr::from(u32::try_from(i).unwrap().to_be_bytes());
            limiter.record_failure(&CallerId::ClientAddress(ip));
        }
        assert_eq!(limiter.tracked(), SWEEP_AT);
        clock.advance(Duration::minutes(5));
        limiter.record_failure(&peer(1));
        assert_eq!(limiter.tracked(), 1, "only the live window is left");
    }
}
