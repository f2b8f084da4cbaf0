//! The decision cache: subjects (a member's role and permissions in an org) kept in process
//! and, when configured, in Redis shared by all replicas — each labelled with the org version
//! it was read at.
//!
//! Correctness rests on version floors: when a change commits, the floor of what it changed —
//! one member, or the whole org for a role definition or the org itself — is raised to the new
//! version before the RPC returns (and published to the other replicas), and any entry below
//! its member's or its org's floor is ignored. So an entry written late by a read that raced
//! the change can never be served, and a change to one member leaves the others cached. With
//! Redis configured, nothing cached is trusted while the invalidation channel is down: checks
//! read the database until it is back, and everything cached before is dropped.
//!
//! The in-process level is `quick_cache` (CLOCK-Pro-like eviction behind sharded read locks):
//! a hit is one shard read lock and a clone of a 24-byte subject whose role grant is a shared
//! `Arc`. Measured against moka (whose every read also queues LRU and frequency bookkeeping),
//! see `bench/results/2026-11-30-check-fast-path.md`. The TTL is checked on read.

pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::redis::{Invalidation, RedisLevel, RedisSettings};
use crate::domain::decision::{Grants, Pair, Subject};
use crate::domain::ids::{OrgId, UserId};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub ttl: Duration,
    pub redis: Option<RedisSettings>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 100_000,
            ttl: Duration::from_secs(60),
            redis: None,
        }
    }
}

/// Counters for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub local_hits: AtomicU64,
    pub redis_hits: AtomicU64,
    pub misses: AtomicU64,
    /// Lookups that skipped the caches because Redis was unavailable.
    pub degraded: AtomicU64,
    pub redis_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub local_hits: u64,
    pub redis_hits: u64,
    pub misses: u64,
    pub degraded: u64,
    pub redis_errors: u64,
}

/// A cached subject and when it was cached (seconds since the cache was made): the TTL is
/// checked on read, which costs one clock read instead of a timer wheel per entry.
#[derive(Clone)]
struct Entry {
    subject: Subject,
    born: u32,
}

/// A member's floor and when it was raised, so it can be forgotten once no entry it guards
/// against can still be alive.
#[derive(Clone, Copy)]
struct MemberFloor {
    version: i64,
    raised: u32,
}

/// Version floors: an org's (raised when a role definition or the org itself changes) and a
/// member's (raised when that member's membership or account changes). An entry is served
/// only when its version reaches both.
#[derive(Default)]
struct Floors {
    orgs: FastMap<OrgId, i64>,
    members: FastMap<Pair, MemberFloor>,
    /// Member floors are swept when there are this many (doubling as they grow).
    sweep_at: usize,
}

/// Member floors kept at least this long past the TTL (slack for an in-flight put).
const MEMBER_FLOOR_SLACK_SECS: u32 = 60;
const FIRST_SWEEP: usize = 1024;

struct Local {
    entries: quick_cache::sync::Cache<Pair, Entry>,
    floors: RwLock<Floors>,
    started: Instant,
    ttl_secs: u32,
}

impl Local {
    fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn get(&self, pair: &Pair) -> Option<Subject> {
        let entry = self.entries.get(pair)?;
        if self.now().saturating_sub(entry.born) >= self.ttl_secs {
            return None;
        }
        self.is_current(pair, &entry.subject)
            .then_some(entry.subject)
    }

    fn insert(&self, pair: Pair, subject: Subject) {
        let born = self.now();
        self.entries.insert(pair, Entry { subject, born });
    }

    fn is_current(&self, pair: &Pair, s: &Subject) -> bool {
        let Some(v) = s.org_version() else {
            return false;
        };
        let floors = self.floors.read().unwrap_or_else(|p| p.into_inner());
        floors.orgs.get(&pair.0).is_none_or(|&f| v >= f)
            && floors.members.get(pair).is_none_or(|f| v >= f.version)
    }

    fn raise_floor(&self, org: OrgId, version: i64) {
        let mut floors = self.floors.write().unwrap_or_else(|p| p.into_inner());
        let floor = floors.orgs.entry(org).or_insert(version);
        if *floor < version {
            *floor = version;
        }
    }

    fn raise_member_floor(&self, pair: Pair, version: i64) {
        let now = self.now();
        {
            let mut floors = self.floors.write().unwrap_or_else(|p| p.into_inner());
            let floor = floors.members.entry(pair).or_insert(MemberFloor {
                version,
                raised: now,
            });
            if floor.version < version {
                *floor = MemberFloor {
                    version,
                    raised: now,
                };
            }
            if floors.members.len() >= floors.sweep_at.max(FIRST_SWEEP) {
                self.sweep(&mut floors, now);
            }
        }
        self.entries.remove(&pair);
    }

