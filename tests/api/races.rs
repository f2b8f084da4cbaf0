//! Races: many parallel clients against the invariants of the contract (at least one owner,
//! no role that does not exist, seats within the plan, each invitation accepted at most once),
//! checked straight in the database after every round. Cross-tenant calls live in `tenancy`.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::store::entities::{
    audit_events, invitations, memberships, organizations, roles, users,
};
use tonic::{Code, Status};

use crate::helpers::{Backend, TestServer, as_actor, assert_error};
use crate::on_both_backends;

on_both_backends!(
    owners_removing_each_other_leave_one,
    transfer_races_removal_of_the_new_owner,
    role_delete_races_invite_with_that_role,
    role_delete_races_member_role_update,
    seat_limit_races_accept_revoke_and_removal,
    plan_downgrade_races_invites_and_accepts,
);

/// The contract's invariants over every live org in the database:
/// - at least one holder of the owner role;
/// - every member and every pending invitation holds a role that exists (built-in, or a
///   custom role of that org);
/// - active members, and active members plus pending invitations, within the plan's seats;
/// - no user twice in an org, no email twice among an org's members;
/// - every invitation accepted at most once (one `invitation.accepted` event, and only for
///   invitations in the accepted state, which carry `accepted_at`).
async fn assert_invariants(s: &TestServer) {
    let app = s.app();
    let c = app.store.conn();
    let policy = &app.policy;
    let now = app.now();
    let orgs = organizations::Entity::find()
        .filter(organizations::Column::DeletedAt.is_null())
        .all(c)
        .await
        .unwrap();
    let members = memberships::Entity::find().all(c).await.unwrap();
    let emails: HashMap<String, String> = users::Entity::find()
        .all(c)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.id, u.email))
        .collect();
    let custom: HashSet<(String, String)> = roles::Entity::find()
        .filter(roles::Column::BuiltIn.eq(false))
        .all(c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.org_id, r.key))
        .collect();
    let invitations = invitations::Entity::find().all(c).await.unwrap();
    let mut accepted_events: HashMap<String, usize> = HashMap::new();
    for e in audit_events::Entity::find()
        .filter(audit_events::Column::Action.eq("invitation.accepted"))
        .all(c)
        .await
        .unwrap()
    {
        *accepted_events.entry(e.target).or_default() += 1;
    }
    let exists = |org: &str, role: &str| {
        policy.built_in(role).is_some() || custom.contains(&(org.to_owned(), role.to_owned()))
    };
    for org in &orgs {
        let mine: Vec<_> = members.iter().filter(|m| m.org_id == org.id).collect();
        let owners = mine
            .iter()
            .filter(|m| m.role == policy.owner_role())
            .count();
        assert!(owners >= 1, "org {} has no owner: {mine:?}", org.id);
        for m in &mine {
            assert!(
                exists(&org.id, &m.role),
                "member holds a role that does not exist: {m:?}"
            );
        }
        let users: HashSet<_> = mine.iter().map(|m| &m.user_id).collect();
        assert_eq!(users.len(), mine.len(), "a user twice in org {}", org.id);
        let member_emails: HashSet<_> = mine.iter().map(|m| emails.get(&m.user_id)).collect();
        assert_eq!(
            member_emails.len(),
            mine.len(),
            "an email twice in org {}",
            org.id
        );
        let pending: Vec<_> = invitations
            .iter()
            .filter(|i| i.org_id == org.id && i.state == "pending" && i.expires_at > now)
            .collect();
        for i in &pending {
            assert!(
                exists(&org.id, &i.role),
                "pending invitation with a deleted role: {i:?}"
            );
        }
        if let Some(max) = policy.plan(&org.plan).and_then(|p| p.max_members) {
            let max = usize::try_from(max).unwrap();
            assert!(
                mine.len() + pending.len() <= max,
                "org {} on `{}` holds {} members + {} pending invitations > {max} seats",
                org.id,
                org.plan,
                mine.len(),
                pending.len()
            );
        }
    }
    for i in &invitations {
        let events = accepted_events
            .get(&format!("invitation:{}", i.id))
            .copied()
            .unwrap_or(0);
        if i.state == "accepted" {
            assert_eq!(events, 1, "accepted {} times: {i:?}", events);
            assert!(i.accepted_at.is_some(), "{i:?}");
        } else {
            assert_eq!(events, 0, "accepted but not in the accepted state: {i:?}");
        }
    }
}

