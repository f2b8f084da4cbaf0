//! Decisions: "can user X do permission Y in org Z?".
//!
//! `Decisions` is the seam between the check path and its sources: it loads subjects (a
//! member's role and effective permissions in an org) from the database in as few queries as
//! possible, and hears about every committed change through `invalidate_org`, so a cache in
//! front of it never answers from before a change that has returned to its caller.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::store::Connection as ConnectionTrait;

use super::{AppResult, Page, PageRequest};
use crate::cache::DecisionCache;
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
pub use crate::domain::decision::{Freshness, Pair, Reason, Subject};
use crate::domain::ids::{OrgId, UserId};
use crate::domain::permission::{Permission, PermissionSet};
use crate::domain::policy::Policy;
use crate::store::{Store, decisions, decode_permissions, orgs, users};
use crate::telemetry::metrics::Metrics;

pub struct Decisions {
    store: Store,
    policy: Arc<Policy>,
    cache: DecisionCache,
    metrics: Metrics,
}

impl Decisions {
    pub fn new(store: Store, policy: Arc<Policy>, cache: DecisionCache) -> Decisions {
        Decisions {
            store,
            policy,
            cache,
            metrics: Metrics::default(),
        }
    }

    /// Counts decisions into this server's metrics (nothing is counted by default).
    pub fn with_metrics(mut self, metrics: Metrics) -> Decisions {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn cache(&self) -> &DecisionCache {
        &self.cache
    }

    /// Validates a permission name against the catalog.
    pub fn permission(&self, field: &str, raw: &str) -> Result<Permission, DomainError> {
        let p = Permission::parse(raw).map_err(|_| {
            DomainError::invalid_because(
                field,
                "UNKNOWN_PERMISSION",
                format!(
                    "`{}` is not a permission name: use lower-case `area.action`",
                    crate::domain::permission::truncate(raw, 64)
                ),
            )
        })?;
        if self.policy.knows(&p) {
            Ok(p)
        } else {
            Err(DomainError::invalid_because(
                field,
                "UNKNOWN_PERMISSION",
                format!("permission `{p}` is not in the policy's permission catalog"),
            ))
        }
    }

    /// Called after every committed change to an org, before the RPC returns.
    pub async fn invalidate_org(&self, org_id: &str, version: i64) {
        self.cache.org_changed(org_id, version).await;
    }

    /// Subjects for many (org, user) pairs, from the cache where `freshness` allows.
    #[tracing::instrument(name = "decisions.subjects", skip_all, fields(pairs = pairs.len(), org_id = pairs.first().filter(|_| pairs.len() == 1).map(|p| tracing::field::display(p.0)), freshness = ?freshness))]
    pub async fn subjects(
        &self,
        pairs: &[Pair],
        freshness: Freshness,
    ) -> AppResult<HashMap<Pair, Subject>> {
        let unique: Vec<Pair> = {
            let mut seen = HashSet::new();
            pairs.iter().filter(|p| seen.insert(**p)).copied().collect()
        };
        let mut found = HashMap::with_capacity(unique.len());
        let mut missing = Vec::new();
        match freshness {
            Freshness::FullyConsistent => missing = unique,
            _ => {
                let cached = self.cache.get_many(&unique).await;
                for (pair, hit) in unique.into_iter().zip(cached) {
                    match hit {
                        Some(s) if s.fresh_enough(freshness.min_version(&pair.0)) => {
                            found.insert(pair, s);
                        }
                        _ => missing.push(pair),
                    }
                }
            }
        }
        if !missing.is_empty() {
            let loaded = self.load(&missing).await?;
            self.cache.put_many(&loaded).await;
            found.extend(loaded);
        }
        Ok(found)
    }

    /// Reads subjects from the database: four queries whatever the number of pairs. The
    /// org's version is read before its memberships and the users' accounts, so a subject is
    /// never labelled newer than the data it was built from (account changes bump the
    /// versions of every org the user belongs to).
    #[tracing::instrument(name = "decisions.load", skip_all, fields(pairs = pairs.len(), org_id = pairs.first().filter(|_| pairs.len() == 1).map(|p| tracing::field::display(p.0))))]
    async fn load(&self, pairs: &[Pair]) -> AppResult<HashMap<Pair, Subject>> {
        self.store.ensure_reachable()?;
        let c = self.store.conn();
        let org_ids: Vec<String> = unique_strings(pairs.iter().map(|p| p.0.to_string()));
        let user_ids: Vec<String> = unique_strings(pairs.iter().map(|p| p.1.to_string()));
        let org_rows = decisions::live_orgs(c, &org_ids).await?;
        let require_mfa: HashSet<String> = org_rows
            .iter()
            .filter(|o| o.require_mfa)
            .map(|o| o.id.clone())
            .collect();
        let versions: HashMap<String, i64> =
            org_rows.into_iter().map(|o| (o.id, o.version)).collect();
        let live: Vec<String> = versions.keys().cloned().collect();
        let ms = decisions::memberships(c, &live, &user_ids).await?;
        // (disabled, has MFA) per user.
        let accounts: HashMap<String, (bool, bool)> = if live.is_empty() {
            HashMap::new()
        } else {
            users::find_many(c, &user_ids)
                .await?
                .into_values()
                .map(|u| {
                    let disabled = u.status == crate::app::identity::STATUS_DISABLED;
                    (u.id, (disabled, u.mfa_enabled))
                })
                .collect()
        };
        let roles_needed: HashSet<(String, String)> = ms
            .iter()
            .filter(|m| self.policy.built_in(&m.role).is_none())
            .map(|m| (m.org_id.clone(), m.role.clone()))
            .collect();
        let custom = self.load_custom_roles(c, &roles_needed).await?;
        let by_pair: HashMap<(String, String), String> = ms
            .into_iter()
            .map(|m| ((m.org_id, m.user_id), m.role))
            .collect();

        let mut out = HashMap::with_capacity(pairs.len());
        for pair in pairs {
            let org = pair.0.to_string();
            let Some(&org_version) = versions.get(&org) else {
                out.insert(*pair, Subject::OrgNotFound);
                continue;
            };
            let (disabled, has_mfa) = accounts
                .get(&pair.1.to_string())
                .copied()
                .unwrap_or((false, false));
            let subject = match by_pair.get(&(org.clone(), pair.1.to_string())) {
                _ if disabled => Subject::UserDisabled { org_version },
                Some(_) if require_mfa.contains(&org) && !has_mfa => {
                    Subject::MfaRequired { org_version }
                }
                None => Subject::NotMember { org_version },
                Some(role) => {
                    let permissions = match self.policy.built_in(role) {
                        Some(b) => b.permissions.clone(),
                        None => custom
                            .get(&(org.clone(), role.clone()))
                            .cloned()
                            .unwrap_or_default(),
                    };
                    Subject::Member {
                        org_version,
                        role: role.clone(),
                        permissions,
                    }
                }
            };
            out.insert(*pair, subject);
        }
        Ok(out)
    }

    async fn load_custom_roles<C: ConnectionTrait>(
        &self,
        c: &C,
        needed: &HashSet<(String, String)>,
    ) -> AppResult<HashMap<(String, String), PermissionSet>> {
        if needed.is_empty() {
            return Ok(HashMap::new());
        }
        let orgs: Vec<String> = unique_strings(needed.iter().map(|(o, _)| o.clone()));
        let rows = decisions::custom_roles(c, &orgs).await?;
        Ok(rows
            .into_iter()
            .filter(|r| needed.contains(&(r.org_id.clone(), r.key.clone())))
            .map(|r| {
                let perms: PermissionSet = decode_permissions(&r.permissions)
                    .iter()
                    .filter_map(|p| Permission::parse(p).ok())
                    .filter(|p| self.policy.knows(p))
                    .collect();
                ((r.org_id, r.key), perms)
            })
            .collect())
    }

    #[tracing::instrument(name = "decisions.check", skip_all, fields(org_id = %org, permission = %permission, decision))]
    pub async fn check(
        &self,
        org: OrgId,
        user: UserId,
        permission: &Permission,
        freshness: Freshness,
    ) -> AppResult<(Reason, Option<ConsistencyToken>)> {
        let subjects = self.subjects(&[(org, user)], freshness).await?;
        let subject = subjects
            .get(&(org, user))
            .cloned()
            .unwrap_or(Subject::OrgNotFound);
        let token = subject
            .org_version()
            .map(|version| ConsistencyToken { org, version });
        let reason = subject.decide(permission);
        self.metrics.decision(reason);
        tracing::Span::current().record("decision", reason.as_str());
        Ok((reason, token))
    }

    /// Orgs (live, ordered by id) in which `user` holds `permission`.
    pub async fn lookup_orgs(
        &self,
        user: UserId,
        permission: &Permission,
        page: PageRequest,
    ) -> AppResult<Page<String>> {
        let c = self.store.conn();
        let want = usize::try_from(page.size + 1).unwrap_or(usize::MAX);
        let mut matched: Vec<String> = Vec::new();
        let mut after = page.after.clone();
        loop {
            let batch = orgs::list_for_user(c, &user, after.as_deref(), 500).await?;
            let exhausted = batch.len() < 500;
            after = batch.last().map(|(o, _)| o.id.clone());
            let pairs: Vec<Pair> = batch
                .iter()
                .filter_map(|(o, _)| OrgId::from_stored(&o.id).map(|id| (id, user)))
                .collect();
            let subjects = self.load(&pairs).await?;
            for pair in pairs {
                if subjects.get(&pair).map(|s| s.decide(permission)) == Some(Reason::Allowed) {
                    matched.push(pair.0.to_string());
                }
            }
            if matched.len() >= want || exhausted {
                break;
            }
        }
        Ok(Page::from_overfetch(matched, page.size, |id| id.clone()))
    }
}

fn unique_strings(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    it.filter(|s| seen.insert(s.clone())).collect()
}
