//! The change feed: WatchChanges resumes without gaps or duplicates across disconnects,
//! replicas and restarts; old cursors are OUT_OF_RANGE; slow consumers are bounded; webhooks
//! are signed and retried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use teamgate::config::{FeedWebhookConfig, Secret};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::Streaming;
use tonic::transport::Channel;

use teamgate::store::changes::Position;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, readme_verifies, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    resume_after_disconnect_has_no_gap_or_duplicate,
    two_replicas_serve_one_feed,
    restart_in_between_loses_nothing,
    concurrent_mutations_get_increasing_cursors,
    pruned_cursor_is_out_of_range,
    watching_needs_permission,
    webhook_is_signed_and_retried,
    slow_consumer_is_bounded,
    streams_are_capped_per_caller_and_per_server,
    many_streams_share_one_reader,
    old_cursor_catches_up_while_writes_arrive,
    removed_actor_stream_ends,
    actor_losing_members_view_stream_ends,
    disabled_actor_stream_ends,
    deleted_org_stream_ends_after_the_deletion,
);

const WAIT: Duration = Duration::from_secs(15);

/// A cursor's place in the feed (cursors are opaque to clients; tests may look inside).
fn pos(cursor: &str) -> Position {
    teamgate::feed::parse_cursor(cursor).unwrap_or_else(|| panic!("not a cursor: {cursor}"))
}

async fn watch(
    team: &TeamServiceClient<Channel>,
    actor: &str,
    org: &str,
    after: &str,
) -> Streaming<pb::ChangeEvent> {
    team.clone()
        .watch_changes(as_actor(
            actor,
            pb::WatchChangesRequest {
                org_id: org.into(),
                after: after.into(),
            },
        ))
        .await
        .expect("stream opens")
        .into_inner()
}

async fn next_n(stream: &mut Streaming<pb::ChangeEvent>, n: usize) -> Vec<pb::ChangeEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} events", out.len()))
            .expect("stream item")
            .expect("stream still open");
        out.push(item);
    }
    out
}

async fn rename(team: &TeamServiceClient<Channel>, org: &str, actor: &str, name: &str) -> String {
    team.clone()
        .update_organization(as_actor(
            actor,
            pb::UpdateOrganizationRequest {
                org_id: org.into(),
                name: Some(name.into()),
                ..Default::default()
            },
        ))
        .await
        .expect("renamed")
        .into_inner()
        .consistency_token
}

/// The org's audit events, oldest first.
async fn audit(s: &TestServer, org: &str, actor: &str) -> Vec<pb::AuditEvent> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .team
            .clone()
            .list_audit_events(as_actor(
                actor,
                pb::ListAuditEventsRequest {
                    org_id: org.into(),
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    out.reverse();
    out
}

/// Cursors strictly increase (no duplicate, no going back). That nothing is missing is shown
/// against the audit log, which has every committed change: cursors are not consecutive
/// numbers on PostgreSQL.
#[track_caller]
fn assert_increasing(events: &[pb::ChangeEvent]) {
    for w in events.windows(2) {
        assert!(
            pos(&w[1].cursor) > pos(&w[0].cursor),
            "duplicate or out of order: {} then {}",
            w[0].cursor,
            w[1].cursor
        );
    }
}

#[track_caller]
fn assert_matches_audit(events: &[pb::ChangeEvent], audit: &[pb::AuditEvent]) {
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(got, want);
}

async fn resume_after_disconnect_has_no_gap_or_duplicate(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    let mut stream = watch(&s.team, &owner, &org, "").await;
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(rename(&s.team, &org, &owner, &format!("Acme {i}")).await);
    }
    let first = next_n(&mut stream, 4).await;
    drop(stream);
    for i in 6..10 {
        tokens.push(rename(&s.team, &org, &owner, &format!("Acme {i}")).await);
    }
    let mut stream = watch(&s.team, &owner, &org, &first[3].cursor).await;
    let rest = next_n(&mut stream, 6).await;
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_increasing(&all);
    let all_tokens: Vec<&str> = all.iter().map(|e| e.consistency_token.as_str()).collect();
    assert_eq!(
        all_tokens, tokens,
        "events carry the mutations' consistency tokens"
    );
    assert!(all.iter().all(|e| e.org_id == org
        && e.actor_user_id == owner
        && e.action == "organization.updated"
        && e.occurred_at.is_some()));
    let audit = audit(&s, &org, &owner).await;
    // The audit log also has the org's creation, which happened before the stream opened.
    assert_matches_audit(&all, &audit[1..]);

    // Nothing more is pending: a mutation now is the very next event.
    let last = rename(&s.team, &org, &owner, "Acme last").await;
    let next = next_n(&mut stream, 1).await;
    assert_eq!(next[0].consistency_token, last);
    assert!(pos(&next[0].cursor) > pos(&all[9].cursor));

    // Resuming from a consistency token starts with the change that produced its version.
    let member = s.member(&org, &owner, "member").await;
    let role_token = s
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
    rename(&s.team, &org, &owner, "Acme after role").await;
    let mut from_token = watch(&s.team, &owner, &org, &role_token).await;
    let after_token = next_n(&mut from_token, 2).await;
    assert_eq!(after_token[0].action, "member.role_changed");
    assert_eq!(after_token[0].consistency_token, role_token);
    assert_eq!(after_token[1].action, "organization.updated");
    let mut from_last = watch(&s.team, &owner, &org, &next[0].cursor).await;
    let between = next_n(&mut from_last, 3).await;
    let actions: Vec<&str> = between.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "member.invited",
            "invitation.accepted",
            "member.role_changed"
        ]
    );
    assert_eq!(between[2], after_token[0]);
    s.stop().await;
}