/// Sorts results into successes and errors, asserting every error is one of `allowed`
/// (code, reason).
#[track_caller]
fn tally<T>(results: Vec<Result<T, Status>>, allowed: &[(Code, &str)], what: &str) -> Vec<T> {
    let mut ok = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                let reason = tonic_types::StatusExt::get_details_error_info(&e)
                    .map(|i| i.reason)
                    .unwrap_or_default();
                assert!(
                    allowed
                        .iter()
                        .any(|(code, r)| e.code() == *code && reason == *r),
                    "{what}: unexpected error {e:?}"
                );
            }
        }
    }
    ok
}

async fn create_auditor_role(s: &TestServer, org: &str, owner: &str) {
    s.team
        .clone()
        .create_role(as_actor(
            owner,
            pb::CreateRoleRequest {
                org_id: org.into(),
                key: "auditor".into(),
                display_name: "Auditor".into(),
                permissions: vec!["audit.view".into()],
            },
        ))
        .await
        .unwrap();
}

async fn role_of(s: &TestServer, org: &str, user: &str) -> Option<String> {
    memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(org))
        .filter(memberships::Column::UserId.eq(user))
        .one(s.app().store.conn())
        .await
        .unwrap()
        .map(|m| m.role)
}

async fn role_exists(s: &TestServer, org: &str, key: &str) -> bool {
    roles::Entity::find()
        .filter(roles::Column::OrgId.eq(org))
        .filter(roles::Column::Key.eq(key))
        .one(s.app().store.conn())
        .await
        .unwrap()
        .is_some()
}

