//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`), called over real gRPC with
//! Envoy's own protos, as a sidecar would.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use teamgate::config::{Config, UnmappedRoute};
use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;

use crate::helpers::{self, Backend, TestServer, as_actor};
use crate::on_both_backends;

on_both_backends!(
    owner_may_delete,
    member_may_view_but_not_delete,
    non_member_and_unknown_org_are_denied,
    missing_and_malformed_headers_are_denied,
    unmapped_routes_are_denied_by_default,
    unmapped_routes_may_be_allowed,
    header_names_are_configurable,
    removed_member_is_denied_at_once,
    served_next_to_the_others,
    paths_are_judged_in_normal_form,
    paths_without_a_normal_form_are_denied,
);

const REASON_HEADER: &str = "x-teamgate-reason";

fn with_routes(c: &mut Config) {
    c.policy = Some(helpers::repo_path("tests/fixtures/ext-authz-policy.toml"));
}

async fn spawn(b: Backend) -> TestServer {
    TestServer::spawn_with(b, with_routes).await
}

/// A CheckRequest as Envoy sends it: lower-cased header keys in `headers`.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "req-1".into(),
                    method: method.into(),
                    path: path.into(),
                    host: "app.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn as_user(method: &str, path: &str, org: &str, user: &str) -> CheckRequest {
    request(method, path, &[("x-user-id", user), ("x-org-id", org)])
}

async fn ext_check(s: &TestServer, req: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(s.channel.clone())
        .check(req)
        .await
        .expect("ext_authz answers with a CheckResponse, not a gRPC error")
        .into_inner()
}

#[track_caller]
fn assert_allowed(r: &CheckResponse) {
    assert_eq!(
        r.status.as_ref().map(|s| s.code),
        Some(Code::Ok as i32),
        "{r:?}"
    );
    assert!(
        matches!(r.http_response, Some(HttpResponse::OkResponse(_))),
        "{r:?}"
    );
}

/// Asserts a denial: the rpc status code, the HTTP status and the reason header.
#[track_caller]
fn assert_denied(r: &CheckResponse, code: Code, http: i32, reason: &str) {
    assert_eq!(
        r.status.as_ref().map(|s| s.code),
        Some(code as i32),
        "{r:?}"
    );
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("expected a denied_response: {r:?}");
    };
    assert_eq!(d.status.as_ref().map(|s| s.code), Some(http), "{r:?}");
    let header = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == REASON_HEADER)
        .unwrap_or_else(|| panic!("no {REASON_HEADER} header: {r:?}"));
    assert_eq!(header.value, reason, "{r:?}");
    assert!(d.body.contains(reason), "{r:?}");
}

#[track_caller]
fn assert_forbidden(r: &CheckResponse, reason: &str) {
    assert_denied(r, Code::PermissionDenied, 403, reason);
}

async fn owner_may_delete(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    for (method, path) in [
        ("DELETE", "/api/projects/1"),
        ("GET", "/api/projects/1"),
        ("POST", "/api/projects"),
        ("PATCH", "/admin/settings"),
    ] {
        let r = ext_check(&s, as_user(method, path, &org, &owner)).await;
        assert_allowed(&r);
    }
    s.stop().await;
}

async fn member_may_view_but_not_delete(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &member)).await;
    assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    let r = ext_check(&s, as_user("GET", "/api/projects/1?full=1", &org, &member)).await;
    assert_allowed(&r);
    // Methods compare case-insensitively.
    let r = ext_check(&s, as_user("get", "/api/projects", &org, &member)).await;
    assert_allowed(&r);
    let r = ext_check(&s, as_user("POST", "/api/projects", &org, &member)).await;
    assert_allowed(&r);
    let r = ext_check(&s, as_user("POST", "/admin/settings", &org, &member)).await;
    assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    // A manager has projects.delete.
    let manager = s.member(&org, &owner, "manager").await;
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &manager)).await;
    assert_allowed(&r);
    s.stop().await;
}

async fn non_member_and_unknown_org_are_denied(b: Backend) {
    let s = spawn(b).await;
    let (org, _owner) = s.org("Acme", "").await;
    let (_other_org, stranger) = s.org("Other", "").await;
    let r = ext_check(&s, as_user("GET", "/api/projects", &org, &stranger)).await;
    assert_forbidden(&r, "REASON_NOT_MEMBER");
    let nobody = uuid::Uuid::now_v7().to_string();
    let r = ext_check(&s, as_user("GET", "/api/projects", &org, &nobody)).await;
    assert_forbidden(&r, "REASON_NOT_MEMBER");
    let unknown_org = uuid::Uuid::now_v7().to_string();
    let r = ext_check(&s, as_user("GET", "/api/projects", &unknown_org, &stranger)).await;
    assert_forbidden(&r, "REASON_ORG_NOT_FOUND");
    s.stop().await;
}

