//! Test harness: every test spawns the real server on port 0 with its own database (a fresh
//! SQLite file, or a fresh schema in the PostgreSQL database named by
//! `TEAMGATE_TEST_DATABASE_URL`) and talks to it over real gRPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use teamgate::config::{Config, Secret};
use teamgate::delivery::{EmailMessage, Sink};
use teamgate::domain::clock::ManualClock;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::authz_service_client::AuthzServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use teamgate::startup::{self, Dependencies, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub const PG_ENV: &str = "TEAMGATE_TEST_DATABASE_URL";
pub const REQUIRE_ENV: &str = "TEAMGATE_REQUIRE_BACKENDS";
pub const REDIS_ENV: &str = "TEAMGATE_TEST_REDIS_URL";

/// The Redis to test against. Redis tests are ignored at build time without
/// `TEAMGATE_TEST_REDIS_URL` (see `on_both_backends_with_redis!`), so one that runs must have it.
pub fn redis_url() -> String {
    match std::env::var(REDIS_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{REDIS_ENV} was set when the tests were built but is not set now"),
    }
}

/// Points a config at Redis with a key prefix of its own, so tests never share keys.
pub fn use_redis(config: &mut Config, url: &str) {
    config.redis.url = Some(Secret::new(url));
    config.redis.key_prefix = format!("tg-test-{}", uuid::Uuid::now_v7().simple());
    config.redis.timeout_ms = 50;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body against SQLite and PostgreSQL, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(teamgate_test_pg),
                    ignore = "PostgreSQL suite: set TEAMGATE_TEST_DATABASE_URL to run it"
                )]
                async fn postgres() {
                    $crate::helpers::require_postgres();
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

/// Like `on_both_backends!`, for tests that also need Redis: ignored (with the reason) unless
/// `TEAMGATE_TEST_REDIS_URL` is set.
#[macro_export]
macro_rules! on_both_backends_with_redis {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(teamgate_test_redis),
                    ignore = "Redis suite: set TEAMGATE_TEST_REDIS_URL to run it"
                )]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(all(teamgate_test_pg, teamgate_test_redis)),
                    ignore = "PostgreSQL and Redis suite: set TEAMGATE_TEST_DATABASE_URL and TEAMGATE_TEST_REDIS_URL to run it"
                )]
                async fn postgres() {
                    $crate::helpers::require_postgres();
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

/// `.ci/run` requires every suite: under `TEAMGATE_REQUIRE_BACKENDS=1` a build that would
/// ignore one (a URL missing at build time) fails here instead of passing quietly.
#[test]
fn required_suites_were_built_to_run() {
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        let built: [(bool, &str); 3] = [
            (cfg!(teamgate_test_pg), PG_ENV),
            (cfg!(teamgate_test_redis), REDIS_ENV),
            (cfg!(teamgate_test_smtp), "TEAMGATE_TEST_SMTP"),
        ];
        let missing: Vec<&str> = built
            .iter()
            .filter(|(on, _)| !on)
            .map(|(_, var)| *var)
            .collect();
        assert!(missing.is_empty(), "not set at build time: {missing:?}");
    }
}

/// A PostgreSQL test that runs must have its database: the URL was set when the suite was
/// built (or the test would be ignored), so its absence now is a failure, not a skip.
pub fn require_postgres() {
    assert!(
        std::env::var(PG_ENV).is_ok_and(|v| !v.is_empty()),
        "{PG_ENV} was set when the tests were built but is not set now: set it, or rebuild without it"
    );
}

/// Whether a backend's suite can run; prints a loud notice when it is skipped, and fails
/// when `TEAMGATE_REQUIRE_BACKENDS` says skipping is not allowed (as in CI).
/// Emails captured instead of being sent; can be told to fail the next deliveries.
#[derive(Clone, Default)]
pub struct RecordingSink {
    pub sent: Arc<Mutex<Vec<EmailMessage>>>,
    pub fail_next: Arc<AtomicUsize>,
}

