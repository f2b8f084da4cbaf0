//! The one path every organization write takes.
//!
//! [`App::org_write`] opens the transaction, locks the org's row (writes to one org are
//! serialized by it; writes to different orgs never wait for each other), and authorizes the
//! actor, account status and two-factor included. The use case then checks its own rule and
//! makes its change through [`OrgWrite::conn`], and [`OrgWrite::commit`] records the audit
//! rows (each also a change-feed row) in the same transaction, commits, invalidates cached
//! decisions when the write could change one (only the members it changed, unless it changed
//! the org or a role), and wakes the change feed. Dropping an
//! `OrgWrite` without committing rolls everything back, the version bump included.

use serde_json::Value;

use super::{ActingMember, App, AppResult, RequestCtx, org_not_found, token};
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::{OrgId, UserId};
use crate::store::members::{self, MembershipRow};
use crate::store::orgs::OrgRow;
use crate::store::users::UserRow;
use crate::store::{Tx, WriteTx, audit, orgs};

/// A membership with its user's account, as read under the org's lock.
pub(crate) type MemberRows = (MembershipRow, UserRow);

/// What a write can change, which decides whether cached decisions must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Role definitions, the org's existence or its two-factor rule: any member's Check
    /// answers may change, so the org's version is bumped and all its cached decisions dropped.
    Decisions,
    /// One member's membership (joined, left, role changed): the org's version is bumped and
    /// that member's cached decisions dropped; the other members' stay.
    Member(UserId),
    /// Two members' memberships (an ownership transfer).
    Members(UserId, UserId),
    /// Invitations, names, plans: no decision changes, so caches stay warm.
    Records,
}

