//! Custom roles: ListRoles, CreateRole, UpdateRole, DeleteRole, their rules, and their effect
//! on decisions (on this replica at once, on another one with `at_least_as_fresh`).

use teamgate::proto::teamgate::v1 as pb;
use tonic::{Code, Status};

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};

/// The role limit these tests run with (`roles.max_per_org`).
const ROLE_LIMIT: u32 = 3;
use crate::on_both_backends;

on_both_backends!(
    role_keys_and_permissions_are_validated,
    only_role_managers_define_roles,
    no_privilege_escalation_through_roles,
    built_in_roles_are_immutable,
    list_roles_shows_built_in_and_custom_with_counts,
    custom_roles_are_granted_by_role_change_and_invitation,
    decisions_follow_role_updates_at_once,
    decisions_follow_role_updates_on_another_replica,
    role_in_use_counts_members_and_invitations,
    reassign_moves_every_holder,
    role_changes_are_audited,
    create_role_stops_at_the_role_limit,
    concurrent_creates_stay_within_the_role_limit,
    list_roles_pages_cover_every_role_once,
    list_roles_page_tokens_are_scoped,
);

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

async fn create_role(
    s: &TestServer,
    actor: &str,
    org: &str,
    key: &str,
    permissions: &[&str],
) -> Result<pb::CreateRoleResponse, Status> {
    s.team
        .clone()
        .create_role(as_actor(
            actor,
            pb::CreateRoleRequest {
                org_id: org.into(),
                key: key.into(),
                display_name: String::new(),
                permissions: strings(permissions),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn update_role(
    s: &TestServer,
    actor: &str,
    org: &str,
    key: &str,
    permissions: &[&str],
) -> Result<pb::UpdateRoleResponse, Status> {
    s.team
        .clone()
        .update_role(as_actor(
            actor,
            pb::UpdateRoleRequest {
                org_id: org.into(),
                key: key.into(),
                display_name: None,
                permissions: strings(permissions),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn delete_role(
    s: &TestServer,
    actor: &str,
    org: &str,
    key: &str,
    reassign_to: &str,
) -> Result<pb::DeleteRoleResponse, Status> {
    s.team
        .clone()
        .delete_role(as_actor(
            actor,
            pb::DeleteRoleRequest {
                org_id: org.into(),
                key: key.into(),
                reassign_to: reassign_to.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn list_roles(s: &TestServer, actor: &str, org: &str) -> Vec<pb::Role> {
    s.team
        .clone()
        .list_roles(as_actor(
            actor,
            pb::ListRolesRequest {
                org_id: org.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("roles listed")
        .into_inner()
        .roles
}

async fn find_role(s: &TestServer, actor: &str, org: &str, key: &str) -> Option<pb::Role> {
    list_roles(s, actor, org)
        .await
        .into_iter()
        .find(|r| r.key == key)
}

async fn set_role(
    s: &TestServer,
    actor: &str,
    org: &str,
    user: &str,
    role: &str,
) -> Result<pb::UpdateMemberRoleResponse, Status> {
    s.team
        .clone()
        .update_member_role(as_actor(
            actor,
            pb::UpdateMemberRoleRequest {
                org_id: org.into(),
                user_id: user.into(),
                role: role.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
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
                last_name: "Invitee".into(),
                role: role.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn accept(s: &TestServer, token: &str) -> pb::Member {
    s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner()
        .member
        .unwrap()
}

async fn role_of(s: &TestServer, actor: &str, org: &str, user: &str) -> String {
    s.team
        .clone()
        .get_member(as_actor(
            actor,
            pb::GetMemberRequest {
                org_id: org.into(),
                user_id: user.into(),
            },
        ))
        .await
        .expect("member found")
        .into_inner()
        .role
}

fn consistency(token: &str) -> Option<pb::Consistency> {
    (!token.is_empty()).then(|| pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(token.into())),
    })
}

/// Check, BatchCheck and ListPermissions for one user, each at least as fresh as `token`
/// (or with the default consistency when it is empty).
struct Answers {
    check: Vec<bool>,
    batch: Vec<bool>,
    role: String,
    permissions: Vec<String>,
}

async fn answers(
    s: &TestServer,
    org: &str,
    user: &str,
    permissions: &[&str],
    token: &str,
) -> Answers {
    let mut check = Vec::new();
    for p in permissions {
        check.push(
            s.authz
                .clone()
                .check(pb::CheckRequest {
                    org_id: org.into(),
                    user_id: user.into(),
                    permission: p.to_string(),
                    consistency: consistency(token),
                })
                .await
                .expect("check answers")
                .into_inner()
                .allowed,
        );
    }
    let batch = s
        .authz
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: permissions
                .iter()
                .map(|p| pb::CheckItem {
                    org_id: org.into(),
                    user_id: user.into(),
                    permission: p.to_string(),
                })
                .collect(),
            consistency: consistency(token),
        })
        .await
        .expect("batch check answers")
        .into_inner()
        .results
        .iter()
        .map(|r| r.allowed)
        .collect();
    let listed = s
        .authz
        .clone()
        .list_permissions(pb::ListPermissionsRequest {
            org_id: org.into(),
            user_id: user.into(),
            consistency: consistency(token),
        })
        .await
        .expect("permissions listed")
        .into_inner();
    let mut permissions = listed.permissions;
    permissions.sort();
    Answers {
        check,
        batch,
        role: listed.role,
        permissions,
    }
}

/// Asserts that Check, BatchCheck and ListPermissions agree that `user` holds `role` with
/// exactly `granted` among `probe`.
async fn assert_holds(
    s: &TestServer,
    org: &str,
    user: &str,
    token: &str,
    role: &str,
    granted: &[&str],
    probe: &[&str],
) {
    let a = answers(s, org, user, probe, token).await;
    let expected: Vec<bool> = probe.iter().map(|p| granted.contains(p)).collect();
    assert_eq!(a.check, expected, "Check for {probe:?}");
    assert_eq!(a.batch, expected, "BatchCheck for {probe:?}");
    assert_eq!(a.role, role, "ListPermissions role");
    let mut want = strings(granted);
    want.sort();
    assert_eq!(a.permissions, want, "ListPermissions permissions");
}

async fn events(s: &TestServer, actor: &str, org: &str, action: &str) -> Vec<pb::AuditEvent> {
    s.team
        .clone()
        .list_audit_events(as_actor(
            actor,
            pb::ListAuditEventsRequest {
                org_id: org.into(),
                action: Some(action.into()),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .expect("events listed")
        .into_inner()
        .events
}

fn json(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
}

fn permissions_in(v: &serde_json::Value) -> Vec<String> {
    v["permissions"]
        .as_array()
        .unwrap_or_else(|| panic!("no permissions in {v}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

async fn role_keys_and_permissions_are_validated(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;

    // Key format: [a-z][a-z0-9_-]{0,62}.
    let long = format!("a{}", "b".repeat(63));
    for bad in [
        "",
        "Finance",
        "1st",
        "fin ance",
        "fin.ance",
        "финансы",
        long.as_str(),
    ] {
        let err = unwrap_err(create_role(&s, &owner, &org, bad, &["reports.view"]).await);
        assert_error(&err, Code::InvalidArgument, "INVALID_ROLE_KEY");
    }
    let longest = format!("a{}", "b".repeat(62));
    for good in ["f", "finance_ops-2", longest.as_str()] {
        create_role(&s, &owner, &org, good, &["reports.view"])
            .await
            .unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }

    // Built-in keys are never shadowed.
    for built_in in ["owner", "admin", "manager", "member"] {
        let err = unwrap_err(create_role(&s, &owner, &org, built_in, &["reports.view"]).await);
        assert_error(&err, Code::AlreadyExists, "ROLE_EXISTS");
    }

    // Every unknown permission is named.
    let err = unwrap_err(
        create_role(
            &s,
            &owner,
            &org,
            "finance",
            &["reports.view", "payouts.process", "invoices.send"],
        )
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_PERMISSION");
    assert!(err.message().contains("payouts.process"), "{err:?}");
    assert!(err.message().contains("invoices.send"), "{err:?}");
    assert!(!err.message().contains("reports.view"), "{err:?}");
    let err = unwrap_err(create_role(&s, &owner, &org, "finance", &["Not A Permission"]).await);
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_PERMISSION");
    assert!(find_role(&s, &owner, &org, "finance").await.is_none());

    // Created, then unique within the org but free in another org.
    let created = create_role(
        &s,
        &owner,
        &org,
        "finance",
        &["reports.view", "billing.manage", "reports.view"],
    )
    .await
    .unwrap();
    assert!(!created.consistency_token.is_empty());
    let role = created.role.unwrap();
    assert_eq!(role.key, "finance");
    assert_eq!(role.display_name, "finance");
    assert!(!role.built_in);
    assert_eq!(role.member_count, 0);
    assert_eq!(
        role.permissions,
        strings(&["billing.manage", "reports.view"])
    );
    let err = unwrap_err(create_role(&s, &owner, &org, "finance", &["projects.view"]).await);
    assert_error(&err, Code::AlreadyExists, "ROLE_EXISTS");
    assert_eq!(
        find_role(&s, &owner, &org, "finance")
            .await
            .unwrap()
            .permissions,
        strings(&["billing.manage", "reports.view"]),
        "a refused duplicate changes nothing"
    );
    let (other, other_owner) = s.org("Globex", "business").await;
    create_role(&s, &other_owner, &other, "finance", &["projects.view"])
        .await
        .expect("the same key in another org");

    // A display name is kept when given.
    let named = s
        .team
        .clone()
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "auditor".into(),
                display_name: "External auditor".into(),
                permissions: strings(&["audit.view"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_eq!(named.display_name, "External auditor");
    s.stop().await;
}

async fn only_role_managers_define_roles(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let manager = s.member(&org, &owner, "manager").await;
    create_role(&s, &owner, &org, "viewer", &["projects.view"])
        .await
        .unwrap();

    let err = unwrap_err(create_role(&s, &manager, &org, "finance", &["reports.view"]).await);
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("roles.manage"), "{err:?}");
    let err = unwrap_err(update_role(&s, &manager, &org, "viewer", &["reports.view"]).await);
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    let err = unwrap_err(delete_role(&s, &manager, &org, "viewer", "").await);
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");

    let stranger = uuid::Uuid::now_v7().to_string();
    let err = unwrap_err(create_role(&s, &stranger, &org, "finance", &["reports.view"]).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = unwrap_err(
        s.team
            .clone()
            .create_role(pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "finance".into(),
                display_name: String::new(),
                permissions: strings(&["reports.view"]),
            })
            .await,
    );
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // ListRoles needs members.view, which managers hold.
    assert!(find_role(&s, &manager, &org, "viewer").await.is_some());
    assert!(find_role(&s, &owner, &org, "finance").await.is_none());
    s.stop().await;
}

async fn no_privilege_escalation_through_roles(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    // The default admin holds roles.manage but not org.delete or org.transfer.
    let admin = s.member(&org, &owner, "admin").await;
    let member = s.member(&org, &owner, "member").await;

    // Creating beyond one's own permissions.
    let err =
        unwrap_err(create_role(&s, &admin, &org, "wrecker", &["reports.view", "org.delete"]).await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    assert!(err.message().contains("org.delete"), "{err:?}");
    assert!(find_role(&s, &owner, &org, "wrecker").await.is_none());

    // Within one's own: fine. Widening it beyond: refused, and the role is unchanged.
    create_role(&s, &admin, &org, "ops", &["reports.view"])
        .await
        .unwrap();
    let err =
        unwrap_err(update_role(&s, &admin, &org, "ops", &["reports.view", "org.transfer"]).await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    assert!(err.message().contains("org.transfer"), "{err:?}");
    assert_eq!(
        find_role(&s, &owner, &org, "ops")
            .await
            .unwrap()
            .permissions,
        strings(&["reports.view"])
    );
    update_role(&s, &admin, &org, "ops", &["reports.view", "projects.view"])
        .await
        .expect("widening within one's own permissions");

    // A role more powerful than the actor can be neither edited, deleted, nor granted by them.
    create_role(&s, &owner, &org, "closer", &["org.delete", "reports.view"])
        .await
        .unwrap();
    let err = unwrap_err(update_role(&s, &admin, &org, "closer", &["reports.view"]).await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    let err = unwrap_err(delete_role(&s, &admin, &org, "closer", "").await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    let err = unwrap_err(set_role(&s, &admin, &org, &member, "closer").await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    let err = unwrap_err(invite(&s, &admin, &org, "closer").await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    assert!(find_role(&s, &owner, &org, "closer").await.is_some());
    assert_eq!(role_of(&s, &owner, &org, &member).await, "member");

    // A holder of a custom role with roles.manage is bounded by that role too.
    create_role(
        &s,
        &owner,
        &org,
        "role-admin",
        &["roles.manage", "members.view", "reports.view"],
    )
    .await
    .unwrap();
    set_role(&s, &owner, &org, &member, "role-admin")
        .await
        .unwrap();
    create_role(&s, &member, &org, "reader", &["reports.view"])
        .await
        .expect("within the custom role's permissions");
    let err = unwrap_err(
        create_role(
            &s,
            &member,
            &org,
            "hirer",
            &["members.manage", "reports.view"],
        )
        .await,
    );
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    let err = unwrap_err(
        update_role(
            &s,
            &member,
            &org,
            "reader",
            &["reports.view", "billing.manage"],
        )
        .await,
    );
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    // Reassigning holders of a role to one the actor could not grant is escalation too.
    let err = unwrap_err(delete_role(&s, &member, &org, "reader", "owner").await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    s.stop().await;
}

async fn built_in_roles_are_immutable(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    for key in ["owner", "admin", "manager", "member"] {
        let err = unwrap_err(update_role(&s, &owner, &org, key, &["projects.view"]).await);
        assert_error(&err, Code::FailedPrecondition, "BUILT_IN_ROLE");
        let err = unwrap_err(delete_role(&s, &owner, &org, key, "").await);
        assert_error(&err, Code::FailedPrecondition, "BUILT_IN_ROLE");
    }
    let admin = find_role(&s, &owner, &org, "admin").await.unwrap();
    assert!(admin.built_in);
    assert!(admin.permissions.contains(&"roles.manage".to_string()));

    let err = unwrap_err(update_role(&s, &owner, &org, "ghost", &["projects.view"]).await);
    assert_error(&err, Code::NotFound, "ROLE_NOT_FOUND");
    let err = unwrap_err(delete_role(&s, &owner, &org, "ghost", "").await);
    assert_error(&err, Code::NotFound, "ROLE_NOT_FOUND");
    // Another org's custom role is not this org's.
    let (other, other_owner) = s.org("Globex", "business").await;
    create_role(&s, &other_owner, &other, "theirs", &["projects.view"])
        .await
        .unwrap();
    let err = unwrap_err(update_role(&s, &owner, &org, "theirs", &["projects.view"]).await);
    assert_error(&err, Code::NotFound, "ROLE_NOT_FOUND");
    s.stop().await;
}

async fn list_roles_shows_built_in_and_custom_with_counts(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    create_role(
        &s,
        &owner,
        &org,
        "finance",
        &["reports.view", "billing.manage"],
    )
    .await
    .unwrap();
    create_role(&s, &owner, &org, "auditor", &["audit.view"])
        .await
        .unwrap();
    for _ in 0..2 {
        s.member(&org, &owner, "finance").await;
    }
    s.member(&org, &owner, "manager").await;
    // A pending invitation is not a member.
    invite(&s, &owner, &org, "auditor").await.unwrap();

    let roles = list_roles(&s, &owner, &org).await;
    let keys: Vec<&str> = roles.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        ["owner", "admin", "manager", "member", "auditor", "finance"],
        "built-in roles in policy order, then custom ones"
    );
    let count = |key: &str| roles.iter().find(|r| r.key == key).unwrap().member_count;
    assert_eq!(count("owner"), 1);
    assert_eq!(count("admin"), 0);
    assert_eq!(count("manager"), 1);
    assert_eq!(count("finance"), 2);
    assert_eq!(count("auditor"), 0);
    assert!(roles.iter().take(4).all(|r| r.built_in));
    assert!(roles.iter().skip(4).all(|r| !r.built_in));
    let finance = roles.iter().find(|r| r.key == "finance").unwrap();
    assert_eq!(
        finance.permissions,
        strings(&["billing.manage", "reports.view"])
    );

    // Custom roles are per org.
    let (other, other_owner) = s.org("Globex", "business").await;
    assert_eq!(list_roles(&s, &other_owner, &other).await.len(), 4);
    s.stop().await;
}

async fn custom_roles_are_granted_by_role_change_and_invitation(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let admin = s.member(&org, &owner, "admin").await;
    let member = s.member(&org, &owner, "member").await;
    create_role(
        &s,
        &owner,
        &org,
        "finance",
        &["reports.view", "billing.manage"],
    )
    .await
    .unwrap();

    // UpdateMemberRole to a custom role.
    let changed = set_role(&s, &admin, &org, &member, "finance")
        .await
        .unwrap();
    assert_eq!(changed.member.unwrap().role, "finance");
    assert!(s.allowed(&org, &member, "billing.manage").await);
    assert!(!s.allowed(&org, &member, "projects.view").await);

    // InviteMember with a custom role; accepting grants it.
    let invited = invite(&s, &admin, &org, "finance").await.unwrap();
    assert_eq!(invited.invitation.as_ref().unwrap().role, "finance");
    let joined = accept(&s, &invited.token).await;
    assert_eq!(joined.role, "finance");
    assert!(s.allowed(&org, &joined.user_id, "reports.view").await);
    assert!(!s.allowed(&org, &joined.user_id, "members.view").await);

    // Unknown roles, and another org's custom role, are UNKNOWN_ROLE.
    let (other, other_owner) = s.org("Globex", "business").await;
    create_role(&s, &other_owner, &other, "theirs", &["projects.view"])
        .await
        .unwrap();
    for role in ["ghost", "theirs"] {
        let err = unwrap_err(set_role(&s, &owner, &org, &member, role).await);
        assert_error(&err, Code::InvalidArgument, "UNKNOWN_ROLE");
        let err = unwrap_err(invite(&s, &owner, &org, role).await);
        assert_error(&err, Code::InvalidArgument, "UNKNOWN_ROLE");
    }
    assert_eq!(role_of(&s, &owner, &org, &member).await, "finance");

    // Back to a built-in role.
    set_role(&s, &owner, &org, &member, "member").await.unwrap();
    assert!(!s.allowed(&org, &member, "billing.manage").await);
    assert!(s.allowed(&org, &member, "projects.view").await);
    s.stop().await;
}

const PROBE: [&str; 5] = [
    "reports.view",
    "billing.manage",
    "projects.view",
    "members.view",
    "org.delete",
];

async fn decisions_follow_role_updates_at_once(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    create_role(
        &s,
        &owner,
        &org,
        "finance",
        &["reports.view", "billing.manage"],
    )
    .await
    .unwrap();
    let holder = s.member(&org, &owner, "finance").await;
    let bystander = s.member(&org, &owner, "member").await;

    // Answers are cached after the first ask (default consistency: caches may answer).
    for _ in 0..2 {
        assert_holds(
            &s,
            &org,
            &holder,
            "",
            "finance",
            &["billing.manage", "reports.view"],
            &PROBE,
        )
        .await;
    }

    // Narrowed and widened: the very next answers (default consistency) follow.
    update_role(
        &s,
        &owner,
        &org,
        "finance",
        &["reports.view", "projects.view"],
    )
    .await
    .unwrap();
    assert_holds(
        &s,
        &org,
        &holder,
        "",
        "finance",
        &["projects.view", "reports.view"],
        &PROBE,
    )
    .await;
    update_role(&s, &owner, &org, "finance", &[]).await.unwrap();
    assert_holds(&s, &org, &holder, "", "finance", &[], &PROBE).await;
    update_role(&s, &owner, &org, "finance", &["members.view"])
        .await
        .unwrap();
    assert_holds(&s, &org, &holder, "", "finance", &["members.view"], &PROBE).await;

    // Deleted with reassignment: the holder answers as their new role at once.
    delete_role(&s, &owner, &org, "finance", "manager")
        .await
        .unwrap();
    let a = answers(&s, &org, &holder, &PROBE, "").await;
    assert_eq!(a.role, "manager");
    assert_eq!(a.check, [true, false, true, true, false]);
    assert_eq!(a.batch, a.check);

    // A role with the same key created again starts from its own permissions, and nobody
    // holds it until granted.
    create_role(&s, &owner, &org, "finance", &["org.delete"])
        .await
        .unwrap();
    assert!(!s.allowed(&org, &holder, "org.delete").await);
    assert!(!s.allowed(&org, &bystander, "org.delete").await);
    s.stop().await;
}

async fn decisions_follow_role_updates_on_another_replica(b: Backend) {
    let s = TestServer::spawn(b).await;
    let replica = s.replica().await;
    let (org, owner) = s.org("Acme", "business").await;
    create_role(
        &s,
        &owner,
        &org,
        "finance",
        &["reports.view", "billing.manage"],
    )
    .await
    .unwrap();
    let holder = s.member(&org, &owner, "finance").await;
    // Warm the replica's cache with the current answers.
    for _ in 0..2 {
        assert_holds(
            &replica,
            &org,
            &holder,
            "",
            "finance",
            &["billing.manage", "reports.view"],
            &PROBE,
        )
        .await;
    }

    let token = update_role(&s, &owner, &org, "finance", &["projects.view"])
        .await
        .unwrap()
        .consistency_token;
    assert!(!token.is_empty());
    assert_holds(
        &replica,
        &org,
        &holder,
        &token,
        "finance",
        &["projects.view"],
        &PROBE,
    )
    .await;

    let token = delete_role(&s, &owner, &org, "finance", "member")
        .await
        .unwrap()
        .consistency_token;
    let a = answers(&replica, &org, &holder, &PROBE, &token).await;
    assert_eq!(a.role, "member");
    assert_eq!(a.check, [false, false, true, true, false]);
    assert_eq!(a.batch, a.check);
    replica.stop().await;
    s.stop().await;
}

async fn role_in_use_counts_members_and_invitations(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    create_role(&s, &owner, &org, "support", &["projects.view"])
        .await
        .unwrap();
    s.member(&org, &owner, "support").await;
    s.member(&org, &owner, "support").await;
    let pending = invite(&s, &owner, &org, "support").await.unwrap();

    let err = unwrap_err(delete_role(&s, &owner, &org, "support", "").await);
    assert_error(&err, Code::FailedPrecondition, "ROLE_IN_USE");
    for needle in [
        "3 still hold",
        "2 members",
        "1 pending invitation",
        "reassign_to",
    ] {
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    assert!(find_role(&s, &owner, &org, "support").await.is_some());

    // Only invitations: still in use.
    create_role(&s, &owner, &org, "intern", &["projects.view"])
        .await
        .unwrap();
    let intern_invite = invite(&s, &owner, &org, "intern").await.unwrap();
    let err = unwrap_err(delete_role(&s, &owner, &org, "intern", "").await);
    assert_error(&err, Code::FailedPrecondition, "ROLE_IN_USE");
    for needle in ["1 still hold", "0 members", "1 pending invitation"] {
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    // Revoked invitations hold nothing.
    s.team
        .clone()
        .revoke_invitation(as_actor(
            &owner,
            pb::RevokeInvitationRequest {
                invitation_id: intern_invite.invitation.unwrap().id,
            },
        ))
        .await
        .unwrap();
    delete_role(&s, &owner, &org, "intern", "")
        .await
        .expect("an unheld role deletes");
    assert!(find_role(&s, &owner, &org, "intern").await.is_none());

    // Bad reassign targets change nothing.
    let err = unwrap_err(delete_role(&s, &owner, &org, "support", "ghost").await);
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_ROLE");
    let err = unwrap_err(delete_role(&s, &owner, &org, "support", "support").await);
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = unwrap_err(delete_role(&s, &owner, &org, "support", "Not-A-Key").await);
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        find_role(&s, &owner, &org, "support")
            .await
            .unwrap()
            .member_count,
        2
    );
    // The pending invitation still grants the role.
    let joined = accept(&s, &pending.token).await;
    assert_eq!(joined.role, "support");
    s.stop().await;
}

async fn reassign_moves_every_holder(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    create_role(
        &s,
        &owner,
        &org,
        "support",
        &["projects.view", "reports.view"],
    )
    .await
    .unwrap();
    create_role(&s, &owner, &org, "helpdesk", &["projects.view"])
        .await
        .unwrap();
    let a = s.member(&org, &owner, "support").await;
    let b2 = s.member(&org, &owner, "support").await;
    let untouched = s.member(&org, &owner, "member").await;
    let pending = invite(&s, &owner, &org, "support").await.unwrap();
    // The same key in another org is not touched.
    let (other, other_owner) = s.org("Globex", "business").await;
    create_role(&s, &other_owner, &other, "support", &["projects.view"])
        .await
        .unwrap();
    let elsewhere = s.member(&other, &other_owner, "support").await;

    let token = delete_role(&s, &owner, &org, "support", "helpdesk")
        .await
        .unwrap()
        .consistency_token;
    assert!(!token.is_empty());
    for user in [&a, &b2] {
        assert_eq!(role_of(&s, &owner, &org, user).await, "helpdesk");
        assert!(s.allowed(&org, user, "projects.view").await);
        assert!(!s.allowed(&org, user, "reports.view").await);
    }
    assert_eq!(role_of(&s, &owner, &org, &untouched).await, "member");
    assert!(find_role(&s, &owner, &org, "support").await.is_none());
    assert_eq!(
        find_role(&s, &owner, &org, "helpdesk")
            .await
            .unwrap()
            .member_count,
        2
    );
    let invitations = s
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
    let moved = invitations
        .iter()
        .find(|i| Some(i.id.as_str()) == pending.invitation.as_ref().map(|i| i.id.as_str()))
        .unwrap();
    assert_eq!(moved.role, "helpdesk");
    assert_eq!(accept(&s, &pending.token).await.role, "helpdesk");

    assert_eq!(
        role_of(&s, &other_owner, &other, &elsewhere).await,
        "support"
    );
    assert!(s.allowed(&other, &elsewhere, "projects.view").await);

    // Reassigning to a built-in role works as well.
    create_role(&s, &owner, &org, "temp", &["projects.view"])
        .await
        .unwrap();
    set_role(&s, &owner, &org, &untouched, "temp")
        .await
        .unwrap();
    delete_role(&s, &owner, &org, "temp", "member")
        .await
        .unwrap();
    assert_eq!(role_of(&s, &owner, &org, &untouched).await, "member");
    s.stop().await;
}

async fn role_changes_are_audited(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let admin = s.member(&org, &owner, "admin").await;
    create_role(&s, &admin, &org, "finance", &["reports.view"])
        .await
        .unwrap();
    update_role(
        &s,
        &admin,
        &org,
        "finance",
        &["reports.view", "billing.manage"],
    )
    .await
    .unwrap();
    let holder = s.member(&org, &owner, "finance").await;
    delete_role(&s, &admin, &org, "finance", "member")
        .await
        .unwrap();
    // Refused changes leave no trace.
    let _ = create_role(&s, &admin, &org, "wrecker", &["org.delete"]).await;
    let _ = update_role(&s, &admin, &org, "ghost", &["reports.view"]).await;

    let created = events(&s, &owner, &org, "role.created").await;
    assert_eq!(created.len(), 1);
    let e = &created[0];
    assert_eq!(e.actor_user_id, admin);
    assert_eq!(e.target, "role:finance");
    assert_eq!(e.before, "");
    assert_eq!(permissions_in(&json(&e.after)), strings(&["reports.view"]));

    let updated = events(&s, &owner, &org, "role.updated").await;
    assert_eq!(updated.len(), 1);
    let e = &updated[0];
    assert_eq!(e.target, "role:finance");
    assert_eq!(permissions_in(&json(&e.before)), strings(&["reports.view"]));
    assert_eq!(
        permissions_in(&json(&e.after)),
        strings(&["billing.manage", "reports.view"])
    );

    let deleted = events(&s, &owner, &org, "role.deleted").await;
    assert_eq!(deleted.len(), 1);
    let e = &deleted[0];
    assert_eq!(e.target, "role:finance");
    let before = json(&e.before);
    assert_eq!(
        permissions_in(&before),
        strings(&["billing.manage", "reports.view"])
    );
    assert_eq!(before["holders"], 1);
    let after = json(&e.after);
    assert_eq!(after["reassigned_to"], "member");
    assert_eq!(after["moved"], 1);
    assert_eq!(role_of(&s, &owner, &org, &holder).await, "member");
    s.stop().await;
}

async fn list_roles_page(
    s: &TestServer,
    actor: &str,
    org: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListRolesResponse, Status> {
    s.team
        .clone()
        .list_roles(as_actor(
            actor,
            pb::ListRolesRequest {
                org_id: org.into(),
                page_size,
                page_token: page_token.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn create_role_stops_at_the_role_limit(b: Backend) {
    let s = TestServer::spawn_with(b, |c| c.roles.max_per_org = ROLE_LIMIT).await;
    let (org, owner) = s.org("Acme", "business").await;
    for key in ["r1", "r2", "r3"] {
        create_role(&s, &owner, &org, key, &["projects.view"])
            .await
            .unwrap();
    }
    let err = unwrap_err(create_role(&s, &owner, &org, "r4", &["projects.view"]).await);
    assert_error(&err, Code::FailedPrecondition, "ROLE_LIMIT");
    assert!(
        err.message().contains("limit is 3"),
        "the message says the limit: {err:?}"
    );
    assert!(find_role(&s, &owner, &org, "r4").await.is_none());
    // A duplicate key is still ROLE_EXISTS, the more useful answer.
    let err = unwrap_err(create_role(&s, &owner, &org, "r1", &["projects.view"]).await);
    assert_error(&err, Code::AlreadyExists, "ROLE_EXISTS");
    // Updating at the limit is fine; deleting makes room.
    update_role(&s, &owner, &org, "r1", &["reports.view"])
        .await
        .unwrap();
    delete_role(&s, &owner, &org, "r2", "").await.unwrap();
    create_role(&s, &owner, &org, "r4", &["projects.view"])
        .await
        .unwrap();
    // The limit is per organization.
    let (other, other_owner) = s.org("Globex", "business").await;
    for key in ["r1", "r2", "r3"] {
        create_role(&s, &other_owner, &other, key, &["projects.view"])
            .await
            .unwrap();
    }
    s.stop().await;
}

/// The count is taken under the org's row lock, so a burst of creates cannot overrun it.
async fn concurrent_creates_stay_within_the_role_limit(b: Backend) {
    let s = TestServer::spawn_with(b, |c| c.roles.max_per_org = ROLE_LIMIT).await;
    let (org, owner) = s.org("Acme", "business").await;
    let attempts = (0..12).map(|i| {
        let team = s.team.clone();
        let (org, owner) = (org.clone(), owner.clone());
        tokio::spawn(async move {
            team.clone()
                .create_role(as_actor(
                    &owner,
                    pb::CreateRoleRequest {
                        org_id: org,
                        key: format!("burst{i}"),
                        display_name: String::new(),
                        permissions: strings(&["projects.view"]),
                    },
                ))
                .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let mut created = 0;
    for r in results {
        match r.unwrap() {
            Ok(_) => created += 1,
            Err(e) => assert_error(&e, Code::FailedPrecondition, "ROLE_LIMIT"),
        }
    }
    assert_eq!(created, ROLE_LIMIT);
    let custom = list_roles(&s, &owner, &org)
        .await
        .into_iter()
        .filter(|r| !r.built_in)
        .count();
    assert_eq!(custom, ROLE_LIMIT as usize);
    s.stop().await;
}

/// Built-in roles in policy order, then custom roles by key in byte order; every page size
/// sees each role exactly once, with its member count, and the default page is all of them.
async fn list_roles_pages_cover_every_role_once(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    // Keys whose byte order differs from a natural-language collation's.
    for key in ["z", "ab", "a_b", "m-1", "a0", "a-b", "finance"] {
        create_role(&s, &owner, &org, key, &["projects.view"])
            .await
            .unwrap();
    }
    for _ in 0..2 {
        s.member(&org, &owner, "a_b").await;
    }
    s.member(&org, &owner, "manager").await;
    let expected = [
        "owner", "admin", "manager", "member", "a-b", "a0", "a_b", "ab", "finance", "m-1", "z",
    ];

    // The default page size returns every role of an org with the shipped policy.
    let all = list_roles_page(&s, &owner, &org, 0, "").await.unwrap();
    let keys: Vec<&str> = all.roles.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, expected);
    assert_eq!(all.next_page_token, "");

    for size in 1..=12 {
        let mut seen: Vec<pb::Role> = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = list_roles_page(&s, &owner, &org, size, &token)
                .await
                .unwrap();
            pages += 1;
            assert!(page.roles.len() <= size as usize);
            seen.extend(page.roles);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
            assert!(pages <= expected.len(), "size {size}: pages never end");
        }
        let keys: Vec<&str> = seen.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, expected, "page size {size}");
        let count = |key: &str| seen.iter().find(|r| r.key == key).unwrap().member_count;
        assert_eq!(count("owner"), 1, "page size {size}");
        assert_eq!(count("manager"), 1, "page size {size}");
        assert_eq!(count("a_b"), 2, "page size {size}");
        assert_eq!(count("z"), 0, "page size {size}");
        assert_eq!(
            seen.iter().filter(|r| r.built_in).count(),
            4,
            "page size {size}"
        );
    }

    // A page continues after its last key even when that role is gone meanwhile.
    let first = list_roles_page(&s, &owner, &org, 5, "").await.unwrap();
    assert_eq!(first.roles.last().unwrap().key, "a-b");
    delete_role(&s, &owner, &org, "a-b", "").await.unwrap();
    let next = list_roles_page(&s, &owner, &org, 5, &first.next_page_token)
        .await
        .unwrap();
    let keys: Vec<&str> = next.roles.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["a0", "a_b", "ab", "finance", "m-1"]);
    s.stop().await;
}

/// Page tokens are bound to the list and the org, as on every other list.
async fn list_roles_page_tokens_are_scoped(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (other, other_owner) = s.org("Globex", "business").await;
    s.member(&org, &owner, "member").await;
    let roles_token = list_roles_page(&s, &owner, &org, 2, "")
        .await
        .unwrap()
        .next_page_token;
    assert!(!roles_token.is_empty());
    // Fine for its own org and list.
    list_roles_page(&s, &owner, &org, 2, &roles_token)
        .await
        .unwrap();
    // Another org's list.
    let err = unwrap_err(list_roles_page(&s, &other_owner, &other, 2, &roles_token).await);
    assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    // Another list's token, both ways.
    let members_token = s
        .team
        .clone()
        .list_members(as_actor(
            &owner,
            pb::ListMembersRequest {
                org_id: org.clone(),
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!members_token.is_empty());
    let err = unwrap_err(list_roles_page(&s, &owner, &org, 2, &members_token).await);
    assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let err = unwrap_err(
        s.team
            .clone()
            .list_members(as_actor(
                &owner,
                pb::ListMembersRequest {
                    org_id: org.clone(),
                    page_token: roles_token.clone(),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    // Edited tokens and out-of-range sizes, as on every list.
    for bad in ["garbage", &roles_token[..roles_token.len() - 2]] {
        let err = unwrap_err(list_roles_page(&s, &owner, &org, 2, bad).await);
        assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    }
    let err = unwrap_err(list_roles_page(&s, &owner, &org, 501, "").await);
    assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_SIZE");
    s.stop().await;
}
