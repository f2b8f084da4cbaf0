//! Races and tenancy: many parallel clients against the invariants of the contract, and an
//! actor from one organization against every RPC of another.

use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, TestServer, as_actor, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    owners_removing_each_other_leave_one,
    transfer_races_removal_of_the_new_owner,
    role_delete_races_invite_with_that_role,
    cross_tenant_actor_is_denied_everywhere,
);

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
    }
    s.stop().await;
}

async fn transfer_races_removal_of_the_new_owner(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..5 {
        let (org, owner) = s.org(&format!("Transfer {round}"), "business").await;
        let admin = s.member(&org, &owner, "admin").await;
        let heir = s.member(&org, &owner, "member").await;
        let (mut t1, mut t2) = (s.team.clone(), s.team.clone());
        let (transfer, removal) = tokio::join!(
            t1.transfer_ownership(as_actor(
                &owner,
                pb::TransferOwnershipRequest {
                    org_id: org.clone(),
                    new_owner_user_id: heir.clone()
                }
            )),
            t2.remove_member(as_actor(
                &admin,
                pb::RemoveMemberRequest {
                    org_id: org.clone(),
                    user_id: heir.clone()
                }
            )),
        );
        assert!(
            transfer.is_ok() != removal.is_ok(),
            "exactly one wins: {transfer:?} {removal:?}"
        );
        let current = owners(&s, &org, &admin).await;
        assert_eq!(current.len(), 1);
        if transfer.is_ok() {
            assert_eq!(current[0], heir);
        } else {
            assert_eq!(current[0], owner);
            assert!(!s.allowed(&org, &heir, "members.view").await);
        }
    }
    s.stop().await;
}