#[async_trait]
impl Sink for RecordingSink {
    async fn send(&self, message: &EmailMessage) -> Result<(), String> {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("simulated delivery failure".into());
        }
        self.sent.lock().unwrap().push(message.clone());
        Ok(())
    }

    fn name(&self) -> &'static str {
        "recording"
    }
}

pub struct TestServer {
    pub backend: Backend,
    pub running: Option<Running>,
    pub team: TeamServiceClient<Channel>,
    pub authz: AuthzServiceClient<Channel>,
    pub channel: Channel,
    pub clock: ManualClock,
    pub sink: RecordingSink,
    pub config: Config,
    /// Shared with replicas: the SQLite file must outlive every server that has it open,
    /// whichever stops first.
    _dir: Arc<tempfile::TempDir>,
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        teamgate::telemetry::init(&teamgate::config::LogFormat::Human, "info,sqlx=warn");
    }
}

/// A config with an isolated database for one test.
pub fn isolated_config(backend: Backend, dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    match backend {
        Backend::Sqlite => {
            let file = dir.join("teamgate.db");
            config.database.url = Secret::new(format!("sqlite://{}?mode=rwc", file.display()));
        }
        Backend::Postgres => {
            config.database.url = Secret::new(std::env::var(PG_ENV).unwrap());
            config.database.schema = format!("t_{}", uuid::Uuid::now_v7().simple());
            config.database.max_connections = 8;
        }
    }
    config.server.drain_timeout_ms = 2_000;
    config
}

