//! The real `teamgate serve` binary, logging at `trace`, is driven through every identity flow
//! that handles a secret (passwords, TOTP secrets and codes, session tokens, invitation and
//! reset tokens, the service key); none of them may appear anywhere in what it printed.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::helpers::{ChildGuard, Received, assert_error, unwrap_err, webhook_receiver};
use crate::identity::totp_code;

const ACCEPT_BASE: &str = "https://app.example.test/accept?token=";
const RESET_BASE: &str = "https://app.example.test/reset?token=";
const WEBHOOK_SECRET: &str = "mail-webhook-secret-for-the-log-test";
const OLD_PASSWORD: &str = "plaid tangerine orbit 4417";
const WRONG_PASSWORD: &str = "quartz lantern meadow 9021";
const NEW_PASSWORD: &str = "velvet compass harbor 3380";
const EMAIL: &str = "lee.logs@example.com";

/// Everything the child wrote to stdout and stderr, collected by reader threads.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn drain(&self, mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The gRPC address from the JSON `teamgate listening` line, once it is there.
    fn listening(&self) -> Option<SocketAddr> {
        self.text().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            if v["fields"]["message"] != "teamgate listening" {
                return None;
            }
            v["fields"]["addr"].as_str()?.parse().ok()
        })
    }
}

/// The token in the next email whose text holds a link starting with `base`.
async fn token_from_mail(mail: &mut mpsc::UnboundedReceiver<Received>, base: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let received = tokio::time::timeout(left, mail.recv())
            .await
            .unwrap_or_else(|_| panic!("no email with a {base} link within 30 s"))
            .expect("the receiver runs");
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&received.body) else {
            continue;
        };
        let text = body["text"].as_str().unwrap_or_default();
        if let Some(at) = text.find(base) {
            let token: String = text[at + base.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.~%".contains(*c))
                .collect();
            assert!(!token.is_empty(), "{text}");
            return token;
        }
    }
}

/// A request carrying the service key and, when given, the actor.
fn call<T>(key: &str, actor: Option<&str>, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(actor) = actor {
        req.metadata_mut()
            .insert("x-actor-user-id", actor.parse().unwrap());
    }
    req
}

/// Whether `needle` (a run of digits) occurs in `haystack` as a number of its own: not part of
/// a longer number, a word or a fraction (so a timestamp or latency cannot match by chance).
fn contains_number(haystack: &str, needle: &str) -> bool {
    let bytes = haystack.as_bytes();
    let edge = |b: u8| b.is_ascii_alphanumeric() || b == b'.';
    haystack.match_indices(needle).any(|(at, _)| {
        let end = at + needle.len();
        (at == 0 || !edge(bytes[at - 1])) && (end == bytes.len() || !edge(bytes[end]))
    })
}

