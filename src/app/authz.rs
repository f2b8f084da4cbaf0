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
pub use crate::domain::decision::{Freshness, Grant, Grants, Pair, Reason, Subject};
use crate::domain::ids::{OrgId, UserId};
use crate::domain::permission::{Permission, PermissionBit};
use crate::domain::policy::Policy;
use crate::store::{Store, decisions, decode_permissions, orgs, users};
use crate::telemetry::metrics::Metrics;

pub struct Decisions {
    store: Store,
    grants: Arc<Grants>,
    cache: DecisionCache,
    metrics: Metrics,
}

impl Decisions {
    /// `cache` must have been built with the same `grants`, so that subjects from either
    /// share the built-in roles' grants.
    pub fn new(store: Store, grants: Arc<Grants>, cache: DecisionCache) -> Decisions {
        Decisions {
            store,
            grants,
            cache,
            metrics: Metrics::default(),
        }
    }

    fn policy(&self) -> &Policy {
        self.grants.policy()
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

    /// Validates a permission name against the catalog and returns its position; allocates
    /// nothing for a known name. `field` is made only for an error.
    pub fn permission_bit(
        &self,
        field: impl FnOnce() -> String,
        raw: &str,
    ) -> Result<PermissionBit, DomainError> {
        match self.policy().bit(raw) {
            Some(bit) => Ok(bit),
            None => Err(self
                .permission(&field(), raw)
                .err()
                .unwrap_or_else(|| DomainError::invalid("permission", "unknown permission"))),
        }
    }

    /// The catalog position of a permission already known to the policy (a route's).
    pub fn bit_of(&self, permission: &Permission) -> Option<PermissionBit> {
        self.policy().bit(permission.as_str())
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
        if self.policy().knows(&p) {
            Ok(p)
        } else {
            Err(DomainError::invalid_because(
                field,
                "UNKNOWN_PERMISSION",
                format!("permission `{p}` is not in the policy's permission catalog"),
            ))
        }
    }

    /// Called after every committed change that can change the decisions of all the org's
    /// members (a role definition, the org itself), before the RPC returns.
    pub async fn invalidate_org(&self, org_id: &str, version: i64) {
        self.cache.org_changed(org_id, version).await;
    }

    /// Called after every committed change to one member's membership or account, before the
    /// RPC returns: only that member's cached decisions in the org go.
    pub async fn invalidate_member(&self, org_id: &str, user: UserId, version: i64) {
        self.cache.member_changed(org_id, user, version).await;
    }

    /// One subject, from the cache where `freshness` allows: the check path.
    #[tracing::instrument(name = "decisions.subjects", target = "teamgate::trace", skip_all, fields(pairs = 1, org_id = %pair.0, freshness = ?freshness))]
    pub async fn subject(&self, pair: Pair, freshness: &Freshness) -> AppResult<Subject> {
        if *freshness != Freshness::FullyConsistent
            && let Some(s) = self.cache.get(&pair).await
            && s.fresh_enough(freshness.min_version(&pair.0))
        {
            return Ok(s);
        }
        let subject = self.load_one(pair).await?;
        self.cache.put_many(&[(pair, subject.clone())]).await;
        Ok(subject)
    }

    /// Subjects for many (org, user) pairs, from the cache where `freshness` allows: the
    /// distinct pairs, sorted (find one with `binary_search`), and their subjects.
    #[tracing::instrument(name = "decisions.subjects", target = "teamgate::trace", skip_all, fields(pairs = pairs.len(), freshness = ?freshness))]
    pub async fn subjects(
        &self,
        pairs: &[Pair],
        freshness: &Freshness,
    ) -> AppResult<(Vec<Pair>, Vec<Subject>)> {
        let mut unique = pairs.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut found: Vec<Option<Subject>> = match freshness {
            Freshness::FullyConsistent => vec![None; unique.len()],
            _ => self
                .cache
                .get_many(&unique)
                .await
                .into_iter()
                .zip(&unique)
                .map(|(hit, pair)| hit.filter(|s| s.fresh_enough(freshness.min_version(&pair.0))))
                .collect(),
        };
        let missing: Vec<Pair> = unique
            .iter()
            .zip(&found)
            .filter(|(_, s)| s.is_none())
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            let loaded = self.load(&missing).await?;
            self.cache.put_many(&loaded).await;
            for (pair, subject) in loaded {
                if let Ok(i) = unique.binary_search(&pair) {
                    found[i] = Some(subject);
                }
            }
        }
        let subjects = found
            .into_iter()
            .map(|s| s.unwrap_or(Subject::OrgNotFound))
            .collect();
        Ok((unique, subjects))
    }

