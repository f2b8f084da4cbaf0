//! The audit log: every mutation records an event in its own transaction.

use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    mutations_are_audited_and_filterable,
    failed_mutations_leave_no_trace
);

async fn events(
    s: &TestServer,
    actor: &str,
    org: &str,
    req: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    let mut out = Vec::new();
    let mut req = req;
    req.org_id = org.into();
    loop {
        let page = s
            .team
            .clone()
            .list_audit_events(as_actor(actor, req.clone()))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

async fn mutations_are_audited_and_filterable(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let mut req = as_actor(
        &owner,
        pb::UpdateMemberRoleRequest {
            org_id: org.clone(),
            user_id: member.clone(),
            role: "manager".into(),
        },
    );
    req.metadata_mut()
        .insert("x-request-id", "req-role-change-1".parse().unwrap());
    s.team.clone().update_member_role(req).await.unwrap();
    s.team
        .clone()
        .remove_member(as_actor(
            &owner,
            pb::RemoveMemberRequest {
                org_id: org.clone(),
                user_id: member.clone(),
            },
        ))
        .await
        .unwrap();

    let all = events(
        &s,
        &owner,
        &org,
        pb::ListAuditEventsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    // Newest first.
    assert_eq!(
        actions,
        vec![
            "member.removed",
            "member.role_changed",
            "invitation.accepted",
            "member.invited",
            "organization.created"
        ]
    );
    let changed = &all[1];
    assert_eq!(changed.actor_user_id, owner);
    assert_eq!(changed.target, format!("user:{member}"));
    assert_eq!(changed.request_id, "req-role-change-1");
    let before: serde_json::Value = serde_json::from_str(&changed.before).unwrap();
    let after: serde_json::Value = serde_json::from_str(&changed.after).unwrap();
    assert_eq!(before["role"], "member");
    assert_eq!(after["role"], "manager");
    assert!(all.iter().all(|e| !e.request_id.is_empty()));

    let only = events(
        &s,
        &owner,
        &org,
        pb::ListAuditEventsRequest {
            action: Some("member.removed".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(only.len(), 1);
    let by_member = events(
        &s,
        &owner,
        &org,
        pb::ListAuditEventsRequest {
            actor_user_id: Some(member.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_member.len(), 1, "the accept is the member's own act");
    let future = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let none = events(
        &s,
        &owner,
        &org,
        pb::ListAuditEventsRequest {
            since: Some(future),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());

    // audit.view is needed; a member of the org lacks it.
    let viewer = s.member(&org, &owner, "member").await;
    let err = unwrap_err(
        s.team
            .clone()
            .list_audit_events(as_actor(
                &viewer,
                pb::ListAuditEventsRequest {
                    org_id: org.clone(),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("audit.view"));
    s.stop().await;
}

async fn failed_mutations_leave_no_trace(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let before = events(&s, &owner, &org, Default::default()).await.len();
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(as_actor(
                &owner,
                pb::UpdateMemberRoleRequest {
                    org_id: org.clone(),
                    user_id: owner.clone(),
                    role: "member".into(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "LAST_OWNER");
    assert_eq!(
        events(&s, &owner, &org, Default::default()).await.len(),
        before
    );
    let m = s
        .team
        .clone()
        .get_member(as_actor(
            &owner,
            pb::GetMemberRequest {
                org_id: org.clone(),
                user_id: owner.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.role, "owner");
    s.stop().await;
}