async fn missing_and_malformed_headers_are_denied(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let path = "/api/projects/1";

    let r = ext_check(&s, request("GET", path, &[("x-org-id", &org)])).await;
    assert_denied(&r, Code::Unauthenticated, 401, "REASON_MISSING_USER");
    let r = ext_check(
        &s,
        request("GET", path, &[("x-user-id", ""), ("x-org-id", &org)]),
    )
    .await;
    assert_denied(&r, Code::Unauthenticated, 401, "REASON_MISSING_USER");
    let r = ext_check(&s, request("GET", path, &[])).await;
    assert_denied(&r, Code::Unauthenticated, 401, "REASON_MISSING_USER");

    let r = ext_check(&s, request("GET", path, &[("x-user-id", &owner)])).await;
    assert_forbidden(&r, "REASON_MISSING_ORG");
    let r = ext_check(
        &s,
        request("GET", path, &[("x-user-id", "bob"), ("x-org-id", &org)]),
    )
    .await;
    assert_forbidden(&r, "REASON_INVALID_HEADER");
    let r = ext_check(
        &s,
        request("GET", path, &[("x-user-id", &owner), ("x-org-id", "acme")]),
    )
    .await;
    assert_forbidden(&r, "REASON_INVALID_HEADER");
    // Envoy merges a repeated header into `a,b`: not a single id.
    let merged = format!("{owner},{owner}");
    let r = ext_check(
        &s,
        request("GET", path, &[("x-user-id", &merged), ("x-org-id", &org)]),
    )
    .await;
    assert_forbidden(&r, "REASON_INVALID_HEADER");

    // With `encode_raw_headers`, Envoy sends `header_map` instead; repeats stay separate.
    let raw = |headers: &[(&str, &str)]| {
        let mut req = request("GET", path, &[]);
        if let Some(http) = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.header_map = Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            });
        }
        req
    };
    let r = ext_check(&s, raw(&[("x-user-id", &owner), ("x-org-id", &org)])).await;
    assert_allowed(&r);
    let r = ext_check(
        &s,
        raw(&[
            ("x-user-id", &owner),
            ("x-user-id", &owner),
            ("x-org-id", &org),
        ]),
    )
    .await;
    assert_forbidden(&r, "REASON_INVALID_HEADER");

    // No HTTP attributes at all.
    let r = ext_check(&s, CheckRequest::default()).await;
    assert_forbidden(&r, "REASON_NO_HTTP_REQUEST");
    s.stop().await;
}

async fn unmapped_routes_are_denied_by_default(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/health"),
        ("PUT", "/api/projects/1"),
        ("GET", "/other?next=/admin"),
    ] {
        let r = ext_check(&s, as_user(method, path, &org, &owner)).await;
        assert_forbidden(&r, "REASON_UNMAPPED_ROUTE");
        let r = ext_check(&s, request(method, path, &[])).await;
        assert_forbidden(&r, "REASON_UNMAPPED_ROUTE");
    }
    s.stop().await;
}

async fn unmapped_routes_may_be_allowed(b: Backend) {
    let s = TestServer::spawn_with(b, |c| {
        with_routes(c);
        c.ext_authz.unmapped = UnmappedRoute::Allow;
    })
    .await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    // Unmapped: allowed without any headers.
    let r = ext_check(&s, request("GET", "/public/index.html", &[])).await;
    assert_allowed(&r);
    let r = ext_check(&s, request("PUT", "/api/projects/1", &[])).await;
    assert_allowed(&r);
    // Mapped routes are still checked.
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &member)).await;
    assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    let r = ext_check(&s, request("DELETE", "/api/projects/1", &[])).await;
    assert_denied(&r, Code::Unauthenticated, 401, "REASON_MISSING_USER");
    s.stop().await;
}

async fn header_names_are_configurable(b: Backend) {
    let s = TestServer::spawn_with(b, |c| {
        with_routes(c);
        c.ext_authz.user_header = "x-subject".into();
        c.ext_authz.org_header = "X-Tenant".into();
    })
    .await;
    let (org, owner) = s.org("Acme", "").await;
    let r = ext_check(
        &s,
        request(
            "DELETE",
            "/api/projects/1",
            &[("x-subject", &owner), ("x-tenant", &org)],
        ),
    )
    .await;
    assert_allowed(&r);
    // The default names no longer count.
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &owner)).await;
    assert_denied(&r, Code::Unauthenticated, 401, "REASON_MISSING_USER");
    s.stop().await;
}

async fn removed_member_is_denied_at_once(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    // Warm every cache on the way.
    for _ in 0..3 {
        let r = ext_check(&s, as_user("GET", "/api/projects", &org, &member)).await;
        assert_allowed(&r);
    }
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
        .expect("removed");
    let r = ext_check(&s, as_user("GET", "/api/projects", &org, &member)).await;
    assert_forbidden(&r, "REASON_NOT_MEMBER");
    // A role change takes effect at once too.
    let manager = s.member(&org, &owner, "manager").await;
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &manager)).await;
    assert_allowed(&r);
    s.team
        .clone()
        .update_member_role(as_actor(
            &owner,
            pb::UpdateMemberRoleRequest {
                org_id: org.clone(),
                user_id: manager.clone(),
                role: "member".into(),
            },
        ))
        .await
        .expect("role changed");
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &manager)).await;
    assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    s.stop().await;
}

