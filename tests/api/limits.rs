//! Per-caller limits: only failures that happened count, never calls in flight, and the
//! caller is the end client a trusted key names (`x-client-address`), else the key, else the
//! TCP peer.

use chrono::Duration;
use futures::StreamExt;
use teamgate::config::{Config, ServiceKeyConfig};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::identity::{channel_from, totp_code};
use crate::on_both_backends;

on_both_backends!(
    concurrent_valid_accepts_from_one_client_all_succeed,
    bad_tokens_exhaust_only_their_callers_budget,
    trusted_keys_are_limited_per_client_address,
    untrusted_keys_are_limited_as_one_caller_whatever_address_they_send,
    sign_in_and_totp_code_failures_share_the_callers_budget,
    password_reset_requests_are_limited_per_caller,
);

/// Bad invitation tokens a caller may send per ten minutes (`api::team`).
const BAD_TOKENS: usize = 10;

const PASSWORD: &str = "correct horse battery staple";

fn cheap_hashing(c: &mut Config) {
    // Tokens by email only, so acceptance may set a password.
    c.invitations.return_token = Some(false);
    c.identity.argon2_memory_kib = 64;
    c.identity.argon2_iterations = 1;
    c.identity.argon2_parallelism = 1;
}

fn service_key(name: &str, trust_client_address: bool) -> (String, ServiceKeyConfig) {
    let (secret, hash) = teamgate::api::auth::new_key();
    let config = ServiceKeyConfig {
        name: name.into(),
        hash,
        scopes: vec![teamgate::api::auth::Scope::Team],
        rate_limit_per_sec: None,
        trust_client_address,
    };
    (secret, config)
}

/// A request with `key` and, when given, `x-client-address`.
fn keyed<T>(key: &str, client: Option<&str>, message: T) -> Request<T> {
    let mut req = Request::new(message);
    let md = req.metadata_mut();
    md.insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(client) = client {
        md.insert("x-client-address", client.parse().unwrap());
    }
    req
}

fn accept_req(token: &str) -> pb::AcceptInvitationRequest {
    pb::AcceptInvitationRequest {
        token: token.into(),
        ..Default::default()
    }
}

fn guess() -> String {
    format!("guess-{}", uuid::Uuid::now_v7().simple())
}

async fn accept_bad_token(
    client: &mut TeamServiceClient<Channel>,
    req: Request<pb::AcceptInvitationRequest>,
) -> Status {
    unwrap_err(client.accept_invitation(req).await)
}

async fn concurrent_valid_accepts_from_one_client_all_succeed(backend: Backend) {
    const ORGS: usize = 20;
    const PER_ORG: usize = 10;
    // 200 writers queue for the test's small pool: give them time to get a connection on a
    // busy machine, so only the limiter can fail them.
    let s = TestServer::spawn_with(backend, |c| c.database.connect_timeout_ms = 60_000).await;
    let mut orgs = Vec::new();
    for i in 0..ORGS {
        orgs.push(s.org(&format!("Load {i}"), "business").await);
    }
    // Invitations made through the public API, a few at a time.
    let client = &s.team;
    let invites = orgs.iter().flat_map(|(org, owner)| {
        (0..PER_ORG).map(move |i| {
            let mut team = client.clone();
            let req = as_actor(
                owner,
                pb::InviteMemberRequest {
                    org_id: org.clone(),
                    email: format!("load-{i}-{}@example.com", uuid::Uuid::now_v7().simple()),
                    first_name: "Lee".into(),
                    last_name: "Load".into(),
                    role: "member".into(),
                },
            );
            async move { team.invite_member(req).await.unwrap().into_inner().token }
        })
    });
    let tokens: Vec<String> = futures::stream::iter(invites)
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(tokens.len(), ORGS * PER_ORG);

    // All at once, from one client (one connection, one peer address): none is refused,
    // although far more are in flight together than the bad-token budget allows.
    let accepts = tokens.iter().map(|token| {
        let mut team = s.team.clone();
        let req = accept_req(token);
        tokio::spawn(async move { team.accept_invitation(req).await })
    });
    let results = futures::future::join_all(accepts).await;
    let failed: Vec<Status> = results
        .into_iter()
        .filter_map(|r| r.unwrap().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} accepts failed: {failed:?}",
        failed.len()
    );
    for (org, owner) in &orgs {
        assert_eq!(s.members(org, owner).await.len(), PER_ORG + 1);
    }

    // The client's budget is untouched: a bad token is still just a bad token, and a used
    // one is not counted either.
    let mut team = s.team.clone();
    let err = accept_bad_token(&mut team, Request::new(accept_req(&guess()))).await;
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    let err = accept_bad_token(&mut team, Request::new(accept_req(&tokens[0]))).await;
    assert_error(&err, Code::FailedPrecondition, "INVITATION_USED");
    s.stop().await;
}