impl TestServer {
    pub async fn spawn(backend: Backend) -> TestServer {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestServer {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut config = isolated_config(backend, dir.path());
        configure(&mut config);
        Self::start(backend, config, Arc::new(dir)).await
    }

    async fn start(backend: Backend, config: Config, dir: Arc<tempfile::TempDir>) -> TestServer {
        let clock = ManualClock::starting_now();
        let sink = RecordingSink::default();
        let running = startup::start(
            &config,
            Dependencies {
                clock: Arc::new(clock.clone()),
                sink: Arc::new(sink.clone()),
            },
        )
        .await
        .expect("server starts");
        let channel = Channel::from_shared(format!("http://{}", running.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        TestServer {
            backend,
            team: TeamServiceClient::new(channel.clone()),
            authz: AuthzServiceClient::new(channel.clone()),
            channel,
            running: Some(running),
            clock,
            sink,
            config,
            _dir: dir,
        }
    }

    /// A second server process-equivalent on the same database (another replica).
    pub async fn replica(&self) -> TestServer {
        self.replica_with(|_| {}).await
    }

    /// A second server on the same database, with some settings of its own.
    pub async fn replica_with(&self, configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        configure(&mut config);
        Self::start(self.backend, config, self._dir.clone()).await
    }

    pub fn app(&self) -> &teamgate::app::App {
        &self.running.as_ref().unwrap().app
    }

    /// Creates an org whose owner is a new user; returns (org id, owner user id).
    pub async fn org(&self, name: &str, plan: &str) -> (String, String) {
        let email = format!("owner-{}@example.com", uuid::Uuid::now_v7().simple());
        let resp = self
            .team
            .clone()
            .create_organization(pb::CreateOrganizationRequest {
                name: name.into(),
                plan: plan.into(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                    pb::NewUser {
                        email,
                        first_name: "Olivia".into(),
                        last_name: "Owner".into(),
                    },
                )),
            })
            .await
            .expect("org created")
            .into_inner();
        let org = resp.organization.unwrap().id;
        let owner = resp.owner.unwrap().user_id;
        (org, owner)
    }

    /// Adds a member with `role` by inviting and accepting; returns their user id.
    pub async fn member(&self, org: &str, owner: &str, role: &str) -> String {
        let email = format!("m-{}@example.com", uuid::Uuid::now_v7().simple());
        self.member_with_email(org, owner, role, &email).await
    }

    pub async fn member_with_email(
        &self,
        org: &str,
        actor: &str,
        role: &str,
        email: &str,
    ) -> String {
        let token = self
            .team
            .clone()
            .invite_member(as_actor(
                actor,
                pb::InviteMemberRequest {
                    org_id: org.into(),
                    email: email.into(),
                    first_name: "Mia".into(),
                    last_name: "Member".into(),
                    role: role.into(),
                },
            ))
            .await
            .expect("invited")
            .into_inner()
            .token;
        let token = self.delivered_token(token, email).await;
        self.team
            .clone()
            .accept_invitation(pb::AcceptInvitationRequest {
                token,
                ..Default::default()
            })
            .await
            .expect("accepted")
            .into_inner()
            .member
            .unwrap()
            .user_id
    }

    /// The invitation token as the invitee gets it: the one InviteMember returned, or, on a
    /// server that returns none (`invitations.return_token = false`), the one in the newest
    /// invitation email delivered to `email`.
    pub async fn delivered_token(&self, returned: String, email: &str) -> String {
        if !returned.is_empty() {
            return returned;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tokens: Vec<String> = self
                .sink
                .sent
                .lock()
                .unwrap()
                .iter()
                .rev()
                .filter(|m| m.kind == "invitation_email" && m.to == email)
                .filter_map(|m| {
                    let (_, rest) = m.text.split_once("token=")?;
                    rest.split_whitespace().next().map(str::to_owned)
                })
                .collect();
            // The newest email whose invitation is still pending (older ones were accepted,
            // or killed by a resend).
            for token in tokens {
                let row = teamgate::store::invitations::find_by_token_hash(
                    self.app().store.conn(),
                    &teamgate::domain::token::hash_secret(&token),
                )
                .await
                .expect("invitation read");
                if row.is_some_and(|r| r.state == "pending") {
                    return token;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no invitation email to {email} was delivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The org's members (first page, no filter), listed as `actor`.
    pub async fn members(&self, org: &str, actor: &str) -> Vec<pb::Member> {
        self.team
            .clone()
            .list_members(as_actor(
                actor,
                pb::ListMembersRequest {
                    org_id: org.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .members
    }

    pub async fn check(&self, org: &str, user: &str, permission: &str) -> pb::CheckResponse {
        self.authz
            .clone()
            .check(pb::CheckRequest {
                org_id: org.into(),
                user_id: user.into(),
                permission: permission.into(),
                consistency: None,
            })
            .await
            .expect("check answers")
            .into_inner()
    }

    pub async fn allowed(&self, org: &str, user: &str, permission: &str) -> bool {
        self.check(org, user, permission).await.allowed
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

/// Wraps a message in a request carrying `x-actor-user-id`.
pub fn as_actor<T>(actor: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("x-actor-user-id", actor.parse().unwrap());
    req
}

/// Asserts a status code and `ErrorInfo` reason (domain `teamgate`).
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.domain, "teamgate");
    assert_eq!(info.reason, reason, "unexpected reason: {status:?}");
}

pub fn unwrap_err<T: std::fmt::Debug>(r: Result<T, Status>) -> Status {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s,
    }
}

/// A child process (the real `teamgate` binary); killed if the test fails before it exits.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Sends SIGTERM and waits (30 s at most) for the child to exit; returns how it exited.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.0.as_ref().unwrap().id();
        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.0.as_mut().unwrap().try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "teamgate did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.0 = None;
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The README's webhook verification recipe, line for line: `sha256=` + hex HMAC-SHA256 of
/// `"{timestamp}.{body}"` keyed with the secret. Mail and change-feed webhooks must both pass
/// it, so a receiver written from the README accepts every teamgate webhook.
pub fn readme_verifies(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}") == signature
}

/// One HTTP request as the webhook receiver saw it.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A tiny HTTP/1.1 server: answers each request with the next status from `statuses`
/// (200 once they run out) and reports what it received.
pub async fn webhook_receiver(
    statuses: Vec<u16>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.split("\r\n");
            let path = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or("")
                .to_owned();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head_end..(head_end + len).min(buf.len())].to_vec();
            let status = statuses.next().unwrap_or(200);
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
            let _ = tx.send(Received {
                path,
                headers,
                body,
            });
        }
    });
    (addr, rx)
}
