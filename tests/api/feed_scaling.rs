//! The change feed under writers to many organizations at once (no global counter orders
//! them any more): a consumer that keeps reconnecting with its last cursor, to either
//! replica, sees every change exactly once and each org's changes in order; cursors handed
//! out before the commit-order migration keep their place; a change made through one replica
//! reaches another replica's stream without waiting for its poll.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sea_orm::TransactionTrait;
use sea_orm_migration::MigratorTrait;
use teamgate::feed::parse_cursor;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use teamgate::store::changes::{self, Position};
use tonic::transport::Channel;

use crate::helpers::{Backend, TestServer, as_actor, isolated_config};
use crate::on_both_backends;

on_both_backends!(
    sixteen_writers_while_a_consumer_keeps_resuming,
    old_cursors_keep_their_place_across_the_migration,
);

const WAIT: Duration = Duration::from_secs(30);

async fn set_role(
    team: &TeamServiceClient<Channel>,
    org: &str,
    owner: &str,
    user: &str,
    role: &str,
) -> String {
    team.clone()
        .update_member_role(as_actor(
            owner,
            pb::UpdateMemberRoleRequest {
                org_id: org.into(),
                user_id: user.into(),
                role: role.into(),
            },
        ))
        .await
        .expect("role changed")
        .into_inner()
        .consistency_token
}

async fn open(
    team: &TeamServiceClient<Channel>,
    actor: &str,
    after: &str,
) -> tonic::Streaming<pb::ChangeEvent> {
    team.clone()
        .watch_changes(as_actor(
            actor,
            pb::WatchChangesRequest {
                org_id: String::new(),
                after: after.into(),
            },
        ))
        .await
        .expect("stream opens")
        .into_inner()
}

/// 16 writers, each toggling a member's role in its own org, while an all-org consumer reads a
/// few events at a time, drops the stream and reconnects after its last cursor — alternating
/// between two replicas. Every role change returns a distinct consistency token (the org's
/// version), so the consumer's events per org must be exactly the writer's tokens, in order.
async fn sixteen_writers_while_a_consumer_keeps_resuming(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let r = s.replica().await;
    let writers = 16;
    let per_writer = 25;
    let mut orgs = Vec::new();
    for i in 0..writers {
        let (org, owner) = s.org(&format!("Org {i}"), "business").await;
        let member = s.member(&org, &owner, "member").await;
        orgs.push((org, owner, member));
    }
    // From now: none of the set-up above (invitations, acceptances) may show up.
    let actor = orgs[0].1.clone();
    let mut stream = open(&s.team, &actor, "").await;

    let tasks: Vec<_> = orgs
        .iter()
        .cloned()
        .enumerate()
        .map(|(t, (org, owner, member))| {
            // Half the writers go through each replica.
            let team = if t % 2 == 0 {
                s.team.clone()
            } else {
                r.team.clone()
            };
            tokio::spawn(async move {
                let mut tokens = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let role = if i % 2 == 0 { "manager" } else { "member" };
                    tokens.push(set_role(&team, &org, &owner, &member, role).await);
                }
                (org, tokens)
            })
        })
        .collect();

    let total = writers * per_writer;
    let mut seen: Vec<pb::ChangeEvent> = Vec::with_capacity(total);
    let mut reconnects = 0;
    let deadline = Instant::now() + WAIT;
    while seen.len() < total {
        // Read a handful (1 to 7) of events, then leave and come back after the last one.
        let take = 1 + (seen.len() * 7 + reconnects) % 7;
        for _ in 0..take {
            if seen.len() == total {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, stream.message())
                .await
                .unwrap_or_else(|_| panic!("timed out after {} of {total} events", seen.len()))
                .expect("stream item")
                .expect("stream still open");
            seen.push(event);
        }
        drop(stream);
        reconnects += 1;
        let team = if reconnects % 2 == 0 {
            &s.team
        } else {
            &r.team
        };
        let last = seen.last().map(|e| e.cursor.clone()).unwrap_or_default();
        stream = open(team, &actor, &last).await;
    }
    let mut written: HashMap<String, Vec<String>> = HashMap::new();
    for t in tasks {
        let (org, tokens) = t.await.unwrap();
        written.insert(org, tokens);
    }

    // Nothing twice, never backwards.
    for w in seen.windows(2) {
        let (a, b) = (
            parse_cursor(&w[0].cursor).unwrap(),
            parse_cursor(&w[1].cursor).unwrap(),
        );
        assert!(
            b > a,
            "duplicate or out of order: {} then {}",
            w[0].cursor,
            w[1].cursor
        );
    }
    assert!(
        seen.iter().all(|e| e.action == "member.role_changed"),
        "set-up changes leaked into a stream from now"
    );
    // Every change, each org's in the order its writer made them.
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for e in &seen {
        got.entry(e.org_id.clone())
            .or_default()
            .push(e.consistency_token.clone());
    }
    assert_eq!(got.len(), writers);
    for (org, tokens) in &written {
        assert_eq!(
            got.get(org),
            Some(tokens),
            "org {org}: the feed differs from what its writer did"
        );
    }
    // And nothing more is waiting.
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(extra.is_err(), "an extra event arrived: {extra:?}");
    eprintln!("{total} changes from {writers} writers over {reconnects} reconnects");
    r.stop().await;
    s.stop().await;
}