    /// Reads subjects from the database: four queries whatever the number of pairs. The
    /// org's version is read before its memberships and the users' accounts, so a subject is
    /// never labelled newer than the data it was built from (account changes bump the
    /// versions of every org the user belongs to).
    #[tracing::instrument(name = "decisions.load", target = "teamgate::trace", skip_all, fields(pairs = pairs.len(), org_id = pairs.first().filter(|_| pairs.len() == 1).map(|p| tracing::field::display(p.0))))]
    async fn load(&self, pairs: &[Pair]) -> AppResult<Vec<(Pair, Subject)>> {
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
            .filter(|m| self.grants.built_in(&m.role).is_none())
            .map(|m| (m.org_id.clone(), m.role.clone()))
            .collect();
        let custom = self.load_custom_roles(c, &roles_needed).await?;
        let by_pair: HashMap<(String, String), String> = ms
            .into_iter()
            .map(|m| ((m.org_id, m.user_id), m.role))
            .collect();

        let mut out = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let org = pair.0.to_string();
            let Some(&org_version) = versions.get(&org) else {
                out.push((*pair, Subject::OrgNotFound));
                continue;
            };
            let user = pair.1.to_string();
            let (disabled, has_mfa) = accounts.get(&user).copied().unwrap_or((false, false));
            let role = by_pair.get(&(org.clone(), user)).map(String::as_str);
            let subject = self.subject_of(
                Read {
                    org_version,
                    require_mfa: require_mfa.contains(&org),
                    role,
                    disabled,
                    has_mfa,
                },
                |role| custom.get(&(org.clone(), role.to_owned())).cloned(),
            );
            out.push((*pair, subject));
        }
        Ok(out)
    }

    /// One subject from the database in one statement (one snapshot): the fully consistent
    /// Check's read, and any single-pair cache miss.
    #[tracing::instrument(name = "decisions.load", target = "teamgate::trace", skip_all, fields(pairs = 1, org_id = %pair.0))]
    async fn load_one(&self, pair: Pair) -> AppResult<Subject> {
        self.store.ensure_reachable()?;
        let row =
            decisions::subject(self.store.conn(), &pair.0.to_string(), &pair.1.to_string()).await?;
        let Some(row) = row else {
            return Ok(Subject::OrgNotFound);
        };
        Ok(self.subject_of(
            Read {
                org_version: row.version,
                require_mfa: row.require_mfa,
                role: row.role.as_deref(),
                disabled: row.user_status.as_deref() == Some(crate::app::identity::STATUS_DISABLED),
                has_mfa: row.mfa_enabled.unwrap_or(false),
            },
            |role| {
                let names = decode_permissions(row.role_permissions.as_deref()?);
                Some(self.grants.grant(role, names.iter().map(String::as_str)))
            },
        ))
    }

    /// The rule that turns what was read into a subject, for either read. `custom` finds a
    /// custom role's grant; a role that is neither built in nor found grants nothing.
    fn subject_of(
        &self,
        read: Read<'_>,
        custom: impl FnOnce(&str) -> Option<Arc<Grant>>,
    ) -> Subject {
        let org_version = read.org_version;
        match read.role {
            _ if read.disabled => Subject::UserDisabled { org_version },
            Some(_) if read.require_mfa && !read.has_mfa => Subject::MfaRequired { org_version },
            None => Subject::NotMember { org_version },
            Some(role) => {
                let grant = match self.grants.built_in(role) {
                    Some(g) => g.clone(),
                    None => custom(role).unwrap_or_else(|| {
                        Arc::new(Grant::new(
                            role.to_owned(),
                            Default::default(),
                            self.policy(),
                        ))
                    }),
                };
                Subject::Member { org_version, grant }
            }
        }
    }

    async fn load_custom_roles<C: ConnectionTrait>(
        &self,
        c: &C,
        needed: &HashSet<(String, String)>,
    ) -> AppResult<HashMap<(String, String), Arc<Grant>>> {
        if needed.is_empty() {
            return Ok(HashMap::new());
        }
        let orgs: Vec<String> = unique_strings(needed.iter().map(|(o, _)| o.clone()));
        let rows = decisions::custom_roles(c, &orgs).await?;
        Ok(rows
            .into_iter()
            .filter(|r| needed.contains(&(r.org_id.clone(), r.key.clone())))
            .map(|r| {
                let names = decode_permissions(&r.permissions);
                let grant = self.grants.grant(&r.key, names.iter().map(String::as_str));
                ((r.org_id, r.key), grant)
            })
            .collect())
    }

    #[tracing::instrument(name = "decisions.check", target = "teamgate::trace", skip_all, fields(org_id = %org, permission = self.policy().name_of(permission).map(|p| p.as_str()), decision))]
    pub async fn check(
        &self,
        org: OrgId,
        user: UserId,
        permission: PermissionBit,
        freshness: &Freshness,
    ) -> AppResult<(Reason, Option<ConsistencyToken>)> {
        let subject = self.subject((org, user), freshness).await?;
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
        permission: PermissionBit,
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
            for (pair, subject) in subjects {
                if subject.decide(permission) == Reason::Allowed {
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

/// What a subject is built from, as either read found it.
struct Read<'a> {
    org_version: i64,
    require_mfa: bool,
    role: Option<&'a str>,
    disabled: bool,
    has_mfa: bool,
}

fn unique_strings(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    it.filter(|s| seen.insert(s.clone())).collect()
}
