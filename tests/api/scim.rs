//! SCIM 2.0 provisioning: a real SCIM client library (Python's scim2-client, run from
//! tests/fixtures/scim/client.py) drives the server as a directory would; the Rust side checks
//! over gRPC that deprovisioning denies at once and is audited and in the change feed, and
//! covers the hostile callers of the SCIM server and of the gRPC RPCs.

use std::time::Duration;

use serde_json::{Value, json};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use tonic::{Code, Status};

use crate::helpers::{Backend, TestServer, as_actor, assert_error, repo_path, unwrap_err};
use crate::on_both_backends;

const SCIM_TYPE: &str = "application/scim+json";

async fn spawn(backend: Backend) -> TestServer {
    TestServer::spawn_with(backend, |c| {
        c.scim.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

fn base(s: &TestServer) -> String {
    s.running
        .as_ref()
        .unwrap()
        .scim()
        .expect("SCIM is on")
        .1
        .to_owned()
}

/// Creates a SCIM token as `actor`; returns (token id, secret).
async fn token(s: &TestServer, org: &str, actor: &str) -> (String, String) {
    let r = s
        .team
        .clone()
        .create_scim_token(as_actor(
            actor,
            pb::CreateScimTokenRequest {
                org_id: org.into(),
                name: "Okta".into(),
            },
        ))
        .await
        .expect("token created")
        .into_inner();
    (r.scim_token.unwrap().id, r.token)
}

async fn map_group(
    s: &TestServer,
    org: &str,
    actor: &str,
    group: &str,
    role: &str,
) -> Result<pb::ScimGroupMapping, Status> {
    s.team
        .clone()
        .set_scim_group_mapping(as_actor(
            actor,
            pb::SetScimGroupMappingRequest {
                org_id: org.into(),
                group_display_name: group.into(),
                role_key: role.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().mapping.unwrap())
}

/// One SCIM request with `token` (none when `None`); returns (status, JSON body).
async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.header("Content-Type", SCIM_TYPE).body(b.to_string());
    }
    let res = req.send().await.expect("SCIM answers");
    let status = res.status().as_u16();
    if status != 204 {
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(ct, SCIM_TYPE, "content type of a {status}");
    }
    let text = res.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, json)
}

fn new_user(email: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": email,
        "name": {"givenName": "Dora", "familyName": "Directory"},
        "externalId": format!("ext-{email}"),
        "active": true,
    })
}

fn deactivate() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"active": false}}],
    })
}

