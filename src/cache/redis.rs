//! The shared level: subjects in Redis, org versions, and invalidation over pub/sub.
//!
//! Keys (ids are canonical hyphenated UUIDs, so `:` can never be part of one):
//! - `{prefix}:s:{org}:{user}` — a subject, JSON, with the org version and epoch it was read at;
//! - `{prefix}:v:{org}` — the newest version of the org whose change reaches all its members
//!   (a role definition, the org itself) that any replica published;
//! - `{prefix}:m:{org}:{user}` — the same for one member (their membership or account);
//! - `{prefix}:epoch` — bumped whenever a replica (re)connects, since it may have missed
//!   invalidations while away; entries from an older epoch are never served;
//! - channel `{prefix}:invalidate` — `v {org} {version}`, `m {org} {user} {version}` and
//!   `e {epoch}` messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::domain::decision::{Grants, Pair, Subject};
use crate::domain::ids::{OrgId, UserId};

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
    pub ttl: Duration,
}

/// What the pub/sub listener tells the in-process level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Org {
        org: OrgId,
        version: i64,
    },
    /// One member's membership or account changed.
    Member {
        pair: Pair,
        version: i64,
    },
    /// Everything cached in process may have missed invalidations: drop it.
    Flush,
    /// Subscribed again: drop everything cached in process, and only then serve from the
    /// caches again (marking Redis live before the drop ran would let a stale entry through).
    FlushThenServe,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    e: i64,
    v: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    p: Vec<String>,
}

const BUMP: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
";

/// Budget for control-plane calls (version bumps, epoch), which matter more than speed.
const CONTROL_TIMEOUT: Duration = Duration::from_millis(250);

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisLevelError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RedisLevelError::Timeout(limit)),
    }
}

