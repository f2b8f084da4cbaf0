//! Single sign-on against real parts: an OpenID provider process (node-oidc-provider, from
//! tests/fixtures/oidc, installed by `npm ci`) and a DNS server process (Python's dnslib,
//! tests/fixtures/dns) serving the verification TXT records. Both start once per test
//! process; each test registers its own client, accounts and domains, so tests stay isolated.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use teamgate::config::{Config, ServiceKeyConfig};
use teamgate::proto::teamgate::v1 as pb;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, repo_path, unwrap_err};
use crate::identity::{cheap_hashing, identity, jwks, member_with_password, set_status, sign_in};
use crate::on_both_backends;

on_both_backends!(
    the_whole_code_flow_provisions_a_member_and_signs_a_session,
    unknown_expired_and_misdirected_sign_ins_fail_distinctly,
    unverified_domains_and_emails_sign_nobody_in,
    enforce_turns_passwords_off_for_the_domains_members,
    an_email_change_at_the_provider_keeps_the_account,
    disabled_accounts_and_non_members_without_jit_are_refused,
    hostile_callers_cannot_touch_connections,
    only_the_operator_verifies_a_domain_without_dns,
    start_sso_is_limited_per_caller,
    jit_provisioning_respects_the_plans_seats,
    keys_rotated_at_the_provider_are_fetched_again,
);

const PASSWORD: &str = "correct horse battery staple";

/// A fixture process that exits when our end of its stdin closes (with this process).
struct Fixture {
    _child: Mutex<(Child, ChildStdin)>,
    line: serde_json::Value,
}

fn spawn_fixture(mut cmd: Command, what: &str) -> Fixture {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let stdin = child.stdin.take().unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    // Keep draining what it prints later: a closed pipe would kill it on its next write.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let line: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|_| panic!("{what} printed `{first}` instead of its address"));
    Fixture {
        _child: Mutex::new((child, stdin)),
        line,
    }
}

/// The OpenID provider's issuer URL.
pub(crate) fn issuer() -> &'static str {
    static OP: OnceLock<Fixture> = OnceLock::new();
    let op = OP.get_or_init(|| {
        let dir = repo_path("tests/fixtures/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test OpenID provider is not installed: run `npm ci` in tests/fixtures/oidc (.ci/run does)"
        );
        let mut cmd = Command::new("node");
        cmd.arg("provider.mjs").arg("0").current_dir(dir);
        spawn_fixture(cmd, "the OpenID provider (node)")
    });
    op.line["issuer"].as_str().unwrap()
}

struct Dns {
    fixture: Fixture,
    records: PathBuf,
    lock: Mutex<()>,
}

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let records = dir.join("records.json");
        std::fs::write(&records, "{}").unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(repo_path("tests/fixtures/dns/txt_server.py"))
            .arg(&records)
            .arg("0");
        Dns {
            fixture: spawn_fixture(cmd, "the DNS server (python3 with dnslib)"),
            records,
            lock: Mutex::new(()),
        }
    })
}