/// Cursors from before the commit-order migration (`c1.<seq>`, numbered by the old counter
/// row) resume in the same place afterwards: older rows first, then everything new; a cursor
/// the old counter never handed out is refused, and a pruned one is reported as pruned.
async fn old_cursors_keep_their_place_across_the_migration(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = isolated_config(backend, dir.path());
    let store = teamgate::startup::connect_store(&config).await.unwrap();
    // The schema as the previous version left it, with three changes numbered the old way.
    teamgate::store::migrations::Migrator::up(store.conn(), Some(3))
        .await
        .unwrap();
    let t0 = chrono::Utc::now();
    for n in 1..=3 {
        store
            .execute_unprepared(&format!(
                "UPDATE feed_sequence SET n = n + 1 WHERE id = 1; \
                 INSERT INTO changes (seq, org_id, action, target, actor_user_id, occurred_at, org_version) \
                 VALUES ({n}, 'org-old', 'organization.updated', 'org:old', 'user:old', '{}', {n})",
                t0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
            ))
            .await
            .unwrap();
    }
    store.migrate().await.unwrap();

    let extent = changes::extent(store.conn()).await.unwrap();
    let c1 = |n| parse_cursor(&format!("c1.{n}")).unwrap();
    assert!(extent.knows(c1(3)));
    let page = changes::page(&store, c1(1), None, 100).await.unwrap();
    let seqs: Vec<i64> = page.rows.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [2, 3],
        "the old rows keep their order after an old cursor"
    );

    // A change written now sorts after every old one, and its number is new.
    let tx = store.write().await.unwrap();
    teamgate::store::audit::insert(
        &*tx,
        teamgate::store::audit::AuditRow {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: "org-old".into(),
            actor_user_id: "user:old".into(),
            action: "organization.updated".into(),
            target: "org:old".into(),
            before: None,
            after: None,
            occurred_at: t0,
            request_id: "r".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let page = wait_for_rows(&store, c1(3), 1).await;
    let new = Position::of(&page.rows[0]);
    assert!(new > c1(3) && page.rows[0].seq > 3, "{new:?}");
    // The old counter is frozen: c1 numbers it never handed out are unknown on PostgreSQL,
    // and on SQLite (where c1 cursors stay current) only up to the newest change.
    let extent = changes::extent(store.conn()).await.unwrap();
    assert!(!extent.knows(c1(100)));
    assert!(extent.knows(Position::of(&page.rows[0])));

    // Pruning the old rows turns an old cursor into CURSOR_EXPIRED territory, not a gap.
    let through = changes::prune(&store, t0 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(
        through >= new,
        "everything before the cutoff was pruned: {through:?}"
    );
    let page = changes::page(&store, c1(1), None, 100).await.unwrap();
    assert!(page.pruned_past(c1(1)));
    // The counter row is no writer's business any more: old code bumping it fails loudly.
    let tx = store.conn().begin().await.unwrap();
    let old_bump = sea_orm::ConnectionTrait::execute_unprepared(
        &tx,
        "UPDATE feed_sequence SET n = n + 1 WHERE id = 1",
    )
    .await;
    assert!(old_bump.is_err(), "the old counter column is gone");
    drop(tx);
    store.close().await;
}

/// PostgreSQL rows become readable once every older transaction has ended, which can take a
/// moment when other tests share the cluster.
async fn wait_for_rows(store: &teamgate::store::Store, after: Position, n: usize) -> changes::Page {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = changes::page(store, after, None, 100).await.unwrap();
        if page.rows.len() >= n {
            return page;
        }
        assert!(Instant::now() < deadline, "rows did not become final");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With polling slowed to a minute, a change committed through one replica still reaches a
/// stream on another replica at once: LISTEN/NOTIFY wakes its reader.
mod a_change_wakes_another_replica_without_polling {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(teamgate_test_pg),
        ignore = "PostgreSQL suite: set TEAMGATE_TEST_DATABASE_URL to run it"
    )]
    async fn postgres() {
        crate::helpers::require_postgres();
        let s =
            TestServer::spawn_with(Backend::Postgres, |c| c.feed.poll_interval_ms = 60_000).await;
        let r = s.replica().await;
        let (org, owner) = s.org("Acme", "business").await;
        let member = s.member(&org, &owner, "member").await;
        let mut on_r = open(&r.team, &owner, "").await;
        // The replica's reader is idle until the first stream; let it settle on its position.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut lags = Vec::new();
        for i in 0..20 {
            let role = if i % 2 == 0 { "manager" } else { "member" };
            let token = set_role(&s.team, &org, &owner, &member, role).await;
            let returned = Instant::now();
            let event = tokio::time::timeout(Duration::from_secs(5), on_r.message())
                .await
                .expect("the other replica delivered without waiting for its poll")
                .unwrap()
                .unwrap();
            lags.push(returned.elapsed());
            assert_eq!(event.consistency_token, token);
        }
        lags.sort();
        eprintln!(
            "cross-replica delivery after the write returned: median {:?}, max {:?}",
            lags[10], lags[19]
        );
        assert!(lags[19] < Duration::from_secs(2), "{lags:?}");
        r.stop().await;
        s.stop().await;
    }
}
