//! The fast path with Redis: replicas share decisions and invalidations; Redis failures
//! degrade to the database without a wrong answer.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teamgate::proto::teamgate::v1 as pb;

use crate::helpers::{Backend, TestServer, as_actor, redis_url, use_redis};
use crate::on_both_backends_with_redis;

on_both_backends_with_redis!(
    replicas_share_invalidations,
    redis_outage_never_gives_a_wrong_answer
);

fn fresh_check(org: &str, user: &str, permission: &str, token: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        org_id: org.into(),
        user_id: user.into(),
        permission: permission.into(),
        consistency: Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(token.into())),
        }),
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn replicas_share_invalidations(b: Backend) {
    let url = redis_url();
    let a = TestServer::spawn_with(b, |c| use_redis(c, &url)).await;
    let replica = a.replica().await;
    wait_until(
        "both replicas subscribe",
        Duration::from_secs(10),
        async || {
            a.app().decisions.cache().redis_live() && replica.app().decisions.cache().redis_live()
        },
    )
    .await;
    let (org, owner) = a.org("Shared", "").await;
    let member = a.member(&org, &owner, "member").await;
    let leaver = a.member(&org, &owner, "member").await;
    for s in [&a, &replica] {
        for _ in 0..3 {
            assert!(s.allowed(&org, &member, "projects.view").await);
            assert!(s.allowed(&org, &leaver, "projects.view").await);
        }
    }
    let before = replica.app().decisions.cache().stats();
    assert!(before.local_hits + before.redis_hits > 0, "{before:?}");

    // A removal on one replica; the other denies with the token at once ...
    let token = a
        .team
        .clone()
        .remove_member(as_actor(
            &owner,
            pb::RemoveMemberRequest {
                org_id: org.clone(),
                user_id: leaver.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    let c = replica
        .authz
        .clone()
        .check(fresh_check(&org, &leaver, "projects.view", &token))
        .await
        .unwrap()
        .into_inner();
    assert!(!c.allowed);
    // ... and without it once the invalidation arrives over pub/sub.
    let role_token = a
        .team
        .clone()
        .update_member_role(as_actor(
            &owner,
            pb::UpdateMemberRoleRequest {
                org_id: org.clone(),
                user_id: member.clone(),
                role: "manager".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    wait_until(
        "the replica sees the role change",
        Duration::from_secs(5),
        async || replica.allowed(&org, &member, "projects.delete").await,
    )
    .await;
    assert!(
        replica
            .authz
            .clone()
            .check(fresh_check(&org, &member, "projects.delete", &role_token))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // A third replica starting cold is served from Redis.
    let third = a.replica().await;
    wait_until(
        "the third replica subscribes",
        Duration::from_secs(10),
        async || third.app().decisions.cache().redis_live(),
    )
    .await;
    assert!(third.allowed(&org, &member, "projects.delete").await);
    assert!(!third.allowed(&org, &leaver, "projects.view").await);
    third.stop().await;
    replica.stop().await;
    a.stop().await;
}

/// A Redis of the test's own on a free port, so it can be killed and restarted.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (the Redis suite needs it)");
        OwnRedis { port, child }
    }

    fn start() -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn check_with(
    org: &str,
    user: &str,
    permission: &str,
    requirement: Option<pb::consistency::Requirement>,
) -> pb::CheckRequest {
    pb::CheckRequest {
        org_id: org.into(),
        user_id: user.into(),
        permission: permission.into(),
        consistency: requirement.map(|r| pb::Consistency {
            requirement: Some(r),
        }),
    }
}

fn token_version(token: &str) -> i64 {
    teamgate::domain::consistency::ConsistencyToken::decode(token)
        .unwrap()
        .version
}

// Phases of the load: 0 before Redis is killed, then:
const OUTAGE: usize = 1;
const AFTER: usize = 2;

/// Shared state of the load running across the Redis outage.
#[derive(Default)]
struct Load {
    phase: AtomicUsize,
    stop: AtomicBool,
    /// Correct answers per phase, from the stable checkers and the role flippers.
    checks: [AtomicUsize; 3],
    writes: [AtomicUsize; 3],
    problems: Mutex<Vec<String>>,
}

impl Load {
    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }
}

/// Checks on a replica whose right answers never change (minimize_latency).
async fn stable_checker(
    load: Arc<Load>,
    servers: Arc<[TestServer; 2]>,
    org: String,
    expected: Arc<Vec<(String, &'static str, bool)>>,
    task: usize,
) {
    let mut i = task;
    while !load.stop.load(Ordering::SeqCst) {
        let s = &servers[i % 2];
        let (user, permission, want) = &expected[i % expected.len()];
        i += 1;
        let phase = load.phase.load(Ordering::SeqCst);
        match s
            .authz
            .clone()
            .check(check_with(&org, user, permission, None))
            .await
        {
            Ok(r) if r.get_ref().allowed == *want => {
                load.checks[phase].fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => load.problem(format!(
                "phase {phase}: replica {} said {} to {permission} for {user}, expected {want}",
                i % 2,
                r.get_ref().allowed
            )),
            Err(e) => load.problem(format!("phase {phase}: check failed: {e:?}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Owns one member and flips their role between member and manager on alternating replicas;
/// after each acknowledged write, checks `projects.delete` against that write: with its token
/// on both replicas, fully consistent on both, minimize_latency on the replica that wrote it
/// (documented: at once), and minimize_latency on the other replica within the pub/sub window.
async fn role_flipper(
    load: Arc<Load>,
    servers: Arc<[TestServer; 2]>,
    org: String,
    owner: String,
    user: String,
) {
    use pb::consistency::Requirement;
    let mut k = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let want = k.is_multiple_of(2);
        let role = if want { "manager" } else { "member" };
        let (writer, other) = (&servers[k % 2], &servers[(k + 1) % 2]);
        k += 1;
        let phase = load.phase.load(Ordering::SeqCst);
        let token = match writer
            .team
            .clone()
            .update_member_role(as_actor(
                &owner,
                pb::UpdateMemberRoleRequest {
                    org_id: org.clone(),
                    user_id: user.clone(),
                    role: role.into(),
                },
            ))
            .await
        {
            Ok(r) => r.into_inner().consistency_token,
            Err(e) => {
                load.problem(format!("phase {phase}: role change failed: {e:?}"));
                return;
            }
        };
        load.writes[phase].fetch_add(1, Ordering::SeqCst);
        let asks = [
            (writer, Some(Requirement::AtLeastAsFresh(token.clone()))),
            (other, Some(Requirement::AtLeastAsFresh(token.clone()))),
            (writer, Some(Requirement::FullyConsistent(true))),
            (other, Some(Requirement::FullyConsistent(true))),
            (writer, None),
        ];
        for (n, (s, requirement)) in asks.into_iter().enumerate() {
            let fresh = matches!(requirement, Some(Requirement::AtLeastAsFresh(_)));
            match s
                .authz
                .clone()
                .check(check_with(&org, &user, "projects.delete", requirement))
                .await
            {
                Ok(r) if r.get_ref().allowed != want => load.problem(format!(
                    "phase {phase}: ask #{n} after setting {role}: allowed = {}",
                    r.get_ref().allowed
                )),
                Ok(r)
                    if fresh
                        && token_version(&r.get_ref().consistency_token)
                            < token_version(&token) =>
                {
                    load.problem(format!(
                        "phase {phase}: ask #{n} answered from before the write it was given"
                    ))
                }
                Ok(_) => {
                    load.checks[phase].fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => load.problem(format!("phase {phase}: ask #{n} failed: {e:?}")),
            }
        }
        // The other replica without a token: allowed to lag, but only within the pub/sub
        // window (or until it notices Redis is gone and reads the database).
        let started = Instant::now();
        loop {
            match other
                .authz
                .clone()
                .check(check_with(&org, &user, "projects.delete", None))
                .await
            {
                Ok(r) if r.get_ref().allowed == want => break,
                Ok(_) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => {
                    load.problem(format!(
                        "phase {phase}: the other replica still answers from before setting {role} after 5 s"
                    ));
                    break;
                }
                Err(e) => {
                    load.problem(format!("phase {phase}: check failed: {e:?}"));
                    break;
                }
            }
        }
    }
}

/// Redis killed and restarted (same port) while several tasks check on two replicas and
/// others change roles: no wrong answer, no error, and Redis is used again afterwards.
async fn redis_outage_never_gives_a_wrong_answer(b: Backend) {
    redis_url();
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let a = TestServer::spawn_with(b, |c| use_redis(c, &url)).await;
    let replica = a.replica().await;
    wait_until(
        "both replicas subscribe",
        Duration::from_secs(10),
        async || {
            a.app().decisions.cache().redis_live() && replica.app().decisions.cache().redis_live()
        },
    )
    .await;
    let (org, owner) = a.org("Outage", "business").await;
    let (_, outsider) = a.org("Elsewhere", "").await;
    let leaver = a.member(&org, &owner, "member").await;
    let mut expected = vec![(outsider, "projects.view", false)];
    for _ in 0..2 {
        let m = a.member(&org, &owner, "member").await;
        expected.push((m.clone(), "projects.view", true));
        expected.push((m, "projects.delete", false));
    }
    let manager = a.member(&org, &owner, "manager").await;
    expected.push((manager, "projects.delete", true));
    let mut flippers = Vec::new();
    for _ in 0..4 {
        flippers.push(a.member(&org, &owner, "member").await);
    }
    for s in [&a, &replica] {
        assert!(s.allowed(&org, &leaver, "projects.view").await);
        for (user, permission, want) in &expected {
            assert_eq!(s.allowed(&org, user, permission).await, *want);
        }
    }
    let servers = Arc::new([a, replica]);
    let expected = Arc::new(expected);
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(stable_checker(
            load.clone(),
            servers.clone(),
            org.clone(),
            expected.clone(),
            t,
        )));
    }
    for user in &flippers {
        tasks.push(tokio::spawn(role_flipper(
            load.clone(),
            servers.clone(),
            org.clone(),
            owner.clone(),
            user.clone(),
        )));
    }
    let live = |i: usize| servers[i].app().decisions.cache().redis_live();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    redis.kill();
    load.phase.store(OUTAGE, Ordering::SeqCst);
    wait_until("the replicas notice", Duration::from_secs(10), async || {
        !live(0) && !live(1)
    })
    .await;
    // Changes while Redis is down: the server keeps working and answers correctly everywhere.
    servers[0]
        .team
        .clone()
        .remove_member(as_actor(
            &owner,
            pb::RemoveMemberRequest {
                org_id: org.clone(),
                user_id: leaver.clone(),
            },
        ))
        .await
        .unwrap();
    for s in servers.iter() {
        assert!(!s.allowed(&org, &leaver, "projects.view").await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(servers[1].app().decisions.cache().stats().degraded > 0);

    // Redis back on the same port: used again, and nothing from before the outage is served.
    let _redis = OwnRedis::start_on(redis.port);
    wait_until(
        "the replicas reconnect",
        Duration::from_secs(15),
        async || live(0) && live(1),
    )
    .await;
    load.phase.store(AFTER, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let problems = load.problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "wrong answers or errors: {problems:#?}"
    );
    let checks: Vec<usize> = load
        .checks
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    let writes: Vec<usize> = load
        .writes
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    assert!(
        checks.iter().chain(&writes).all(|&n| n > 0),
        "checks {checks:?} and writes {writes:?} before/during/after the outage"
    );
    eprintln!("redis outage: checks {checks:?}, role changes {writes:?}");

    let [a, replica] = Arc::into_inner(servers).unwrap();
    for s in [&a, &replica] {
        assert!(!s.allowed(&org, &leaver, "projects.view").await);
        for (user, permission, want) in expected.iter() {
            assert_eq!(s.allowed(&org, user, permission).await, *want);
        }
    }
    let before = replica.app().decisions.cache().stats();
    let (user, permission, want) = &expected[1];
    assert_eq!(replica.allowed(&org, user, permission).await, *want);
    let after = replica.app().decisions.cache().stats();
    assert!(
        after.local_hits + after.redis_hits > before.local_hits + before.redis_hits,
        "{after:?}"
    );
    replica.stop().await;
    a.stop().await;
}