pub(crate) fn dns_addr() -> std::net::SocketAddr {
    let port = dns().fixture.line["port"].as_u64().unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Publishes a TXT record (the server reads the file on every query).
pub(crate) fn publish_txt(domain: &str, record: &str) {
    let d = dns();
    let _g = d.lock.lock().unwrap();
    let raw = std::fs::read_to_string(&d.records).unwrap();
    let mut all: HashMap<String, Vec<String>> = serde_json::from_str(&raw).unwrap();
    all.entry(domain.to_owned())
        .or_default()
        .push(record.to_owned());
    let tmp = d.records.with_extension("tmp");
    std::fs::File::create(&tmp)
        .unwrap()
        .write_all(serde_json::to_string(&all).unwrap().as_bytes())
        .unwrap();
    std::fs::rename(tmp, &d.records).unwrap();
}

pub(crate) fn unique_domain() -> String {
    format!("d{}.test", uuid::Uuid::now_v7().simple())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) struct OpClient {
    pub id: String,
    pub secret: String,
}

/// Registers a confidential client at the provider (dynamic client registration).
pub(crate) async fn register_client(redirect_uri: &str) -> OpClient {
    register_client_at(issuer(), redirect_uri).await
}

async fn register_client_at(issuer: &str, redirect_uri: &str) -> OpClient {
    let body = serde_json::json!({
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    });
    let resp = http()
        .post(format!("{issuer}/reg"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "registration: {}",
        resp.status()
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    OpClient {
        id: v["client_id"].as_str().unwrap().into(),
        secret: v["client_secret"].as_str().unwrap().into(),
    }
}

/// Sets an account's claims at the provider; returns its `sub`.
pub(crate) async fn set_account(sub: &str, email: &str, verified: bool) -> String {
    set_account_at(issuer(), sub, email, verified).await
}

async fn set_account_at(issuer: &str, sub: &str, email: &str, verified: bool) -> String {
    let claims = serde_json::json!({
        "email": email, "email_verified": verified, "given_name": "Sam", "family_name": "Single",
    });
    let resp = http()
        .put(format!("{issuer}/test/accounts/{sub}"))
        .body(claims.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    sub.to_owned()
}

pub(crate) fn new_sub() -> String {
    format!("acct-{}", uuid::Uuid::now_v7().simple())
}

/// Follows the authorization URL through the provider as a browser would (cookies kept,
/// redirects followed by hand), logging in as `sub`; returns the query of the redirect back.
pub(crate) async fn log_in_at_provider(
    authorization_url: &str,
    sub: &str,
) -> HashMap<String, String> {
    log_in_at(issuer(), authorization_url, sub).await
}

async fn log_in_at(issuer: &str, authorization_url: &str, sub: &str) -> HashMap<String, String> {
    let client = http();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut url = authorization_url.to_owned();
    for _ in 0..10 {
        if !url.starts_with(issuer) {
            let parsed = reqwest::Url::parse(&url).unwrap();
            return parsed.query_pairs().into_owned().collect();
        }
        if url.contains("/interaction/") {
            url = format!("{url}?login={sub}");
        }
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let resp = client
            .get(&url)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                cookies.insert(k.trim().into(), v.into());
            }
        }
        assert!(
            resp.status().is_redirection(),
            "provider answered {} at {url}",
            resp.status()
        );
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        url = if location.starts_with('/') {
            format!("{issuer}{location}")
        } else {
            location
        };
    }
    panic!("too many redirects at the provider");
}

pub(crate) const REDIRECT: &str = "http://127.0.0.1:9/sso/callback";

async fn spawn(backend: Backend) -> TestServer {
    TestServer::spawn_with(backend, sso_config).await
}

fn sso_config(c: &mut Config) {
    cheap_hashing(c);
    c.sso.dns_resolver = Some(dns_addr());
    c.sso.http_timeout_ms = 5_000;
}

struct Setup {
    org: String,
    owner: String,
    domain: String,
    connection: pb::SsoConnection,
    client: OpClient,
}

fn team(
    s: &TestServer,
) -> teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient<tonic::transport::Channel>
{
    s.team.clone()
}

fn create_request(
    org: &str,
    client: &OpClient,
    domains: &[&str],
    jit: bool,
    enforce: bool,
) -> pb::CreateSsoConnectionRequest {
    pb::CreateSsoConnectionRequest {
        org_id: org.into(),
        issuer: issuer().into(),
        client_id: client.id.clone(),
        client_secret: client.secret.clone(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        default_role: "member".into(),
        jit_provisioning: jit,
        enforce,
        redirect_uris: vec![REDIRECT.into()],
    }
}

/// An org (plan `team`) with a connection for a fresh domain, verified through DNS.
async fn setup(s: &TestServer, jit: bool, enforce: bool) -> Setup {
    setup_on_plan(s, "team", jit, enforce).await
}

async fn setup_on_plan(s: &TestServer, plan: &str, jit: bool, enforce: bool) -> Setup {
    let (org, owner) = s.org("Acme", plan).await;
    let domain = unique_domain();
    let client = register_client(REDIRECT).await;
    let created = team(s)
        .create_sso_connection(as_actor(
            &owner,
            create_request(&org, &client, &[&domain], jit, enforce),
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    publish_txt(&domain, &created.domains[0].verification_record);
    let connection = verify(s, &org, &owner, &created.id, &domain).await.unwrap();
    Setup {
        org,
        owner,
        domain,
        connection,
        client,
    }
}

async fn verify(
    s: &TestServer,
    org: &str,
    actor: &str,
    connection: &str,
    domain: &str,
) -> Result<pb::SsoConnection, tonic::Status> {
    team(s)
        .verify_sso_domain(as_actor(
            actor,
            pb::VerifySsoDomainRequest {
                org_id: org.into(),
                connection_id: connection.into(),
                domain: domain.into(),
                operator_override: false,
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

async fn start_by_email(
    s: &TestServer,
    email: &str,
) -> Result<pb::StartSsoResponse, tonic::Status> {
    identity(s)
        .start_sso(pb::StartSsoRequest {
            target: Some(pb::start_sso_request::Target::Email(email.into())),
            redirect_uri: REDIRECT.into(),
            connection_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn start_by_org(s: &TestServer, org: &str) -> pb::StartSsoResponse {
    identity(s)
        .start_sso(pb::StartSsoRequest {
            target: Some(pb::start_sso_request::Target::OrgId(org.into())),
            redirect_uri: REDIRECT.into(),
            connection_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn complete(
    s: &TestServer,
    state: &str,
    code: &str,
) -> Result<pb::AuthenticateResponse, tonic::Status> {
    identity(s)
        .complete_sso(pb::CompleteSsoRequest {
            state: state.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The whole flow for `sub`: StartSso (by org), the provider's login, CompleteSso.
async fn sso_sign_in(
    s: &TestServer,
    org: &str,
    sub: &str,
) -> Result<pb::AuthenticateResponse, tonic::Status> {
    let started = start_by_org(s, org).await;
    let back = log_in_at_provider(&started.authorization_url, sub).await;
    complete(s, &back["state"], &back["code"]).await
}

/// Verifies a session token against the server's JWKS; returns its claims.
async fn session_claims(s: &TestServer, token: &str) -> serde_json::Value {
    let set = jwks(s).await;
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = set.find(&header.kid.unwrap()).expect("key in JWKS");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.set_issuer(&["teamgate"]);
    validation.set_audience(&["teamgate"]);
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims
}

async fn audit_actions(s: &TestServer, org: &str, owner: &str) -> Vec<pb::AuditEvent> {
    team(s)
        .list_audit_events(as_actor(
            owner,
            pb::ListAuditEventsRequest {
                org_id: org.into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn the_whole_code_flow_provisions_a_member_and_signs_a_session(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "team").await;
    let domain = unique_domain();
    let client = register_client(REDIRECT).await;
    let created = team(&s)
        .create_sso_connection(as_actor(
            &owner,
            create_request(&org, &client, &[&domain], true, false),
        ))
        .await
        .unwrap()
        .into_inner();
    let conn = created.connection.unwrap();
    assert!(!created.consistency_token.is_empty());
    assert_eq!(conn.issuer, issuer());
    assert!(conn.has_client_secret);
    assert_eq!(conn.default_role, "member");
    assert_eq!(conn.domains.len(), 1);
    assert!(!conn.domains[0].verified);
    let record = conn.domains[0].verification_record.clone();
    assert!(record.starts_with("teamgate-verification="), "{record}");

    // Not verified yet: no record published, and the domain routes no sign-in.
    let email = format!("sam@{domain}");
    assert_error(
        &unwrap_err(verify(&s, &org, &owner, &conn.id, &domain).await),
        Code::FailedPrecondition,
        "DOMAIN_VERIFICATION_FAILED",
    );
    assert_error(
        &unwrap_err(start_by_email(&s, &email).await),
        Code::FailedPrecondition,
        "SSO_DOMAIN_NOT_VERIFIED",
    );
    publish_txt(&domain, "v=spf1 -all");
    publish_txt(&domain, &record);
    let verified = verify(&s, &org, &owner, &conn.id, &domain).await.unwrap();
    assert!(verified.domains[0].verified);
    assert_eq!(verified.domains[0].verified_by, "dns");

    let sub = set_account(&new_sub(), &email, true).await;
    let started = start_by_email(&s, &email).await.unwrap();
    assert_eq!(started.connection_id, conn.id);
    let url = reqwest::Url::parse(&started.authorization_url).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], client.id);
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43 && q["code_challenge"].len() == 43);
    assert!(!started.authorization_url.contains(&client.secret));

    let back = log_in_at_provider(&started.authorization_url, &sub).await;
    assert_eq!(back["state"], q["state"]);
    let session = complete(&s, &back["state"], &back["code"]).await.unwrap();
    let user = session.user.unwrap();
    assert_eq!(user.email, email);
    let claims = session_claims(&s, &session.session_token).await;
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["amr"], serde_json::json!(["sso"]));
    assert_eq!(claims["sso_connection"], conn.id.as_str());
    assert_eq!(claims["orgs"], serde_json::json!([org]));

    // Provisioned: a member with the default role, whom Check allows at once.
    let members = s.members(&org, &owner).await;
    let m = members
        .iter()
        .find(|m| m.user_id == user.id)
        .expect("provisioned member");
    assert_eq!(m.role, "member");
    assert!(s.allowed(&org, &user.id, "projects.edit").await);
    assert!(!s.allowed(&org, &user.id, "members.manage").await);
    let events = audit_actions(&s, &org, &owner).await;
    let provisioned = events
        .iter()
        .find(|e| e.action == "member.provisioned")
        .expect("member.provisioned audited");
    assert_eq!(provisioned.actor_user_id, user.id);
    assert!(events.iter().any(|e| e.action == "sso.connection_created"));
    // On the change feed too (sign-in activity is not).
    use teamgate::store::entities::changes;
    let fed: Vec<String> = changes::Entity::find()
        .filter(changes::Column::OrgId.eq(org.as_str()))
        .all(s.app().store.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.action)
        .collect();
    assert!(fed.iter().any(|a| a == "member.provisioned"), "{fed:?}");
    assert!(!fed.iter().any(|a| a == "user.signed_in"), "{fed:?}");
    assert!(events.iter().any(|e| e.action == "sso.domain_verified"));

    // The same state and code again: refused, and nothing new is created.
    assert_error(
        &unwrap_err(complete(&s, &back["state"], &back["code"]).await),
        Code::FailedPrecondition,
        "SSO_STATE_USED",
    );
    assert_eq!(s.members(&org, &owner).await.len(), members.len());

    // A second sign-in finds the linked account: same user, no second membership.
    let again = sso_sign_in(&s, &org, &sub).await.unwrap();
    assert_eq!(again.user.unwrap().id, user.id);
    assert_eq!(s.members(&org, &owner).await.len(), members.len());

    // The secret is never returned, nor stored in the clear, nor in the audit log.
    let listed = team(&s)
        .list_sso_connections(as_actor(
            &owner,
            pb::ListSsoConnectionsRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.connections.len(), 1);
    assert!(!format!("{listed:?}").contains(&client.secret));
    assert!(!format!("{events:?}").contains(&client.secret));
    assert!(!format!("{events:?}").contains(&back["code"]));
    let row = teamgate::store::sso::find_connection(s.app().store.conn(), &conn.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!row.client_secret.contains(&client.secret));
    s.stop().await;
}

async fn unknown_expired_and_misdirected_sign_ins_fail_distinctly(backend: Backend) {
    let s = spawn(backend).await;
    let setup = setup(&s, true, false).await;
    let sub = set_account(&new_sub(), &format!("x@{}", setup.domain), true).await;

    let wrong = identity(&s)
        .start_sso(pb::StartSsoRequest {
            target: Some(pb::start_sso_request::Target::OrgId(setup.org.clone())),
            redirect_uri: "https://evil.example.com/callback".into(),
            connection_id: String::new(),
        })
        .await;
    assert_error(
        &unwrap_err(wrong),
        Code::InvalidArgument,
        "SSO_REDIRECT_URI_NOT_ALLOWED",
    );
    assert_error(
        &unwrap_err(complete(&s, "no-such-state", "some-code").await),
        Code::NotFound,
        "SSO_STATE_UNKNOWN",
    );
    assert_error(
        &unwrap_err(start_by_email(&s, &format!("x@{}", unique_domain())).await),
        Code::FailedPrecondition,
        "SSO_NOT_CONFIGURED",
    );

    let started = start_by_org(&s, &setup.org).await;
    let back = log_in_at_provider(&started.authorization_url, &sub).await;
    s.clock.advance(chrono::Duration::seconds(601));
    assert_error(
        &unwrap_err(complete(&s, &back["state"], &back["code"]).await),
        Code::FailedPrecondition,
        "SSO_STATE_EXPIRED",
    );
    // Audited in the connection's org, with the reason and without the code.
    let events = audit_actions(&s, &setup.org, &setup.owner).await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.action == "sso.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert!(failed[0].after.contains("SSO_STATE_EXPIRED"));
    assert!(!failed[0].after.contains(&back["code"]));
    assert!(!failed[0].after.contains(&back["state"]));
    assert_eq!(s.members(&setup.org, &setup.owner).await.len(), 1);

    // With two connections, StartSso by org needs to be told which.
    let second = team(&s)
        .create_sso_connection(as_actor(
            &setup.owner,
            create_request(&setup.org, &setup.client, &[&unique_domain()], false, false),
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let by_org = |connection_id: &str| pb::StartSsoRequest {
        target: Some(pb::start_sso_request::Target::OrgId(setup.org.clone())),
        redirect_uri: REDIRECT.into(),
        connection_id: connection_id.into(),
    };
    assert_error(
        &unwrap_err(identity(&s).start_sso(by_org("")).await),
        Code::InvalidArgument,
        "SSO_CONNECTION_AMBIGUOUS",
    );
    let picked = identity(&s)
        .start_sso(by_org(&second.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(picked.connection_id, second.id);
    s.stop().await;
}

async fn unverified_domains_and_emails_sign_nobody_in(backend: Backend) {
    let s = spawn(backend).await;
    let setup = setup(&s, true, false).await;
    // A second domain on the connection, never verified.
    let unverified = unique_domain();
    team(&s)
        .update_sso_connection(as_actor(
            &setup.owner,
            pb::UpdateSsoConnectionRequest {
                org_id: setup.org.clone(),
                connection_id: setup.connection.id.clone(),
                domains: Some(pb::StringList {
                    values: vec![setup.domain.clone(), unverified.clone()],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let outsider = set_account(&new_sub(), &format!("eve@{unverified}"), true).await;
    assert_error(
        &unwrap_err(sso_sign_in(&s, &setup.org, &outsider).await),
        Code::PermissionDenied,
        "SSO_DOMAIN_NOT_VERIFIED",
    );
    let unvouched = set_account(&new_sub(), &format!("ann@{}", setup.domain), false).await;
    assert_error(
        &unwrap_err(sso_sign_in(&s, &setup.org, &unvouched).await),
        Code::PermissionDenied,
        "SSO_EMAIL_NOT_VERIFIED",
    );
    // Nobody was provisioned; the kept domain stayed verified.
    assert_eq!(s.members(&setup.org, &setup.owner).await.len(), 1);
    let listed = team(&s)
        .list_sso_connections(as_actor(
            &setup.owner,
            pb::ListSsoConnectionsRequest {
                org_id: setup.org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connections;
    let domains: HashMap<String, bool> = listed[0]
        .domains
        .iter()
        .map(|d| (d.domain.clone(), d.verified))
        .collect();
    assert!(domains[&setup.domain]);
    assert!(!domains[&unverified]);
    s.stop().await;
}

async fn enforce_turns_passwords_off_for_the_domains_members(backend: Backend) {
    let s = spawn(backend).await;
    let setup = setup(&s, false, true).await;
    let email = format!("pat@{}", setup.domain);
    let pat = member_with_password(
        &s,
        &setup.org,
        &setup.owner,
        "member",
        &email,
        Some(PASSWORD),
    )
    .await
    .unwrap();

    let refused = unwrap_err(sign_in(&s, &email, PASSWORD, None).await);
    assert_error(&refused, Code::FailedPrecondition, "SSO_REQUIRED");
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.metadata["org_id"], setup.org);
    // A wrong password says nothing about single sign-on.
    assert_error(
        &unwrap_err(sign_in(&s, &email, "wrong password entirely", None).await),
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // Password reset answers as always and sends nothing.
    identity(&s)
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.clone(),
        })
        .await
        .unwrap();
    let resets = teamgate::store::entities::outbox::Entity::find()
        .filter(teamgate::store::entities::outbox::Column::Kind.eq("password_reset_email"))
        .all(s.app().store.conn())
        .await
        .unwrap();
    assert!(resets.is_empty(), "a reset email was queued");

    // Single sign-on links the existing member's account (no provisioning needed).
    let sub = set_account(&new_sub(), &email, true).await;
    let session = sso_sign_in(&s, &setup.org, &sub).await.unwrap();
    assert_eq!(session.user.unwrap().id, pat);

    // Members of other domains keep their passwords; turning enforce off gives Pat theirs back.
    let other = format!("olga@{}", unique_domain());
    member_with_password(
        &s,
        &setup.org,
        &setup.owner,
        "member",
        &other,
        Some(PASSWORD),
    )
    .await
    .unwrap();
    sign_in(&s, &other, PASSWORD, None).await.unwrap();
    team(&s)
        .update_sso_connection(as_actor(
            &setup.owner,
            pb::UpdateSsoConnectionRequest {
                org_id: setup.org.clone(),
                connection_id: setup.connection.id.clone(),
                enforce: Some(false),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    sign_in(&s, &email, PASSWORD, None).await.unwrap();
    s.stop().await;
}

async fn an_email_change_at_the_provider_keeps_the_account(backend: Backend) {
    let s = spawn(backend).await;
    let setup = setup(&s, true, false).await;
    let sub = set_account(&new_sub(), &format!("kim@{}", setup.domain), true).await;
    let first = sso_sign_in(&s, &setup.org, &sub)
        .await
        .unwrap()
        .user
        .unwrap();
    set_account(&sub, &format!("kim.lee@{}", setup.domain), true).await;
    let second = sso_sign_in(&s, &setup.org, &sub)
        .await
        .unwrap()
        .user
        .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(s.members(&setup.org, &setup.owner).await.len(), 2);
    // One provisioning only: the second sign-in matched (issuer, sub), not the new email.
    let events = audit_actions(&s, &setup.org, &setup.owner).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.action == "member.provisioned")
            .count(),
        1
    );
    s.stop().await;
}

async fn disabled_accounts_and_non_members_without_jit_are_refused(backend: Backend) {
    let s = spawn(backend).await;
    let setup = setup(&s, false, false).await;
    // No account and no provisioning.
    let stranger = set_account(&new_sub(), &format!("new@{}", setup.domain), true).await;
    assert_error(
        &unwrap_err(sso_sign_in(&s, &setup.org, &stranger).await),
        Code::PermissionDenied,
        "SSO_NOT_PROVISIONED",
    );
    // A member whose account is disabled.
    let email = format!("dee@{}", setup.domain);
    let dee = member_with_password(
        &s,
        &setup.org,
        &setup.owner,
        "member",
        &email,
        Some(PASSWORD),
    )
    .await
    .unwrap();
    set_status(&s, &setup.owner, &dee, pb::UserStatus::Disabled)
        .await
        .unwrap();
    let sub = set_account(&new_sub(), &email, true).await;
    assert_error(
        &unwrap_err(sso_sign_in(&s, &setup.org, &sub).await),
        Code::PermissionDenied,
        "USER_DISABLED",
    );
    let events = audit_actions(&s, &setup.org, &setup.owner).await;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "sso.sign_in_failed")
        .map(|e| e.after.as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("SSO_NOT_PROVISIONED")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("USER_DISABLED") && r.contains(&dee)),
        "{reasons:?}"
    );
    s.stop().await;
}

async fn hostile_callers_cannot_touch_connections(backend: Backend) {
    let s = spawn(backend).await;
    let setup = setup(&s, true, false).await;
    let (other_org, other_owner) = s.org("Other", "team").await;
    let admin = s.member(&setup.org, &setup.owner, "admin").await;
    let co_owner = s.member(&setup.org, &setup.owner, "owner").await;
    set_status(&s, &setup.owner, &co_owner, pb::UserStatus::Disabled)
        .await
        .unwrap();
    let client = &setup.client;
    let conn = setup.connection.id.clone();

    let denied = [
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
            Some(co_owner.as_str()),
            Code::PermissionDenied,
            "USER_DISABLED",
        ),
        (None, Code::Unauthenticated, "MISSING_ACTOR"),
    ];
    for (actor, code, reason) in denied {
        let req = |m| match actor {
            Some(a) => as_actor(a, m),
            None => Request::new(m),
        };
        let r = team(&s)
            .create_sso_connection(req(create_request(
                &setup.org,
                client,
                &[&unique_domain()],
                true,
                false,
            )))
            .await;
        assert_error(&unwrap_err(r), code, reason);
        let req = |m| match actor {
            Some(a) => as_actor(a, m),
            None => Request::new(m),
        };
        let r = team(&s)
            .list_sso_connections(req(pb::ListSsoConnectionsRequest {
                org_id: setup.org.clone(),
            }))
            .await;
        assert_error(&unwrap_err(r), code, reason);
        let req = |m| match actor {
            Some(a) => as_actor(a, m),
            None => Request::new(m),
        };
        let r = team(&s)
            .update_sso_connection(req(pb::UpdateSsoConnectionRequest {
                org_id: setup.org.clone(),
                connection_id: conn.clone(),
                jit_provisioning: Some(false),
                ..Default::default()
            }))
            .await;
        assert_error(&unwrap_err(r), code, reason);
        let req = |m| match actor {
            Some(a) => as_actor(a, m),
            None => Request::new(m),
        };
        let r = team(&s)
            .delete_sso_connection(req(pb::DeleteSsoConnectionRequest {
                org_id: setup.org.clone(),
                connection_id: conn.clone(),
            }))
            .await;
        assert_error(&unwrap_err(r), code, reason);
        let req = |m| match actor {
            Some(a) => as_actor(a, m),
            None => Request::new(m),
        };
        let r = team(&s)
            .verify_sso_domain(req(pb::VerifySsoDomainRequest {
                org_id: setup.org.clone(),
                connection_id: conn.clone(),
                domain: setup.domain.clone(),
                operator_override: false,
            }))
            .await;
        assert_error(&unwrap_err(r), code, reason);
    }
    // Another tenant's owner cannot reach the connection through their own org either.
    let r = team(&s)
        .delete_sso_connection(as_actor(
            &other_owner,
            pb::DeleteSsoConnectionRequest {
                org_id: other_org.clone(),
                connection_id: conn.clone(),
            },
        ))
        .await;
    assert_error(&unwrap_err(r), Code::NotFound, "SSO_CONNECTION_NOT_FOUND");
    // Nor claim the domain, nor mark it verified without being the operator.
    let r = team(&s)
        .create_sso_connection(as_actor(
            &other_owner,
            create_request(&other_org, client, &[&setup.domain], true, false),
        ))
        .await;
    assert_error(&unwrap_err(r), Code::AlreadyExists, "DOMAIN_TAKEN");
    let r = team(&s)
        .verify_sso_domain(as_actor(
            &setup.owner,
            pb::VerifySsoDomainRequest {
                org_id: setup.org.clone(),
                connection_id: conn.clone(),
                domain: setup.domain.clone(),
                operator_override: true,
            },
        ))
        .await;
    assert_error(&unwrap_err(r), Code::PermissionDenied, "NOT_AN_OPERATOR");
    // A connection never provisions owners.
    let mut owners = create_request(&setup.org, client, &[&unique_domain()], true, false);
    owners.default_role = "owner".into();
    let r = team(&s)
        .create_sso_connection(as_actor(&setup.owner, owners))
        .await;
    assert_error(
        &unwrap_err(r),
        Code::PermissionDenied,
        "PRIVILEGE_ESCALATION",
    );
    // Bad input.
    let mut bad = create_request(&setup.org, client, &["not a domain"], true, false);
    let r = team(&s)
        .create_sso_connection(as_actor(&setup.owner, bad.clone()))
        .await;
    assert_error(&unwrap_err(r), Code::InvalidArgument, "INVALID_DOMAIN");
    bad.domains = vec![unique_domain()];
    bad.issuer = "http://idp.example.com".into();
    let r = team(&s)
        .create_sso_connection(as_actor(&setup.owner, bad))
        .await;
    assert_error(&unwrap_err(r), Code::InvalidArgument, "INVALID_URL");

    // Nothing changed; the owner deletes it, and the domain then routes nothing.
    let listed = team(&s)
        .list_sso_connections(as_actor(
            &setup.owner,
            pb::ListSsoConnectionsRequest {
                org_id: setup.org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].jit_provisioning);
    team(&s)
        .delete_sso_connection(as_actor(
            &setup.owner,
            pb::DeleteSsoConnectionRequest {
                org_id: setup.org.clone(),
                connection_id: conn.clone(),
            },
        ))
        .await
        .unwrap();
    assert_error(
        &unwrap_err(start_by_email(&s, &format!("a@{}", setup.domain)).await),
        Code::FailedPrecondition,
        "SSO_NOT_CONFIGURED",
    );
    s.stop().await;
}

fn service_key(name: &str, scope: &str) -> (String, ServiceKeyConfig) {
    let (secret, hash) = teamgate::api::auth::new_key();
    (
        secret,
        ServiceKeyConfig {
            name: name.into(),
            hash,
            scopes: vec![serde_json::from_value(serde_json::Value::String(scope.into())).unwrap()],
            rate_limit_per_sec: None,
            trust_client_address: false,
        },
    )
}

fn keyed<T>(key: &str, actor: Option<&str>, message: T) -> Request<T> {
    let mut req = match actor {
        Some(a) => as_actor(a, message),
        None => Request::new(message),
    };
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

async fn only_the_operator_verifies_a_domain_without_dns(backend: Backend) {
    let (team_key, team_cfg) = service_key("web", "team");
    let (ops_key, ops_cfg) = service_key("ops", "admin");
    let s = TestServer::spawn_with(backend, |c| {
        sso_config(c);
        c.auth.keys = vec![team_cfg, ops_cfg];
    })
    .await;
    let created = team(&s)
        .create_organization(keyed(
            &team_key,
            None,
            pb::CreateOrganizationRequest {
                name: "Keyed".into(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                    pb::NewUser {
                        email: format!("o-{}@example.com", uuid::Uuid::now_v7().simple()),
                        first_name: "O".into(),
                        last_name: "W".into(),
                    },
                )),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().id;
    let owner = created.owner.unwrap().user_id;
    let domain = unique_domain();
    let client = register_client(REDIRECT).await;
    let conn = team(&s)
        .create_sso_connection(keyed(
            &team_key,
            Some(&owner),
            create_request(&org, &client, &[&domain], true, false),
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let override_req = || pb::VerifySsoDomainRequest {
        org_id: org.clone(),
        connection_id: conn.id.clone(),
        domain: domain.clone(),
        operator_override: true,
    };
    // The org's owner through a team key: not the operator.
    let r = team(&s)
        .verify_sso_domain(keyed(&team_key, Some(&owner), override_req()))
        .await;
    assert_error(&unwrap_err(r), Code::PermissionDenied, "NOT_AN_OPERATOR");
    // The operator's admin key, no actor: verified without any DNS record.
    let verified = team(&s)
        .verify_sso_domain(keyed(&ops_key, None, override_req()))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(verified.domains[0].verified);
    assert_eq!(verified.domains[0].verified_by, "operator");
    let started = identity(&s)
        .start_sso(keyed(
            &team_key,
            None,
            pb::StartSsoRequest {
                target: Some(pb::start_sso_request::Target::Email(format!("z@{domain}"))),
                redirect_uri: REDIRECT.into(),
                connection_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.connection_id, conn.id);
    s.stop().await;
}

async fn start_sso_is_limited_per_caller(backend: Backend) {
    let s = TestServer::spawn_with(backend, |c| {
        sso_config(c);
        c.sso.max_starts_per_caller = 3;
    })
    .await;
    let setup = setup(&s, true, false).await;
    for _ in 0..3 {
        start_by_org(&s, &setup.org).await;
    }
    let r = identity(&s)
        .start_sso(pb::StartSsoRequest {
            target: Some(pb::start_sso_request::Target::OrgId(setup.org.clone())),
            redirect_uri: REDIRECT.into(),
            connection_id: String::new(),
        })
        .await;
    assert_error(&unwrap_err(r), Code::ResourceExhausted, "TOO_MANY_REQUESTS");
    s.clock.advance(chrono::Duration::minutes(11));
    start_by_org(&s, &setup.org).await;
    s.stop().await;
}

async fn jit_provisioning_respects_the_plans_seats(backend: Backend) {
    let s = spawn(backend).await;
    // The free plan has 5 seats: the owner and 4 members fill it.
    let setup = setup_on_plan(&s, "free", true, false).await;
    for _ in 0..4 {
        s.member(&setup.org, &setup.owner, "member").await;
    }
    let sub = set_account(&new_sub(), &format!("late@{}", setup.domain), true).await;
    assert_error(
        &unwrap_err(sso_sign_in(&s, &setup.org, &sub).await),
        Code::FailedPrecondition,
        "PLAN_SEAT_LIMIT",
    );
    assert_eq!(s.members(&setup.org, &setup.owner).await.len(), 5);
    // Rolled back whole: no account was left behind for the address.
    let user = teamgate::store::users::find_by_email(
        s.app().store.conn(),
        &format!("late@{}", setup.domain),
    )
    .await
    .unwrap();
    assert!(user.is_none());
    let events = audit_actions(&s, &setup.org, &setup.owner).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "sso.sign_in_failed" && e.after.contains("PLAN_SEAT_LIMIT"))
    );
    s.stop().await;
}

async fn keys_rotated_at_the_provider_are_fetched_again(backend: Backend) {
    // A provider of its own: rotating the shared one's key would race other tests.
    let dir = repo_path("tests/fixtures/oidc");
    let mut cmd = Command::new("node");
    cmd.arg("provider.mjs").arg("0").current_dir(dir);
    let op = spawn_fixture(cmd, "a second OpenID provider (node)");
    let op_issuer = op.line["issuer"].as_str().unwrap().to_owned();
    let s = spawn(backend).await;
    let (org, owner) = s.org("Rotating", "team").await;
    let domain = unique_domain();
    let client = register_client_at(&op_issuer, REDIRECT).await;
    let mut req = create_request(&org, &client, &[&domain], true, false);
    req.issuer = op_issuer.clone();
    let conn = team(&s)
        .create_sso_connection(as_actor(&owner, req))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    publish_txt(&domain, &conn.domains[0].verification_record);
    verify(&s, &org, &owner, &conn.id, &domain).await.unwrap();
    let sub = set_account_at(&op_issuer, &new_sub(), &format!("rae@{domain}"), true).await;
    let sign_in = || async {
        let started = start_by_org(&s, &org).await;
        let back = log_in_at(&op_issuer, &started.authorization_url, &sub).await;
        complete(&s, &back["state"], &back["code"]).await
    };
    let jwks_kids = || async {
        let raw = http()
            .get(format!("{op_issuer}/jwks"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&raw).unwrap();
        set.keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect::<Vec<_>>()
    };
    let first = sign_in().await.unwrap().user.unwrap();
    let before = jwks_kids().await;
    let rotated = http()
        .post(format!("{op_issuer}/test/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 204);
    let after = jwks_kids().await;
    assert!(
        before.iter().all(|k| !after.contains(k)),
        "{before:?} {after:?}"
    );
    // teamgate still holds the old keys; the new token's kid makes it fetch them again.
    let second = sign_in().await.unwrap().user.unwrap();
    assert_eq!(first.id, second.id);
    drop(op);
    s.stop().await;
}
