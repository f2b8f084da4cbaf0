//! The decision cache: subjects (a member's role and permissions in an org) kept in process,
//! each labelled with the org version it was read at.
//!
//! Correctness rests on version floors: when a change to an org commits, the org's floor is
//! raised to the new version before the RPC returns, and any entry below its org's floor is
//! ignored. So an entry written late by a read that raced the change can never be served.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use moka::future::Cache;

use crate::app::authz::{Pair, Subject};
use crate::domain::ids::OrgId;

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 100_000,
            ttl: Duration::from_secs(60),
        }
    }
}

pub struct DecisionCache {
    entries: Cache<Pair, Subject>,
    floors: RwLock<HashMap<OrgId, i64>>,
}

impl DecisionCache {
    pub fn new(settings: &CacheSettings) -> DecisionCache {
        DecisionCache {
            entries: Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build(),
            floors: RwLock::new(HashMap::new()),
        }
    }

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

    pub async fn get_many(&self, pairs: &[Pair]) -> Vec<Option<Subject>> {
        let mut out = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let hit = self
                .entries
                .get(pair)
                .await
                .filter(|s| self.is_current(pair, s));
            out.push(hit);
        }
        out
    }

    pub async fn put_many(&self, loaded: &HashMap<Pair, Subject>) {
        for (pair, subject) in loaded {
            if self.is_current(pair, subject) {
                self.entries.insert(*pair, subject.clone()).await;
            }
        }
    }

    /// Raises the org's floor to `version`: entries read before it stop being served.
    pub async fn org_changed(&self, org_id: &str, version: i64) {
        let Some(org) = OrgId::from_stored(org_id) else {
            return;
        };
        let mut floors = self.floors.write().unwrap_or_else(|p| p.into_inner());
        let floor = floors.entry(org).or_insert(version);
        if *floor < version {
            *floor = version;
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}