async fn role_delete_races_invite_with_that_role(b: Backend) {
    let s = TestServer::spawn(b).await;
    for round in 0..5 {
        let (org, owner) = s.org(&format!("Roles {round}"), "business").await;
        s.team
            .clone()
            .create_role(as_actor(
                &owner,
                pb::CreateRoleRequest {
                    org_id: org.clone(),
                    key: "auditor".into(),
                    display_name: "Auditor".into(),
                    permissions: vec!["audit.view".into()],
                },
            ))
            .await
            .unwrap();
        let (mut t1, mut t2) = (s.team.clone(), s.team.clone());
        let (delete, invite) = tokio::join!(
            t1.delete_role(as_actor(
                &owner,
                pb::DeleteRoleRequest {
                    org_id: org.clone(),
                    key: "auditor".into(),
                    reassign_to: String::new()
                }
            )),
            t2.invite_member(as_actor(
                &owner,
                pb::InviteMemberRequest {
                    org_id: org.clone(),
                    email: format!("a{round}@example.com"),
                    first_name: "A".into(),
                    role: "auditor".into(),
                    ..Default::default()
                },
            )),
        );
        // Never both: an invitation must not hold a role that no longer exists.
        assert!(delete.is_ok() != invite.is_ok(), "{delete:?} {invite:?}");
        let roles = s
            .team
            .clone()
            .list_roles(as_actor(
                &owner,
                pb::ListRolesRequest {
                    org_id: org.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .roles;
        let exists = roles.iter().any(|r| r.key == "auditor");
        let pending = s
            .team
            .clone()
            .list_invitations(as_actor(
                &owner,
                pb::ListInvitationsRequest {
                    org_id: org.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .invitations;
        assert_eq!(exists, !pending.is_empty());
    }
    s.stop().await;
}

/// An owner of one org names themselves as actor against another org's every RPC.
async fn cross_tenant_actor_is_denied_everywhere(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Victim", "business").await;
    let member = s.member(&org, &owner, "member").await;
    let invitation = s
        .team
        .clone()
        .invite_member(as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "pending@example.com".into(),
                first_name: "P".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap()
        .id;
    let (_, intruder) = s.org("Intruder", "business").await;
    let i = intruder.as_str();
    let mut t = s.team.clone();
    let o = || org.clone();
    let denied = |r: Result<(), tonic::Status>, what: &str| {
        let e = unwrap_err(r);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    };
    denied(
        t.get_organization(as_actor(i, pb::GetOrganizationRequest { org_id: o() }))
            .await
            .map(|_| ()),
        "GetOrganization",
    );
    denied(
        t.update_organization(as_actor(
            i,
            pb::UpdateOrganizationRequest {
                org_id: o(),
                name: Some("Pwned".into()),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        "UpdateOrganization",
    );
    denied(
        t.delete_organization(as_actor(i, pb::DeleteOrganizationRequest { org_id: o() }))
            .await
            .map(|_| ()),
        "DeleteOrganization",
    );
    denied(
        t.list_organizations(as_actor(
            i,
            pb::ListOrganizationsRequest {
                user_id: owner.clone(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        "ListOrganizations",
    );
    denied(
        t.list_members(as_actor(
            i,
            pb::ListMembersRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        "ListMembers",
    );
    denied(
        t.get_member(as_actor(
            i,
            pb::GetMemberRequest {
                org_id: o(),
                user_id: member.clone(),
            },
        ))
        .await
        .map(|_| ()),
        "GetMember",
    );
    denied(
        t.update_member_role(as_actor(
            i,
            pb::UpdateMemberRoleRequest {
                org_id: o(),
                user_id: member.clone(),
                role: "admin".into(),
            },
        ))
        .await
        .map(|_| ()),
        "UpdateMemberRole",
    );
    denied(
        t.remove_member(as_actor(
            i,
            pb::RemoveMemberRequest {
                org_id: o(),
                user_id: member.clone(),
            },
        ))
        .await
        .map(|_| ()),
        "RemoveMember",
    );
    denied(
        t.transfer_ownership(as_actor(
            i,
            pb::TransferOwnershipRequest {
                org_id: o(),
                new_owner_user_id: i.into(),
            },
        ))
        .await
        .map(|_| ()),
        "TransferOwnership",
    );
    denied(
        t.invite_member(as_actor(
            i,
            pb::InviteMemberRequest {
                org_id: o(),
                email: "x@example.com".into(),
                first_name: "X".into(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        "InviteMember",
    );
    denied(
        t.list_invitations(as_actor(
            i,
            pb::ListInvitationsRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        "ListInvitations",
    );
    denied(
        t.resend_invitation(as_actor(
            i,
            pb::ResendInvitationRequest {
                invitation_id: invitation.clone(),
            },
        ))
        .await
        .map(|_| ()),
        "ResendInvitation",
    );
    denied(
        t.revoke_invitation(as_actor(
            i,
            pb::RevokeInvitationRequest {
                invitation_id: invitation.clone(),
            },
        ))
        .await
        .map(|_| ()),
        "RevokeInvitation",
    );
    denied(
        t.list_roles(as_actor(i, pb::ListRolesRequest { org_id: o() }))
            .await
            .map(|_| ()),
        "ListRoles",
    );
    denied(
        t.create_role(as_actor(
            i,
            pb::CreateRoleRequest {
                org_id: o(),
                key: "spy".into(),
                display_name: "Spy".into(),
                permissions: vec!["members.view".into()],
            },
        ))
        .await
        .map(|_| ()),
        "CreateRole",
    );
    denied(
        t.update_role(as_actor(
            i,
            pb::UpdateRoleRequest {
                org_id: o(),
                key: "spy".into(),
                display_name: None,
                permissions: vec![],
            },
        ))
        .await
        .map(|_| ()),
        "UpdateRole",
    );
    denied(
        t.delete_role(as_actor(
            i,
            pb::DeleteRoleRequest {
                org_id: o(),
                key: "spy".into(),
                reassign_to: String::new(),
            },
        ))
        .await
        .map(|_| ()),
        "DeleteRole",
    );
    denied(
        t.list_audit_events(as_actor(
            i,
            pb::ListAuditEventsRequest {
                org_id: o(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        "ListAuditEvents",
    );
    // Nothing changed.
    let m = t
        .get_member(as_actor(
            &owner,
            pb::GetMemberRequest {
                org_id: o(),
                user_id: member.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.role, "member");
    assert_eq!(
        t.get_organization(as_actor(&owner, pb::GetOrganizationRequest { org_id: o() }))
            .await
            .unwrap()
            .into_inner()
            .name,
        "Victim"
    );
    s.stop().await;
}