async fn two_replicas_serve_one_feed(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let r = s.replica().await;
    let (org, owner) = s.org("Acme", "free").await;
    let mut on_s = watch(&s.team, &owner, &org, "").await;
    let mut on_r = watch(&r.team, &owner, &org, "").await;
    let member = s.member(&org, &owner, "member").await;
    for i in 0..4 {
        let team = if i % 2 == 0 { &s.team } else { &r.team };
        rename(team, &org, &owner, &format!("Acme {i}")).await;
    }
    r.team
        .clone()
        .remove_member(as_actor(
            &owner,
            pb::RemoveMemberRequest {
                org_id: org.clone(),
                user_id: member.clone(),
            },
        ))
        .await
        .unwrap();
    // invited + accepted + 4 renames + removed
    let a = next_n(&mut on_s, 7).await;
    let b = next_n(&mut on_r, 7).await;
    assert_eq!(a, b, "both replicas serve the same feed");
    assert_increasing(&a);
    assert_eq!(a[6].action, "member.removed");
    assert_eq!(a[6].target, format!("user:{member}"));
    let audit = audit(&s, &org, &owner).await;
    assert_matches_audit(&a, &audit[1..]);

    // A consumer can move between replicas with its cursor.
    let mut moved = watch(&r.team, &owner, &org, &a[2].cursor).await;
    assert_eq!(next_n(&mut moved, 4).await, a[3..].to_vec());
    r.stop().await;
    s.stop().await;
}

async fn restart_in_between_loses_nothing(backend: Backend) {
    let mut s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    let mut stream = watch(&s.team, &owner, &org, "").await;
    for i in 0..3 {
        rename(&s.team, &org, &owner, &format!("Acme {i}")).await;
    }
    let seen = next_n(&mut stream, 2).await;
    rename(&s.team, &org, &owner, "Acme 3").await;
    // Stop the server: the stream ends, with UNAVAILABLE or a plain end.
    s.running.take().unwrap().shutdown().await.unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(status) => break Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends when the server stops");
    assert!(matches!(
        ended,
        None | Some(Code::Unavailable | Code::Unknown | Code::Cancelled)
    ));

    let r = s.replica().await;
    rename(&r.team, &org, &owner, "Acme 4").await;
    let mut resumed = watch(&r.team, &owner, &org, &seen[1].cursor).await;
    let rest = next_n(&mut resumed, 3).await;
    let all: Vec<_> = seen.into_iter().chain(rest).collect();
    assert_increasing(&all);
    let audit = audit(&r, &org, &owner).await;
    assert_matches_audit(&all, &audit[1..]);
    r.stop().await;
}