    /// Forgets member floors that guard nothing any more: below their org's floor, or older
    /// than every entry that could be below them (entries live at most the TTL; Redis keeps
    /// the member's published version twice as long).
    fn sweep(&self, floors: &mut Floors, now: u32) {
        let keep_for = self.ttl_secs.saturating_mul(2) + MEMBER_FLOOR_SLACK_SECS;
        let Floors { orgs, members, .. } = floors;
        members.retain(|pair, f| {
            now.saturating_sub(f.raised) < keep_for
                && orgs.get(&pair.0).is_none_or(|&org| f.version > org)
        });
        floors.sweep_at = (floors.members.len() * 2).max(FIRST_SWEEP);
    }
}

pub struct DecisionCache {
    local: Arc<Local>,
    redis: Option<Arc<RedisLevel>>,
    stats: Arc<CacheStats>,
}

impl DecisionCache {
    /// Builds the cache; with Redis configured this spawns the invalidation listener, so it
    /// must be called inside a Tokio runtime.
    pub fn new(settings: &CacheSettings, grants: Arc<Grants>) -> DecisionCache {
        let capacity = usize::try_from(settings.max_entries)
            .unwrap_or(usize::MAX)
            .max(1);
        let local = Arc::new(Local {
            entries: quick_cache::sync::Cache::new(capacity),
            floors: RwLock::new(Floors::default()),
            started: Instant::now(),
            ttl_secs: u32::try_from(settings.ttl.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
        });
        let redis = settings.redis.clone().and_then(|r| match RedisLevel::new(r, grants) {
            Ok(level) => Some(level),
            Err(e) => {
                tracing::error!(error = %e, "redis is misconfigured; using the in-process cache only");
                None
            }
        });
        if let Some(level) = &redis {
            let (tx, mut rx) = mpsc::unbounded_channel();
            tokio::spawn(level.clone().listen(tx));
            let local = local.clone();
            let level = level.clone();
            tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        Invalidation::Org { org, version } => local.raise_floor(org, version),
                        Invalidation::Member { pair, version } => {
                            local.raise_member_floor(pair, version)
                        }
                        Invalidation::Flush => local.entries.clear(),
                        Invalidation::FlushThenServe => {
                            local.entries.clear();
                            level.serve();
                        }
                    }
                }
            });
        }
        DecisionCache {
            local,
            redis,
            stats: Arc::new(CacheStats::default()),
        }
    }

    /// Whether cached answers may be used at all right now.
    fn usable(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.is_live())
    }

    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Is the shared level connected and receiving invalidations?
    pub fn redis_live(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.is_live())
    }

    /// One subject: the check path's lookup (no allocation on an in-process hit).
    #[tracing::instrument(name = "cache.get", target = "teamgate::trace", skip_all, fields(org_id = %pair.0))]
    pub async fn get(&self, pair: &Pair) -> Option<Subject> {
        if !self.usable() {
            self.stats.degraded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(hit) = self.local.get(pair) {
            self.stats.local_hits.fetch_add(1, Ordering::Relaxed);
            return Some(hit);
        }
        let hit = match &self.redis {
            Some(_) => self
                .get_shared(std::slice::from_ref(pair))
                .await
                .pop()
                .flatten(),
            None => None,
        };
        if hit.is_none() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    #[tracing::instrument(name = "cache.get_many", target = "teamgate::trace", skip_all, fields(pairs = pairs.len()))]
    pub async fn get_many(&self, pairs: &[Pair]) -> Vec<Option<Subject>> {
        if !self.usable() {
            self.stats
                .degraded
                .fetch_add(pairs.len() as u64, Ordering::Relaxed);
            return vec![None; pairs.len()];
        }
        let mut out: Vec<Option<Subject>> = pairs.iter().map(|p| self.local.get(p)).collect();
        let missing: Vec<usize> = (0..pairs.len()).filter(|&i| out[i].is_none()).collect();
        self.stats
            .local_hits
            .fetch_add((pairs.len() - missing.len()) as u64, Ordering::Relaxed);
        if self.redis.is_some() && !missing.is_empty() {
            let wanted: Vec<Pair> = missing.iter().map(|&i| pairs[i]).collect();
            for (&i, hit) in missing.iter().zip(self.get_shared(&wanted).await) {
                out[i] = hit;
            }
        }
        let misses = out.iter().filter(|o| o.is_none()).count();
        self.stats
            .misses
            .fetch_add(misses as u64, Ordering::Relaxed);
        out
    }

    /// Looks `pairs` up in Redis, keeping in process what is current.
    async fn get_shared(&self, pairs: &[Pair]) -> Vec<Option<Subject>> {
        let Some(redis) = &self.redis else {
            return vec![None; pairs.len()];
        };
        match redis.get_many(pairs).await {
            Ok(found) => pairs
                .iter()
                .zip(found)
                .map(|(pair, hit)| {
                    let s = hit.filter(|s| self.local.is_current(pair, s))?;
                    self.stats.redis_hits.fetch_add(1, Ordering::Relaxed);
                    self.local.insert(*pair, s.clone());
                    Some(s)
                })
                .collect(),
            Err(e) => {
                self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "redis lookup failed; reading the database");
                vec![None; pairs.len()]
            }
        }
    }

    pub async fn put_many(&self, loaded: &[(Pair, Subject)]) {
        if !self.usable() {
            return;
        }
        let mut shared = Vec::new();
        for (pair, subject) in loaded {
            if self.local.is_current(pair, subject) {
                self.local.insert(*pair, subject.clone());
                shared.push((*pair, subject.clone()));
            }
        }
        if let (Some(redis), false) = (&self.redis, shared.is_empty()) {
            // Off the request path: the answer is already known.
            let redis = redis.clone();
            let stats = self.stats.clone();
            tokio::spawn(async move {
                if let Err(e) = redis.put_many(&shared).await {
                    stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "redis write failed");
                }
            });
        }
    }

    /// Raises the org's floor to `version`: entries read before it stop being served here at
    /// once, and on the other replicas as soon as they hear the published change.
    pub async fn org_changed(&self, org_id: &str, version: i64) {
        let Some(org) = OrgId::from_stored(org_id) else {
            return;
        };
        self.local.raise_floor(org, version);
        if let Some(redis) = &self.redis
            && let Err(e) = redis.publish_version(org_id, version).await
        {
            self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, org_id, "could not publish an invalidation; retrying in the background");
            let redis = redis.clone();
            let org_id = org_id.to_owned();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(100);
                loop {
                    tokio::time::sleep(wait).await;
                    if redis.publish_version(&org_id, version).await.is_ok() {
                        return;
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            });
        }
    }

    /// Raises one member's floor to `version` (their membership or account changed): their
    /// entry stops being served here at once, and on the other replicas when they hear it;
    /// the org's other members stay cached.
    pub async fn member_changed(&self, org_id: &str, user: UserId, version: i64) {
        let Some(org) = OrgId::from_stored(org_id) else {
            return;
        };
        self.local.raise_member_floor((org, user), version);
        if let Some(redis) = &self.redis
            && let Err(e) = redis.publish_member(org, user, version).await
        {
            self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, org_id, "could not publish an invalidation; retrying in the background");
            let redis = redis.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(100);
                loop {
                    tokio::time::sleep(wait).await;
                    if redis.publish_member(org, user, version).await.is_ok() {
                        return;
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            });
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.local.entries.len() as u64
    }

    /// Exports the counters above as observable instruments on `meter` (read at each
    /// collection): `teamgate.cache.lookups` by the `level` that answered (`local`, `redis`,
    /// or `db` when both missed), `teamgate.cache.bypassed`, `teamgate.cache.redis_errors`
    /// and the `teamgate.cache.entries` gauge.
    pub fn export_metrics(&self, meter: &opentelemetry::metrics::Meter) {
        use opentelemetry::KeyValue;
        let stats = self.stats.clone();
        let has_redis = self.redis.is_some();
        meter
            .u64_observable_counter("teamgate.cache.lookups")
            .with_description("Decision-cache lookups by the level that answered them")
            .with_callback(move |o| {
                let level = |l: &'static str| [KeyValue::new("level", l)];
                o.observe(stats.local_hits.load(Ordering::Relaxed), &level("local"));
                if has_redis {
                    o.observe(stats.redis_hits.load(Ordering::Relaxed), &level("redis"));
                }
                let db =
                    stats.misses.load(Ordering::Relaxed) + stats.degraded.load(Ordering::Relaxed);
                o.observe(db, &level("db"));
            })
            .build();
        let stats = self.stats.clone();
        meter
            .u64_observable_counter("teamgate.cache.bypassed")
            .with_description("Lookups that skipped the caches because Redis was unavailable")
            .with_callback(move |o| o.observe(stats.degraded.load(Ordering::Relaxed), &[]))
            .build();
        let stats = self.stats.clone();
        meter
            .u64_observable_counter("teamgate.cache.redis_errors")
            .with_description("Failed Redis reads, writes and publishes")
            .with_callback(move |o| o.observe(stats.redis_errors.load(Ordering::Relaxed), &[]))
            .build();
        let local = Arc::downgrade(&self.local);
        meter
            .u64_observable_gauge("teamgate.cache.entries")
            .with_description("Entries in this replica's in-process decision cache")
            .with_callback(move |o| {
                if let Some(local) = local.upgrade() {
                    o.observe(local.entries.len() as u64, &[]);
                }
            })
            .build();
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            local_hits: s.local_hits.load(Ordering::Relaxed),
            redis_hits: s.redis_hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            degraded: s.degraded.load(Ordering::Relaxed),
            redis_errors: s.redis_errors.load(Ordering::Relaxed),
        }
    }
}
