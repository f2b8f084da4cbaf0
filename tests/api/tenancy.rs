//! Tenancy: an actor header naming a user of another organization (its owner, a plain member)
//! or no user at all gets nowhere in a victim organization — every RPC is denied with the
//! contract's status, and the victim's rows, audit log and change feed stay exactly as they
//! were. Calls made in the intruder's own org that name the victim's objects (members, custom
//! roles, invitations) reach nothing either, and AuthzService answers about outsiders leak
//! nothing.

use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use teamgate::store::entities::{
    audit_events, changes, invitations, memberships, organizations, outbox, roles, users,
};
use tonic::{Code, Status};

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    every_team_rpc_denies_other_tenants,
    identity_calls_on_another_orgs_users_are_denied,
    authz_answers_about_outsiders_leak_nothing,
    own_org_calls_cannot_reach_another_orgs_objects,
    a_stolen_invitation_token_never_admits_the_actor,
);

/// Everything about one org that a stray write could change, read straight from the database,
/// plus global counters (audit log, change feed, outbox) that any write would move.
#[derive(Debug, PartialEq)]
struct Snapshot {
    org: Option<organizations::Model>,
    members: Vec<memberships::Model>,
    users: Vec<users::Model>,
    invitations: Vec<invitations::Model>,
    roles: Vec<roles::Model>,
    audit_events: u64,
    changes: u64,
    feed_head: Option<i64>,
    outbox: u64,
}

async fn snapshot(s: &TestServer, org: &str) -> Snapshot {
    let c = s.app().store.conn();
    let members = memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(org))
        .order_by_asc(memberships::Column::UserId)
        .all(c)
        .await
        .unwrap();
    let ids: Vec<String> = members.iter().map(|m| m.user_id.clone()).collect();
    Snapshot {
        org: organizations::Entity::find_by_id(org.to_owned())
            .one(c)
            .await
            .unwrap(),
        users: users::Entity::find()
            .filter(users::Column::Id.is_in(ids))
            .order_by_asc(users::Column::Id)
            .all(c)
            .await
            .unwrap(),
        members,
        invitations: invitations::Entity::find()
            .filter(invitations::Column::OrgId.eq(org))
            .order_by_asc(invitations::Column::Id)
            .all(c)
            .await
            .unwrap(),
        roles: roles::Entity::find()
            .filter(roles::Column::OrgId.eq(org))
            .order_by_asc(roles::Column::Key)
            .all(c)
            .await
            .unwrap(),
        audit_events: audit_events::Entity::find().count(c).await.unwrap(),
        changes: changes::Entity::find().count(c).await.unwrap(),
        feed_head: changes::Entity::find()
            .order_by_desc(changes::Column::Seq)
            .one(c)
            .await
            .unwrap()
            .map(|r| r.seq),
        outbox: outbox::Entity::find().count(c).await.unwrap(),
    }
}

/// The org under attack: an owner, an admin, a plain member, a member holding a custom role,
/// a pending invitation (custom role) and a revoked one.
struct Victim {
    org: String,
    owner: String,
    admin: String,
    member: String,
    auditor: String,
    pending: String,
    revoked: String,
    /// A consistency_token of the victim org, as a feed position to resume after.
    token: String,
}

async fn victim(s: &TestServer) -> Victim {
    let (org, owner) = s.org("Victim", "business").await;
    let token = s
        .team
        .clone()
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "auditor".into(),
                display_name: "Auditor".into(),
                permissions: vec!["audit.view".into(), "members.view".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    let admin = s.member(&org, &owner, "admin").await;
    let member = s.member(&org, &owner, "member").await;
    let auditor = s.member(&org, &owner, "auditor").await;
    let invite = |email: &str| {
        as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: email.into(),
                first_name: "P".into(),
                role: "auditor".into(),
                ..Default::default()
            },
        )
    };
    let pending = s
        .team
        .clone()
        .invite_member(invite("pending@example.com"))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap()
        .id;
    let revoked = s
        .team
        .clone()
        .invite_member(invite("revoked@example.com"))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap()
        .id;
    s.team
        .clone()
        .revoke_invitation(as_actor(
            &owner,
            pb::RevokeInvitationRequest {
                invitation_id: revoked.clone(),
            },
        ))
        .await
        .unwrap();
    Victim {
        org,
        owner,
        admin,
        member,
        auditor,
        pending,
        revoked,
        token,
    }
}