async fn invite(
    s: &TestServer,
    actor: &str,
    org: &str,
    role: &str,
) -> Result<pb::InviteMemberResponse, Status> {
    s.team
        .clone()
        .invite_member(as_actor(
            actor,
            pb::InviteMemberRequest {
                org_id: org.into(),
                email: format!("i-{}@example.com", uuid::Uuid::now_v7().simple()),
                first_name: "Ivy".into(),
                role: role.into(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn accept(s: &TestServer, token: String) -> Result<pb::AcceptInvitationResponse, Status> {
    s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn owners(s: &TestServer, org: &str, actor: &str) -> Vec<String> {
    s.team
        .clone()
        .list_members(as_actor(
            actor,
            pb::ListMembersRequest {
                org_id: org.into(),
                role: Some("owner".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect()
}

async fn owners_removing_each_other_leave_one(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..3 {
        let (org, first) = s.org(&format!("Owners {round}"), "business").await;
        let mut all = vec![first.clone()];
        for _ in 0..4 {
            let u = s.member(&org, &first, "admin").await;
            s.team
                .clone()
                .update_member_role(as_actor(
                    &first,
                    pb::UpdateMemberRoleRequest {
                        org_id: org.clone(),
                        user_id: u.clone(),
                        role: "owner".into(),
                    },
                ))
                .await
                .unwrap();
            all.push(u);
        }
        // Every owner removes or demotes every other owner at once.
        let mut calls = Vec::new();
        for (i, actor) in all.iter().enumerate() {
            for (j, target) in all.iter().enumerate() {
                if i == j {
                    continue;
                }
                let mut team = s.team.clone();
                let (org, actor, target) = (org.clone(), actor.clone(), target.clone());
                calls.push(tokio::spawn(async move {
                    if (i + j) % 2 == 0 {
                        team.remove_member(as_actor(
                            &actor,
                            pb::RemoveMemberRequest {
                                org_id: org,
                                user_id: target,
                            },
                        ))
                        .await
                        .map(|_| ())
                    } else {
                        team.update_member_role(as_actor(
                            &actor,
                            pb::UpdateMemberRoleRequest {
                                org_id: org,
                                user_id: target,
                                role: "admin".into(),
                            },
                        ))
                        .await
                        .map(|_| ())
                    }
                }));
            }
        }
        for c in calls {
            if let Err(e) = c.await.unwrap() {
                assert!(
                    matches!(
                        e.code(),
                        Code::FailedPrecondition | Code::PermissionDenied | Code::NotFound
                    ),
                    "{e:?}"
                );
            }
        }
        let mut remaining = Vec::new();
        for u in &all {
            if s.allowed(&org, u, "org.delete").await {
                remaining.push(u.clone());
            }
        }
        assert!(!remaining.is_empty(), "the organization lost every owner");
        assert_eq!(owners(&s, &org, &remaining[0]).await.len(), remaining.len());
        assert_invariants(&s).await;
    }
    s.stop().await;
}

/// The owner transfers to the heir while six admins, the owner and the heir themselves remove
/// the heir: exactly one of all these calls wins, and the org keeps exactly one owner.
async fn transfer_races_removal_of_the_new_owner(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..5 {
        let (org, owner) = s.org(&format!("Transfer {round}"), "business").await;
        let mut admins = Vec::new();
        for _ in 0..6 {
            admins.push(s.member(&org, &owner, "admin").await);
        }
        let heir = s.member(&org, &owner, "member").await;
        let transfer = {
            let mut t = s.team.clone();
            let req = as_actor(
                &owner,
                pb::TransferOwnershipRequest {
                    org_id: org.clone(),
                    new_owner_user_id: heir.clone(),
                },
            );
            async move { t.transfer_ownership(req).await.map(|_| ()) }
        };
        let removers: Vec<String> = admins
            .iter()
            .cloned()
            .chain([owner.clone(), heir.clone()])
            .collect();
        let removals = removers.iter().map(|actor| {
            let mut t = s.team.clone();
            let req = as_actor(
                actor,
                pb::RemoveMemberRequest {
                    org_id: org.clone(),
                    user_id: heir.clone(),
                },
            );
            async move { t.remove_member(req).await.map(|_| ()) }
        });
        let (transfer, removals) = tokio::join!(transfer, join_all(removals));
        let removed = tally(
            removals,
            &[
                // The heir is gone already.
                (Code::NotFound, "MEMBER_NOT_FOUND"),
                // The heir leaving after someone removed them is no longer a member.
                (Code::PermissionDenied, "NOT_A_MEMBER"),
                // The heir owns the org now: admins (and the demoted owner) cannot remove them…
                (Code::PermissionDenied, "PRIVILEGE_ESCALATION"),
                // …and the heir cannot leave as its only owner.
                (Code::FailedPrecondition, "LAST_OWNER"),
            ],
            "RemoveMember",
        )
        .len();
        let transferred = tally(
            vec![transfer],
            &[(Code::FailedPrecondition, "NOT_A_MEMBER")],
            "TransferOwnership",
        )
        .len();
        assert_eq!(transferred + removed, 1, "exactly one call wins");
        let current = owners(&s, &org, &admins[0]).await;
        assert_eq!(current.len(), 1);
        if transferred == 1 {
            assert_eq!(current[0], heir);
            assert_eq!(role_of(&s, &org, &heir).await.as_deref(), Some("owner"));
        } else {
            assert_eq!(current[0], owner);
            assert_eq!(role_of(&s, &org, &heir).await, None);
            assert!(!s.allowed(&org, &heir, "members.view").await);
        }
        assert_invariants(&s).await;
    }
    s.stop().await;
}

/// Eight invitations with a custom role race the deletion of that role: either the delete
/// fails with ROLE_IN_USE because some invitations got in first, or it succeeds and every
/// invitation fails with UNKNOWN_ROLE — never a pending invitation with a deleted role.
async fn role_delete_races_invite_with_that_role(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..5 {
        let (org, owner) = s.org(&format!("Roles {round}"), "business").await;
        create_auditor_role(&s, &org, &owner).await;
        let delete = {
            let mut t = s.team.clone();
            let req = as_actor(
                &owner,
                pb::DeleteRoleRequest {
                    org_id: org.clone(),
                    key: "auditor".into(),
                    reassign_to: String::new(),
                },
            );
            async move { t.delete_role(req).await.map(|_| ()) }
        };
        let invites = (0..8).map(|_| invite(&s, &owner, &org, "auditor"));
        let (delete, invites) = tokio::join!(delete, join_all(invites));
        let invited = tally(
            invites,
            &[(Code::InvalidArgument, "UNKNOWN_ROLE")],
            "InviteMember",
        )
        .len();
        let deleted = tally(
            vec![delete],
            &[(Code::FailedPrecondition, "ROLE_IN_USE")],
            "DeleteRole",
        )
        .len();
        assert_eq!(
            deleted == 1,
            invited == 0,
            "deleted {deleted}, invited {invited}"
        );
        assert_eq!(role_exists(&s, &org, "auditor").await, deleted == 0);
        let pending = invitations::Entity::find()
            .filter(invitations::Column::OrgId.eq(org.as_str()))
            .filter(invitations::Column::Role.eq("auditor"))
            .all(s.app().store.conn())
            .await
            .unwrap();
        assert_eq!(pending.len(), invited);
        assert_invariants(&s).await;
    }
    s.stop().await;
}

/// Eight UpdateMemberRole calls moving members to a custom role race two DeleteRole calls
/// of it (in odd rounds one of them reassigns holders to `member`): afterwards no member
/// holds a deleted role, and each update/delete pair had one loser with the contract's error.
async fn role_delete_races_member_role_update(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..6 {
        let (org, owner) = s.org(&format!("Role updates {round}"), "business").await;
        create_auditor_role(&s, &org, &owner).await;
        let admin = s.member(&org, &owner, "admin").await;
        let mut users = Vec::new();
        for _ in 0..8 {
            users.push(s.member(&org, &owner, "member").await);
        }
        let reassign = ["", if round % 2 == 1 { "member" } else { "" }];
        let deletes = reassign.map(|to| {
            let mut t = s.team.clone();
            let req = as_actor(
                &owner,
                pb::DeleteRoleRequest {
                    org_id: org.clone(),
                    key: "auditor".into(),
                    reassign_to: to.into(),
                },
            );
            async move { t.delete_role(req).await.map(|_| to) }
        });
        let updates = users.iter().enumerate().map(|(i, u)| {
            let mut t = s.team.clone();
            // Owner and admin both manage members; mix them.
            let actor = if i % 2 == 0 { &owner } else { &admin };
            let req = as_actor(
                actor,
                pb::UpdateMemberRoleRequest {
                    org_id: org.clone(),
                    user_id: u.clone(),
                    role: "auditor".into(),
                },
            );
            async move { t.update_member_role(req).await.map(|r| r.into_inner()) }
        });
        let (deletes, updates) = tokio::join!(join_all(deletes), join_all(updates));
        let updated = tally(
            updates,
            &[(Code::InvalidArgument, "UNKNOWN_ROLE")],
            "UpdateMemberRole",
        );
        let deleted = tally(
            deletes,
            &[
                (Code::FailedPrecondition, "ROLE_IN_USE"),
                (Code::NotFound, "ROLE_NOT_FOUND"),
            ],
            "DeleteRole",
        );
        assert!(
            deleted.len() <= 1,
            "the role was deleted twice: {deleted:?}"
        );
        for m in &updated {
            assert_eq!(m.member.as_ref().unwrap().role, "auditor");
        }
        let exists = role_exists(&s, &org, "auditor").await;
        assert_eq!(exists, deleted.is_empty());
        let mut holders = 0;
        for u in &users {
            match role_of(&s, &org, u).await.as_deref() {
                Some("auditor") => holders += 1,
                Some("member") => {}
                other => panic!("unexpected role {other:?}"),
            }
        }
        match deleted.first() {
            // Nothing deleted: every successful update still holds the role, and at least
            // one got in before the plain delete (which therefore said ROLE_IN_USE).
            None => {
                assert_eq!(holders, updated.len());
                assert!(!updated.is_empty());
            }
            // A plain delete only succeeds while nobody holds the role: every update lost.
            Some(&"") => {
                assert!(updated.is_empty(), "{updated:?}");
                assert_eq!(holders, 0);
            }
            // A reassigning delete moved whoever got the role before it back to `member`.
            Some(_) => assert_eq!(holders, 0),
        }
        assert_invariants(&s).await;
    }
    s.stop().await;
}

/// A full free plan (owner + member + three pending invitations = five seats): each token is
/// accepted by three clients at once while eight more invitations are sent, one pending
/// invitation is revoked and the member is removed. Every token is used at most once, only
/// the seats actually freed are taken, and seats never exceed the plan.
async fn seat_limit_races_accept_revoke_and_removal(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..3 {
        let (org, owner) = s.org(&format!("Seats {round}"), "free").await;
        let member = s.member(&org, &owner, "member").await;
        let mut pending = Vec::new();
        for _ in 0..3 {
            pending.push(invite(&s, &owner, &org, "member").await.unwrap());
        }
        assert_eq!(
            invite(&s, &owner, &org, "member").await.unwrap_err().code(),
            Code::FailedPrecondition,
            "the plan is full"
        );
        let accepts = pending
            .iter()
            .enumerate()
            .flat_map(|(i, p)| (0..3).map(move |_| (i, p.token.clone())))
            .map(|(i, token)| {
                let s = &s;
                async move { (i, accept(s, token).await) }
            });
        let invites = (0..8).map(|_| invite(&s, &owner, &org, "member"));
        let revoke = {
            let mut t = s.team.clone();
            let req = as_actor(
                &owner,
                pb::RevokeInvitationRequest {
                    invitation_id: pending[0].invitation.as_ref().unwrap().id.clone(),
                },
            );
            async move { t.revoke_invitation(req).await.map(|_| ()) }
        };
        let remove = {
            let mut t = s.team.clone();
            let req = as_actor(
                &owner,
                pb::RemoveMemberRequest {
                    org_id: org.clone(),
                    user_id: member.clone(),
                },
            );
            async move { t.remove_member(req).await.map(|_| ()) }
        };
        let (accepts, invites, revoke, remove) =
            tokio::join!(join_all(accepts), join_all(invites), revoke, remove);
        remove.expect("removing a member always works");
        let revoked = tally(
            vec![revoke],
            &[(Code::FailedPrecondition, "INVITATION_USED")],
            "RevokeInvitation",
        )
        .len();
        let mut accepted = [0usize; 3];
        for (i, r) in accepts {
            match r {
                Ok(_) => accepted[i] += 1,
                Err(e) if i == 0 && revoked == 1 => {
                    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                }
                Err(e) => assert_error(&e, Code::FailedPrecondition, "INVITATION_USED"),
            }
        }
        assert_eq!(accepted[0], 1 - revoked, "{accepted:?}");
        assert_eq!(
            &accepted[1..],
            &[1, 1],
            "each token is accepted exactly once"
        );
        let invited = tally(
            invites,
            &[(Code::FailedPrecondition, "PLAN_SEAT_LIMIT")],
            "InviteMember",
        )
        .len();
        let freed = 1 + revoked;
        assert!(
            invited <= freed,
            "{invited} invitations took {freed} freed seats"
        );
        let c = s.app().store.conn();
        let members = memberships::Entity::find()
            .filter(memberships::Column::OrgId.eq(org.as_str()))
            .all(c)
            .await
            .unwrap()
            .len();
        let still_pending = invitations::Entity::find()
            .filter(invitations::Column::OrgId.eq(org.as_str()))
            .filter(invitations::Column::State.eq("pending"))
            .all(c)
            .await
            .unwrap()
            .len();
        // Owner + accepted invitees; pending = the new invitations.
        assert_eq!(members, 1 + accepted.iter().sum::<usize>());
        assert_eq!(still_pending, invited);
        assert!(members + still_pending <= 5);
        assert_invariants(&s).await;
    }
    s.stop().await;
}

/// A business org with five seats in use (three members, two pending invitations) is
/// downgraded to the five-seat free plan while eight invitations are sent and both pending
/// invitations are accepted (twice each): either the downgrade wins and no invitation gets
/// in, or an invitation got in first and the downgrade fails with PLAN_SEAT_LIMIT.
async fn plan_downgrade_races_invites_and_accepts(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..4 {
        let (org, owner) = s.org(&format!("Downgrade {round}"), "business").await;
        for _ in 0..2 {
            s.member(&org, &owner, "member").await;
        }
        let mut tokens = Vec::new();
        for _ in 0..2 {
            tokens.push(invite(&s, &owner, &org, "member").await.unwrap().token);
        }
        let downgrade = {
            let mut t = s.team.clone();
            let req = as_actor(
                &owner,
                pb::UpdateOrganizationRequest {
                    org_id: org.clone(),
                    plan: Some("free".into()),
                    ..Default::default()
                },
            );
            async move { t.update_organization(req).await.map(|_| ()) }
        };
        let invites = (0..8).map(|_| invite(&s, &owner, &org, "member"));
        let accepts = tokens
            .iter()
            .flat_map(|t| [t.clone(), t.clone()])
            .map(|t| accept(&s, t));
        let (downgrade, invites, accepts) =
            tokio::join!(downgrade, join_all(invites), join_all(accepts));
        let downgraded = tally(
            vec![downgrade],
            &[(Code::FailedPrecondition, "PLAN_SEAT_LIMIT")],
            "UpdateOrganization(plan)",
        )
        .len();
        let invited = tally(
            invites,
            &[(Code::FailedPrecondition, "PLAN_SEAT_LIMIT")],
            "InviteMember",
        )
        .len();
        let accepted = tally(
            accepts,
            &[(Code::FailedPrecondition, "INVITATION_USED")],
            "AcceptInvitation",
        )
        .len();
        assert_eq!(accepted, 2, "each token exactly once");
        assert_eq!(
            downgraded == 1,
            invited == 0,
            "downgraded {downgraded}, invited {invited}"
        );
        let plan = organizations::Entity::find_by_id(org.clone())
            .one(s.app().store.conn())
            .await
            .unwrap()
            .unwrap()
            .plan;
        assert_eq!(plan, if downgraded == 1 { "free" } else { "business" });
        assert_invariants(&s).await;
    }
    s.stop().await;
}
