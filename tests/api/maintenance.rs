//! The server's maintenance loop: rows that only matter for a while are deleted after it.

use std::time::{Duration, Instant};

use sea_orm::{EntityTrait, PaginatorTrait};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use teamgate::store::entities::auth_failures;
use tonic::Code;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(auth_failures_are_pruned_after_their_window);

const PASSWORD: &str = "correct horse battery staple";
const WINDOW_SECS: i64 = 600;

async fn failure_rows(s: &TestServer) -> u64 {
    auth_failures::Entity::find()
        .count(s.app().store.conn())
        .await
        .unwrap()
}

/// Waits (real time) for the maintenance loop to leave `n` rows.
async fn wait_for_rows(s: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = failure_rows(s).await;
        if rows == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the maintenance loop left {rows} failure rows, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(s: &TestServer, email: &str, password: &str) -> Result<(), tonic::Status> {
    IdentityServiceClient::new(s.channel.clone())
        .authenticate(pb::AuthenticateRequest {
            email: email.into(),
            password: password.into(),
            totp_code: None,
        })
        .await
        .map(|_| ())
}

/// Failed sign-ins (unknown emails included) leave rows; once older than
/// `identity.failure_window_secs` they count toward nothing, and the maintenance loop deletes
/// them. Rows still inside the window stay and still count.
async fn auth_failures_are_pruned_after_their_window(b: Backend) {
    let s = TestServer::spawn_with(b, |c| {
        // Tokens by email only, so acceptance may set a password.
        c.invitations.return_token = Some(false);
        c.identity.argon2_memory_kib = 64;
        c.identity.argon2_iterations = 1;
        c.identity.max_failed_sign_ins = 3;
        c.identity.failure_window_secs = WINDOW_SECS as u64;
        // The loop runs every tenth of the feed's retention, at least every second.
        c.feed.retention_secs = 10;
    })
    .await;
    let (org, owner) = s.org("Acme", "").await;
    let token = s
        .team
        .clone()
        .invite_member(as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "bo@example.com".into(),
                first_name: "Bo".into(),
                role: "member".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let token = s.delivered_token(token, "bo@example.com").await;
    s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token,
            password: Some(PASSWORD.into()),
            ..Default::default()
        })
        .await
        .unwrap();

    // Old failures: one for Bo, three for addresses nobody has.
    for email in ["bo@example.com", "x@example.com", "y@example.com", "z"] {
        let err = unwrap_err(sign_in(&s, email, "wrong password entirely").await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    assert_eq!(failure_rows(&s).await, 4);
    s.clock
        .advance(chrono::Duration::seconds(WINDOW_SECS - 100));
    // A recent failure for Bo.
    let err = unwrap_err(sign_in(&s, "bo@example.com", "still the wrong one").await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert_eq!(failure_rows(&s).await, 5);
    // The first four are now past the window; the loop deletes them without being asked.
    s.clock.advance(chrono::Duration::seconds(101));
    wait_for_rows(&s, 1).await;
    // Nothing inside the window goes: another pass deletes nothing.
    assert_eq!(s.app().prune_auth_failures().await.unwrap(), 0);
    assert_eq!(failure_rows(&s).await, 1);
    // The recent failure still counts: two more reach the limit of 3.
    for _ in 0..2 {
        let err = unwrap_err(sign_in(&s, "bo@example.com", "wrong again").await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = unwrap_err(sign_in(&s, "bo@example.com", PASSWORD).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    // And once they are old too, they go as well.
    s.clock.advance(chrono::Duration::seconds(WINDOW_SECS + 1));
    wait_for_rows(&s, 0).await;
    sign_in(&s, "bo@example.com", PASSWORD).await.unwrap();
    s.stop().await;
}