/// Another org with an owner and a plain member; both intrude, and so does a user id that
/// exists nowhere.
struct Intruders {
    org: String,
    owner: String,
    member: String,
    ghost: String,
}

async fn intruders(s: &TestServer) -> Intruders {
    let (org, owner) = s.org("Intruder", "business").await;
    let member = s.member(&org, &owner, "member").await;
    Intruders {
        org,
        owner,
        member,
        ghost: uuid::Uuid::now_v7().to_string(),
    }
}

impl Intruders {
    fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("owner of another org", &self.owner),
            ("member of another org", &self.member),
            ("unknown user", &self.ghost),
        ]
    }
}

/// What a denial must say.
enum Denial {
    /// Not a member of the org: PERMISSION_DENIED / NOT_A_MEMBER, message naming the permission.
    NotMember(&'static str),
    /// PERMISSION_DENIED with this reason.
    Reason(&'static str),
}

type Outcome = (String, Result<(), Status>, Denial);

fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

/// Every TeamService RPC that acts within an org, aimed at the victim with `actor`.
async fn team_attempts(s: &TestServer, v: &Victim, actor: &str) -> Vec<Outcome> {
    use Denial::{NotMember, Reason};
    let mut t = s.team.clone();
    let o = || v.org.clone();
    let mut out: Vec<Outcome> = Vec::new();
    let mut push = |what: &str, r: Result<(), Status>, d: Denial| out.push((what.into(), r, d));

    let r = t
        .get_organization(as_actor(actor, pb::GetOrganizationRequest { org_id: o() }))
        .await;
    push("GetOrganization", ok(r), NotMember("members.view"));
    for (what, req, perm) in [
        (
            "UpdateOrganization(name)",
            pb::UpdateOrganizationRequest {
                org_id: o(),
                name: Some("Pwned".into()),
                ..Default::default()
            },
            "org.update",
        ),
        (
            "UpdateOrganization(plan)",
            pb::UpdateOrganizationRequest {
                org_id: o(),
                plan: Some("free".into()),
                ..Default::default()
            },
            "billing.manage",
        ),
        (
            "UpdateOrganization(require_mfa)",
            pb::UpdateOrganizationRequest {
                org_id: o(),
                require_mfa: Some(true),
                ..Default::default()
            },
            "org.update",
        ),
    ] {
        let r = t.update_organization(as_actor(actor, req)).await;
        push(what, ok(r), NotMember(perm));
    }
    let r = t
        .delete_organization(as_actor(
            actor,
            pb::DeleteOrganizationRequest { org_id: o() },
        ))
        .await;
    push("DeleteOrganization", ok(r), NotMember("org.delete"));
    let r = t
        .list_organizations(as_actor(
            actor,
            pb::ListOrganizationsRequest {
                user_id: v.owner.clone(),
                ..Default::default()
            },
        ))
        .await;
    push("ListOrganizations", ok(r), Reason("ACTOR_MISMATCH"));
    let r = t
        .list_members(as_actor(
            actor,
            pb::ListMembersRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await;
    push("ListMembers", ok(r), NotMember("members.view"));
    let r = t
        .get_member(as_actor(
            actor,
            pb::GetMemberRequest {
                org_id: o(),
                user_id: v.member.clone(),
            },
        ))
        .await;
    push("GetMember", ok(r), NotMember("members.view"));
    for (what, user, role) in [
        ("UpdateMemberRole(member to admin)", &v.member, "admin"),
        ("UpdateMemberRole(owner to member)", &v.owner, "member"),
        (
            "UpdateMemberRole(self to owner)",
            &actor.to_owned(),
            "owner",
        ),
    ] {
        let r = t
            .update_member_role(as_actor(
                actor,
                pb::UpdateMemberRoleRequest {
                    org_id: o(),
                    user_id: user.clone(),
                    role: role.into(),
                },
            ))
            .await;
        push(what, ok(r), NotMember("members.manage"));
    }
    for (what, user) in [
        ("RemoveMember(member)", &v.member),
        ("RemoveMember(owner)", &v.owner),
        // The "anyone may leave" path must not let an outsider through either.
        ("RemoveMember(self)", &actor.to_owned()),
    ] {
        let r = t
            .remove_member(as_actor(
                actor,
                pb::RemoveMemberRequest {
                    org_id: o(),
                    user_id: user.clone(),
                },
            ))
            .await;
        push(what, ok(r), NotMember("members.manage"));
    }
    for (what, heir) in [
        ("TransferOwnership(to self)", &actor.to_owned()),
        ("TransferOwnership(to member)", &v.member),
    ] {
        let r = t
            .transfer_ownership(as_actor(
                actor,
                pb::TransferOwnershipRequest {
                    org_id: o(),
                    new_owner_user_id: heir.clone(),
                },
            ))
            .await;
        push(what, ok(r), NotMember("org.transfer"));
    }
    for (what, role) in [
        ("InviteMember(default role)", ""),
        ("InviteMember(owner)", "owner"),
    ] {
        let r = t
            .invite_member(as_actor(
                actor,
                pb::InviteMemberRequest {
                    org_id: o(),
                    email: format!("spy-{}@example.com", uuid::Uuid::now_v7().simple()),
                    first_name: "Spy".into(),
                    role: role.into(),
                    ..Default::default()
                },
            ))
            .await;
        push(what, ok(r), NotMember("members.manage"));
    }
    let r = t
        .list_invitations(as_actor(
            actor,
            pb::ListInvitationsRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await;
    push("ListInvitations", ok(r), NotMember("members.view"));
    for (what, id) in [
        ("ResendInvitation(pending)", &v.pending),
        ("ResendInvitation(revoked)", &v.revoked),
    ] {
        let r = t
            .resend_invitation(as_actor(
                actor,
                pb::ResendInvitationRequest {
                    invitation_id: id.clone(),
                },
            ))
            .await;
        push(what, ok(r), NotMember("members.manage"));
    }
    let r = t
        .revoke_invitation(as_actor(
            actor,
            pb::RevokeInvitationRequest {
                invitation_id: v.pending.clone(),
            },
        ))
        .await;
    push("RevokeInvitation", ok(r), NotMember("members.manage"));
    let r = t
        .list_roles(as_actor(
            actor,
            pb::ListRolesRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await;
    push("ListRoles", ok(r), NotMember("members.view"));
    let r = t
        .create_role(as_actor(
            actor,
            pb::CreateRoleRequest {
                org_id: o(),
                key: "spy".into(),
                display_name: "Spy".into(),
                permissions: vec!["members.view".into()],
            },
        ))
        .await;
    push("CreateRole", ok(r), NotMember("roles.manage"));
    let r = t
        .update_role(as_actor(
            actor,
            pb::UpdateRoleRequest {
                org_id: o(),
                key: "auditor".into(),
                display_name: Some("Owned".into()),
                permissions: vec!["org.delete".into()],
            },
        ))
        .await;
    push("UpdateRole", ok(r), NotMember("roles.manage"));
    for (what, reassign) in [
        ("DeleteRole", ""),
        ("DeleteRole(reassign_to member)", "member"),
    ] {
        let r = t
            .delete_role(as_actor(
                actor,
                pb::DeleteRoleRequest {
                    org_id: o(),
                    key: "auditor".into(),
                    reassign_to: reassign.into(),
                },
            ))
            .await;
        push(what, ok(r), NotMember("roles.manage"));
    }
    let r = t
        .list_audit_events(as_actor(
            actor,
            pb::ListAuditEventsRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await;
    push("ListAuditEvents", ok(r), NotMember("audit.view"));
    for (what, after) in [
        ("WatchChanges(from now)", String::new()),
        ("WatchChanges(after a token)", v.token.clone()),
        ("WatchChanges(after a cursor)", "c1.0".to_owned()),
    ] {
        let r = t
            .watch_changes(as_actor(
                actor,
                pb::WatchChangesRequest { org_id: o(), after },
            ))
            .await;
        push(what, ok(r), NotMember("members.view"));
    }
    let r = t
        .create_scim_token(as_actor(
            actor,
            pb::CreateScimTokenRequest {
                org_id: o(),
                name: "Intruder's directory".into(),
            },
        ))
        .await;
    push("CreateScimToken", ok(r), NotMember("sso.manage"));
    let r = t
        .list_scim_tokens(as_actor(actor, pb::ListScimTokensRequest { org_id: o() }))
        .await;
    push("ListScimTokens", ok(r), NotMember("sso.manage"));
    let r = t
        .revoke_scim_token(as_actor(
            actor,
            pb::RevokeScimTokenRequest {
                org_id: o(),
                token_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await;
    push("RevokeScimToken", ok(r), NotMember("sso.manage"));
    let r = t
        .set_scim_group_mapping(as_actor(
            actor,
            pb::SetScimGroupMappingRequest {
                org_id: o(),
                group_display_name: "Intruders".into(),
                role_key: "admin".into(),
            },
        ))
        .await;
    push("SetScimGroupMapping", ok(r), NotMember("sso.manage"));
    let r = t
        .list_scim_group_mappings(as_actor(
            actor,
            pb::ListScimGroupMappingsRequest { org_id: o() },
        ))
        .await;
    push("ListScimGroupMappings", ok(r), NotMember("sso.manage"));
    let r = t
        .delete_scim_group_mapping(as_actor(
            actor,
            pb::DeleteScimGroupMappingRequest {
                org_id: o(),
                group_display_name: "Engineers".into(),
            },
        ))
        .await;
    push("DeleteScimGroupMapping", ok(r), NotMember("sso.manage"));
    out
}

#[track_caller]
fn assert_denied(who: &str, outcomes: Vec<Outcome>, org: &str) {
    for (what, result, denial) in outcomes {
        let e = match result {
            Ok(()) => panic!("{who}: {what} succeeded"),
            Err(e) => e,
        };
        match denial {
            Denial::NotMember(permission) => {
                assert_error(&e, Code::PermissionDenied, "NOT_A_MEMBER");
                assert!(
                    e.message()
                        .contains(&format!("lacks {permission} in org {org}")),
                    "{who}: {what}: the message must name the permission: {e:?}"
                );
            }
            Denial::Reason(reason) => assert_error(&e, Code::PermissionDenied, reason),
        }
    }
}

/// The owner of another org, one of its members and an unknown user id, each against every
/// TeamService RPC of the victim org: all PERMISSION_DENIED, nothing changes.
async fn every_team_rpc_denies_other_tenants(b: Backend) {
    let s = TestServer::spawn(b).await;
    let v = victim(&s).await;
    let x = intruders(&s).await;
    let before = snapshot(&s, &v.org).await;
    let mut stream = s
        .team
        .clone()
        .watch_changes(as_actor(
            &v.owner,
            pb::WatchChangesRequest {
                org_id: v.org.clone(),
                after: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for (who, actor) in x.all() {
        let outcomes = team_attempts(&s, &v, actor).await;
        assert!(outcomes.len() >= 30, "{}", outcomes.len());
        assert_denied(who, outcomes, &v.org);
        assert_eq!(
            snapshot(&s, &v.org).await,
            before,
            "{who} changed the victim org"
        );
    }
    // The victim's own feed saw nothing; its next event is the victim's own next change.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err(),
        "a denied call reached the change feed"
    );
    s.team
        .clone()
        .update_organization(as_actor(
            &v.owner,
            pb::UpdateOrganizationRequest {
                org_id: v.org.clone(),
                name: Some("Victim renamed".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the victim's change arrives")
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.action.as_str(), next.actor_user_id.as_str()),
        ("organization.updated", v.owner.as_str())
    );
    // Everyone in the victim org still holds what they held.
    for (user, permission) in [
        (&v.owner, "org.delete"),
        (&v.admin, "members.manage"),
        (&v.member, "members.view"),
        (&v.auditor, "audit.view"),
    ] {
        assert!(s.allowed(&v.org, user, permission).await, "{permission}");
    }
    s.stop().await;
}

/// IdentityService calls that act on a user (names, status, two-factor) are denied to actors
/// from other orgs when aimed at the victim's members, and change nothing.
async fn identity_calls_on_another_orgs_users_are_denied(b: Backend) {
    let s = TestServer::spawn(b).await;
    let v = victim(&s).await;
    let x = intruders(&s).await;
    let before = snapshot(&s, &v.org).await;
    let mut id = IdentityServiceClient::new(s.channel.clone());
    for (who, actor) in x.all() {
        for target in [&v.owner, &v.admin, &v.member] {
            let mut outcomes: Vec<(&str, Result<(), Status>, &str)> = Vec::new();
            let r = id
                .update_user(as_actor(
                    actor,
                    pb::UpdateUserRequest {
                        user_id: target.clone(),
                        first_name: Some("Pwned".into()),
                        last_name: None,
                    },
                ))
                .await;
            outcomes.push(("UpdateUser", ok(r), "NOT_THE_USER"));
            for status in [pb::UserStatus::Disabled, pb::UserStatus::Active] {
                let r = id
                    .set_user_status(as_actor(
                        actor,
                        pb::SetUserStatusRequest {
                            user_id: target.clone(),
                            status: status.into(),
                        },
                    ))
                    .await;
                outcomes.push(("SetUserStatus", ok(r), "NOT_AN_ADMIN"));
            }
            let r = id
                .enroll_totp(as_actor(
                    actor,
                    pb::EnrollTotpRequest {
                        user_id: target.clone(),
                    },
                ))
                .await;
            outcomes.push(("EnrollTotp", ok(r), "NOT_THE_USER"));
            let r = id
                .confirm_totp(as_actor(
                    actor,
                    pb::ConfirmTotpRequest {
                        user_id: target.clone(),
                        code: "123456".into(),
                    },
                ))
                .await;
            outcomes.push(("ConfirmTotp", ok(r), "NOT_THE_USER"));
            let r = id
                .disable_totp(as_actor(
                    actor,
                    pb::DisableTotpRequest {
                        user_id: target.clone(),
                        code: "123456".into(),
                    },
                ))
                .await;
            outcomes.push(("DisableTotp", ok(r), "NOT_THE_USER"));
            for (what, r, reason) in outcomes {
                let e = r
                    .err()
                    .unwrap_or_else(|| panic!("{who}: {what} on {target} succeeded"));
                assert_error(&e, Code::PermissionDenied, reason);
            }
        }
        assert_eq!(
            snapshot(&s, &v.org).await,
            before,
            "{who} changed the victim org"
        );
    }
    // Nobody was disabled: every victim member still passes a fresh Check.
    for user in [&v.owner, &v.admin, &v.member] {
        let r = s
            .authz
            .clone()
            .check(pb::CheckRequest {
                org_id: v.org.clone(),
                user_id: user.clone(),
                permission: "members.view".into(),
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed, "{r:?}");
    }
    s.stop().await;
}

/// Check, BatchCheck, ListPermissions and LookupOrganizations take no actor: they answer a
/// question about a user. About a user who is not a member of the org the answer is a plain
/// "no" (REASON_NOT_MEMBER), never an error and never a role or permission of the victim org.
async fn authz_answers_about_outsiders_leak_nothing(b: Backend) {
    let s = TestServer::spawn(b).await;
    let v = victim(&s).await;
    let x = intruders(&s).await;
    let before = snapshot(&s, &v.org).await;
    let modes = [
        None,
        Some(pb::consistency::Requirement::MinimizeLatency(true)),
        Some(pb::consistency::Requirement::FullyConsistent(true)),
        Some(pb::consistency::Requirement::AtLeastAsFresh(
            v.token.clone(),
        )),
    ];
    let permissions = [
        "members.view",
        "members.manage",
        "roles.manage",
        "org.update",
        "billing.manage",
        "org.delete",
        "org.transfer",
        "audit.view",
    ];
    let mut authz = s.authz.clone();
    for (who, user) in x.all() {
        for mode in &modes {
            let consistency = mode.clone().map(|r| pb::Consistency {
                requirement: Some(r),
            });
            for permission in permissions {
                let r = authz
                    .check(pb::CheckRequest {
                        org_id: v.org.clone(),
                        user_id: user.into(),
                        permission: permission.into(),
                        consistency: consistency.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{who}: Check answers: {e:?}"))
                    .into_inner();
                assert!(!r.allowed, "{who} allowed {permission}");
                assert_eq!(r.reason(), pb::Reason::NotMember, "{who}: {r:?}");
            }
            let lp = authz
                .list_permissions(pb::ListPermissionsRequest {
                    org_id: v.org.clone(),
                    user_id: user.into(),
                    consistency: consistency.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(lp.role, "", "{who}: {lp:?}");
            assert!(lp.permissions.is_empty(), "{who}: {lp:?}");
            assert_eq!(lp.reason(), pb::Reason::NotMember, "{who}: {lp:?}");
            // Outsiders mixed with insiders: each answer stays with its own item.
            let mut items = Vec::new();
            for permission in permissions {
                items.push(pb::CheckItem {
                    org_id: v.org.clone(),
                    user_id: user.into(),
                    permission: permission.into(),
                });
                items.push(pb::CheckItem {
                    org_id: v.org.clone(),
                    user_id: v.owner.clone(),
                    permission: permission.into(),
                });
            }
            let results = authz
                .batch_check(pb::BatchCheckRequest {
                    items,
                    consistency: consistency.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .results;
            assert_eq!(results.len(), 2 * permissions.len());
            for pair in results.chunks(2) {
                assert!(!pair[0].allowed, "{who}: {pair:?}");
                assert_eq!(pair[0].reason(), pb::Reason::NotMember, "{who}: {pair:?}");
                assert!(pair[1].allowed, "the owner: {pair:?}");
            }
        }
        for permission in permissions {
            let orgs = authz
                .lookup_organizations(pb::LookupOrganizationsRequest {
                    user_id: user.into(),
                    permission: permission.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .org_ids;
            assert!(!orgs.contains(&v.org), "{who}: {orgs:?}");
        }
    }
    // The other way round: the victim's members are outsiders in the intruders' org.
    for user in [&v.owner, &v.admin, &v.member, &v.auditor] {
        let r = s.check(&x.org, user, "members.view").await;
        assert!(!r.allowed);
        assert_eq!(r.reason(), pb::Reason::NotMember);
    }
    assert_eq!(snapshot(&s, &v.org).await, before);
    s.stop().await;
}

/// The intruders' owner acting in their own org, naming the victim's members, custom role,
/// invitations and audit actors: nothing of the victim is found, used or changed, and the
/// intruders' feed never carries the victim's changes.
async fn own_org_calls_cannot_reach_another_orgs_objects(b: Backend) {
    let s = TestServer::spawn(b).await;
    let v = victim(&s).await;
    let x = intruders(&s).await;
    // A role of the intruders' own, so DeleteRole(reassign_to) gets as far as the target.
    s.team
        .clone()
        .create_role(as_actor(
            &x.owner,
            pb::CreateRoleRequest {
                org_id: x.org.clone(),
                key: "temp".into(),
                display_name: "Temp".into(),
                permissions: vec!["members.view".into()],
            },
        ))
        .await
        .unwrap();
    let before = snapshot(&s, &v.org).await;
    let mut t = s.team.clone();
    let a = x.owner.as_str();
    let o = || x.org.clone();

    for user in [&v.owner, &v.member] {
        let e = unwrap_err(
            t.get_member(as_actor(
                a,
                pb::GetMemberRequest {
                    org_id: o(),
                    user_id: user.clone(),
                },
            ))
            .await,
        );
        assert_error(&e, Code::NotFound, "MEMBER_NOT_FOUND");
        let e = unwrap_err(
            t.update_member_role(as_actor(
                a,
                pb::UpdateMemberRoleRequest {
                    org_id: o(),
                    user_id: user.clone(),
                    role: "member".into(),
                },
            ))
            .await,
        );
        assert_error(&e, Code::NotFound, "MEMBER_NOT_FOUND");
        let e = unwrap_err(
            t.remove_member(as_actor(
                a,
                pb::RemoveMemberRequest {
                    org_id: o(),
                    user_id: user.clone(),
                },
            ))
            .await,
        );
        assert_error(&e, Code::NotFound, "MEMBER_NOT_FOUND");
        let e = unwrap_err(
            t.transfer_ownership(as_actor(
                a,
                pb::TransferOwnershipRequest {
                    org_id: o(),
                    new_owner_user_id: user.clone(),
                },
            ))
            .await,
        );
        assert_error(&e, Code::FailedPrecondition, "NOT_A_MEMBER");
    }
    // The victim's custom role does not exist in the intruders' org.
    let e = unwrap_err(
        t.update_member_role(as_actor(
            a,
            pb::UpdateMemberRoleRequest {
                org_id: o(),
                user_id: x.member.clone(),
                role: "auditor".into(),
            },
        ))
        .await,
    );
    assert_error(&e, Code::InvalidArgument, "UNKNOWN_ROLE");
    let e = unwrap_err(
        t.invite_member(as_actor(
            a,
            pb::InviteMemberRequest {
                org_id: o(),
                email: "new@example.com".into(),
                first_name: "N".into(),
                role: "auditor".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_error(&e, Code::InvalidArgument, "UNKNOWN_ROLE");
    let e = unwrap_err(
        t.update_role(as_actor(
            a,
            pb::UpdateRoleRequest {
                org_id: o(),
                key: "auditor".into(),
                display_name: Some("Owned".into()),
                permissions: vec!["members.view".into()],
            },
        ))
        .await,
    );
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = unwrap_err(
        t.delete_role(as_actor(
            a,
            pb::DeleteRoleRequest {
                org_id: o(),
                key: "auditor".into(),
                reassign_to: String::new(),
            },
        ))
        .await,
    );
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = unwrap_err(
        t.delete_role(as_actor(
            a,
            pb::DeleteRoleRequest {
                org_id: o(),
                key: "temp".into(),
                reassign_to: "auditor".into(),
            },
        ))
        .await,
    );
    assert_error(&e, Code::InvalidArgument, "UNKNOWN_ROLE");
    // Lists in the intruders' org filtered by the victim's names show nothing of the victim.
    let members = t
        .list_members(as_actor(
            a,
            pb::ListMembersRequest {
                org_id: o(),
                role: Some("auditor".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(members.is_empty(), "{members:?}");
    let invitations = t
        .list_invitations(as_actor(
            a,
            pb::ListInvitationsRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert!(
        invitations.iter().all(|i| i.org_id == x.org),
        "{invitations:?}"
    );
    let events = t
        .list_audit_events(as_actor(
            a,
            pb::ListAuditEventsRequest {
                org_id: o(),
                actor_user_id: Some(v.owner.clone()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events.is_empty(), "{events:?}");
    let events = t
        .list_audit_events(as_actor(
            a,
            pb::ListAuditEventsRequest {
                org_id: o(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events.iter().all(|e| e.org_id == x.org), "{events:?}");
    let roles = t
        .list_roles(as_actor(
            a,
            pb::ListRolesRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert!(roles.iter().all(|r| r.key != "auditor"), "{roles:?}");
    let mine = t
        .list_organizations(as_actor(
            a,
            pb::ListOrganizationsRequest {
                user_id: a.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .organizations;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].organization.as_ref().unwrap().id, x.org);
    assert_eq!(snapshot(&s, &v.org).await, before);

    // The intruders' feed, even resumed from a victim token, carries only their own changes.
    for after in [String::new(), v.token.clone()] {
        let mut stream = t
            .watch_changes(as_actor(a, pb::WatchChangesRequest { org_id: o(), after }))
            .await
            .unwrap()
            .into_inner();
        s.team
            .clone()
            .update_organization(as_actor(
                &v.owner,
                pb::UpdateOrganizationRequest {
                    org_id: v.org.clone(),
                    name: Some(format!("Victim {}", uuid::Uuid::now_v7().simple())),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        let marker = format!("Intruder {}", uuid::Uuid::now_v7().simple());
        s.team
            .clone()
            .update_organization(as_actor(
                a,
                pb::UpdateOrganizationRequest {
                    org_id: o(),
                    name: Some(marker),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        // Read up to and including the intruders' own rename: no victim event on the way.
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the intruders' own change arrives")
                .unwrap()
                .unwrap();
            assert_eq!(ev.org_id, x.org, "{ev:?}");
            if ev.action == "organization.updated" && ev.actor_user_id == x.owner {
                break;
            }
        }
    }
    s.stop().await;
}

/// AcceptInvitation is bearer-based: the token, not the actor header, decides. An outsider
/// holding a victim's invitation token who names themselves as actor creates the invitee's
/// membership (for the invited email), never their own; a token that is not one (an
/// invitation id) is NOT_FOUND and changes nothing.
async fn a_stolen_invitation_token_never_admits_the_actor(b: Backend) {
    let s = TestServer::spawn(b).await;
    let v = victim(&s).await;
    let x = intruders(&s).await;
    let before = snapshot(&s, &v.org).await;
    let mut t = s.team.clone();
    for (who, actor) in x.all() {
        for token in [v.pending.clone(), v.revoked.clone(), "not-a-token".into()] {
            let e = unwrap_err(
                t.accept_invitation(as_actor(
                    actor,
                    pb::AcceptInvitationRequest {
                        token,
                        ..Default::default()
                    },
                ))
                .await,
            );
            assert_eq!(e.code(), Code::NotFound, "{who}: {e:?}");
        }
    }
    assert_eq!(snapshot(&s, &v.org).await, before);

    for (who, actor) in x.all() {
        let email = format!("invitee-{}@example.com", uuid::Uuid::now_v7().simple());
        let token = t
            .invite_member(as_actor(
                &v.owner,
                pb::InviteMemberRequest {
                    org_id: v.org.clone(),
                    email: email.clone(),
                    first_name: "Ivy".into(),
                    role: "member".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .token;
        let accepted = t
            .accept_invitation(as_actor(
                actor,
                pb::AcceptInvitationRequest {
                    token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let member = accepted.member.unwrap();
        assert_eq!(member.email, email, "{who}");
        assert_ne!(member.user_id, actor, "{who} joined with a stolen token");
        assert_eq!(member.role, "member");
        assert!(
            !s.allowed(&v.org, actor, "members.view").await,
            "{who} joined the victim org"
        );
        let events = t
            .list_audit_events(as_actor(
                &v.owner,
                pb::ListAuditEventsRequest {
                    org_id: v.org.clone(),
                    action: Some("invitation.accepted".into()),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(
            events.iter().all(|e| e.actor_user_id != actor),
            "{events:?}"
        );
    }
    let after = snapshot(&s, &v.org).await;
    for (_, actor) in x.all() {
        assert!(after.members.iter().all(|m| m.user_id != actor));
    }
    s.stop().await;
}