async fn concurrent_mutations_get_increasing_cursors(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let mut orgs = Vec::new();
    for i in 0..4 {
        orgs.push(s.org(&format!("Org {i}"), "free").await);
    }
    // No service keys are configured, so the all-org feed is open.
    let mut all = watch(&s.team, &orgs[0].1, "", "").await;
    let mut one = watch(&s.team, &orgs[1].1, &orgs[1].0, "").await;
    let per_task = 8;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let team = s.team.clone();
            let (org, owner) = orgs[t % orgs.len()].clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    rename(&team, &org, &owner, &format!("T{t} {i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let events = next_n(&mut all, 8 * per_task).await;
    assert_increasing(&events);
    for (org, owner) in &orgs {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| &e.org_id == org)
            .cloned()
            .collect();
        let audit = audit(&s, org, owner).await;
        assert_eq!(
            mine.len(),
            audit.len() - 1,
            "every committed change is in the feed"
        );
        assert_matches_audit(&mine, &audit[1..]);
    }
    let filtered = next_n(&mut one, 2 * per_task).await;
    assert!(filtered.iter().all(|e| e.org_id == orgs[1].0));
    let expected: Vec<_> = events
        .iter()
        .filter(|e| e.org_id == orgs[1].0)
        .cloned()
        .collect();
    assert_eq!(filtered, expected);
    s.stop().await;
}

async fn pruned_cursor_is_out_of_range(backend: Backend) {
    let s = TestServer::spawn_with(backend, |c| c.feed.retention_secs = 60).await;
    let (org, owner) = s.org("Acme", "free").await;
    let mut stream = watch(&s.team, &owner, &org, "").await;
    for i in 0..3 {
        rename(&s.team, &org, &owner, &format!("Acme {i}")).await;
    }
    let old = next_n(&mut stream, 3).await;
    s.clock.advance(chrono::Duration::seconds(120));
    rename(&s.team, &org, &owner, "Acme later").await;
    let feed = s.running.as_ref().unwrap().feed.clone();
    let pruned = feed.prune_now().await.unwrap();
    assert_eq!(pruned, pos(&old[2].cursor));

    let status = unwrap_err(
        s.team
            .clone()
            .watch_changes(as_actor(
                &owner,
                pb::WatchChangesRequest {
                    org_id: org.clone(),
                    after: old[0].cursor.clone(),
                },
            ))
            .await,
    );
    assert_error(&status, Code::OutOfRange, "CURSOR_EXPIRED");
    assert!(status.message().contains("retention"), "{status:?}");

    // The newest pruned cursor is still fine: nothing after it is gone.
    let mut ok = watch(&s.team, &owner, &org, &old[2].cursor).await;
    assert_eq!(next_n(&mut ok, 1).await[0].action, "organization.updated");
    // The stream that was open all along keeps going too.
    let later = next_n(&mut stream, 1).await;
    assert_eq!(later[0].action, "organization.updated");
    assert!(pos(&later[0].cursor) > pruned);
    s.stop().await;
}

async fn watching_needs_permission(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    let (_, stranger) = s.org("Other", "free").await;
    let status = unwrap_err(
        s.team
            .clone()
            .watch_changes(as_actor(
                &stranger,
                pb::WatchChangesRequest {
                    org_id: org.clone(),
                    after: String::new(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = unwrap_err(
        s.team
            .clone()
            .watch_changes(as_actor(
                &owner,
                pb::WatchChangesRequest {
                    org_id: org.clone(),
                    after: "not-a-cursor".into(),
                },
            ))
            .await,
    );
    assert_error(&status, Code::InvalidArgument, "INVALID_CURSOR");
    let status = unwrap_err(
        s.team
            .clone()
            .watch_changes(as_actor(
                &owner,
                pb::WatchChangesRequest {
                    org_id: org.clone(),
                    after: "c1.999999".into(),
                },
            ))
            .await,
    );
    assert_error(&status, Code::InvalidArgument, "UNKNOWN_CURSOR");
    s.stop().await;

    // With service keys configured, only an admin key may watch every org.
    let (team_key, team_hash) = teamgate::api::auth::new_key();
    let (admin_key, admin_hash) = teamgate::api::auth::new_key();
    let s = TestServer::spawn_with(backend, |c| {
        for (name, hash, scope) in [
            ("svc", team_hash, teamgate::api::auth::Scope::Team),
            ("ops", admin_hash, teamgate::api::auth::Scope::Admin),
        ] {
            c.auth.keys.push(teamgate::config::ServiceKeyConfig {
                name: name.into(),
                hash,
                scopes: vec![scope],
                rate_limit_per_sec: None,
                trust_client_address: false,
            });
        }
    })
    .await;
    let all = |key: &str| {
        let mut req = as_actor(&owner, pb::WatchChangesRequest::default());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        req
    };
    let status = unwrap_err(s.team.clone().watch_changes(all(&team_key)).await);
    assert_error(&status, Code::PermissionDenied, "MISSING_SCOPE");
    s.team
        .clone()
        .watch_changes(all(&admin_key))
        .await
        .expect("an admin key watches every org");
    s.stop().await;
}

/// A minimal HTTP/1.1 server: records each request, answers 500 to the first one.
#[derive(Clone, Default)]
struct Hook {
    requests: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
}

impl Hook {
    async fn serve(self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let hook = self.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    let status = {
                        let mut reqs = hook.requests.lock().unwrap();
                        let status = if reqs.is_empty() { 500 } else { 200 };
                        reqs.push(Received {
                            headers,
                            body,
                            status,
                        });
                        status
                    };
                    let reason = if status == 200 {
                        "OK"
                    } else {
                        "Internal Server Error"
                    };
                    let _ = sock
                        .write_all(
                            format!(
                                "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                        .await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        addr
    }
}

async fn webhook_is_signed_and_retried(backend: Backend) {
    let hook = Hook::default();
    let addr = hook.clone().serve().await;
    let secret = "0123456789abcdef-webhook-secret";
    let s = TestServer::spawn_with(backend, |c| {
        c.feed.webhook_max_backoff_ms = 300;
        c.feed.webhooks.push(FeedWebhookConfig {
            name: "search-index".into(),
            url: format!("http://{addr}/teamgate"),
            secret: Secret::new(secret),
        });
    })
    .await;
    let (org, owner) = s.org("Acme", "free").await;
    rename(&s.team, &org, &owner, "Acme 2").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let requests = loop {
        let reqs = hook.requests.lock().unwrap().clone();
        if reqs.iter().filter(|r| r.status == 200).count() >= 2 {
            break reqs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook not delivered: {reqs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let header = |r: &Received, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("missing header {name}"))
    };
    // The first attempt got a 500 and was retried with the same delivery id.
    assert_eq!(requests[0].status, 500);
    assert_eq!(requests[1].status, 200);
    assert_eq!(
        header(&requests[0], "x-teamgate-delivery"),
        header(&requests[1], "x-teamgate-delivery")
    );
    let mut actions = Vec::new();
    for r in requests.iter().filter(|r| r.status == 200) {
        let ts = header(r, "x-teamgate-timestamp");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&r.body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header(r, "x-teamgate-signature"), format!("sha256={want}"));
        // The same recipe as every teamgate webhook (mail included), as the README gives it.
        assert!(readme_verifies(
            secret,
            &ts,
            &header(r, "x-teamgate-signature"),
            &r.body
        ));
        assert!(!readme_verifies(
            secret,
            &ts,
            &header(r, "x-teamgate-signature"),
            &[r.body.as_slice(), b" "].concat()
        ));
        assert_eq!(header(r, "content-type"), "application/json");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["org_id"], org.as_str());
        assert_eq!(body["cursor"], header(r, "x-teamgate-delivery").as_str());
        assert!(
            body["consistency_token"]
                .as_str()
                .unwrap()
                .starts_with("ct1.")
        );
        actions.push(body["action"].as_str().unwrap().to_owned());
    }
    assert_eq!(actions, ["organization.created", "organization.updated"]);
    s.stop().await;
}

async fn slow_consumer_is_bounded(backend: Backend) {
    let buffer = 8;
    let s = TestServer::spawn_with(backend, |c| c.feed.buffer = buffer).await;
    let (org, owner) = s.org("Acme", "free").await;
    // A client with a small HTTP/2 window, so the transport stops pulling early too.
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        s.running.as_ref().unwrap().addr
    ))
    .unwrap()
    .initial_stream_window_size(16 * 1024)
    .initial_connection_window_size(16 * 1024)
    .connect()
    .await
    .unwrap();
    let slow_client = TeamServiceClient::new(channel);
    let mut slow = watch(&slow_client, &owner, &org, "").await;
    let total = 2_000;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let team = s.team.clone();
            let (org, owner) = (org.clone(), owner.clone());
            tokio::spawn(async move {
                for i in 0..total / 8 {
                    rename(&team, &org, &owner, &format!("T{t} {i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let feed = s.running.as_ref().unwrap().feed.clone();
    let stats = feed.stats();
    eprintln!("slow consumer: {stats:?}");
    assert!(stats.buffered <= buffer, "{stats:?}");
    assert!(stats.high_water <= buffer, "{stats:?}");
    assert!(
        stats.produced < total as u64,
        "the server read ahead of a consumer that is not reading: {stats:?}"
    );
    // Once the consumer reads, everything arrives, in order.
    let events = next_n(&mut slow, total).await;
    assert_increasing(&events);
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(feed.stats().buffered, 0);
    s.stop().await;
}

/// Opens a stream, or returns why it was refused.
async fn try_watch(
    team: &TeamServiceClient<Channel>,
    actor: &str,
    org: &str,
) -> Result<Streaming<pb::ChangeEvent>, tonic::Status> {
    team.clone()
        .watch_changes(as_actor(
            actor,
            pb::WatchChangesRequest {
                org_id: org.into(),
                after: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Reads past any events until the stream fails; returns the failure.
async fn ends_with(stream: &mut Streaming<pb::ChangeEvent>) -> tonic::Status {
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream ends")
}

async fn streams_are_capped_per_caller_and_per_server(backend: Backend) {
    let s = TestServer::spawn_with(backend, |c| {
        c.feed.max_streams_per_caller = 2;
        c.feed.max_streams = 3;
    })
    .await;
    let (org, owner) = s.org("Acme", "free").await;
    let member = s.member(&org, &owner, "member").await;
    let first = watch(&s.team, &owner, &org, "").await;
    let _second = watch(&s.team, &owner, &org, "").await;
    let status = try_watch(&s.team, &owner, &org).await.unwrap_err();
    assert_error(&status, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    assert!(status.message().contains("per caller"), "{status:?}");

    // Another caller has slots of its own, until the server is full.
    let _third = watch(&s.team, &member, &org, "").await;
    let status = try_watch(&s.team, &member, &org).await.unwrap_err();
    assert_error(&status, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    assert!(status.message().contains("this server"), "{status:?}");

    // Refused opens took nothing; closing a stream frees its slot (once the server sees the
    // stream reset).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = loop {
        match try_watch(&s.team, &owner, &org).await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "TOO_MANY_STREAMS");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was not freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let feed = s.running.as_ref().unwrap().feed.clone();
    assert_eq!(feed.stats().streams, 3);
    rename(&s.team, &org, &owner, "Acme 2").await;
    assert_eq!(
        next_n(&mut again, 1).await[0].action,
        "organization.updated"
    );
    s.stop().await;
}

/// Reads `n` events from each stream, all at once.
async fn drain_all(
    streams: &mut [Streaming<pb::ChangeEvent>],
    n: usize,
) -> Vec<Vec<pb::ChangeEvent>> {
    futures::future::join_all(streams.iter_mut().map(|st| next_n(st, n))).await
}

async fn many_streams_share_one_reader(backend: Backend) {
    // Polling is slowed right down, so the reads counted are the ones the writes cause.
    let s = TestServer::spawn_with(backend, |c| {
        c.feed.poll_interval_ms = 60_000;
        c.feed.max_streams_per_caller = 500;
    })
    .await;
    let (org, owner) = s.org("Acme", "business").await;
    let feed = s.running.as_ref().unwrap().feed.clone();
    let writes = 10;
    let invite = |i: usize| {
        let team = s.team.clone();
        let (org, owner) = (org.clone(), owner.clone());
        async move {
            team.clone()
                .invite_member(as_actor(
                    &owner,
                    pb::InviteMemberRequest {
                        org_id: org,
                        email: format!("i{i}-{}@example.com", uuid::Uuid::now_v7().simple()),
                        first_name: "Ivy".into(),
                        last_name: "Invitee".into(),
                        role: "member".into(),
                    },
                ))
                .await
                .expect("invited");
        }
    };
    // Reads caused by wake-ups; on PostgreSQL the reader may also look again a few times
    // while a change waits for older transactions (of any test sharing the cluster) to end,
    // which does not depend on the number of streams either.
    let reads =
        |st: teamgate::feed::StatsSnapshot| st.shared_reads + st.catch_up_reads - st.pending_reads;

    // Several connections, like several clients.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            s.running.as_ref().unwrap().addr
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        clients.push(TeamServiceClient::new(channel));
    }
    let mut streams = vec![watch(&s.team, &owner, &org, "").await];
    invite(0).await;
    drain_all(&mut streams, 1).await;
    let before = feed.stats();
    for i in 0..writes {
        invite(1 + i).await;
    }
    let one = drain_all(&mut streams, writes).await;
    let with_one = feed.stats();

    for i in 1..200 {
        streams.push(watch(&clients[i % clients.len()], &owner, &org, "").await);
    }
    // Every stream is live once it has seen a change made after it opened.
    invite(100).await;
    drain_all(&mut streams, 1).await;
    let settled = feed.stats();
    for i in 0..writes {
        invite(101 + i).await;
    }
    let many = drain_all(&mut streams, writes).await;
    let with_many = feed.stats();
    eprintln!("1 stream: {before:?} -> {with_one:?}; 200 streams: {settled:?} -> {with_many:?}");

    assert_eq!(with_many.streams, 200);
    for got in &many {
        assert_eq!(got.len(), writes);
        assert!(got.iter().all(|e| e.action == "member.invited"));
        assert_increasing(got);
        assert_eq!(got, &many[0], "every stream sees the same changes");
    }
    assert_increasing(&one[0]);
    let reads_one = reads(with_one) - reads(before);
    let reads_many = reads(with_many) - reads(settled);
    // At most one shared read per change whatever the number of streams (each of 200 streams
    // reading on its own would be 2,000). Not compared with the one-stream phase: how many
    // wake-ups a burst coalesces into depends on timing, not on the streams.
    assert!(
        reads_one <= writes as u64 + 2 && reads_many <= writes as u64 + 2,
        "200 streams read the table {reads_many} times for {writes} changes (1 stream: {reads_one})"
    );
    assert_eq!(
        with_many.catch_up_reads, settled.catch_up_reads,
        "live streams do not read on their own"
    );
    assert_eq!(
        with_many.reauthorized, settled.reauthorized,
        "invitations cannot revoke the watcher's access, so nobody re-authorizes"
    );
    drop(streams);
    s.stop().await;
}

async fn old_cursor_catches_up_while_writes_arrive(backend: Backend) {
    // A small buffer, so catching up takes many pages and overlaps the writes below.
    let s = TestServer::spawn_with(backend, |c| c.feed.buffer = 16).await;
    let (org, owner) = s.org("Acme", "business").await;
    let mut live = watch(&s.team, &owner, &org, "").await;
    let backlog = 250;
    for i in 0..backlog {
        rename(&s.team, &org, &owner, &format!("Acme {i}")).await;
    }
    let first = next_n(&mut live, 1).await;
    let feed = s.running.as_ref().unwrap().feed.clone();
    let catch_up_before = feed.stats().catch_up_reads;

    // Writers keep going while a stream starts from the first cursor.
    let more = 200;
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let team = s.team.clone();
            let (org, owner) = (org.clone(), owner.clone());
            tokio::spawn(async move {
                for i in 0..more / 4 {
                    rename(&team, &org, &owner, &format!("W{t} {i}")).await;
                }
            })
        })
        .collect();
    let mut resumed = watch(&s.team, &owner, &org, &first[0].cursor).await;
    let total = backlog - 1 + more;
    let caught = next_n(&mut resumed, total).await;
    for w in writers {
        w.await.unwrap();
    }
    let all_live = next_n(&mut live, total).await;
    assert_increasing(&caught);
    assert!(pos(&caught[0].cursor) > pos(&first[0].cursor));
    assert_eq!(
        caught, all_live,
        "the resumed stream sees exactly what a live one saw"
    );
    assert!(
        feed.stats().catch_up_reads > catch_up_before,
        "the old cursor was served from the table first: {:?}",
        feed.stats()
    );
    // And it is live now: the next change arrives as the very next event.
    rename(&s.team, &org, &owner, "Acme last").await;
    let last = next_n(&mut resumed, 1).await;
    assert_eq!(last[0].action, "organization.updated");
    assert!(pos(&last[0].cursor) > pos(&caught[total - 1].cursor));
    assert_eq!(
        next_n(&mut live, 1).await,
        last,
        "and it is the very next event"
    );
    s.stop().await;
}

async fn removed_actor_stream_ends(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    let member = s.member(&org, &owner, "member").await;
    let bystander = s.member(&org, &owner, "member").await;
    let mut theirs = watch(&s.team, &member, &org, "").await;
    let mut owners = watch(&s.team, &owner, &org, "").await;
    rename(&s.team, &org, &owner, "Acme 2").await;
    assert_eq!(
        next_n(&mut theirs, 1).await[0].action,
        "organization.updated"
    );
    // Someone else's removal leaves the stream alone.
    s.team
        .clone()
        .remove_member(as_actor(
            &owner,
            pb::RemoveMemberRequest {
                org_id: org.clone(),
                user_id: bystander.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(next_n(&mut theirs, 1).await[0].action, "member.removed");
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
        .unwrap();
    let status = ends_with(&mut theirs).await;
    assert_error(&status, Code::PermissionDenied, "NOT_A_MEMBER");
    // The owner's stream carries on and saw both removals.
    let seen = next_n(&mut owners, 3).await;
    assert_eq!(seen[2].target, format!("user:{member}"));
    s.stop().await;
}

async fn actor_losing_members_view_stream_ends(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    s.team
        .clone()
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "viewer".into(),
                display_name: "Viewer".into(),
                permissions: vec!["members.view".into(), "reports.view".into()],
            },
        ))
        .await
        .unwrap();
    let viewer = s.member(&org, &owner, "viewer").await;
    let mut stream = watch(&s.team, &viewer, &org, "").await;
    rename(&s.team, &org, &owner, "Acme 2").await;
    assert_eq!(
        next_n(&mut stream, 1).await[0].action,
        "organization.updated"
    );
    // The role itself changes: the viewer is not the target, but loses members.view.
    s.team
        .clone()
        .update_role(as_actor(
            &owner,
            pb::UpdateRoleRequest {
                org_id: org.clone(),
                key: "viewer".into(),
                display_name: None,
                permissions: vec!["reports.view".into()],
            },
        ))
        .await
        .unwrap();
    let status = ends_with(&mut stream).await;
    assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(status.message().contains("members.view"), "{status:?}");
    s.stop().await;
}

/// Needs `App::authorize` to check the account's status (USER_DISABLED).
async fn disabled_actor_stream_ends(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    let member = s.member(&org, &owner, "member").await;
    let mut stream = watch(&s.team, &member, &org, "").await;
    IdentityServiceClient::new(s.channel.clone())
        .set_user_status(as_actor(
            &owner,
            pb::SetUserStatusRequest {
                user_id: member.clone(),
                status: pb::UserStatus::Disabled.into(),
            },
        ))
        .await
        .expect("the owner disables the member");
    let status = ends_with(&mut stream).await;
    assert_error(&status, Code::PermissionDenied, "USER_DISABLED");
    s.stop().await;
}

async fn deleted_org_stream_ends_after_the_deletion(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let (org, owner) = s.org("Acme", "free").await;
    let mut stream = watch(&s.team, &owner, &org, "").await;
    s.team
        .clone()
        .delete_organization(as_actor(
            &owner,
            pb::DeleteOrganizationRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        next_n(&mut stream, 1).await[0].action,
        "organization.deleted"
    );
    let status = ends_with(&mut stream).await;
    assert_error(&status, Code::NotFound, "ORG_NOT_FOUND");
    s.stop().await;
}
