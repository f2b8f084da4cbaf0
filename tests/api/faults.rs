//! Faults: PostgreSQL stopped and restarted under load, teamgate killed mid-stream. Each test
//! starts its own PostgreSQL (or teamgate process) on a private port so it can kill it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::authz_service_client::AuthzServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, TestServer, as_actor};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster of the test's own, run as the `postgres` user.
struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

fn run_as_postgres(cmd: &std::path::Path, args: &[&str]) -> std::process::Output {
    let as_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false) || unsafe_is_root();
    let mut c = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.args(args).stdin(Stdio::null()).output().expect("runs")
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl OwnPostgres {
    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .collect();
        dirs.sort();
        dirs.pop().filter(|d| d.join("initdb").exists())
    }

    fn start() -> Option<OwnPostgres> {
        // The fault tests are ignored unless the PostgreSQL suite was asked for; one that
        // runs without the server binaries fails.
        let bin =
            Self::bin_dir().expect("PostgreSQL server binaries (initdb, pg_ctl) are installed");
        let dir = std::env::temp_dir().join(format!("tg-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe_is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.join("data");
        let out = run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = OwnPostgres {
            bin,
            dir,
            port: free_port(),
        };
        pg.up();
        Some(pg)
    }

    fn up(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the cluster: `fast` (what an operator or a failover does: sessions are
    /// terminated, open transactions rolled back) or `immediate` (a crash).
    fn down(&self, mode: &str) {
        let data = self.dir.join("data");
        let out = run_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn health(s: &TestServer) -> ServingStatus {
    HealthClient::new(s.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status())
        .unwrap_or(ServingStatus::Unknown)
}

/// Polls `f` every 100 ms until it holds, failing the test after `limit`.
async fn wait_until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every invitation in the org: id → how many times it is listed.
async fn listed_invitations(
    team: &mut TeamServiceClient<Channel>,
    org: &str,
    owner: &str,
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut token = String::new();
    loop {
        let page = team
            .list_invitations(as_actor(
                owner,
                pb::ListInvitationsRequest {
                    org_id: org.into(),
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for i in page.invitations {
            *out.entry(i.id).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn invite_request(owner: &str, org: &str, email: &str) -> tonic::Request<pb::InviteMemberRequest> {
    as_actor(
        owner,
        pb::InviteMemberRequest {
            org_id: org.into(),
            email: email.into(),
            first_name: "F".into(),
            ..Default::default()
        },
    )
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL stopped and restarted under load.

const BEFORE: u8 = 0;
/// `pg_ctl stop` running: sessions are being terminated.
const STOPPING: u8 = 1;
const OUTAGE: u8 = 2;
const AFTER: u8 = 3;

/// The per-call timeout the server under test is configured with (the default). A call
/// reaching it would answer CANCELLED, which the test counts as a failure: under load on a
/// 2-core runner calls straddling the restart have been seen to take 4-5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scheduling slack on top of it before the test calls a call hung.
const SLACK: Duration = Duration::from_secs(5);

/// One InviteMember as a load task saw it.
#[derive(Debug)]
struct Attempt {
    /// Phase when the call was sent and when its answer arrived.
    phases: (u8, u8),
    elapsed: Duration,
    /// The invitation id when acknowledged; the code and message otherwise (`None`: no
    /// answer within REQUEST_TIMEOUT + SLACK).
    outcome: Result<String, Option<(Code, String)>>,
}

struct Load {
    phase: AtomicU8,
    stop: AtomicBool,
    /// Mutations sent and answered entirely while PostgreSQL was down.
    outage_attempts: AtomicUsize,
    /// Mutations sent after PostgreSQL came back that succeeded.
    after_successes: AtomicUsize,
    checks: [AtomicUsize; 4],
}

async fn invite_load(
    load: Arc<Load>,
    mut team: TeamServiceClient<Channel>,
    org: String,
    owner: String,
    task: usize,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        let email = format!("load-{task}-{n}@example.com");
        n += 1;
        let p0 = load.phase.load(Ordering::SeqCst);
        let started = Instant::now();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT + SLACK,
            team.invite_member(invite_request(&owner, &org, &email)),
        )
        .await;
        let elapsed = started.elapsed();
        let p1 = load.phase.load(Ordering::SeqCst);
        let outcome = match answer {
            Ok(Ok(r)) => Ok(r.into_inner().invitation.unwrap().id),
            Ok(Err(e)) => Err(Some((e.code(), e.message().to_owned()))),
            Err(_) => Err(None),
        };
        if p0 == OUTAGE && p1 == OUTAGE {
            load.outage_attempts.fetch_add(1, Ordering::SeqCst);
        }
        if p0 == AFTER && outcome.is_ok() {
            load.after_successes.fetch_add(1, Ordering::SeqCst);
        }
        let failed = outcome.is_err();
        attempts.push(Attempt {
            phases: (p0, p1),
            elapsed,
            outcome,
        });
        // Back off a little after a failure, like a real client, without stopping the load.
        let pause = if failed { 50 } else { 5 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    attempts
}

/// Checks on pairs whose answers never change; returns every wrong answer or error.
async fn check_load(
    load: Arc<Load>,
    mut authz: AuthzServiceClient<Channel>,
    org: String,
    expected: Arc<Vec<(String, &'static str, bool)>>,
    task: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut i = task;
    while !load.stop.load(Ordering::SeqCst) {
        let (user, permission, want) = &expected[i % expected.len()];
        i += 1;
        let phase = load.phase.load(Ordering::SeqCst);
        let started = Instant::now();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT + SLACK,
            authz.check(pb::CheckRequest {
                org_id: org.clone(),
                user_id: user.clone(),
                permission: (*permission).into(),
                consistency: None,
            }),
        )
        .await;
        match answer {
            Ok(Ok(r)) if r.get_ref().allowed == *want => {
                load.checks[usize::from(phase)].fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(r)) => problems.push(format!(
                "phase {phase}: {permission} for {user} answered {} (expected {want})",
                r.get_ref().allowed
            )),
            Ok(Err(e)) => problems.push(format!("phase {phase}: check failed: {e:?}")),
            Err(_) => problems.push(format!(
                "phase {phase}: check hung for {:?}",
                started.elapsed()
            )),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    problems
}

/// PostgreSQL stopped (`mode` = `fast` or `immediate`) and restarted while 8 tasks invite
/// and 8 tasks check cached decisions.
async fn postgres_outage_under_load(mode: &str) {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let url = pg.url();
    let s = TestServer::spawn_with(Backend::Sqlite, |c| {
        c.database.url = teamgate::config::Secret::new(url.clone());
        c.database.schema = String::new();
        c.database.connect_timeout_ms = 1_000;
        c.database.max_connections = 16;
        c.server.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
    })
    .await;
    let (org, owner) = s.org("Faulty", "business").await;
    let (_, outsider) = s.org("Elsewhere", "business").await;
    let mut expected = vec![(outsider.clone(), "projects.view", false)];
    for _ in 0..3 {
        let m = s.member(&org, &owner, "member").await;
        expected.push((m.clone(), "projects.view", true));
        expected.push((m, "projects.delete", false));
    }
    let manager = s.member(&org, &owner, "manager").await;
    expected.push((manager, "projects.delete", true));
    // Warm the cache: these answers must keep coming while the database is away.
    for (user, permission, want) in &expected {
        assert_eq!(s.allowed(&org, user, permission).await, *want);
    }
    let expected = Arc::new(expected);

    let load = Arc::new(Load {
        phase: AtomicU8::new(BEFORE),
        stop: AtomicBool::new(false),
        outage_attempts: AtomicUsize::new(0),
        after_successes: AtomicUsize::new(0),
        checks: Default::default(),
    });
    let inviters: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(invite_load(
                load.clone(),
                s.team.clone(),
                org.clone(),
                owner.clone(),
                t,
            ))
        })
        .collect();
    let checkers: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(check_load(
                load.clone(),
                s.authz.clone(),
                org.clone(),
                expected.clone(),
                t,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    load.phase.store(STOPPING, Ordering::SeqCst);
    // pg_ctl blocks until the cluster is down; keep the load running meanwhile.
    tokio::task::block_in_place(|| pg.down(mode));
    load.phase.store(OUTAGE, Ordering::SeqCst);
    wait_until(
        "health turns NOT_SERVING",
        Duration::from_secs(15),
        async || health(&s).await == ServingStatus::NotServing,
    )
    .await;
    wait_until(
        "mutations are attempted during the outage",
        Duration::from_secs(15),
        async || load.outage_attempts.load(Ordering::SeqCst) >= 8,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(health(&s).await, ServingStatus::NotServing);
    // Once the server is known to refuse connections, calls that need the database fail at
    // once instead of each waiting out the pool's acquire timeout.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let err = s
            .team
            .clone()
            .invite_member(invite_request(
                &owner,
                &org,
                &format!("fast-{}@example.com", uuid::Uuid::now_v7().simple()),
            ))
            .await
            .expect_err("no database, no invitation");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a call during a known outage took {:?}",
            started.elapsed()
        );
    }

    load.phase.store(AFTER, Ordering::SeqCst);
    tokio::task::block_in_place(|| pg.up());
    // Recovers by itself: same server, same pools.
    wait_until(
        "health returns to SERVING",
        Duration::from_secs(20),
        async || health(&s).await == ServingStatus::Serving,
    )
    .await;
    wait_until(
        "mutations succeed again",
        Duration::from_secs(20),
        async || load.after_successes.load(Ordering::SeqCst) >= 8,
    )
    .await;
    load.stop.store(true, Ordering::SeqCst);

    let mut attempts = Vec::new();
    for t in inviters {
        attempts.extend(t.await.unwrap());
    }
    let mut problems = Vec::new();
    for t in checkers {
        problems.extend(t.await.unwrap());
    }
    assert!(problems.is_empty(), "checks went wrong: {problems:#?}");
    let checks: Vec<usize> = load
        .checks
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    assert!(
        [BEFORE, OUTAGE, AFTER]
            .iter()
            .all(|&p| checks[usize::from(p)] > 0),
        "cached checks before/while stopping/during/after the outage: {checks:?}"
    );

    let limit = REQUEST_TIMEOUT + SLACK;
    let mut acknowledged = Vec::new();
    let (mut in_outage, mut before_ok) = (0, 0);
    for a in &attempts {
        assert!(a.elapsed < limit, "a mutation took {:?}: {a:?}", a.elapsed);
        match &a.outcome {
            Ok(id) => acknowledged.push(id.clone()),
            Err(None) => panic!("a mutation never answered: {a:?}"),
            // Never INTERNAL or UNKNOWN, never the server's own timeout (CANCELLED).
            Err(Some((code, _))) => assert_eq!(*code, Code::Unavailable, "{a:?}"),
        }
        match a.phases {
            (OUTAGE, OUTAGE) => {
                in_outage += 1;
                assert!(
                    a.outcome.is_err(),
                    "succeeded with the database down: {a:?}"
                );
            }
            (BEFORE, BEFORE) => {
                before_ok += 1;
                assert!(a.outcome.is_ok(), "failed before the outage: {a:?}");
            }
            _ => {}
        }
    }
    assert!(in_outage > 0 && before_ok > 0, "{in_outage} {before_ok}");

    let listed = listed_invitations(&mut s.team.clone(), &org, &owner).await;
    for id in &acknowledged {
        assert_eq!(
            listed.get(id).copied().unwrap_or(0),
            1,
            "acknowledged invitation {id} lost or duplicated"
        );
    }
    let slowest = attempts.iter().map(|a| a.elapsed).max().unwrap_or_default();
    eprintln!(
        "postgres {mode} stop: {} invitations acknowledged, {in_outage} refused during the outage, slowest call {slowest:?}, checks {checks:?}",
        acknowledged.len()
    );
    s.stop().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(teamgate_test_pg),
    ignore = "PostgreSQL fault test: set TEAMGATE_TEST_DATABASE_URL to run the PostgreSQL suites"
)]
async fn postgres_fast_shutdown_under_load() {
    postgres_outage_under_load("fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(teamgate_test_pg),
    ignore = "PostgreSQL fault test: set TEAMGATE_TEST_DATABASE_URL to run the PostgreSQL suites"
)]
async fn postgres_crash_under_load() {
    postgres_outage_under_load("immediate").await;
}

// ---------------------------------------------------------------------------------------------
// teamgate killed with SIGKILL in the middle of a stream of invitations.

/// A minimal HTTP/1.1 endpoint standing in for the mail webhook: records the recipient of
/// every delivery it accepts (200 to each).
async fn mail_receiver() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + len {
                        continue;
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&buf[head_end + 4..head_end + 4 + len])
                            .unwrap_or_default();
                    if let Some(to) = body["to"].as_str() {
                        sink.lock().unwrap().push(to.to_owned());
                    }
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = conn.shutdown().await;
                    return;
                }
            });
        }
    });
    (addr, received)
}

/// The real binary on `db_url`, with invitation emails going to `mail`; killed with SIGKILL
/// while 6 clients stream invitations, then restarted.
async fn sigkill_mid_stream(db_url: &str) {
    let (mail, delivered) = mail_receiver().await;
    let port = free_port();
    let spawn = || -> Child {
        Command::new(env!("CARGO_BIN_EXE_teamgate"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                db_url,
            ])
            .env("TEAMGATE__LOG__FORMAT", "json")
            .env("TEAMGATE__MAIL__SINK", "webhook")
            .env(
                "TEAMGATE__MAIL__WEBHOOK__URL",
                format!("http://{mail}/mail"),
            )
            .env(
                "TEAMGATE__MAIL__WEBHOOK__SECRET",
                "fault-test-webhook-secret",
            )
            // A message claimed by the killed process is retried after send timeout + 10 s.
            .env("TEAMGATE__MAIL__SEND_TIMEOUT_MS", "1000")
            .env("TEAMGATE__MAIL__POLL_INTERVAL_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let connect = || async {
        let started = Instant::now();
        loop {
            if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
            {
                return ch;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "teamgate did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut child = spawn();
    let mut team = TeamServiceClient::new(connect().await);
    let created = team
        .create_organization(pb::CreateOrganizationRequest {
            name: "Killed".into(),
            plan: "business".into(),
            owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                pb::NewUser {
                    email: "kill-owner@example.com".into(),
                    first_name: "K".into(),
                    last_name: String::new(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().id;
    let owner = created.owner.unwrap().user_id;

    // Six clients, each on its own connection, stream invitations until the server dies.
    let acked = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for client in 0..6 {
        let mut team = TeamServiceClient::new(connect().await);
        let (org, owner, acked) = (org.clone(), owner.clone(), acked.clone());
        streams.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for n in 0.. {
                let email = format!("k{client}-{n}@example.com");
                let answer = tokio::time::timeout(
                    Duration::from_secs(15),
                    team.invite_member(invite_request(&owner, &org, &email)),
                )
                .await
                .expect("an invitation hung instead of failing when the server died");
                match answer {
                    Ok(r) => {
                        mine.push((r.into_inner().invitation.unwrap().id, email));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return mine,
                }
            }
            mine
        }));
    }
    wait_until(
        "invitations are being acknowledged",
        Duration::from_secs(20),
        async || acked.load(Ordering::SeqCst) >= 30,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acknowledged = Vec::new();
    for s in streams {
        acknowledged.extend(s.await.unwrap());
    }
    assert!(acknowledged.len() >= 30);

    let mut child = spawn();
    let mut team = TeamServiceClient::new(connect().await);
    let listed = listed_invitations(&mut team, &org, &owner).await;
    for (id, email) in &acknowledged {
        assert_eq!(
            listed.get(id).copied().unwrap_or(0),
            1,
            "acknowledged invitation {id} ({email}) lost or duplicated"
        );
    }
    // Every acknowledged invitation's email reaches the mail endpoint. The outbox is
    // at-least-once: one sent just before the kill but not yet marked may be sent again.
    let undelivered = || {
        let got = delivered.lock().unwrap();
        acknowledged
            .iter()
            .filter(|(_, email)| !got.contains(email))
            .count()
    };
    let started = Instant::now();
    while undelivered() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{} of {} acknowledged invitations were never emailed",
            undelivered(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let duplicates = {
        let got = delivered.lock().unwrap();
        acknowledged
            .iter()
            .filter(|(_, email)| got.iter().filter(|to| *to == email).count() > 1)
            .count()
    };
    eprintln!(
        "sigkill: {} invitations acknowledged, all delivered ({duplicates} more than once)",
        acknowledged.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill.db");
    sigkill_mid_stream(&format!("sqlite://{}?mode=rwc", db.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(teamgate_test_pg),
    ignore = "PostgreSQL fault test: set TEAMGATE_TEST_DATABASE_URL to run the PostgreSQL suites"
)]
async fn sigkill_mid_stream_postgres() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    sigkill_mid_stream(&pg.url()).await;
    drop(pg);
}
