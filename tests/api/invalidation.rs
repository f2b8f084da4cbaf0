//! What a write invalidates: a change to one member drops that member's cached decisions and
//! no one else's; a change to a role definition drops the whole org's. Read from the cache's
//! own counters (a bystander's next Check is a hit, not a database read) and from the answers.

use std::time::{Duration, Instant};

use teamgate::cache::StatsSnapshot;
use teamgate::proto::teamgate::v1 as pb;

use crate::helpers::{Backend, TestServer, as_actor, redis_url, use_redis};
use crate::{on_both_backends, on_both_backends_with_redis};

on_both_backends!(member_writes_keep_bystanders_cached);
on_both_backends_with_redis!(member_writes_keep_bystanders_cached_on_other_replicas);

fn stats(s: &TestServer) -> StatsSnapshot {
    s.app().decisions.cache().stats()
}

/// Cache reads beyond the in-process level (Redis hits and database reads).
fn reloads(s: &StatsSnapshot) -> u64 {
    s.redis_hits + s.misses + s.degraded
}

async fn set_role(s: &TestServer, owner: &str, org: &str, user: &str, role: &str) -> String {
    s.team
        .clone()
        .update_member_role(as_actor(
            owner,
            pb::UpdateMemberRoleRequest {
                org_id: org.into(),
                user_id: user.into(),
                role: role.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token
}

async fn remove(s: &TestServer, owner: &str, org: &str, user: &str) {
    s.team
        .clone()
        .remove_member(as_actor(
            owner,
            pb::RemoveMemberRequest {
                org_id: org.into(),
                user_id: user.into(),
            },
        ))
        .await
        .unwrap();
}

async fn member_writes_keep_bystanders_cached(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Bystanders", "").await;
    let changed = s.member(&org, &owner, "member").await;
    let removed = s.member(&org, &owner, "member").await;
    let bystander = s.member(&org, &owner, "member").await;
    s.team
        .clone()
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "reviewer".into(),
                display_name: String::new(),
                permissions: vec!["projects.view".into()],
            },
        ))
        .await
        .unwrap();
    set_role(&s, &owner, &org, &bystander, "reviewer").await;
    for user in [&changed, &removed, &bystander] {
        assert!(s.allowed(&org, user, "projects.view").await);
    }
    assert!(!s.allowed(&org, &changed, "projects.delete").await);

    // One member's role changes: their next answer is new at once, the bystander's is a hit.
    set_role(&s, &owner, &org, &changed, "manager").await;
    let before = stats(&s);
    assert!(s.allowed(&org, &bystander, "projects.view").await);
    let after = stats(&s);
    assert_eq!(reloads(&after), reloads(&before), "{before:?} → {after:?}");
    assert_eq!(after.local_hits, before.local_hits + 1);
    assert!(s.allowed(&org, &changed, "projects.delete").await);
    assert_eq!(
        reloads(&stats(&s)),
        reloads(&after) + 1,
        "the changed member is read again"
    );

    // A removal: denied at once, the bystander still a hit.
    remove(&s, &owner, &org, &removed).await;
    let c = s.check(&org, &removed, "projects.view").await;
    assert_eq!(c.reason(), pb::Reason::NotMember);
    let before = stats(&s);
    assert!(s.allowed(&org, &bystander, "projects.view").await);
    assert_eq!(reloads(&stats(&s)), reloads(&before));

    // A role definition changes: every member of the org is read again, and the bystander
    // (who holds it) loses the permission at once.
    s.team
        .clone()
        .update_role(as_actor(
            &owner,
            pb::UpdateRoleRequest {
                org_id: org.clone(),
                key: "reviewer".into(),
                display_name: None,
                permissions: vec!["members.view".into()],
            },
        ))
        .await
        .unwrap();
    let before = stats(&s);
    assert!(!s.allowed(&org, &bystander, "projects.view").await);
    assert!(s.allowed(&org, &changed, "projects.delete").await);
    assert_eq!(reloads(&stats(&s)), reloads(&before) + 2);
    s.stop().await;
}

async fn wait_until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The same across replicas: replica B hears about a member changed on replica A and drops
/// that member alone; its answer for a bystander stays in process, and nothing stale is served.
async fn member_writes_keep_bystanders_cached_on_other_replicas(b: Backend) {
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
    let (org, owner) = a.org("Bystanders across replicas", "").await;
    let changed = a.member(&org, &owner, "member").await;
    let bystander = a.member(&org, &owner, "member").await;
    for user in [&changed, &bystander] {
        assert!(replica.allowed(&org, user, "projects.view").await);
        assert!(replica.allowed(&org, user, "projects.view").await);
    }
    assert!(!replica.allowed(&org, &changed, "projects.delete").await);

    let token = set_role(&a, &owner, &org, &changed, "manager").await;
    // With the write's token the other replica answers from after the write at once ...
    let fresh = replica
        .authz
        .clone()
        .check(pb::CheckRequest {
            org_id: org.clone(),
            user_id: changed.clone(),
            permission: "projects.delete".into(),
            consistency: Some(pb::Consistency {
                requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(token)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.allowed);
    // ... and without it once the member's invalidation arrives.
    wait_until(
        "the replica sees the role change",
        Duration::from_secs(5),
        async || replica.allowed(&org, &changed, "projects.delete").await,
    )
    .await;
    let before = stats(&replica);
    assert!(replica.allowed(&org, &bystander, "projects.view").await);
    let after = stats(&replica);
    assert_eq!(reloads(&after), reloads(&before), "{before:?} → {after:?}");

    // A removal on A: B stops allowing the removed member, the bystander stays cached.
    remove(&a, &owner, &org, &changed).await;
    wait_until(
        "the replica sees the removal",
        Duration::from_secs(5),
        async || !replica.allowed(&org, &changed, "projects.view").await,
    )
    .await;
    let before = stats(&replica);
    assert!(replica.allowed(&org, &bystander, "projects.view").await);
    assert_eq!(reloads(&stats(&replica)), reloads(&before));
    // A cold third replica reads the removed member's entry through Redis: never the old one.
    let third = a.replica().await;
    wait_until(
        "the third replica subscribes",
        Duration::from_secs(10),
        async || third.app().decisions.cache().redis_live(),
    )
    .await;
    assert!(!third.allowed(&org, &changed, "projects.view").await);
    assert!(third.allowed(&org, &bystander, "projects.view").await);
    third.stop().await;
    replica.stop().await;
    a.stop().await;
}