#[track_caller]
fn assert_scim_error(got: &(u16, Value), status: u16, detail_starts: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(
        got.1["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
        "{got:?}"
    );
    assert_eq!(got.1["status"], json!(status.to_string()), "{got:?}");
    assert!(
        got.1["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with(detail_starts),
        "{got:?}"
    );
}

async fn audit(s: &TestServer, org: &str, actor: &str, action: &str) -> Vec<pb::AuditEvent> {
    s.team
        .clone()
        .list_audit_events(as_actor(
            actor,
            pb::ListAuditEventsRequest {
                org_id: org.into(),
                action: Some(action.into()),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("audit readable")
        .into_inner()
        .events
}

on_both_backends!(
    scim_client_library_drives_provisioning,
    deprovisioning_denies_at_once_and_is_audited_and_in_the_feed,
    a_token_sees_and_touches_only_its_own_org,
    revoked_missing_and_unknown_tokens_get_401,
    the_directory_cannot_take_or_give_ownership,
    seat_limits_apply_to_provisioning,
    scim_rpcs_refuse_hostile_callers,
    group_mappings_are_checked_and_audited,
    rfc_compliance_checker_passes_for_users,
    directory_dialects_and_scim_error_types,
);

/// Runs a fixture script with arguments; panics with its output unless it succeeds.
async fn python(script: &str, args: Vec<String>) -> String {
    let script = repo_path(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn rfc_compliance_checker_passes_for_users(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (_, secret) = token(&s, &org, &owner).await;
    let out = python("tests/fixtures/scim/compliance.py", vec![base(&s), secret]).await;
    assert!(out.contains("SUCCESS"), "{out}");
    s.stop().await;
}

async fn scim_client_library_drives_provisioning(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (_, secret) = token(&s, &org, &owner).await;
    map_group(&s, &org, &owner, "Engineers", "manager")
        .await
        .unwrap();
    let args = vec![base(&s), secret, owner.clone(), "Engineers".to_owned()];
    let stdout = python("tests/fixtures/scim/client.py", args).await;
    let ids: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let (alice, bob, carol) = (
        ids["alice"].as_str().unwrap(),
        ids["deprovisioned"].as_str().unwrap(),
        ids["deleted"].as_str().unwrap(),
    );
    // What the directory did is what gRPC sees.
    let members: Vec<String> = s
        .members(&org, &owner)
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert!(members.contains(&alice.to_owned()));
    assert!(!members.contains(&bob.to_owned()));
    assert!(!members.contains(&carol.to_owned()));
    assert!(s.allowed(&org, alice, "projects.view").await);
    assert!(
        !s.allowed(&org, alice, "members.manage").await,
        "left the group"
    );
    assert!(!s.allowed(&org, bob, "projects.view").await);
    assert!(!s.allowed(&org, carol, "projects.view").await);
    let removed: Vec<String> = audit(&s, &org, &owner, "member.removed")
        .await
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert!(removed.contains(&format!("user:{bob}")), "{removed:?}");
    assert!(removed.contains(&format!("user:{carol}")), "{removed:?}");
    s.stop().await;
}

async fn deprovisioning_denies_at_once_and_is_audited_and_in_the_feed(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (token_id, secret) = token(&s, &org, &owner).await;
    let users = format!("{}/Users", base(&s));
    let created = call(
        "POST",
        &users,
        Some(&secret),
        Some(new_user("dora@example.com")),
    )
    .await;
    assert_eq!(created.0, 201, "{created:?}");
    let id = created.1["id"].as_str().unwrap().to_owned();
    // The decision is cached now; deprovisioning must drop it, and only it.
    assert!(s.allowed(&org, &id, "projects.view").await);
    assert!(s.allowed(&org, &id, "projects.view").await);
    assert!(s.allowed(&org, &owner, "members.manage").await);
    let mut feed = s
        .team
        .clone()
        .watch_changes(as_actor(
            &owner,
            pb::WatchChangesRequest {
                org_id: org.clone(),
                after: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let patched = call(
        "PATCH",
        &format!("{users}/{id}"),
        Some(&secret),
        Some(deactivate()),
    )
    .await;
    assert_eq!(patched.0, 200, "{patched:?}");
    assert_eq!(patched.1["active"], json!(false));
    assert!(
        !s.allowed(&org, &id, "projects.view").await,
        "denied at once"
    );
    let before = s.app().decisions.cache().stats();
    assert!(s.allowed(&org, &owner, "members.manage").await);
    let after = s.app().decisions.cache().stats();
    assert_eq!(
        (after.misses, after.local_hits),
        (before.misses, before.local_hits + 1),
        "another member's cached decision outlives the deprovisioning"
    );
    let event = tokio::time::timeout(Duration::from_secs(10), feed.message())
        .await
        .expect("a change arrives")
        .unwrap()
        .unwrap();
    assert_eq!(event.action, "member.removed");
    assert_eq!(event.target, format!("user:{id}"));
    assert_eq!(event.actor_user_id, format!("scim:{token_id}"));
    let events = audit(&s, &org, &owner, "member.removed").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor_user_id, format!("scim:{token_id}"));
    // Reactivating makes them a member again, with the invite role.
    let back = call(
        "PATCH",
        &format!("{users}/{id}"),
        Some(&secret),
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": true}],
        })),
    )
    .await;
    assert_eq!(back.1["active"], json!(true), "{back:?}");
    assert!(s.allowed(&org, &id, "projects.view").await);
    // If-Match with a stale version is refused (412); the current one is accepted.
    let stale = created.1["meta"]["version"].as_str().unwrap().to_owned();
    let res = reqwest::Client::new()
        .delete(format!("{users}/{id}"))
        .header("Authorization", format!("Bearer {secret}"))
        .header("If-Match", stale)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 412);
    let current = back.1["meta"]["version"].as_str().unwrap().to_owned();
    let res = reqwest::Client::new()
        .delete(format!("{users}/{id}"))
        .header("Authorization", format!("Bearer {secret}"))
        .header("If-Match", current)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert!(!s.allowed(&org, &id, "projects.view").await);
    s.stop().await;
}

async fn a_token_sees_and_touches_only_its_own_org(backend: Backend) {
    let s = spawn(backend).await;
    let (org_a, owner_a) = s.org("Acme", "business").await;
    let (org_b, owner_b) = s.org("Globex", "business").await;
    let b_member = s
        .member_with_email(&org_b, &owner_b, "member", "bea@globex.example")
        .await;
    let (_, secret_a) = token(&s, &org_a, &owner_a).await;
    let users = format!("{}/Users", base(&s));
    let theirs = format!("{users}/{b_member}");
    assert_scim_error(
        &call("GET", &theirs, Some(&secret_a), None).await,
        404,
        "SCIM_USER_NOT_FOUND",
    );
    assert_scim_error(
        &call("PATCH", &theirs, Some(&secret_a), Some(deactivate())).await,
        404,
        "SCIM_USER_NOT_FOUND",
    );
    assert_scim_error(
        &call(
            "PUT",
            &theirs,
            Some(&secret_a),
            Some(new_user("bea@globex.example")),
        )
        .await,
        404,
        "SCIM_USER_NOT_FOUND",
    );
    assert_scim_error(
        &call("DELETE", &theirs, Some(&secret_a), None).await,
        404,
        "SCIM_USER_NOT_FOUND",
    );
    let (status, list) = call(
        "GET",
        &format!("{users}?filter=userName%20eq%20%22bea%40globex.example%22"),
        Some(&secret_a),
        None,
    )
    .await;
    assert_eq!((status, list["totalResults"].clone()), (200, json!(0)));
    let (_, all) = call("GET", &users, Some(&secret_a), None).await;
    let ids: Vec<&str> = all["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![owner_a.as_str()]);
    // Org B's groups are not A's either.
    let group = map_group(&s, &org_b, &owner_b, "Staff", "member")
        .await
        .unwrap();
    assert_scim_error(
        &call(
            "GET",
            &format!("{}/Groups/{}", base(&s), group.id),
            Some(&secret_a),
            None,
        )
        .await,
        404,
        "SCIM_GROUP_NOT_FOUND",
    );
    // And B's member is still a member of B.
    assert!(s.allowed(&org_b, &b_member, "projects.view").await);
    s.stop().await;
}

async fn revoked_missing_and_unknown_tokens_get_401(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (token_id, secret) = token(&s, &org, &owner).await;
    let users = format!("{}/Users", base(&s));
    assert_eq!(call("GET", &users, Some(&secret), None).await.0, 200);
    assert_scim_error(
        &call("GET", &users, None, None).await,
        401,
        "SCIM_TOKEN_MISSING",
    );
    assert_scim_error(
        &call("GET", &users, Some("tgscim_not-a-token"), None).await,
        401,
        "SCIM_TOKEN_INVALID",
    );
    let revoked = s
        .team
        .clone()
        .revoke_scim_token(as_actor(
            &owner,
            pb::RevokeScimTokenRequest {
                org_id: org.clone(),
                token_id: token_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.scim_token.unwrap().revoked_at.is_some());
    assert_scim_error(
        &call("GET", &users, Some(&secret), None).await,
        401,
        "SCIM_TOKEN_INVALID",
    );
    assert_scim_error(
        &call(
            "POST",
            &users,
            Some(&secret),
            Some(new_user("late@example.com")),
        )
        .await,
        401,
        "SCIM_TOKEN_INVALID",
    );
    let listed = s
        .team
        .clone()
        .list_scim_tokens(as_actor(
            &owner,
            pb::ListScimTokensRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .scim_tokens;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
    assert_eq!(audit(&s, &org, &owner, "scim_token.revoked").await.len(), 1);
    // Nothing the revoked token sent got in.
    assert_eq!(s.members(&org, &owner).await.len(), 1);
    s.stop().await;
}

async fn the_directory_cannot_take_or_give_ownership(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (_, secret) = token(&s, &org, &owner).await;
    let base = base(&s);
    let me = format!("{base}/Users/{owner}");
    assert_scim_error(
        &call("PATCH", &me, Some(&secret), Some(deactivate())).await,
        409,
        "LAST_OWNER",
    );
    assert_scim_error(
        &call("DELETE", &me, Some(&secret), None).await,
        409,
        "LAST_OWNER",
    );
    // With a second owner, the directory still cannot remove either: owners are the owners'.
    let second = s.member(&org, &owner, "owner").await;
    assert_scim_error(
        &call(
            "PATCH",
            &format!("{base}/Users/{second}"),
            Some(&secret),
            Some(deactivate()),
        )
        .await,
        403,
        "PRIVILEGE_ESCALATION",
    );
    // Nor put an owner in a group (a demotion).
    let group = map_group(&s, &org, &owner, "Engineers", "manager")
        .await
        .unwrap();
    let add_owner = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": second}]}],
    });
    assert_scim_error(
        &call(
            "PATCH",
            &format!("{base}/Groups/{}", group.id),
            Some(&secret),
            Some(add_owner),
        )
        .await,
        403,
        "PRIVILEGE_ESCALATION",
    );
    let roles: Vec<String> = s
        .members(&org, &owner)
        .await
        .into_iter()
        .map(|m| m.role)
        .collect();
    assert_eq!(roles, vec!["owner", "owner"]);
    // The owner role cannot be mapped, so no group grants it.
    assert_error(
        &unwrap_err(map_group(&s, &org, &owner, "Founders", "owner").await),
        Code::PermissionDenied,
        "SCIM_OWNER_NOT_MAPPABLE",
    );
    s.stop().await;
}

async fn seat_limits_apply_to_provisioning(backend: Backend) {
    let s = spawn(backend).await;
    // The free plan has five seats; the owner holds one.
    let (org, owner) = s.org("Acme", "free").await;
    let (_, secret) = token(&s, &org, &owner).await;
    let users = format!("{}/Users", base(&s));
    for i in 0..4 {
        let r = call(
            "POST",
            &users,
            Some(&secret),
            Some(new_user(&format!("u{i}@example.com"))),
        )
        .await;
        assert_eq!(r.0, 201, "{r:?}");
    }
    let full = call(
        "POST",
        &users,
        Some(&secret),
        Some(new_user("u5@example.com")),
    )
    .await;
    assert_scim_error(&full, 409, "PLAN_SEAT_LIMIT");
    // Nothing half-written: no account was created for the refused user.
    let (_, found) = call(
        "GET",
        &format!("{users}?filter=userName%20eq%20%22u5%40example.com%22"),
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(found["totalResults"], json!(0));
    s.stop().await;
}

/// Every SCIM RPC as `actor` (None: anonymous), in order.
async fn all_rpcs(s: &TestServer, org: &str, actor: Option<&str>) -> Vec<Status> {
    fn req<T>(actor: Option<&str>, m: T) -> tonic::Request<T> {
        match actor {
            Some(a) => as_actor(a, m),
            None => tonic::Request::new(m),
        }
    }
    let mut t = s.team.clone();
    let o = org.to_owned();
    vec![
        t.create_scim_token(req(
            actor,
            pb::CreateScimTokenRequest {
                org_id: o.clone(),
                name: "x".into(),
            },
        ))
        .await
        .map(|_| ()),
        t.list_scim_tokens(req(actor, pb::ListScimTokensRequest { org_id: o.clone() }))
            .await
            .map(|_| ()),
        t.revoke_scim_token(req(
            actor,
            pb::RevokeScimTokenRequest {
                org_id: o.clone(),
                token_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .map(|_| ()),
        t.set_scim_group_mapping(req(
            actor,
            pb::SetScimGroupMappingRequest {
                org_id: o.clone(),
                group_display_name: "G".into(),
                role_key: "member".into(),
            },
        ))
        .await
        .map(|_| ()),
        t.list_scim_group_mappings(req(
            actor,
            pb::ListScimGroupMappingsRequest { org_id: o.clone() },
        ))
        .await
        .map(|_| ()),
        t.delete_scim_group_mapping(req(
            actor,
            pb::DeleteScimGroupMappingRequest {
                org_id: o.clone(),
                group_display_name: "G".into(),
            },
        ))
        .await
        .map(|_| ()),
    ]
    .into_iter()
    .map(|r| r.expect_err("refused"))
    .collect()
}

async fn scim_rpcs_refuse_hostile_callers(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (_, other_owner) = s.org("Globex", "business").await;
    let admin = s.member(&org, &owner, "admin").await;
    let disabled_owner = s.member(&org, &owner, "owner").await;
    IdentityServiceClient::new(s.channel.clone())
        .set_user_status(as_actor(
            &owner,
            pb::SetUserStatusRequest {
                user_id: disabled_owner.clone(),
                status: pb::UserStatus::Disabled.into(),
            },
        ))
        .await
        .expect("the owner disables the second owner");
    for (who, code, reason) in [
        (
            Some(other_owner.as_str()),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        (
            Some(admin.as_str()),
            Code::PermissionDenied,
            "MISSING_PERMISSION",
        ),
        (
            Some(disabled_owner.as_str()),
            Code::PermissionDenied,
            "USER_DISABLED",
        ),
        (None, Code::Unauthenticated, "MISSING_ACTOR"),
    ] {
        for status in all_rpcs(&s, &org, who).await {
            assert_error(&status, code, reason);
        }
    }
    // Nothing was created by any of them.
    let tokens = s
        .team
        .clone()
        .list_scim_tokens(as_actor(
            &owner,
            pb::ListScimTokensRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .scim_tokens;
    assert!(tokens.is_empty());
    assert!(
        audit(&s, &org, &owner, "scim_token.created")
            .await
            .is_empty()
    );
    s.stop().await;
}

async fn group_mappings_are_checked_and_audited(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    assert_error(
        &unwrap_err(map_group(&s, &org, &owner, "Ghosts", "nope").await),
        Code::InvalidArgument,
        "UNKNOWN_ROLE",
    );
    // A custom role carrying sso.manage is beyond what a directory may grant.
    s.team
        .clone()
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "sso-admin".into(),
                display_name: "SSO admin".into(),
                permissions: vec!["sso.manage".into(), "members.view".into()],
            },
        ))
        .await
        .unwrap();
    assert_error(
        &unwrap_err(map_group(&s, &org, &owner, "Identity", "sso-admin").await),
        Code::PermissionDenied,
        "PRIVILEGE_ESCALATION",
    );
    let first = map_group(&s, &org, &owner, "Engineers", "member")
        .await
        .unwrap();
    let again = map_group(&s, &org, &owner, "Engineers", "manager")
        .await
        .unwrap();
    assert_eq!(first.id, again.id, "a group keeps its id when remapped");
    assert_eq!(again.role_key, "manager");
    let listed = s
        .team
        .clone()
        .list_scim_group_mappings(as_actor(
            &owner,
            pb::ListScimGroupMappingsRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .mappings;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        audit(&s, &org, &owner, "scim_group_mapping.set")
            .await
            .len(),
        2
    );
    s.team
        .clone()
        .delete_scim_group_mapping(as_actor(
            &owner,
            pb::DeleteScimGroupMappingRequest {
                org_id: org.clone(),
                group_display_name: "Engineers".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        audit(&s, &org, &owner, "scim_group_mapping.deleted")
            .await
            .len(),
        1
    );
    let (_, secret) = token(&s, &org, &owner).await;
    let (_, groups) = call("GET", &format!("{}/Groups", base(&s)), Some(&secret), None).await;
    assert_eq!(groups["totalResults"], json!(0));
    s.stop().await;
}

fn patch_op(ops: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops})
}

#[track_caller]
fn assert_scim_type(got: &(u16, Value), status: u16, scim_type: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(got.1["scimType"], json!(scim_type), "{got:?}");
}

/// The request shapes directories really send (Entra ID's capitalised ops and string booleans,
/// Okta's PUT with `active: false`, group replace and value-path removal), and each SCIM error
/// type the server uses.
async fn directory_dialects_and_scim_error_types(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "business").await;
    let (_, secret) = token(&s, &org, &owner).await;
    let group = map_group(&s, &org, &owner, "Engineers", "manager")
        .await
        .unwrap();
    let base = base(&s);
    let users = format!("{base}/Users");
    let mut ids = Vec::new();
    for email in ["eve@example.com", "finn@example.com"] {
        let r = call("POST", &users, Some(&secret), Some(new_user(email))).await;
        assert_eq!(r.0, 201, "{r:?}");
        ids.push(r.1["id"].as_str().unwrap().to_owned());
    }
    let (eve, finn) = (&ids[0], &ids[1]);
    // Entra ID: {"op": "Replace", "path": "active", "value": "False"}.
    let r = call(
        "PATCH",
        &format!("{users}/{eve}"),
        Some(&secret),
        Some(patch_op(
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )),
    )
    .await;
    assert_eq!((r.0, r.1["active"].clone()), (200, json!(false)), "{r:?}");
    assert!(!s.allowed(&org, eve, "projects.view").await);
    // Okta: PUT the whole user with active false.
    let mut whole = new_user("finn@example.com");
    whole["active"] = json!(false);
    let r = call(
        "PUT",
        &format!("{users}/{finn}"),
        Some(&secret),
        Some(whole),
    )
    .await;
    assert_eq!((r.0, r.1["active"].clone()), (200, json!(false)), "{r:?}");
    let mut whole = new_user("finn@example.com");
    whole["active"] = json!(true);
    assert_eq!(
        call(
            "PUT",
            &format!("{users}/{finn}"),
            Some(&secret),
            Some(whole)
        )
        .await
        .0,
        200
    );
    // Groups: replace the member list, then remove by value path.
    let g = format!("{base}/Groups/{}", group.id);
    let r = call(
        "PATCH",
        &g,
        Some(&secret),
        Some(patch_op(
            json!([{"op": "replace", "path": "members", "value": [{"value": finn}]}]),
        )),
    )
    .await;
    assert_eq!(r.1["members"][0]["value"], json!(finn), "{r:?}");
    assert!(
        s.allowed(&org, finn, "members.manage").await,
        "the group's role"
    );
    let r = call(
        "PATCH",
        &g,
        Some(&secret),
        Some(patch_op(
            json!([{"op": "remove", "path": format!("members[value eq \"{finn}\"]")}]),
        )),
    )
    .await;
    assert_eq!(r.1["members"], json!([]), "{r:?}");
    assert!(!s.allowed(&org, finn, "members.manage").await);
    assert!(
        s.allowed(&org, finn, "projects.view").await,
        "back to the invite role"
    );
    // Root search finds users and groups alike.
    let r = call(
        "POST",
        &format!("{base}/.search"),
        Some(&secret),
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": "displayName eq \"Engineers\" or userName eq \"finn@example.com\"",
            "attributes": ["displayName", "userName"],
        })),
    )
    .await;
    assert_eq!(r.1["totalResults"], json!(2), "{r:?}");
    assert!(
        r.1["Resources"][0].get("meta").is_none(),
        "attributes honoured: {r:?}"
    );

    // Error types.
    let raw = reqwest::Client::new()
        .post(&users)
        .header("Authorization", format!("Bearer {secret}"))
        .header("Content-Type", SCIM_TYPE)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert_eq!(body["scimType"], json!("invalidSyntax"));
    let mut no_schema = new_user("gus@example.com");
    no_schema["schemas"] = json!([]);
    assert_scim_type(
        &call("POST", &users, Some(&secret), Some(no_schema)).await,
        400,
        "invalidSyntax",
    );
    assert_scim_type(
        &call(
            "POST",
            &users,
            Some(&secret),
            Some(new_user("not-an-email")),
        )
        .await,
        400,
        "invalidValue",
    );
    assert_scim_type(
        &call(
            "PATCH",
            &g,
            Some(&secret),
            Some(patch_op(
                json!([{"op": "add", "path": "owner", "value": "x"}]),
            )),
        )
        .await,
        400,
        "invalidPath",
    );
    assert_scim_type(
        &call(
            "PATCH",
            &g,
            Some(&secret),
            Some(patch_op(json!([{"op": "remove"}]))),
        )
        .await,
        400,
        "noTarget",
    );
    assert_scim_type(
        &call(
            "PATCH",
            &g,
            Some(&secret),
            Some(patch_op(
                json!([{"op": "replace", "path": "displayName", "value": "Renamed"}]),
            )),
        )
        .await,
        400,
        "mutability",
    );
    assert_scim_type(
        &call(
            "GET",
            &format!("{users}?filter=emails%5Btype%20eq%20%22work%22%5D"),
            Some(&secret),
            None,
        )
        .await,
        400,
        "invalidFilter",
    );
    let new_group = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name});
    assert_scim_type(
        &call(
            "POST",
            &format!("{base}/Groups"),
            Some(&secret),
            Some(new_group("Engineers")),
        )
        .await,
        409,
        "uniqueness",
    );
    assert_scim_error(
        &call(
            "POST",
            &format!("{base}/Groups"),
            Some(&secret),
            Some(new_group("Sales")),
        )
        .await,
        403,
        "SCIM_GROUP_NOT_MAPPED",
    );
    assert_scim_error(
        &call("DELETE", &g, Some(&secret), None).await,
        403,
        "SCIM_GROUP_MANAGED",
    );
    assert_scim_error(
        &call("GET", &format!("{base}/Nope"), Some(&secret), None).await,
        404,
        "NOT_FOUND",
    );
    s.stop().await;
}