async fn bad_tokens_exhaust_only_their_callers_budget(backend: Backend) {
    let s = TestServer::spawn(backend).await;
    let mut guesser = s.team.clone();
    for _ in 0..BAD_TOKENS {
        let err = accept_bad_token(&mut guesser, Request::new(accept_req(&guess()))).await;
        assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    }
    let err = accept_bad_token(&mut guesser, Request::new(accept_req(&guess()))).await;
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert!(err.message().contains("retry in 600 s"), "{err:?}");

    // Another peer address is another caller.
    let mut other = TeamServiceClient::new(channel_from(&s, [127, 0, 0, 2].into()).await);
    let err = accept_bad_token(&mut other, Request::new(accept_req(&guess()))).await;
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");

    // Once the window has passed the guesser is heard again.
    s.clock.advance(Duration::seconds(601));
    let err = accept_bad_token(&mut guesser, Request::new(accept_req(&guess()))).await;
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    s.stop().await;
}

async fn trusted_keys_are_limited_per_client_address(backend: Backend) {
    let (edge, edge_cfg) = service_key("edge", true);
    let s = TestServer::spawn_with(backend, |c| c.auth.keys = vec![edge_cfg]).await;
    let mut team = s.team.clone();
    let from = |client: Option<&str>| keyed(&edge, client, accept_req(&guess()));

    // Client A spends its budget...
    for _ in 0..BAD_TOKENS {
        let err = accept_bad_token(&mut team, from(Some("203.0.113.10:40000"))).await;
        assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    }
    let err = accept_bad_token(&mut team, from(Some("203.0.113.10"))).await;
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    // ...while client B, and calls naming no client (held to the key's own budget), go on.
    let err = accept_bad_token(&mut team, from(Some("203.0.113.11"))).await;
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    let err = accept_bad_token(&mut team, from(None)).await;
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");

    // An IPv6 client cannot buy a fresh budget by moving around its /64.
    for i in 0..BAD_TOKENS {
        let client = format!("[2001:db8:7:7::{i:x}]:443");
        let err = accept_bad_token(&mut team, from(Some(&client))).await;
        assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    }
    let err = accept_bad_token(&mut team, from(Some("2001:db8:7:7:ffff::1"))).await;
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");

    // A trusted key's client address must be an address.
    let err = accept_bad_token(&mut team, from(Some("203.0.113.10, 10.0.0.1"))).await;
    assert_error(&err, Code::InvalidArgument, "INVALID_CLIENT_ADDRESS");
    s.stop().await;
}

async fn untrusted_keys_are_limited_as_one_caller_whatever_address_they_send(backend: Backend) {
    let (web, web_cfg) = service_key("web", false);
    let (other, other_cfg) = service_key("other", false);
    let s = TestServer::spawn_with(backend, |c| c.auth.keys = vec![web_cfg, other_cfg]).await;
    let mut team = s.team.clone();

    // Spreading guesses over made-up client addresses buys nothing: the key is the caller.
    for i in 0..BAD_TOKENS {
        let client = format!("198.51.100.{i}");
        let err =
            accept_bad_token(&mut team, keyed(&web, Some(&client), accept_req(&guess()))).await;
        assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    }
    for client in [Some("198.51.100.200"), Some("not an address"), None] {
        let err = accept_bad_token(&mut team, keyed(&web, client, accept_req(&guess()))).await;
        assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    }
    // Another key, on the same connection, has its own budget.
    let err = accept_bad_token(&mut team, keyed(&other, None, accept_req(&guess()))).await;
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    s.stop().await;
}

