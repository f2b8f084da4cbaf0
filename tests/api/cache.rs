//! The fast path with Redis: replicas share decisions and invalidations; Redis failures
//! degrade to the database without a wrong answer.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use teamgate::proto::teamgate::v1 as pb;

use crate::helpers::{Backend, TestServer, as_actor, redis_url, use_redis};
use crate::on_both_backends;

on_both_backends!(
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
    let Some(url) = redis_url() else { return };
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

async fn redis_outage_never_gives_a_wrong_answer(b: Backend) {
    if redis_url().is_none() {
        return;
    }
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
    let (org, owner) = a.org("Outage", "").await;
    let member = a.member(&org, &owner, "member").await;
    let leaver = a.member(&org, &owner, "member").await;
    for s in [&a, &replica] {
        assert!(s.allowed(&org, &leaver, "projects.view").await);
        assert!(s.allowed(&org, &member, "projects.view").await);
    }

    redis.kill();
    wait_until("the replicas notice", Duration::from_secs(10), async || {
        !a.app().decisions.cache().redis_live() && !replica.app().decisions.cache().redis_live()
    })
    .await;
    // Changes while Redis is down: the server keeps working and answers correctly everywhere.
    a.team
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
    for s in [&a, &replica] {
        assert!(!s.allowed(&org, &leaver, "projects.view").await);
        assert!(s.allowed(&org, &member, "projects.view").await);
    }
    assert!(replica.app().decisions.cache().stats().degraded > 0);

    // Redis back on the same port: used again, and nothing from before the outage is served.
    let _redis = OwnRedis::start_on(redis.port);
    wait_until(
        "the replicas reconnect",
        Duration::from_secs(15),
        async || {
            a.app().decisions.cache().redis_live() && replica.app().decisions.cache().redis_live()
        },
    )
    .await;
    for s in [&a, &replica] {
        assert!(!s.allowed(&org, &leaver, "projects.view").await);
        assert!(s.allowed(&org, &member, "projects.view").await);
    }
    let before = replica.app().decisions.cache().stats();
    assert!(replica.allowed(&org, &member, "projects.view").await);
    let after = replica.app().decisions.cache().stats();
    assert!(
        after.local_hits + after.redis_hits > before.local_hits + before.redis_hits,
        "{after:?}"
    );
    replica.stop().await;
    a.stop().await;
}