pub struct RedisLevel {
    conn: ConnectionManager,
    client: Client,
    settings: RedisSettings,
    epoch: AtomicI64,
    subscribed: AtomicBool,
    bump: Script,
    grants: Arc<Grants>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisLevelError {
    #[error("redis timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisLevel {
    /// Connects lazily: a Redis that is down at start-up degrades checks to the database
    /// instead of stopping the server.
    pub fn new(
        settings: RedisSettings,
        grants: Arc<Grants>,
    ) -> Result<Arc<RedisLevel>, RedisLevelError> {
        let client = Client::open(settings.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Arc::new(RedisLevel {
            conn,
            client,
            settings,
            epoch: AtomicI64::new(-1),
            subscribed: AtomicBool::new(false),
            bump: Script::new(BUMP),
            grants,
        }))
    }

    /// True while invalidations are being received; until then nothing cached is trusted.
    pub fn is_live(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.epoch.load(Ordering::Acquire) >= 0
    }

    /// `{prefix}:{kind}:{org}` (see the module docs).
    fn key(&self, kind: &str, org: impl std::fmt::Display) -> String {
        format!("{}:{kind}:{org}", self.settings.prefix)
    }

    /// `{prefix}:{kind}:{org}:{user}`, in one allocation.
    fn pair_key(&self, kind: &str, (org, user): &Pair) -> String {
        format!("{}:{kind}:{org}:{user}", self.settings.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:invalidate", self.settings.prefix)
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisLevelError> {
        within(self.settings.timeout, f).await
    }

    /// Looks up subjects; each is returned only if it is from the current epoch and not older
    /// than its org's published version.
    pub async fn get_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Subject>>, RedisLevelError> {
        let mut orgs: Vec<OrgId> = pairs.iter().map(|p| p.0).collect();
        orgs.sort_unstable();
        orgs.dedup();
        let mut keys = Vec::with_capacity(1 + orgs.len() + 2 * pairs.len());
        keys.push(format!("{}:epoch", self.settings.prefix));
        keys.extend(orgs.iter().map(|o| self.key("v", o)));
        keys.extend(pairs.iter().map(|p| self.pair_key("m", p)));
        keys.extend(pairs.iter().map(|p| self.pair_key("s", p)));
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = self
            .timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await?;
        let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok());
        let epoch = num(&values[0]).unwrap_or(0);
        if epoch != self.epoch.load(Ordering::Acquire) {
            // Another replica reconnected and bumped the epoch; our in-process level hears
            // about it on the channel. Meanwhile serve nothing from Redis.
            return Ok(vec![None; pairs.len()]);
        }
        let versions: std::collections::HashMap<OrgId, i64> = orgs
            .iter()
            .zip(&values[1..1 + orgs.len()])
            .filter_map(|(o, v)| num(v).map(|n| (*o, n)))
            .collect();
        let members = &values[1 + orgs.len()..1 + orgs.len() + pairs.len()];
        let subjects = &values[1 + orgs.len() + pairs.len()..];
        Ok(pairs
            .iter()
            .zip(members.iter().zip(subjects))
            .map(|((org, _), (member, raw))| {
                let wire: Wire = serde_json::from_str(raw.as_deref()?).ok()?;
                let published = versions.get(org).copied().unwrap_or(0);
                let floor = published.max(num(member).unwrap_or(0));
                if wire.e != epoch || wire.v < floor {
                    return None;
                }
                Some(match wire.r {
                    None => Subject::NotMember {
                        org_version: wire.v,
                    },
                    Some(role) => Subject::Member {
                        org_version: wire.v,
                        grant: self.grants.grant(&role, wire.p.iter().map(String::as_str)),
                    },
                })
            })
            .collect())
    }

    pub async fn put_many(&self, entries: &[(Pair, Subject)]) -> Result<(), RedisLevelError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if epoch < 0 {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (pair, subject) in entries {
            let wire = match subject {
                // Account-level denials are not shared through Redis; each replica loads them.
                Subject::OrgNotFound
                | Subject::UserDisabled { .. }
                | Subject::MfaRequired { .. } => continue,
                Subject::NotMember { org_version } => Wire {
                    e: epoch,
                    v: *org_version,
                    r: None,
                    p: vec![],
                },
                // A built-in role's grant is every replica's own (`Grants::grant` ignores the
                // names for one): only a custom role's permissions travel.
                Subject::Member { org_version, grant } => Wire {
                    e: epoch,
                    v: *org_version,
                    r: Some(grant.role.clone()),
                    p: match self.grants.built_in(&grant.role) {
                        Some(_) => Vec::new(),
                        None => grant.permissions.to_strings(),
                    },
                },
            };
            let Ok(json) = serde_json::to_string(&wire) else {
                continue;
            };
            pipe.set_ex(
                self.pair_key("s", pair),
                json,
                self.settings.ttl.as_secs().max(1),
            )
            .ignore();
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Publishes a committed change: raises the org's version key and tells every replica.
    pub async fn publish_version(&self, org: &str, version: i64) -> Result<(), RedisLevelError> {
        let ttl = self.settings.ttl.as_secs().saturating_mul(2) + 60;
        let mut conn = self.conn.clone();
        let mut inv = self.bump.key(self.key("v", org));
        inv.key(self.channel())
            .arg(version)
            .arg(format!("v {org} {version}"))
            .arg(ttl);
        // A bump must not be lost to a momentary blip: give it more time than a lookup.
        within(CONTROL_TIMEOUT, inv.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    /// Publishes a committed change to one member: raises the member's version key and
    /// tells every replica. The org's key is left alone, so its other members' entries stay.
    pub async fn publish_member(
        &self,
        org: OrgId,
        user: UserId,
        version: i64,
    ) -> Result<(), RedisLevelError> {
        let ttl = self.settings.ttl.as_secs().saturating_mul(2) + 60;
        let mut conn = self.conn.clone();
        let mut inv = self.bump.key(self.pair_key("m", &(org, user)));
        inv.key(self.channel())
            .arg(version)
            .arg(format!("m {org} {user} {version}"))
            .arg(ttl);
        within(CONTROL_TIMEOUT, inv.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    /// Subscribes and keeps subscribed, forwarding invalidations. On every (re)subscription it
    /// bumps the shared epoch and asks for a local flush, since messages may have been missed.
    pub async fn listen(self: Arc<Self>, tx: mpsc::UnboundedSender<Invalidation>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.subscribe_once(&tx).await {
                Ok(()) => tracing::warn!(
                    "redis invalidation channel closed; checks use the database until it is back"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "redis unavailable; checks use the database until it is back")
                }
            }
            self.subscribed.store(false, Ordering::Release);
            let _ = tx.send(Invalidation::Flush);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Called by the invalidation consumer once the flush of a resubscription has run.
    pub fn serve(&self) {
        self.subscribed.store(true, Ordering::Release);
    }

    async fn subscribe_once(
        &self,
        tx: &mpsc::UnboundedSender<Invalidation>,
    ) -> Result<(), RedisLevelError> {
        let connect = tokio::time::timeout(Duration::from_secs(1), self.client.get_async_pubsub());
        let mut pubsub = match connect.await {
            Ok(r) => r?,
            Err(_) => return Err(RedisLevelError::Timeout(Duration::from_secs(1))),
        };
        pubsub.subscribe(self.channel()).await?;
        // Subscribed first, then bump: any change published after the bump reaches us.
        let mut conn = self.conn.clone();
        let epoch_key = format!("{}:epoch", self.settings.prefix);
        let epoch: i64 = within(CONTROL_TIMEOUT, conn.incr(&epoch_key, 1)).await?;
        let _: usize = within(
            CONTROL_TIMEOUT,
            conn.publish(self.channel(), format!("e {epoch}")),
        )
        .await?;
        self.epoch.store(epoch, Ordering::Release);
        let _ = tx.send(Invalidation::FlushThenServe);
        tracing::info!(epoch, "redis invalidation channel subscribed");
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            let mut parts = payload.split(' ');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("v"), Some(org), Some(v), None) => {
                    if let (Some(org), Ok(version)) = (OrgId::from_stored(org), v.parse()) {
                        let _ = tx.send(Invalidation::Org { org, version });
                    }
                }
                (Some("m"), Some(org), Some(user), Some(v)) => {
                    let pair = OrgId::from_stored(org).zip(UserId::from_stored(user));
                    if let (Some(pair), Ok(version)) = (pair, v.parse()) {
                        let _ = tx.send(Invalidation::Member { pair, version });
                    }
                }
                (Some("e"), Some(e), None, None) => {
                    if let Ok(e) = e.parse::<i64>()
                        && e > self.epoch.load(Ordering::Acquire)
                    {
                        self.epoch.store(e, Ordering::Release);
                        let _ = tx.send(Invalidation::Flush);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