async fn sign_in_and_totp_code_failures_share_the_callers_budget(backend: Backend) {
    const BUDGET: usize = 6;
    let s = TestServer::spawn_with(backend, |c| {
        cheap_hashing(c);
        c.identity.max_failed_sign_ins_per_caller = BUDGET as u32;
    })
    .await;
    let (org, owner) = s.org("Acme", "business").await;
    let invited = s
        .team
        .clone()
        .invite_member(as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "tess@example.com".into(),
                first_name: "Tess".into(),
                last_name: "Totp".into(),
                role: "member".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let user = s
        .team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token: s.delivered_token(invited.token, "tess@example.com").await,
            password: Some(PASSWORD.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap()
        .user_id;
    let mut identity = IdentityServiceClient::new(s.channel.clone());
    let secret = identity
        .enroll_totp(as_actor(
            &user,
            pb::EnrollTotpRequest {
                user_id: user.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let confirm = |code: &str| {
        as_actor(
            &user,
            pb::ConfirmTotpRequest {
                user_id: user.clone(),
                code: code.into(),
            },
        )
    };
    let sign_in = |email: &str, password: &str| pb::AuthenticateRequest {
        email: email.into(),
        password: password.into(),
        totp_code: None,
    };

    // Wrong codes and wrong passwords (for different accounts, so no account's own limit is
    // reached) are the caller's failures alike; successes are free.
    for i in 0..BUDGET / 2 {
        identity
            .authenticate(sign_in("tess@example.com", PASSWORD))
            .await
            .expect("a right password, within the budget");
        let err = unwrap_err(identity.confirm_totp(confirm("000000")).await);
        assert_error(&err, Code::InvalidArgument, "INVALID_CODE");
        let email = format!("guess-{i}@example.com");
        let err = unwrap_err(identity.authenticate(sign_in(&email, "not it")).await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let code = totp_code(&secret, teamgate::domain::clock::Clock::now(&s.clock));
    let err = unwrap_err(identity.confirm_totp(confirm(&code)).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    let err = unwrap_err(
        identity
            .authenticate(sign_in("tess@example.com", PASSWORD))
            .await,
    );
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");

    // Another caller is not held off.
    let mut other = IdentityServiceClient::new(channel_from(&s, [127, 0, 0, 2].into()).await);
    other.confirm_totp(confirm(&code)).await.unwrap();

    // Nor is this one once the window has passed.
    s.clock.advance(Duration::seconds(601));
    let err = unwrap_err(
        identity
            .authenticate(sign_in("tess@example.com", PASSWORD))
            .await,
    );
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    s.stop().await;
}

async fn password_reset_requests_are_limited_per_caller(backend: Backend) {
    const BUDGET: usize = 3;
    let s = TestServer::spawn_with(backend, |c| {
        c.identity.max_reset_requests_per_caller = BUDGET as u32;
    })
    .await;
    let request = |i: usize| pb::RequestPasswordResetRequest {
        email: format!("someone-{i}@example.com"),
    };
    let mut identity = IdentityServiceClient::new(s.channel.clone());
    // Every request counts, whether or not the account exists.
    for i in 0..BUDGET {
        identity.request_password_reset(request(i)).await.unwrap();
    }
    let err = unwrap_err(identity.request_password_reset(request(BUDGET)).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_REQUESTS");
    assert!(err.message().contains("retry in 600 s"), "{err:?}");

    let mut other = IdentityServiceClient::new(channel_from(&s, [127, 0, 0, 2].into()).await);
    other.request_password_reset(request(0)).await.unwrap();

    s.clock.advance(Duration::seconds(600));
    identity.request_password_reset(request(0)).await.unwrap();
    s.stop().await;
}