impl Effect {
    /// The members whose memberships the write changes.
    fn members(self) -> impl Iterator<Item = UserId> {
        let (a, b) = match self {
            Effect::Member(a) => (Some(a), None),
            Effect::Members(a, b) => (Some(a), Some(b)),
            Effect::Decisions | Effect::Records => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// What a committed write changed, for invalidation.
#[derive(Debug, Clone)]
pub(crate) enum Changed {
    /// Every member's decisions in the org, as of `version`.
    Org { org: String, version: i64 },
    /// One member's decisions in the org, as of `version`.
    Member {
        org: String,
        user: UserId,
        version: i64,
    },
}

impl Changed {
    /// One user's decisions in each of the orgs an account change locked.
    pub fn account(user: UserId, locked: &[(String, i64)]) -> Vec<Changed> {
        locked
            .iter()
            .map(|(org, version)| Changed::Member {
                org: org.clone(),
                user,
                version: *version,
            })
            .collect()
    }
}

/// Who may make the write.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Authority {
    /// A member holding this permission.
    Permission(&'static str),
    /// Any member (leaving an org); the message names `for_message`.
    Membership { for_message: &'static str },
    /// No member acts: the org's own single sign-on connection provisions `user`, who is
    /// recorded as the actor. The connection's admin stated the rule (its default role,
    /// checked against their own grants when they set it); the use case applies the seat
    /// limit and the role's existence itself.
    Provisioning { user: crate::domain::ids::UserId },
}

/// One audit event: the action, its target, and the target's state before and after.
pub(crate) struct Event {
    pub action: &'static str,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Event {
    pub fn new(action: &'static str, target: String) -> Event {
        Event {
            action,
            target,
            before: None,
            after: None,
        }
    }

    pub fn before(mut self, v: Value) -> Event {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: Value) -> Event {
        self.after = Some(v);
        self
    }
}

/// An open write to one org: locked, with its actor authorized.
pub(crate) struct OrgWrite<'a> {
    app: &'a App,
    ctx: &'a RequestCtx,
    tx: WriteTx,
    /// The org's id, typed, for the store's queries.
    pub id: OrgId,
    /// The org as locked (its version already bumped unless [`Effect::Records`]).
    pub org: OrgRow,
    pub actor: ActingMember,
    effect: Effect,
    /// The actor's and the changed members' rows, read together under the lock (see
    /// [`OrgWrite::member`]).
    read: Vec<(UserId, Option<MemberRows>)>,
    /// Who the audit rows name: the acting user's id, or `scim:<token id>` for a directory.
    audit_actor: String,
}

impl App {
    /// Opens a write to `org_id` (see the module docs). `NOT_FOUND` when the org does not
    /// exist or was deleted; the actor's denial otherwise.
    pub(crate) async fn org_write<'a>(
        &'a self,
        ctx: &'a RequestCtx,
        org_id: &OrgId,
        authority: Authority,
        effect: Effect,
    ) -> AppResult<OrgWrite<'a>> {
        let tx = self.store.write().await?;
        let locked = match effect {
            Effect::Records => orgs::lock_unchanged(&*tx, org_id).await?,
            Effect::Decisions | Effect::Member(_) | Effect::Members(..) => {
                orgs::lock(&*tx, org_id).await?
            }
        };
        let org = locked.ok_or_else(|| org_not_found(&org_id.to_string()))?;
        let acting = match authority {
            Authority::Permission(_) | Authority::Membership { .. } => Some(ctx.actor()?),
            Authority::Provisioning { .. } => None,
        };
        // After the lock, in a statement of its own: see ARCHITECTURE.md on READ COMMITTED.
        let read = read_members(&tx, org_id, acting.into_iter().chain(effect.members())).await?;
        let found = |u: UserId| {
            read.iter()
                .find(|(id, _)| *id == u)
                .and_then(|(_, r)| r.clone())
        };
        let actor = match authority {
            Authority::Permission(p) => {
                let user = ctx.actor()?;
                let m = self
                    .actor_from(&*tx, user, found(user), &org.id, Some(org.require_mfa), p)
                    .await?;
                m.actor().require(p)?;
                m
            }
            Authority::Membership { for_message } => {
                let user = ctx.actor()?;
                self.actor_from(
                    &*tx,
                    user,
                    found(user),
                    &org.id,
                    Some(org.require_mfa),
                    for_message,
                )
                .await?
            }
            Authority::Provisioning { user } => ActingMember {
                user_id: user,
                role: crate::domain::roles::ResolvedRole {
                    key: String::new(),
                    display_name: String::new(),
                    permissions: Default::default(),
                    built_in: false,
                },
                is_owner: false,
                org: org.id.clone(),
            },
        };
        let audit_actor = actor.user_id.to_string();
        Ok(OrgWrite {
            app: self,
            ctx,
            tx,
            id: *org_id,
            org,
            actor,
            effect,
            read,
            audit_actor,
        })
    }

    /// Opens a write for a SCIM directory (see `app::scim`), changing what `effect` says (one
    /// member's, when the resource names one; `Decisions` otherwise): the org is the one the token
    /// belongs to, and the token is checked again under the org's lock, so a write racing a
    /// RevokeScimToken either commits before the revocation or is refused. The directory acts
    /// with the authority of the policy's role below owner (see [`App::directory_actor`]).
    pub(crate) async fn directory_write<'a>(
        &'a self,
        ctx: &'a RequestCtx,
        secret: &str,
        effect: Effect,
    ) -> AppResult<OrgWrite<'a>> {
        let first = self.directory(secret).await?;
        let tx = self.store.write().await?;
        let org = orgs::lock(&*tx, &first.org_id)
            .await?
            .ok_or_else(super::scim::unknown_token)?;
        let token = crate::store::scim::live_token_by_hash(&*tx, &first.token_hash)
            .await?
            .filter(|t| t.org_id == org.id)
            .ok_or_else(super::scim::unknown_token)?;
        let actor = self.directory_actor(&org.id, &token.id)?;
        Ok(OrgWrite {
            app: self,
            ctx,
            tx,
            id: first.org_id,
            org,
            actor,
            effect,
            read: Vec::new(),
            audit_actor: format!("scim:{}", token.id),
        })
    }

    /// After a commit: drops the cached decisions the write changed (at the versions it
    /// bumped) and wakes this replica's change feed. Every write path ends here.
    pub(crate) async fn committed(&self, changed: &[Changed]) {
        for c in changed {
            match c {
                Changed::Org { org, version } => self.decisions.invalidate_org(org, *version).await,
                Changed::Member { org, user, version } => {
                    self.decisions.invalidate_member(org, *user, *version).await
                }
            }
        }
        if let Some(wake) = self.on_commit.get() {
            wake();
        }
    }
}