/// ext_authz agrees with AuthzService/Check, and health knows the service.
async fn served_next_to_the_others(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    for (method, path, permission) in [
        ("GET", "/api/projects", "projects.view"),
        ("DELETE", "/api/projects/9", "projects.delete"),
        ("POST", "/admin", "org.update"),
    ] {
        let via_envoy = ext_check(&s, as_user(method, path, &org, &member)).await;
        let via_check = s.allowed(&org, &member, permission).await;
        let ok = via_envoy.status.as_ref().map(|s| s.code) == Some(Code::Ok as i32);
        assert_eq!(ok, via_check, "{method} {path}");
    }
    let health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    s.stop().await;
}

/// Routes match the path an upstream will serve, not its raw spelling: `..`, `.`, `//` and
/// escaped unreserved characters are resolved before the longest prefix is chosen.
async fn paths_are_judged_in_normal_form(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    // Each is `/admin` (org.update): the owner may, a member may not. Raw, the last two
    // matched `GET /api/projects` (projects.view) and let the member through.
    for path in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "//admin",
        "/api/./../admin/",
        "/%61dmin?next=/api/projects",
        "/api/projects/../../admin",
        "/api/projects/%2e%2e/%2e%2e/admin/settings",
    ] {
        let r = ext_check(&s, as_user("GET", path, &org, &owner)).await;
        assert_allowed(&r);
        let r = ext_check(&s, as_user("GET", path, &org, &member)).await;
        assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    }
    // And the other way round: this is `GET /api/projects`, which a member may.
    for path in [
        "/admin/../api/projects",
        "/api//projects/1",
        "/api/projects/./1",
    ] {
        let r = ext_check(&s, as_user("GET", path, &org, &member)).await;
        assert_allowed(&r);
    }
    // Normal paths are unaffected.
    let r = ext_check(
        &s,
        as_user("GET", "/api/projects/1?x=/admin", &org, &member),
    )
    .await;
    assert_allowed(&r);
    let r = ext_check(&s, as_user("DELETE", "/api/projects/1", &org, &member)).await;
    assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    let r = ext_check(&s, as_user("PATCH", "/admin/settings", &org, &member)).await;
    assert_forbidden(&r, "REASON_MISSING_PERMISSION");
    let r = ext_check(&s, as_user("GET", "/health", &org, &owner)).await;
    assert_forbidden(&r, "REASON_UNMAPPED_ROUTE");
    // A path that resolves outside every route is unmapped, not mapped by its raw prefix.
    let r = ext_check(
        &s,
        as_user("GET", "/api/projects/../../health", &org, &member),
    )
    .await;
    assert_forbidden(&r, "REASON_UNMAPPED_ROUTE");
    s.stop().await;
}

/// A path with no single normal form is denied with `REASON_INVALID_PATH`, whoever asks and
/// whatever `ext_authz.unmapped` says: upstreams disagree on what it names.
async fn paths_without_a_normal_form_are_denied(b: Backend) {
    let s = spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let invalid = [
        "/api/%2Fadmin",
        "/api/%2fadmin",
        // Raw, these fell under `GET /api/projects` and let the member through.
        "/api/projects%2F..%2F..%2Fadmin",
        "/api/projects/%5C..%5C..%5Cadmin",
        "/api/projects\\..\\..\\admin",
        "/api/projects/%00",
        "/api/projects/%zz",
        "/api/projects/%4",
        "/api/projects/../../../admin",
        "/..",
        "",
    ];
    for path in invalid {
        for user in [&owner, &member] {
            let r = ext_check(&s, as_user("GET", path, &org, user)).await;
            assert_forbidden(&r, "REASON_INVALID_PATH");
        }
        let r = ext_check(&s, request("GET", path, &[])).await;
        assert_forbidden(&r, "REASON_INVALID_PATH");
    }
    // Other escapes are fine: they stay escaped and match as usual.
    let r = ext_check(&s, as_user("GET", "/api/projects/a%20b", &org, &member)).await;
    assert_allowed(&r);
    s.stop().await;

    let s = TestServer::spawn_with(b, |c| {
        with_routes(c);
        c.ext_authz.unmapped = UnmappedRoute::Allow;
    })
    .await;
    let r = ext_check(&s, request("GET", "/public/index.html", &[])).await;
    assert_allowed(&r);
    for path in ["/public/%2F..%2Fadmin", "/public/../../admin"] {
        let r = ext_check(&s, request("GET", path, &[])).await;
        assert_forbidden(&r, "REASON_INVALID_PATH");
    }
    s.stop().await;
}
