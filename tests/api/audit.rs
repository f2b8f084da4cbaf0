//! The audit log: every mutation records an event in its own transaction, and a failed
//! audit undoes the mutation.

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

    // A failure after the main write, before the commit: a trigger made here aborts the audit
    // insert, but only once the member's new role is already written in the same transaction.
    // If the audit row were written before the change, the trigger would not fire and the call
    // would succeed; if it were written apart from it, the change would stay.
    let member = s.member(&org, &owner, "member").await;
    let before = events(&s, &owner, &org, Default::default()).await.len();
    let changes_before = feed_rows(&s, &org).await;
    for sql in fail_audit_after_role_change(b, &org, &member) {
        s.app().store.execute_unprepared(&sql).await.unwrap();
    }
    let promote = || {
        as_actor(
            &owner,
            pb::UpdateMemberRoleRequest {
                org_id: org.clone(),
                user_id: member.clone(),
                role: "manager".into(),
            },
        )
    };
    let err = unwrap_err(s.team.clone().update_member_role(promote()).await);
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    let role = |s: &TestServer| {
        let req = as_actor(
            &owner,
            pb::GetMemberRequest {
                org_id: org.clone(),
                user_id: member.clone(),
            },
        );
        let mut team = s.team.clone();
        async move { team.get_member(req).await.unwrap().into_inner().role }
    };
    assert_eq!(role(&s).await, "member", "the change was rolled back");
    assert_eq!(
        events(&s, &owner, &org, Default::default()).await.len(),
        before,
        "no audit row"
    );
    assert_eq!(
        feed_rows(&s, &org).await,
        changes_before,
        "no change-feed row"
    );

    // Without the trigger the same call goes through, audited: the trigger was the only cause.
    let drop = match b {
        Backend::Sqlite => "DROP TRIGGER audit_fails_after_role_change",
        Backend::Postgres => "DROP TRIGGER audit_fails_after_role_change ON audit_events",
    };
    s.app().store.execute_unprepared(drop).await.unwrap();
    s.team.clone().update_member_role(promote()).await.unwrap();
    assert_eq!(role(&s).await, "manager");
    assert_eq!(
        events(&s, &owner, &org, Default::default()).await.len(),
        before + 1
    );
    assert_eq!(feed_rows(&s, &org).await, changes_before + 1);
    s.stop().await;
}

/// The org's rows in the change feed.
async fn feed_rows(s: &TestServer, org: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let c = s.app().store.conn();
    let row = c
        .query_one_raw(Statement::from_string(
            c.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM changes WHERE org_id = '{org}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// SQL creating `audit_fails_after_role_change`: inserting an audit row for `org` fails while
/// `member` holds `manager`.
fn fail_audit_after_role_change(b: Backend, org: &str, member: &str) -> Vec<String> {
    let promoted = format!(
        "(SELECT role FROM memberships WHERE org_id = '{org}' AND user_id = '{member}') = 'manager'"
    );
    match b {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER audit_fails_after_role_change BEFORE INSERT ON audit_events \
             WHEN NEW.org_id = '{org}' AND {promoted} \
             BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END"
        )],
        Backend::Postgres => vec![
            format!(
                "CREATE FUNCTION audit_fails_after_role_change() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.org_id = '{org}' AND {promoted} THEN \
                 RAISE EXCEPTION 'injected audit failure'; END IF; RETURN NEW; END $$"
            ),
            "CREATE TRIGGER audit_fails_after_role_change BEFORE INSERT ON audit_events \
             FOR EACH ROW EXECUTE FUNCTION audit_fails_after_role_change()"
                .to_owned(),
        ],
    }
}
