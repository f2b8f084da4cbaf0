//! Members: list, get, change role, remove, transfer ownership, and the last-owner rule
//! under concurrency.

use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    list_and_get_members,
    role_changes_follow_the_rules,
    removal_revokes_access_at_once,
    members_may_leave_but_not_the_last_owner,
    transfer_ownership_hands_over,
    last_owner_race_leaves_exactly_one,
);

fn role_change(
    actor: &str,
    org: &str,
    user: &str,
    role: &str,
) -> tonic::Request<pb::UpdateMemberRoleRequest> {
    as_actor(
        actor,
        pb::UpdateMemberRoleRequest {
            org_id: org.into(),
            user_id: user.into(),
            role: role.into(),
        },
    )
}

fn removal(actor: &str, org: &str, user: &str) -> tonic::Request<pb::RemoveMemberRequest> {
    as_actor(
        actor,
        pb::RemoveMemberRequest {
            org_id: org.into(),
            user_id: user.into(),
        },
    )
}

async fn list_and_get_members(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let mut users = vec![owner.clone()];
    for i in 0..6 {
        let role = if i % 2 == 0 { "member" } else { "manager" };
        users.push(s.member(&org, &owner, role).await);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .team
            .clone()
            .list_members(as_actor(
                &owner,
                pb::ListMembersRequest {
                    org_id: org.clone(),
                    role: None,
                    page_size: 3,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.members.iter().map(|m| m.user_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    users.sort();
    assert_eq!(seen, users);

    let managers = s
        .team
        .clone()
        .list_members(as_actor(
            &owner,
            pb::ListMembersRequest {
                org_id: org.clone(),
                role: Some("manager".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(managers.members.len(), 3);
    assert!(managers.members.iter().all(|m| m.role == "manager"));

    let m = s
        .team
        .clone()
        .get_member(as_actor(
            &users[1],
            pb::GetMemberRequest {
                org_id: org.clone(),
                user_id: owner.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.role, "owner");
    assert!(m.email.starts_with("owner-"));
    let err = unwrap_err(
        s.team
            .clone()
            .get_member(as_actor(
                &owner,
                pb::GetMemberRequest {
                    org_id: org.clone(),
                    user_id: uuid::Uuid::now_v7().to_string(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    s.stop().await;
}

async fn role_changes_follow_the_rules(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let admin = s.member(&org, &owner, "admin").await;
    let manager = s.member(&org, &owner, "manager").await;
    let member = s.member(&org, &owner, "member").await;

    // A member lacks members.manage.
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&member, &org, &manager, "member"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("members.manage"));
    // A manager cannot grant admin (it carries permissions the manager lacks) ...
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&manager, &org, &member, "admin"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    // ... nor demote an admin, who is more privileged.
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&manager, &org, &admin, "member"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    // An admin cannot make anyone owner, nor touch the owner.
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&admin, &org, &member, "owner"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&admin, &org, &owner, "member"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    // Unknown roles are INVALID_ARGUMENT.
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&owner, &org, &member, "emperor"))
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_ROLE");
    // Allowed: manager promotes a member to manager; the check answers change at once.
    assert!(!s.allowed(&org, &member, "projects.delete").await);
    let resp = s
        .team
        .clone()
        .update_member_role(role_change(&manager, &org, &member, "manager"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.member.unwrap().role, "manager");
    assert!(s.allowed(&org, &member, "projects.delete").await);
    // The owner may make a second owner; the last owner cannot demote themselves.
    s.team
        .clone()
        .update_member_role(role_change(&owner, &org, &admin, "owner"))
        .await
        .unwrap();
    s.team
        .clone()
        .update_member_role(role_change(&admin, &org, &owner, "admin"))
        .await
        .unwrap();
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(role_change(&admin, &org, &admin, "member"))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "LAST_OWNER");
    s.stop().await;
}

async fn removal_revokes_access_at_once(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let leaver = s.member(&org, &owner, "member").await;
    // Warm the cache with an allow.
    for _ in 0..3 {
        assert!(s.allowed(&org, &leaver, "projects.view").await);
    }
    let token = s
        .team
        .clone()
        .remove_member(removal(&owner, &org, &leaver))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    let c = s.check(&org, &leaver, "projects.view").await;
    assert!(!c.allowed);
    assert_eq!(c.reason(), pb::Reason::NotMember);
    let c = s
        .authz
        .clone()
        .check(pb::CheckRequest {
            org_id: org.clone(),
            user_id: leaver.clone(),
            permission: "projects.view".into(),
            consistency: Some(pb::Consistency {
                requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(token)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!c.allowed);
    // The removed user's account still exists: they can be invited again.
    let err = unwrap_err(
        s.team
            .clone()
            .remove_member(removal(&owner, &org, &leaver))
            .await,
    );
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    s.stop().await;
}

async fn members_may_leave_but_not_the_last_owner(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let other = s.member(&org, &owner, "member").await;
    // A member cannot remove someone else ...
    let err = unwrap_err(
        s.team
            .clone()
            .remove_member(removal(&member, &org, &other))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    // ... but may leave.
    s.team
        .clone()
        .remove_member(removal(&member, &org, &member))
        .await
        .unwrap();
    assert!(!s.allowed(&org, &member, "members.view").await);
    let err = unwrap_err(
        s.team
            .clone()
            .remove_member(removal(&owner, &org, &owner))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "LAST_OWNER");
    s.stop().await;
}

async fn transfer_ownership_hands_over(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let admin = s.member(&org, &owner, "admin").await;
    let member = s.member(&org, &owner, "member").await;

    let transfer = |actor: &str, to: &str| {
        as_actor(
            actor,
            pb::TransferOwnershipRequest {
                org_id: org.clone(),
                new_owner_user_id: to.into(),
            },
        )
    };
    let err = unwrap_err(
        s.team
            .clone()
            .transfer_ownership(transfer(&admin, &member))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("org.transfer"));
    let stranger = uuid::Uuid::now_v7().to_string();
    let err = unwrap_err(
        s.team
            .clone()
            .transfer_ownership(transfer(&owner, &stranger))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "NOT_A_MEMBER");

    let resp = s
        .team
        .clone()
        .transfer_ownership(transfer(&owner, &member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.new_owner.unwrap().role, "owner");
    assert_eq!(resp.previous_owner.unwrap().role, "admin");
    assert!(s.allowed(&org, &member, "org.delete").await);
    assert!(!s.allowed(&org, &owner, "org.delete").await);
    assert!(s.allowed(&org, &owner, "members.manage").await);
    s.stop().await;
}

async fn last_owner_race_leaves_exactly_one(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..5 {
        let (org, a) = s.org(&format!("Race {round}"), "").await;
        let bee = s.member(&org, &a, "admin").await;
        s.team
            .clone()
            .update_member_role(role_change(&a, &org, &bee, "owner"))
            .await
            .unwrap();
        // Both owners demote each other at the same instant.
        let (mut c1, mut c2) = (s.team.clone(), s.team.clone());
        let (r1, r2) = tokio::join!(
            c1.update_member_role(role_change(&a, &org, &bee, "admin")),
            c2.update_member_role(role_change(&bee, &org, &a, "admin")),
        );
        let oks = [r1.is_ok(), r2.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(oks, 1, "exactly one demotion wins: {r1:?} {r2:?}");
        let failed = if let Err(e) = r1 { e } else { r2.unwrap_err() };
        // The loser was either demoted first (no longer allowed to touch an owner) or was last.
        assert!(
            matches!(
                failed.code(),
                Code::FailedPrecondition | Code::PermissionDenied
            ),
            "{failed:?}"
        );
        let owners = s
            .team
            .clone()
            .list_members(as_actor(
                if s.allowed(&org, &a, "org.delete").await {
                    &a
                } else {
                    &bee
                },
                pb::ListMembersRequest {
                    org_id: org.clone(),
                    role: Some("owner".into()),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .members;
        assert_eq!(owners.len(), 1);
    }
    s.stop().await;
}