#[test]
fn number_matching_ignores_timestamps_and_fractions() {
    assert!(contains_number("code=\"123456\" ok", "123456"));
    assert!(contains_number("123456", "123456"));
    assert!(!contains_number("2026-11-26T09:08:07.123456Z", "123456"));
    assert!(!contains_number("\"latency_ms\":0.123456,", "123456"));
    assert!(!contains_number("91234567", "123456"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (mail_addr, mut mail) = webhook_receiver(vec![]).await;
    let (service_key, key_hash) = teamgate::api::auth::new_key();
    let secret_key = {
        let mut raw = uuid::Uuid::new_v4().as_bytes().to_vec();
        raw.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let config = dir.path().join("teamgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"

[database]
url = "sqlite://{db}?mode=rwc"

[log]
format = "json"

[server]
drain_timeout_ms = 5000

[invitations]
accept_url_base = "{ACCEPT_BASE}"

[identity]
argon2_memory_kib = 64
argon2_iterations = 1
argon2_parallelism = 1
secret_key = "{secret_key}"
reset_url_base = "{RESET_BASE}"

[mail]
sink = "webhook"
poll_interval_ms = 50

[mail.webhook]
url = "http://{mail_addr}/mail"
secret = "{WEBHOOK_SECRET}"

[scim]
listen = "127.0.0.1:0"

[[auth.keys]]
name = "log-test"
hash = "{key_hash}"
scopes = ["admin"]
"#,
            db = dir.path().join("teamgate.db").display(),
        ),
    )
    .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teamgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // As verbose as it gets: every crate, every level.
        .env("RUST_LOG", "trace")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(Some(cmd.spawn().expect("teamgate starts")));
    let output = Output::default();
    let readers = {
        let c = child.0.as_mut().unwrap();
        [
            output.drain(c.stdout.take().unwrap()),
            output.drain(c.stderr.take().unwrap()),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Some(addr) = output.listening() {
            break addr;
        }
        if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("teamgate exited ({status}):\n{}", output.text());
        }
        assert!(
            Instant::now() < deadline,
            "teamgate did not start:\n{}",
            output.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut team = TeamServiceClient::new(channel.clone());
    let mut identity = IdentityServiceClient::new(channel);
    let key = service_key.as_str();

    // An organization, an invitation (its token arrives by the webhook), an account with a
    // password.
    let created = team
        .create_organization(call(
            key,
            None,
            pb::CreateOrganizationRequest {
                name: "Log Test".into(),
                plan: String::new(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                    pb::NewUser {
                        email: "olga.owner@example.com".into(),
                        first_name: "Olga".into(),
                        last_name: "Owner".into(),
                    },
                )),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().id;
    let owner = created.owner.unwrap().user_id;

    // A SCIM directory token, used once right and once wrong.
    let scim_token = team
        .create_scim_token(call(
            key,
            Some(&owner),
            pb::CreateScimTokenRequest {
                org_id: org.clone(),
                name: "Log directory".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let scim_base = output
        .text()
        .lines()
        .find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "serving SCIM 2.0")
                .then(|| v["fields"]["base_url"].as_str().map(str::to_owned))?
        })
        .expect("the SCIM server logged its base URL");
    let http = reqwest::Client::new();
    for (bearer, status) in [(scim_token.clone(), 200), (format!("{scim_token}x"), 401)] {
        let res = http
            .get(format!("{scim_base}/Users"))
            .header("Authorization", format!("Bearer {bearer}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
    }
    let invited = team
        .invite_member(call(
            key,
            Some(&owner),
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: EMAIL.into(),
                first_name: "Lee".into(),
                last_name: "Logs".into(),
                role: "member".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let invitation_token = token_from_mail(&mut mail, ACCEPT_BASE).await;
    assert!(
        invited.token.is_empty(),
        "a server with service keys hands the invitation token only to the invitee"
    );
    let user = team
        .accept_invitation(call(
            key,
            None,
            pb::AcceptInvitationRequest {
                token: invitation_token.clone(),
                password: Some(OLD_PASSWORD.into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap()
        .user_id;

    let signer = identity.clone();
    let authenticate = move |password: &str, code: Option<String>| {
        let mut identity = signer.clone();
        let req = call(
            key,
            None,
            pb::AuthenticateRequest {
                email: EMAIL.into(),
                password: password.into(),
                totp_code: code,
            },
        );
        async move { identity.authenticate(req).await.map(|r| r.into_inner()) }
    };
    let mut session_tokens = Vec::new();
    session_tokens.push(
        authenticate(OLD_PASSWORD, None)
            .await
            .unwrap()
            .session_token,
    );
    let err = unwrap_err(authenticate(WRONG_PASSWORD, None).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");

    // A password reset with the emailed token.
    identity
        .request_password_reset(call(
            key,
            None,
            pb::RequestPasswordResetRequest {
                email: EMAIL.into(),
            },
        ))
        .await
        .unwrap();
    let reset_token = token_from_mail(&mut mail, RESET_BASE).await;
    identity
        .reset_password(call(
            key,
            None,
            pb::ResetPasswordRequest {
                token: reset_token.clone(),
                new_password: NEW_PASSWORD.into(),
            },
        ))
        .await
        .unwrap();
    let err = unwrap_err(authenticate(OLD_PASSWORD, None).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    session_tokens.push(
        authenticate(NEW_PASSWORD, None)
            .await
            .unwrap()
            .session_token,
    );

    // Two-factor: enrol, confirm with the current step's code, sign in with the next step's
    // (both accepted within the ±1 step window however slow this runs, short of 30 s).
    let enrolment = identity
        .enroll_totp(call(
            key,
            Some(&user),
            pb::EnrollTotpRequest {
                user_id: user.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let now = chrono::Utc::now();
    let confirm_code = totp_code(&enrolment.secret, now);
    let sign_in_code = totp_code(&enrolment.secret, now + chrono::Duration::seconds(30));
    identity
        .confirm_totp(call(
            key,
            Some(&user),
            pb::ConfirmTotpRequest {
                user_id: user.clone(),
                code: confirm_code.clone(),
            },
        ))
        .await
        .unwrap();
    let err = unwrap_err(authenticate(NEW_PASSWORD, None).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    let signed_in = authenticate(NEW_PASSWORD, Some(sign_in_code.clone()))
        .await
        .unwrap();
    assert!(signed_in.user.unwrap().mfa_enabled);
    session_tokens.push(signed_in.session_token);
    // A used code is refused (and so handled once more on the failure path).
    let err = unwrap_err(authenticate(NEW_PASSWORD, Some(sign_in_code.clone())).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");

    // SIGTERM: drain and exit 0; then every byte it wrote has been read.
    let status = child.terminate().await;
    for r in readers {
        r.join().unwrap();
    }
    let logs = output.text();
    if std::env::var("TEST_LOG").is_ok() {
        eprintln!("{logs}");
    }
    assert!(status.success(), "{status:?}\n{logs}");

    // Not vacuous: the logs are verbose and saw the calls.
    assert!(logs.lines().count() > 100, "{logs}");
    for expected in [
        "/teamgate.v1.IdentityService/Authenticate",
        "/teamgate.v1.IdentityService/ResetPassword",
        "/teamgate.v1.IdentityService/ConfirmTotp",
        "sign-in failed",
        "email delivered",
        "\"level\":\"TRACE\"",
        "serving SCIM 2.0",
    ] {
        assert!(logs.contains(expected), "`{expected}` not logged");
    }

    let mut secrets: Vec<(&str, String)> = vec![
        ("the first password", OLD_PASSWORD.into()),
        ("the wrong password", WRONG_PASSWORD.into()),
        ("the new password", NEW_PASSWORD.into()),
        ("the TOTP secret", enrolment.secret.clone()),
        ("the invitation token", invitation_token),
        ("the reset token", reset_token),
        ("the service key", service_key.clone()),
        ("identity.secret_key", secret_key),
        ("mail.webhook.secret", WEBHOOK_SECRET.into()),
        ("the SCIM token", scim_token),
    ];
    for token in &session_tokens {
        secrets.push(("a session token", token.clone()));
        let signature = token.rsplit('.').next().unwrap().to_owned();
        secrets.push(("a session token's signature", signature));
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            panic!("{what} appears in the logs:\n{line}");
        }
    }
    // The TOTP codes, as numbers of their own.
    for code in [&confirm_code, &sign_in_code] {
        if let Some(line) = logs.lines().find(|l| contains_number(l, code)) {
            panic!("a TOTP code ({code}) appears in the logs:\n{line}");
        }
    }
}

/// Single sign-on through the real binary at trace level, against the real test provider and
/// DNS server: the client secret, the state, nonce and code, and the session token never
/// reach the logs, on success or on a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sso_secret_reaches_the_logs() {
    use crate::sso::{
        REDIRECT, dns_addr, issuer, log_in_at_provider, new_sub, publish_txt, register_client,
        set_account, unique_domain,
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("teamgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"

[database]
url = "sqlite://{db}?mode=rwc"

[log]
format = "json"

[server]
drain_timeout_ms = 5000

[sso]
dns_resolver = "{dns}"
"#,
            db = dir.path().join("teamgate.db").display(),
            dns = dns_addr(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teamgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(Some(cmd.spawn().expect("teamgate starts")));
    let output = Output::default();
    let readers = {
        let c = child.0.as_mut().unwrap();
        [
            output.drain(c.stdout.take().unwrap()),
            output.drain(c.stderr.take().unwrap()),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Some(addr) = output.listening() {
            break addr;
        }
        assert!(
            Instant::now() < deadline,
            "teamgate did not start:\n{}",
            output.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut team = TeamServiceClient::new(channel.clone());
    let mut identity = IdentityServiceClient::new(channel);
    let created = team
        .create_organization(pb::CreateOrganizationRequest {
            name: "Log Test".into(),
            plan: "team".into(),
            owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                pb::NewUser {
                    email: "olga.owner@example.com".into(),
                    first_name: "Olga".into(),
                    last_name: "Owner".into(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().id;
    let owner = created.owner.unwrap().user_id;
    let as_owner = |m| {
        let mut r = Request::new(m);
        r.metadata_mut()
            .insert("x-actor-user-id", owner.parse().unwrap());
        r
    };
    let domain = unique_domain();
    let client = register_client(REDIRECT).await;
    let conn = team
        .create_sso_connection(as_owner(pb::CreateSsoConnectionRequest {
            org_id: org.clone(),
            issuer: issuer().into(),
            client_id: client.id.clone(),
            client_secret: client.secret.clone(),
            domains: vec![domain.clone()],
            default_role: "member".into(),
            jit_provisioning: true,
            enforce: false,
            redirect_uris: vec![REDIRECT.into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    publish_txt(&domain, &conn.domains[0].verification_record);
    let verify = pb::VerifySsoDomainRequest {
        org_id: org.clone(),
        connection_id: conn.id.clone(),
        domain: domain.clone(),
        operator_override: false,
    };
    let mut r = Request::new(verify);
    r.metadata_mut()
        .insert("x-actor-user-id", owner.parse().unwrap());
    team.verify_sso_domain(r).await.unwrap();

    let email = format!("sam@{domain}");
    let sub = set_account(&new_sub(), &email, true).await;
    let started = identity
        .start_sso(pb::StartSsoRequest {
            target: Some(pb::start_sso_request::Target::Email(email.clone())),
            redirect_uri: REDIRECT.into(),
            connection_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let back = log_in_at_provider(&started.authorization_url, &sub).await;
    let complete = pb::CompleteSsoRequest {
        state: back["state"].clone(),
        code: back["code"].clone(),
    };
    let session = identity
        .complete_sso(complete.clone())
        .await
        .unwrap()
        .into_inner();
    let err = unwrap_err(identity.complete_sso(complete).await);
    assert_error(&err, Code::FailedPrecondition, "SSO_STATE_USED");
    let nonce = reqwest::Url::parse(&started.authorization_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "nonce")
        .map(|(_, v)| v.into_owned())
        .unwrap();

    let status = child.terminate().await;
    for r in readers {
        r.join().unwrap();
    }
    let logs = output.text();
    if std::env::var("TEST_LOG").is_ok() {
        eprintln!("{logs}");
    }
    assert!(status.success(), "{status:?}\n{logs}");
    for expected in [
        "/teamgate.v1.IdentityService/CompleteSso",
        "single sign-on failed",
        "\"level\":\"TRACE\"",
    ] {
        assert!(logs.contains(expected), "`{expected}` not logged");
    }
    let signature = session.session_token.rsplit('.').next().unwrap().to_owned();
    let secrets: Vec<(&str, String)> = vec![
        ("the client secret", client.secret.clone()),
        ("the state", back["state"].clone()),
        ("the authorization code", back["code"].clone()),
        ("the nonce", nonce),
        ("the session token", session.session_token.clone()),
        ("the session token's signature", signature),
    ];
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            panic!("{what} appears in the logs:\n{line}");
        }
    }
}
