//! The decision cache: subjects (a member's role and permissions in an org) kept in process
//! and, when configured, in Redis shared by all replicas — each labelled with the org version
//! it was read at.
//!
//! Correctness rests on version floors: when a change to an org commits, the org's floor is
//! raised to the new version before the RPC returns (and published to the other replicas), and
//! any entry below its org's floor is ignored. So an entry written late by a read that raced
//! the change can never be served. With Redis configured, nothing cached is trusted while the
//! invalidation channel is down: checks read the database until it is back, and everything
//! cached before is dropped.

pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::future::Cache;
use tokio::sync::mpsc;

use self::redis::{Invalidation, RedisLevel, RedisSettings};
use crate::domain::decision::{Pair, Subject};
use crate::domain::ids::OrgId;

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

struct Local {
    entries: Cache<Pair, Subject>,
    floors: RwLock<HashMap<OrgId, i64>>,
}

impl Local {
    fn floor(&self, org: &OrgId) -> Option<i64> {
        self.floors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .copied()
    }

    fn is_current(&self, pair: &Pair, s: &Subject) -> bool {
        match (s.org_version(), self.floor(&pair.0)) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(floor)) => v >= floor,
        }
    }

    fn raise_floor(&self, org: OrgId, version: i64) {
        let mut floors = self.floors.write().unwrap_or_else(|p| p.into_inner());
        let floor = floors.entry(org).or_insert(version);
        if *floor < version {
            *floor = version;
        }
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
    pub fn new(settings: &CacheSettings) -> DecisionCache {
        let local = Arc::new(Local {
            entries: Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build(),
            floors: RwLock::new(HashMap::new()),
        });
        let redis = settings.redis.clone().and_then(|r| match RedisLevel::new(r) {
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
                        Invalidation::Org { org, version } => {
                            if let Some(org) = OrgId::from_stored(&org) {
                                local.raise_floor(org, version);
                            }
                        }
                        Invalidation::Flush => local.entries.invalidate_all(),
                        Invalidation::FlushThenServe => {
                            local.entries.invalidate_all();
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

    #[tracing::instrument(name = "cache.get_many", skip_all, fields(pairs = pairs.len(), org_id = pairs.first().filter(|_| pairs.len() == 1).map(|p| tracing::field::display(p.0))))]
    pub async fn get_many(&self, pairs: &[Pair]) -> Vec<Option<Subject>> {
        if !self.usable() {
            self.stats
                .degraded
                .fetch_add(pairs.len() as u64, Ordering::Relaxed);
            return vec![None; pairs.len()];
        }
        let mut out = Vec::with_capacity(pairs.len());
        let mut missing = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            let hit = self
                .local
                .entries
                .get(pair)
                .await
                .filter(|s| self.local.is_current(pair, s));
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        self.stats
            .local_hits
            .fetch_add((pairs.len() - missing.len()) as u64, Ordering::Relaxed);
        if let (Some(redis), false) = (&self.redis, missing.is_empty()) {
            let wanted: Vec<Pair> = missing.iter().map(|&i| pairs[i]).collect();
            match redis.get_many(&wanted).await {
                Ok(found) => {
                    for (&i, hit) in missing.iter().zip(found) {
                        let Some(s) = hit.filter(|s| self.local.is_current(&pairs[i], s)) else {
                            continue;
                        };
                        self.stats.redis_hits.fetch_add(1, Ordering::Relaxed);
                        self.local.entries.insert(pairs[i], s.clone()).await;
                        out[i] = Some(s);
                    }
                }
                Err(e) => {
                    self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "redis lookup failed; reading the database");
                }
            }
        }
        let misses = out.iter().filter(|o| o.is_none()).count();
        self.stats
            .misses
            .fetch_add(misses as u64, Ordering::Relaxed);
        out
    }

    pub async fn put_many(&self, loaded: &HashMap<Pair, Subject>) {
        if !self.usable() {
            return;
        }
        let mut shared = Vec::new();
        for (pair, subject) in loaded {
            if self.local.is_current(pair, subject) {
                self.local.entries.insert(*pair, subject.clone()).await;
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

    pub fn entry_count(&self) -> u64 {
        self.local.entries.entry_count()
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
                    o.observe(local.entries.entry_count(), &[]);
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