/// The memberships (with accounts) of `users` in the org, in one query: each user with theirs,
/// or `None` for a non-member.
async fn read_members(
    tx: &WriteTx,
    org_id: &OrgId,
    users: impl Iterator<Item = UserId>,
) -> AppResult<Vec<(UserId, Option<MemberRows>)>> {
    let mut wanted: Vec<UserId> = users.collect();
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = members::find_many_with_users(&**tx, org_id, &wanted).await?;
    Ok(wanted
        .into_iter()
        .map(|u| {
            let at = rows
                .iter()
                .position(|(m, _)| UserId::from_stored(&m.user_id) == Some(u));
            (u, at.map(|i| rows.swap_remove(i)))
        })
        .collect())
}

impl OrgWrite<'_> {
    /// The transaction, for the use case's own reads and changes.
    pub fn conn(&self) -> &Tx {
        &self.tx
    }

    /// `user`'s membership of the org with their account (`None`: not a member), as read
    /// under the lock. The actor's and the changed members' were read when the write opened,
    /// in the same query; anyone else's is read now.
    pub async fn member(&mut self, user: &UserId) -> AppResult<Option<MemberRows>> {
        if let Some(at) = self.read.iter().position(|(id, _)| id == user) {
            return Ok(self.read.swap_remove(at).1);
        }
        Ok(members::find_with_user(&*self.tx, &self.id, user).await?)
    }

    /// The actor's user id, as audit rows record it (`scim:<token id>` for a directory).
    pub fn actor_id(&self) -> String {
        self.audit_actor.clone()
    }

    /// Ends the write without a change: nothing is recorded, the version bump is undone, so
    /// the token names the version the org keeps.
    pub fn unchanged(self) -> ConsistencyToken {
        let mut t = token(&self.org);
        if self.effect != Effect::Records {
            t.version -= 1;
        }
        t
    }

    /// Records `events` (audit log and change feed), commits, invalidates and wakes.
    /// Returns the write's consistency token.
    pub async fn commit(
        self,
        events: impl IntoIterator<Item = Event>,
    ) -> AppResult<ConsistencyToken> {
        let actor = self.actor_id();
        self.app
            .commit_org_events(self.tx, self.ctx, &self.org, &actor, events, self.effect)
            .await
    }
}

impl App {
    /// The end of every org write: the audit rows (each also a change-feed row) in `tx`, the
    /// commit, then invalidation (for [`Effect::Decisions`]) and the feed's wake-up. Used by
    /// [`OrgWrite::commit`] and by the writes that make an org or join one by token.
    pub(crate) async fn commit_org_events(
        &self,
        tx: WriteTx,
        ctx: &RequestCtx,
        org: &OrgRow,
        actor: &str,
        events: impl IntoIterator<Item = Event>,
        effect: Effect,
    ) -> AppResult<ConsistencyToken> {
        for e in events {
            let row = self.audit_event(
                ctx,
                &org.id,
                actor,
                e.action,
                &e.target,
                (e.before, e.after),
            );
            audit::insert(&*tx, row).await?;
        }
        tx.commit().await?;
        let member = |user| Changed::Member {
            org: org.id.clone(),
            user,
            version: org.version,
        };
        let changed = match effect {
            Effect::Decisions => vec![Changed::Org {
                org: org.id.clone(),
                version: org.version,
            }],
            Effect::Member(user) => vec![member(user)],
            Effect::Members(a, b) => vec![member(a), member(b)],
            Effect::Records => Vec::new(),
        };
        self.committed(&changed).await;
        Ok(token(org))
    }
}
