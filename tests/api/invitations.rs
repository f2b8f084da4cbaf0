//! Invitations end to end: invite, seats, expiry, resend, revoke, accept, audit, delivery
//! through the outbox (recording sink, a real SMTP server, a signed webhook) and the
//! bad-token rate limit.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use prost::Message;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::Sha256;
use teamgate::config::{MailSinkKind, Secret, SmtpTls};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::store::entities::{invitations as invitation_rows, outbox as outbox_rows};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::helpers::{
    Backend, TestServer, as_actor, assert_error, readme_verifies, repo_path, unwrap_err,
    webhook_receiver,
};
use crate::on_both_backends;

on_both_backends!(
    invite_defaults_and_role_rules,
    already_member_and_already_invited,
    token_is_random_url_safe_hashed_and_returned_only_once,
    seat_limit_on_the_free_plan,
    parallel_invites_take_exactly_the_free_seats,
    expiry_follows_the_injected_clock,
    resend_renews_and_kills_the_old_token,
    revoke_used_and_unknown_tokens,
    parallel_accepts_make_one_membership,
    accept_links_an_existing_user_and_takes_names,
    list_filters_by_status_and_paginates,
    invitation_mutations_are_audited,
    loyalty_program_starter_plan_is_single_user,
    outbox_delivers_the_invitation_email,
    failed_delivery_is_retried_with_backoff,
    delivery_survives_a_restart,
    webhook_delivery_is_signed_and_retried,
    bad_tokens_are_rate_limited,
);

const ACCEPT_BASE: &str = "https://app.example.com/join?token=";
/// A poll interval long enough that only the test's own delivery passes run.
const NO_POLLING_MS: u64 = 3_600_000;

fn unique_email(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", uuid::Uuid::now_v7().simple())
}

fn invite_req(
    actor: &str,
    org: &str,
    email: &str,
    role: &str,
) -> tonic::Request<pb::InviteMemberRequest> {
    as_actor(
        actor,
        pb::InviteMemberRequest {
            org_id: org.into(),
            email: email.into(),
            first_name: "Ivy".into(),
            last_name: "Invitee".into(),
            role: role.into(),
        },
    )
}

async fn invite(
    s: &TestServer,
    actor: &str,
    org: &str,
    email: &str,
    role: &str,
) -> Result<pb::InviteMemberResponse, Status> {
    s.team
        .clone()
        .invite_member(invite_req(actor, org, email, role))
        .await
        .map(|r| r.into_inner())
}

async fn accept(s: &TestServer, token: &str) -> Result<pb::AcceptInvitationResponse, Status> {
    s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn resend(
    s: &TestServer,
    actor: &str,
    id: &str,
) -> Result<pb::ResendInvitationResponse, Status> {
    s.team
        .clone()
        .resend_invitation(as_actor(
            actor,
            pb::ResendInvitationRequest {
                invitation_id: id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn revoke(
    s: &TestServer,
    actor: &str,
    id: &str,
) -> Result<pb::RevokeInvitationResponse, Status> {
    s.team
        .clone()
        .revoke_invitation(as_actor(
            actor,
            pb::RevokeInvitationRequest {
                invitation_id: id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Every invitation of an org with `status` (all when `None`), following every page.
async fn list_all(
    s: &TestServer,
    actor: &str,
    org: &str,
    status: Option<pb::InvitationStatus>,
    page_size: i32,
) -> Vec<pb::Invitation> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = s
            .team
            .clone()
            .list_invitations(as_actor(
                actor,
                pb::ListInvitationsRequest {
                    org_id: org.into(),
                    status: status.map(Into::into),
                    page_size,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if page_size > 0 {
            assert!(page.invitations.len() <= usize::try_from(page_size).unwrap());
        }
        out.extend(page.invitations);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

fn status_of(inv: &pb::Invitation) -> pb::InvitationStatus {
    pb::InvitationStatus::try_from(inv.status).unwrap()
}

fn invitation(resp: &pb::InviteMemberResponse) -> &pb::Invitation {
    resp.invitation.as_ref().unwrap()
}

/// Runs delivery passes until the recording sink holds `n` messages (or fails after 10 s).
async fn deliver_until(s: &TestServer, n: usize) {
    let worker = s.running.as_ref().unwrap().outbox.clone();
    for _ in 0..200 {
        worker.deliver_due().await.unwrap();
        if s.sink.sent.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {n} delivered emails, have {}",
        s.sink.sent.lock().unwrap().len()
    );
}

async fn outbox(s: &TestServer) -> Vec<outbox_rows::Model> {
    outbox_rows::Entity::find()
        .all(s.app().store.conn())
        .await
        .unwrap()
}

async fn invite_defaults_and_role_rules(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;

    // No role: the policy's invite role. The email is normalized.
    let resp = invite(&s, &owner, &org, "  Ann.Lee@Example.COM ", "")
        .await
        .unwrap();
    let inv = invitation(&resp);
    assert_eq!(inv.role, "member");
    assert_eq!(inv.email, "ann.lee@example.com");
    assert_eq!(inv.org_id, org);
    assert_eq!(inv.first_name, "Ivy");
    assert_eq!(inv.last_name, "Invitee");
    assert_eq!(inv.invited_by_user_id, owner);
    assert_eq!(status_of(inv), pb::InvitationStatus::Pending);
    assert!(inv.accepted_at.is_none());
    let created = inv.created_at.unwrap().seconds;
    let expires = inv.expires_at.unwrap().seconds;
    assert_eq!(
        expires - created,
        7 * 24 * 3600,
        "default lifetime is 7 days"
    );
    assert!(!resp.consistency_token.is_empty());

    // The owner role only by an owner; never a role with permissions the inviter lacks.
    let admin = s.member(&org, &owner, "admin").await;
    let manager = s.member(&org, &owner, "manager").await;
    let member = s.member(&org, &owner, "member").await;
    let err = unwrap_err(invite(&s, &admin, &org, &unique_email("o"), "owner").await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    let err = unwrap_err(invite(&s, &manager, &org, &unique_email("a"), "admin").await);
    assert_error(&err, Code::PermissionDenied, "PRIVILEGE_ESCALATION");
    assert!(err.message().contains("roles.manage"), "{err:?}");
    let ok = invite(&s, &manager, &org, &unique_email("m"), "member")
        .await
        .unwrap();
    assert_eq!(invitation(&ok).role, "member");
    let ok = invite(&s, &admin, &org, &unique_email("a"), "admin")
        .await
        .unwrap();
    assert_eq!(invitation(&ok).role, "admin");
    let ok = invite(&s, &owner, &org, &unique_email("o"), "owner")
        .await
        .unwrap();
    assert_eq!(invitation(&ok).role, "owner");
    let accepted = accept(&s, &ok.token).await.unwrap();
    assert_eq!(accepted.member.unwrap().role, "owner");

    // Permissions and input.
    let err = unwrap_err(invite(&s, &member, &org, &unique_email("x"), "").await);
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("members.manage"), "{err:?}");
    let err = unwrap_err(
        s.team
            .clone()
            .invite_member(pb::InviteMemberRequest {
                org_id: org.clone(),
                email: unique_email("x"),
                first_name: "No".into(),
                last_name: "Actor".into(),
                role: String::new(),
            })
            .await,
    );
    assert_error(&err, Code::Unauthenticated, "MISSING_ACTOR");
    for bad in [
        "not-an-email",
        "a@",
        "two@@example.com",
        "sp ace@example.com",
    ] {
        let err = unwrap_err(invite(&s, &owner, &org, bad, "").await);
        assert_error(&err, Code::InvalidArgument, "INVALID_EMAIL");
    }
    let err = unwrap_err(invite(&s, &owner, &org, "", "").await);
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = unwrap_err(invite(&s, &owner, &org, &unique_email("x"), "wizard").await);
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_ROLE");
    let err = unwrap_err(
        invite(
            &s,
            &owner,
            &uuid::Uuid::now_v7().to_string(),
            &unique_email("x"),
            "",
        )
        .await,
    );
    assert_error(&err, Code::NotFound, "ORG_NOT_FOUND");
}

async fn already_member_and_already_invited(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let email = unique_email("mia");
    s.member_with_email(&org, &owner, "member", &email).await;
    let err = unwrap_err(invite(&s, &owner, &org, &email.to_uppercase(), "").await);
    assert_error(&err, Code::AlreadyExists, "ALREADY_MEMBER");

    let email = unique_email("ivy");
    invite(&s, &owner, &org, &email, "").await.unwrap();
    let err = unwrap_err(invite(&s, &owner, &org, &format!(" {email} "), "manager").await);
    assert_error(&err, Code::AlreadyExists, "ALREADY_INVITED");
    assert!(
        err.message().contains("ResendInvitation"),
        "the message says to resend: {err:?}"
    );
    // The same email may be invited to another org.
    let (other, other_owner) = s.org("Other", "business").await;
    invite(&s, &other_owner, &other, &email, "").await.unwrap();
}

async fn token_is_random_url_safe_hashed_and_returned_only_once(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let mut tokens = HashSet::new();
    let mut last = None;
    for _ in 0..5 {
        let resp = invite(&s, &owner, &org, &unique_email("t"), "")
            .await
            .unwrap();
        let t = resp.token.clone();
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "URL-safe: {t}"
        );
        let raw = URL_SAFE_NO_PAD.decode(&t).expect("base64url");
        assert!(raw.len() * 8 >= 128, "at least 128 random bits");
        assert!(tokens.insert(t));
        last = Some(resp);
    }
    let resp = last.unwrap();
    let inv = invitation(&resp);

    // Only a hash is stored.
    let rows = invitation_rows::Entity::find()
        .filter(invitation_rows::Column::Id.eq(inv.id.as_str()))
        .all(s.app().store.conn())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].token_hash, resp.token);
    assert!(!rows[0].token_hash.contains(&resp.token));
    assert_eq!(
        rows[0].token_hash,
        teamgate::domain::token::hash_secret(&resp.token)
    );

    // Listing, revoking and auditing never hand the token out again.
    let listed = s
        .team
        .clone()
        .list_invitations(as_actor(
            &owner,
            pb::ListInvitationsRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.invitations.len(), 5);
    let events = s
        .team
        .clone()
        .list_audit_events(as_actor(
            &owner,
            pb::ListAuditEventsRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let revoked = revoke(&s, &owner, &inv.id).await.unwrap();
    let bytes = [
        listed.encode_to_vec(),
        events.encode_to_vec(),
        revoked.encode_to_vec(),
    ]
    .concat();
    for t in &tokens {
        assert!(
            !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
            "a token leaked into a later response"
        );
    }
}

async fn seat_limit_on_the_free_plan(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "free").await;
    // Seats = members + pending invitations; the free plan has 5.
    let first = invite(&s, &owner, &org, &unique_email("a"), "")
        .await
        .unwrap();
    accept(&s, &first.token).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(
            invite(&s, &owner, &org, &unique_email("p"), "")
                .await
                .unwrap(),
        );
    }
    let err = unwrap_err(invite(&s, &owner, &org, &unique_email("x"), "").await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");
    assert!(
        err.message()
            .contains("upgrade to the team or business plan to add more members"),
        "the upgrade hint: {err:?}"
    );

    // A revoked invitation frees its seat.
    revoke(&s, &owner, &invitation(&pending[0]).id)
        .await
        .unwrap();
    let again = invite(&s, &owner, &org, &unique_email("r"), "")
        .await
        .unwrap();
    let err = unwrap_err(invite(&s, &owner, &org, &unique_email("x"), "").await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");

    // Accepting keeps the count: the invitation's seat becomes the member's.
    accept(&s, &again.token).await.unwrap();
    let err = unwrap_err(invite(&s, &owner, &org, &unique_email("x"), "").await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");

    // Expired invitations free their seats (members: owner + 2, pending: 2 → expired).
    s.clock.advance(chrono::Duration::days(8));
    invite(&s, &owner, &org, &unique_email("e1"), "")
        .await
        .unwrap();
    let last = invite(&s, &owner, &org, &unique_email("e2"), "")
        .await
        .unwrap();
    let err = unwrap_err(invite(&s, &owner, &org, &unique_email("x"), "").await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");

    // Reviving an expired invitation takes a seat again, so it is refused while full.
    let err = unwrap_err(resend(&s, &owner, &invitation(&pending[1]).id).await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");
    revoke(&s, &owner, &invitation(&last).id).await.unwrap();
    resend(&s, &owner, &invitation(&pending[1]).id)
        .await
        .unwrap();

    // Moving to a plan smaller than the seats taken is refused with the same reason.
    let (big, big_owner) = s.org("Big", "team").await;
    for _ in 0..5 {
        invite(&s, &big_owner, &big, &unique_email("b"), "")
            .await
            .unwrap();
    }
    let err = unwrap_err(
        s.team
            .clone()
            .update_organization(as_actor(
                &big_owner,
                pb::UpdateOrganizationRequest {
                    org_id: big.clone(),
                    plan: Some("free".into()),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");
}

async fn parallel_invites_take_exactly_the_free_seats(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "free").await;
    // Owner + one member = 2 of 5 seats: three are free.
    s.member(&org, &owner, "member").await;
    let calls = (0..20).map(|i| {
        let mut team = s.team.clone();
        let req = invite_req(&owner, &org, &unique_email(&format!("p{i}")), "");
        async move { team.invite_member(req).await }
    });
    let results = futures::future::join_all(calls).await;
    let mut created = 0;
    for r in results {
        match r {
            Ok(_) => created += 1,
            Err(e) => assert_error(&e, Code::FailedPrecondition, "PLAN_SEAT_LIMIT"),
        }
    }
    assert_eq!(created, 3, "exactly the three free seats are taken");
    let pending = list_all(&s, &owner, &org, Some(pb::InvitationStatus::Pending), 50).await;
    assert_eq!(pending.len(), 3);
}

async fn expiry_follows_the_injected_clock(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let email = unique_email("late");
    let resp = invite(&s, &owner, &org, &email, "").await.unwrap();
    let id = invitation(&resp).id.clone();

    s.clock.advance(chrono::Duration::days(6));
    let all = list_all(&s, &owner, &org, None, 50).await;
    assert_eq!(status_of(&all[0]), pb::InvitationStatus::Pending);

    s.clock.advance(chrono::Duration::days(2));
    let all = list_all(&s, &owner, &org, None, 50).await;
    assert_eq!(all.len(), 1);
    assert_eq!(status_of(&all[0]), pb::InvitationStatus::Expired);
    let expired = list_all(&s, &owner, &org, Some(pb::InvitationStatus::Expired), 50).await;
    assert_eq!(expired.len(), 1);
    assert!(
        list_all(&s, &owner, &org, Some(pb::InvitationStatus::Pending), 50)
            .await
            .is_empty()
    );
    let err = unwrap_err(accept(&s, &resp.token).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_EXPIRED");
    let err = unwrap_err(revoke(&s, &owner, &id).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_EXPIRED");

    // An expired invitation does not block a new one for the same email …
    let newer = invite(&s, &owner, &org, &email, "").await.unwrap();
    // … and then cannot be revived next to it.
    let err = unwrap_err(resend(&s, &owner, &id).await);
    assert_error(&err, Code::AlreadyExists, "ALREADY_INVITED");
    revoke(&s, &owner, &invitation(&newer).id).await.unwrap();

    // Resend revives it: a new token and a new expiry; the old token stays dead.
    let renewed = resend(&s, &owner, &id).await.unwrap();
    let inv = renewed.invitation.unwrap();
    assert_eq!(status_of(&inv), pb::InvitationStatus::Pending);
    assert!(inv.expires_at.unwrap().seconds > invitation(&resp).expires_at.unwrap().seconds);
    assert_ne!(renewed.token, resp.token);
    let err = unwrap_err(accept(&s, &resp.token).await);
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    let member = accept(&s, &renewed.token).await.unwrap().member.unwrap();
    assert_eq!(member.email, email);
}

async fn resend_renews_and_kills_the_old_token(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let resp = invite(&s, &owner, &org, &unique_email("r"), "manager")
        .await
        .unwrap();
    let id = invitation(&resp).id.clone();
    s.clock.advance(chrono::Duration::days(1));
    let renewed = resend(&s, &owner, &id).await.unwrap();
    let inv = renewed.invitation.as_ref().unwrap();
    assert_ne!(renewed.token, resp.token);
    assert!(!renewed.consistency_token.is_empty());
    assert_eq!(inv.id, id);
    assert_eq!(inv.role, "manager");
    assert_eq!(status_of(inv), pb::InvitationStatus::Pending);
    assert_eq!(
        inv.expires_at.unwrap().seconds - invitation(&resp).expires_at.unwrap().seconds,
        24 * 3600,
        "a new expiry, counted from the resend"
    );
    let err = unwrap_err(accept(&s, &resp.token).await);
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    let m = accept(&s, &renewed.token).await.unwrap().member.unwrap();
    assert_eq!(m.role, "manager");

    let err = unwrap_err(resend(&s, &owner, &id).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_USED");
    let other = invite(&s, &owner, &org, &unique_email("r"), "")
        .await
        .unwrap();
    revoke(&s, &owner, &invitation(&other).id).await.unwrap();
    let err = unwrap_err(resend(&s, &owner, &invitation(&other).id).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_REVOKED");
    let err = unwrap_err(resend(&s, &owner, &uuid::Uuid::now_v7().to_string()).await);
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    let err = unwrap_err(resend(&s, &owner, "not-a-uuid").await);
    assert_eq!(err.code(), Code::InvalidArgument);

    // Only managers of the invitation's org may resend it.
    let pending = invite(&s, &owner, &org, &unique_email("r"), "")
        .await
        .unwrap();
    let member = s.member(&org, &owner, "member").await;
    let err = unwrap_err(resend(&s, &member, &invitation(&pending).id).await);
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    let (_, stranger) = s.org("Elsewhere", "business").await;
    let err = unwrap_err(resend(&s, &stranger, &invitation(&pending).id).await);
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = unwrap_err(revoke(&s, &stranger, &invitation(&pending).id).await);
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
}

async fn revoke_used_and_unknown_tokens(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let resp = invite(&s, &owner, &org, &unique_email("v"), "")
        .await
        .unwrap();
    let revoked = revoke(&s, &owner, &invitation(&resp).id).await.unwrap();
    assert_eq!(
        status_of(revoked.invitation.as_ref().unwrap()),
        pb::InvitationStatus::Revoked
    );
    let err = unwrap_err(accept(&s, &resp.token).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_REVOKED");
    let err = unwrap_err(revoke(&s, &owner, &invitation(&resp).id).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_REVOKED");

    let resp = invite(&s, &owner, &org, &unique_email("u"), "")
        .await
        .unwrap();
    let accepted = accept(&s, &resp.token).await.unwrap();
    assert!(!accepted.consistency_token.is_empty());
    let org_view = accepted.organization.unwrap();
    assert_eq!(org_view.id, org);
    assert_eq!(org_view.member_count, 2);
    let err = unwrap_err(accept(&s, &resp.token).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_USED");
    let err = unwrap_err(revoke(&s, &owner, &invitation(&resp).id).await);
    assert_error(&err, Code::FailedPrecondition, "INVITATION_USED");
    let listed = list_all(&s, &owner, &org, Some(pb::InvitationStatus::Accepted), 50).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].accepted_at.is_some());

    // An unknown token says nothing about whether it ever existed.
    let err = unwrap_err(accept(&s, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await);
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    let err = unwrap_err(accept(&s, "").await);
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = unwrap_err(accept(&s, &"x".repeat(300)).await);
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn parallel_accepts_make_one_membership(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let email = unique_email("twice");
    let resp = invite(&s, &owner, &org, &email, "").await.unwrap();
    let calls = (0..4).map(|_| {
        let mut team = s.team.clone();
        let token = resp.token.clone();
        async move {
            team.accept_invitation(pb::AcceptInvitationRequest {
                token,
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut ok = 0;
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(e) => assert_error(&e, Code::FailedPrecondition, "INVITATION_USED"),
        }
    }
    assert_eq!(ok, 1);
    let members = s.members(&org, &owner).await;
    assert_eq!(members.iter().filter(|m| m.email == email).count(), 1);
    assert_eq!(members.len(), 2);
}

async fn accept_links_an_existing_user_and_takes_names(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org_a, owner_a) = s.org("Alpha", "business").await;
    let (org_b, owner_b) = s.org("Beta", "business").await;
    let email = unique_email("both");
    let user = s
        .member_with_email(&org_a, &owner_a, "member", &email)
        .await;

    // Someone already known (here: a member of another org) is linked, not created twice.
    let resp = invite(&s, &owner_b, &org_b, &email, "manager")
        .await
        .unwrap();
    let accepted = s
        .team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token: resp.token.clone(),
            first_name: Some("Renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let m = accepted.member.unwrap();
    assert_eq!(m.user_id, user);
    assert_eq!(m.org_id, org_b);
    assert_eq!(m.role, "manager");
    assert_eq!(m.first_name, "Mia", "an existing account keeps its names");
    assert!(s.allowed(&org_b, &user, "members.manage").await);
    assert!(!s.allowed(&org_a, &user, "members.manage").await);
    let orgs = s
        .team
        .clone()
        .list_organizations(as_actor(
            &user,
            pb::ListOrganizationsRequest {
                user_id: user.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .organizations;
    assert_eq!(orgs.len(), 2);

    // A new account: names from the request win over the invitation's, each on its own.
    let resp = invite(&s, &owner_b, &org_b, &unique_email("new"), "")
        .await
        .unwrap();
    let m = s
        .team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token: resp.token.clone(),
            first_name: Some("  Ivana ".into()),
            last_name: None,
            password: None,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(m.first_name, "Ivana");
    assert_eq!(m.last_name, "Invitee");
    assert_eq!(m.role, "member");
    let resp = invite(&s, &owner_b, &org_b, &unique_email("new"), "")
        .await
        .unwrap();
    let m = accept(&s, &resp.token).await.unwrap().member.unwrap();
    assert_eq!(
        (m.first_name.as_str(), m.last_name.as_str()),
        ("Ivy", "Invitee")
    );
    assert_ne!(m.user_id, user);
}

async fn list_filters_by_status_and_paginates(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    // One that will expire, then two revoked, one accepted and three pending.
    invite(&s, &owner, &org, &unique_email("exp"), "")
        .await
        .unwrap();
    s.clock.advance(chrono::Duration::days(8));
    for _ in 0..2 {
        let r = invite(&s, &owner, &org, &unique_email("rev"), "")
            .await
            .unwrap();
        revoke(&s, &owner, &invitation(&r).id).await.unwrap();
    }
    let r = invite(&s, &owner, &org, &unique_email("acc"), "")
        .await
        .unwrap();
    accept(&s, &r.token).await.unwrap();
    for _ in 0..3 {
        invite(&s, &owner, &org, &unique_email("pen"), "")
            .await
            .unwrap();
    }

    let all = list_all(&s, &owner, &org, None, 2).await;
    assert_eq!(all.len(), 7);
    let ids: HashSet<_> = all.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 7, "no invitation twice across pages");
    let mut sorted = all.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        all.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        sorted,
        "newest first"
    );
    for (status, n, prefix) in [
        (pb::InvitationStatus::Pending, 3, "pen-"),
        (pb::InvitationStatus::Revoked, 2, "rev-"),
        (pb::InvitationStatus::Accepted, 1, "acc-"),
        (pb::InvitationStatus::Expired, 1, "exp-"),
    ] {
        for page_size in [1, 50] {
            let got = list_all(&s, &owner, &org, Some(status), page_size).await;
            assert_eq!(got.len(), n, "{status:?}");
            assert!(got.iter().all(|i| status_of(i) == status));
            assert!(got.iter().all(|i| i.email.starts_with(prefix)));
        }
    }
    let all_explicit = list_all(&s, &owner, &org, Some(pb::InvitationStatus::Unspecified), 0).await;
    assert_eq!(all_explicit.len(), 7);

    // Bad input and permissions.
    let list = |req: pb::ListInvitationsRequest, actor: &str| {
        let mut team = s.team.clone();
        let req = as_actor(actor, req);
        async move { team.list_invitations(req).await }
    };
    let err = unwrap_err(
        list(
            pb::ListInvitationsRequest {
                org_id: org.clone(),
                status: Some(99),
                ..Default::default()
            },
            &owner,
        )
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_STATUS");
    let err = unwrap_err(
        list(
            pb::ListInvitationsRequest {
                org_id: org.clone(),
                page_size: 501,
                ..Default::default()
            },
            &owner,
        )
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_SIZE");
    let err = unwrap_err(
        list(
            pb::ListInvitationsRequest {
                org_id: org.clone(),
                page_token: "bogus".into(),
                ..Default::default()
            },
            &owner,
        )
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let (_, stranger) = s.org("Elsewhere", "business").await;
    let err = unwrap_err(
        list(
            pb::ListInvitationsRequest {
                org_id: org.clone(),
                ..Default::default()
            },
            &stranger,
        )
        .await,
    );
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    // Members may look (members.view).
    let member = s.member(&org, &owner, "member").await;
    assert_eq!(list_all(&s, &member, &org, None, 50).await.len(), 8);
}

async fn audit_events(s: &TestServer, actor: &str, org: &str, action: &str) -> Vec<pb::AuditEvent> {
    s.team
        .clone()
        .list_audit_events(as_actor(
            actor,
            pb::ListAuditEventsRequest {
                org_id: org.into(),
                action: Some(action.into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
}

fn json(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
}

async fn invitation_mutations_are_audited(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let email = unique_email("aud");
    let resp = invite(&s, &owner, &org, &email, "manager").await.unwrap();
    let id = invitation(&resp).id.clone();
    let target = format!("invitation:{id}");
    let renewed = resend(&s, &owner, &id).await.unwrap();
    let member = accept(&s, &renewed.token).await.unwrap().member.unwrap();
    let other_email = unique_email("gone");
    let other = invite(&s, &owner, &org, &other_email, "").await.unwrap();
    revoke(&s, &owner, &invitation(&other).id).await.unwrap();

    let invited = audit_events(&s, &owner, &org, "member.invited").await;
    assert_eq!(invited.len(), 2);
    let e = invited.iter().find(|e| e.target == target).unwrap();
    assert_eq!(e.actor_user_id, owner);
    assert_eq!(e.org_id, org);
    assert!(!e.request_id.is_empty());
    let after = json(&e.after);
    assert_eq!(after["email"], email.as_str());
    assert_eq!(after["role"], "manager");

    let resent = audit_events(&s, &owner, &org, "invitation.resent").await;
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].target, target);
    assert_eq!(resent[0].actor_user_id, owner);
    assert_eq!(json(&resent[0].after)["email"], email.as_str());
    assert_eq!(json(&resent[0].after)["role"], "manager");

    let accepted = audit_events(&s, &owner, &org, "invitation.accepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].target, target);
    assert_eq!(
        accepted[0].actor_user_id, member.user_id,
        "the invitee acts"
    );
    let after = json(&accepted[0].after);
    assert_eq!(after["email"], email.as_str());
    assert_eq!(after["role"], "manager");
    assert_eq!(after["user_id"], member.user_id.as_str());

    let revoked = audit_events(&s, &owner, &org, "invitation.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].actor_user_id, owner);
    assert_eq!(
        revoked[0].target,
        format!("invitation:{}", invitation(&other).id)
    );
    let after = json(&revoked[0].after);
    assert_eq!(after["email"], other_email.as_str());
    assert_eq!(after["role"], "member");
    assert_eq!(after["state"], "revoked");

    // Nothing is audited for a refused call.
    let _ = unwrap_err(invite(&s, &owner, &org, &email, "").await);
    assert_eq!(
        audit_events(&s, &owner, &org, "member.invited").await.len(),
        2
    );
}

async fn loyalty_program_starter_plan_is_single_user(b: Backend) {
    let s = TestServer::spawn_with(b, |config| {
        config.policy = Some(repo_path("deploy/policies/loyalty-program.toml"));
    })
    .await;
    let (org, owner) = s.org("Corner Bakery Rewards", "starter").await;
    let err = unwrap_err(invite(&s, &owner, &org, &unique_email("staff"), "").await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");
    assert!(err.message().contains("starter"), "{err:?}");
    assert!(
        err.message().contains("growth or scale"),
        "the policy's upgrade hint: {err:?}"
    );
    // The default plan of this policy is the starter plan too.
    let (org2, owner2) = s.org("Second Shop", "").await;
    let err = unwrap_err(invite(&s, &owner2, &org2, &unique_email("staff"), "user").await);
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");

    // After upgrading, the policy's invite role (`user`) is the default.
    s.team
        .clone()
        .update_organization(as_actor(
            &owner,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                plan: Some("growth".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let resp = invite(&s, &owner, &org, &unique_email("staff"), "")
        .await
        .unwrap();
    assert_eq!(invitation(&resp).role, "user");
    let m = accept(&s, &resp.token).await.unwrap().member.unwrap();
    assert_eq!(m.role, "user");
    // This policy's managers run marketing, not people: they cannot invite.
    let manager = s.member(&org, &owner, "manager").await;
    let err = unwrap_err(invite(&s, &manager, &org, &unique_email("x"), "user").await);
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
}

async fn outbox_delivers_the_invitation_email(b: Backend) {
    let s = TestServer::spawn_with(b, |config| {
        config.invitations.accept_url_base = ACCEPT_BASE.into();
        config.mail.poll_interval_ms = NO_POLLING_MS;
    })
    .await;
    let (org, owner) = s.org("Acme <Rockets> & Co", "business").await;
    let email = unique_email("mail");
    let resp = invite(&s, &owner, &org, &email, "").await.unwrap();

    // Written in the same transaction as the invitation, then delivered by the worker.
    let rows = outbox(&s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].org_id, org);
    assert!(rows[0].delivered_at.is_none());
    deliver_until(&s, 1).await;
    let sent = s.sink.sent.lock().unwrap().clone();
    let m = &sent[0];
    let link = format!("{ACCEPT_BASE}{}", resp.token);
    assert_eq!(m.to, email);
    assert!(m.subject.contains("Olivia Owner"), "{}", m.subject);
    assert!(m.subject.contains("Acme <Rockets> & Co"), "{}", m.subject);
    assert!(m.text.contains(&link), "{}", m.text);
    assert!(m.text.contains("Olivia Owner") && m.text.contains("Acme <Rockets> & Co"));
    assert!(m.html.contains(&link), "{}", m.html);
    assert!(m.html.contains("Olivia Owner"));
    assert!(
        m.html.contains("Acme &lt;Rockets&gt; &amp; Co"),
        "{}",
        m.html
    );
    assert_eq!(m.id, rows[0].id, "the outbox id travels with the message");
    let rows = outbox(&s).await;
    assert!(rows[0].delivered_at.is_some());
    assert!(
        !rows[0].payload.contains(&resp.token),
        "the token does not stay in the outbox once delivered"
    );

    // Resend enqueues a new email with the new token.
    let renewed = resend(&s, &owner, &invitation(&resp).id).await.unwrap();
    deliver_until(&s, 2).await;
    let sent = s.sink.sent.lock().unwrap().clone();
    assert!(
        sent[1]
            .text
            .contains(&format!("{ACCEPT_BASE}{}", renewed.token))
    );

    // An email whose link died before it went out (resent, revoked) is dropped, not sent.
    let first = invite(&s, &owner, &org, &unique_email("stale"), "")
        .await
        .unwrap();
    let second = resend(&s, &owner, &invitation(&first).id).await.unwrap();
    let gone_email = unique_email("gone");
    let gone = invite(&s, &owner, &org, &gone_email, "").await.unwrap();
    revoke(&s, &owner, &invitation(&gone).id).await.unwrap();
    deliver_until(&s, 3).await;
    let worker = s.running.as_ref().unwrap().outbox.clone();
    worker.deliver_due().await.unwrap();
    let sent = s.sink.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert!(sent[2].text.contains(&second.token));
    assert!(sent.iter().all(|m| !m.text.contains(&first.token)));
    assert!(sent.iter().all(|m| m.to != gone_email));
    assert!(outbox(&s).await.iter().all(|r| r.delivered_at.is_some()));

    // Nor is one for an organization deleted in the meantime.
    let (doomed, doomed_owner) = s.org("Doomed", "business").await;
    let doomed_email = unique_email("doomed");
    invite(&s, &doomed_owner, &doomed, &doomed_email, "")
        .await
        .unwrap();
    s.team
        .clone()
        .delete_organization(as_actor(
            &doomed_owner,
            pb::DeleteOrganizationRequest {
                org_id: doomed.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    assert_eq!(s.sink.sent.lock().unwrap().len(), 3);
    assert!(outbox(&s).await.iter().all(|r| r.delivered_at.is_some()));
}

async fn failed_delivery_is_retried_with_backoff(b: Backend) {
    let s = TestServer::spawn_with(b, |config| {
        config.mail.poll_interval_ms = NO_POLLING_MS;
    })
    .await;
    let (org, owner) = s.org("Acme", "business").await;
    s.sink.fail_next.store(1, Ordering::SeqCst);
    let email = unique_email("retry");
    invite(&s, &owner, &org, &email, "").await.unwrap();
    let worker = s.running.as_ref().unwrap().outbox.clone();
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    assert!(s.sink.sent.lock().unwrap().is_empty());
    let rows = outbox(&s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 1);
    assert!(
        rows[0].delivered_at.is_none(),
        "a failed delivery stays in the outbox"
    );
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("simulated delivery failure")
    );

    // Not retried before its backoff has passed …
    assert_eq!(worker.deliver_due().await.unwrap(), 0);
    // … and delivered once it has.
    s.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    let sent = s.sink.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, email);
    let rows = outbox(&s).await;
    assert_eq!(rows[0].attempts, 2);
    assert!(rows[0].delivered_at.is_some());
    assert_eq!(s.sink.fail_next.load(Ordering::SeqCst), 0);
    // Delivered means done: no more attempts.
    s.clock.advance(chrono::Duration::hours(2));
    assert_eq!(worker.deliver_due().await.unwrap(), 0);
    assert_eq!(s.sink.sent.lock().unwrap().len(), 1);
}

async fn delivery_survives_a_restart(b: Backend) {
    let mut s = TestServer::spawn_with(b, |config| {
        config.invitations.accept_url_base = ACCEPT_BASE.into();
        config.mail.poll_interval_ms = NO_POLLING_MS;
    })
    .await;
    let (org, owner) = s.org("Acme", "business").await;
    let email = unique_email("restart");
    let resp = invite(&s, &owner, &org, &email, "").await.unwrap();
    // Stop before anything was delivered.
    s.running.take().unwrap().shutdown().await.unwrap();
    assert!(s.sink.sent.lock().unwrap().is_empty());

    // A new server on the same database delivers it from its background worker.
    s.config.mail.poll_interval_ms = 50;
    let r = s.replica().await;
    for _ in 0..200 {
        if !r.sink.sent.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = r.sink.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "the email arrives after the restart");
    assert_eq!(sent[0].to, email);
    assert!(
        sent[0]
            .text
            .contains(&format!("{ACCEPT_BASE}{}", resp.token))
    );
    // And the invitation still works there.
    accept(&r, &resp.token).await.unwrap();
    r.stop().await;
}

/// A real SMTP server (Python's aiosmtpd) on loopback that requires AUTH and prints each
/// message it accepts as one JSON line, decoded with Python's own email parser.
const SMTP_SERVER: &str = r#"
import asyncio, email, json, logging, sys, warnings
warnings.simplefilter("ignore")
logging.getLogger("mail.log").setLevel(logging.ERROR)
from email import policy
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USER, PASSWORD = sys.argv[1].encode(), sys.argv[2].encode()

class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "authenticated": bool(session.authenticated),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "text": text.get_content() if text is not None else "",
            "html": html.get_content() if html is not None else "",
        }), flush=True)
        return "250 Message accepted for delivery"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER and auth_data.password == PASSWORD
    return AuthResult(success=ok)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="teamgate-test", authenticator=authenticator,
                     auth_required=True, auth_require_tls=False),
        "127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"#;

struct SmtpServer {
    child: Child,
    port: u16,
    messages: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SMTP test runs a real SMTP server, so it is ignored unless `TEAMGATE_TEST_SMTP=1` was
/// set at build time (`.ci/run` sets it after installing aiosmtpd).
mod smtp_delivery_to_a_real_server {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(teamgate_test_smtp),
        ignore = "SMTP test: needs python3 with aiosmtpd; set TEAMGATE_TEST_SMTP=1 to run it"
    )]
    async fn sqlite() {
        super::smtp_delivery_to_a_real_server(crate::helpers::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(all(teamgate_test_smtp, teamgate_test_pg)),
        ignore = "SMTP test on PostgreSQL: set TEAMGATE_TEST_SMTP=1 and TEAMGATE_TEST_DATABASE_URL"
    )]
    async fn postgres() {
        crate::helpers::require_postgres();
        super::smtp_delivery_to_a_real_server(crate::helpers::Backend::Postgres).await
    }
}

/// Starts the Python SMTP server; the test was built to run, so a missing python3 or
/// aiosmtpd fails it.
fn start_smtp_server(user: &str, password: &str) -> Option<SmtpServer> {
    let available = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "python3 with aiosmtpd is needed for the SMTP test (pip install aiosmtpd)"
    );
    let mut child = Command::new("python3")
        .args(["-c", SMTP_SERVER, user, password])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (tx, messages) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(port) = line.strip_prefix("PORT ") {
                let _ = port_tx.send(port.trim().parse::<u16>().unwrap());
            } else if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the SMTP server reports its port");
    Some(SmtpServer {
        child,
        port,
        messages,
    })
}

async fn smtp_delivery_to_a_real_server(b: Backend) {
    let Some(mut smtp) = start_smtp_server("mailer", "s3cret-pass") else {
        return;
    };
    let port = smtp.port;
    let s = TestServer::spawn_with(b, |config| {
        config.invitations.accept_url_base = ACCEPT_BASE.into();
        config.mail.poll_interval_ms = NO_POLLING_MS;
        config.mail.sink = MailSinkKind::Smtp;
        config.mail.smtp.host = "127.0.0.1".into();
        config.mail.smtp.port = port;
        config.mail.smtp.tls = SmtpTls::None;
        config.mail.smtp.username = Secret::new("mailer");
        config.mail.smtp.password = Secret::new("s3cret-pass");
        config.mail.smtp.from = "Teamgate Invitations <invites@teamgate.example.com>".into();
    })
    .await;
    let (org, owner) = s.org("Acme Rockets", "business").await;
    let email = unique_email("smtp");
    let resp = invite(&s, &owner, &org, &email, "").await.unwrap();
    let worker = s.running.as_ref().unwrap().outbox.clone();
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    let m = tokio::time::timeout(Duration::from_secs(10), smtp.messages.recv())
        .await
        .expect("the SMTP server received a message")
        .unwrap();
    let link = format!("{ACCEPT_BASE}{}", resp.token);
    assert_eq!(m["authenticated"], true, "{m}");
    assert_eq!(m["mail_from"], "invites@teamgate.example.com");
    assert_eq!(m["rcpt_tos"], serde_json::json!([email]));
    assert_eq!(m["to"], email.as_str());
    assert!(m["from"].as_str().unwrap().contains("Teamgate Invitations"));
    let subject = m["subject"].as_str().unwrap();
    assert!(
        subject.contains("Olivia Owner") && subject.contains("Acme Rockets"),
        "{m}"
    );
    let text = m["text"].as_str().unwrap();
    assert!(text.contains(&link), "{m}");
    let html = m["html"].as_str().unwrap();
    assert!(html.contains(&link) && html.contains("Acme Rockets"), "{m}");
    let rows = outbox(&s).await;
    assert!(rows[0].delivered_at.is_some());
    assert!(m["message_id"].as_str().unwrap().contains(&rows[0].id));

    // Wrong credentials: the server refuses, the message stays in the outbox for a retry.
    let bad = TestServer::spawn_with(b, |config| {
        config.mail.poll_interval_ms = NO_POLLING_MS;
        config.mail.sink = MailSinkKind::Smtp;
        config.mail.smtp.host = "127.0.0.1".into();
        config.mail.smtp.port = port;
        config.mail.smtp.tls = SmtpTls::None;
        config.mail.smtp.username = Secret::new("mailer");
        config.mail.smtp.password = Secret::new("wrong");
        config.mail.smtp.from = "invites@teamgate.example.com".into();
    })
    .await;
    let (org, owner) = bad.org("Acme", "business").await;
    invite(&bad, &owner, &org, &unique_email("nope"), "")
        .await
        .unwrap();
    let worker = bad.running.as_ref().unwrap().outbox.clone();
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    let rows = outbox(&bad).await;
    assert_eq!(rows[0].attempts, 1);
    assert!(rows[0].delivered_at.is_none());
    assert!(
        rows[0].last_error.as_deref().unwrap_or("").contains("smtp"),
        "{:?}",
        rows[0].last_error
    );
    assert!(smtp.messages.try_recv().is_err(), "nothing was accepted");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

async fn webhook_delivery_is_signed_and_retried(b: Backend) {
    const SECRET: &str = "webhook-signing-secret-0123456789";
    let (addr, mut received) = webhook_receiver(vec![503]).await;
    let s = TestServer::spawn_with(b, |config| {
        config.invitations.accept_url_base = ACCEPT_BASE.into();
        config.mail.poll_interval_ms = NO_POLLING_MS;
        config.mail.sink = MailSinkKind::Webhook;
        config.mail.webhook.url = format!("http://{addr}/hooks/mail");
        config.mail.webhook.secret = Secret::new(SECRET);
    })
    .await;
    let (org, owner) = s.org("Acme Rockets", "business").await;
    let email = unique_email("hook");
    let resp = invite(&s, &owner, &org, &email, "").await.unwrap();
    let worker = s.running.as_ref().unwrap().outbox.clone();

    // The first answer is a 503: the message stays and is retried after its backoff.
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    let first = received.recv().await.unwrap();
    let rows = outbox(&s).await;
    assert!(rows[0].delivered_at.is_none());
    assert!(rows[0].last_error.as_deref().unwrap_or("").contains("503"));
    s.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(worker.deliver_due().await.unwrap(), 1);
    let second = received.recv().await.unwrap();
    assert!(outbox(&s).await[0].delivered_at.is_some());

    for r in [&first, &second] {
        assert_eq!(r.path, "/hooks/mail");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-teamgate-delivery"], rows[0].id);
        let ts = &r.headers["x-teamgate-timestamp"];
        let ts_num: i64 = ts.parse().unwrap();
        assert!((ts_num - chrono::Utc::now().timestamp()).abs() < 600);
        let header = &r.headers["x-teamgate-signature"];
        let sig = header.strip_prefix("sha256=").expect("sha256= prefix");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&r.body);
        mac.verify_slice(&hex_decode(sig))
            .expect("HMAC-SHA256 over timestamp.body verifies");
        // A tampered body does not.
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&[r.body.as_slice(), b" "].concat());
        assert!(mac.verify_slice(&hex_decode(sig)).is_err());
        // Signed exactly as the feed's webhooks are: the README's recipe accepts it, and
        // rejects another secret, another timestamp or another body.
        assert!(readme_verifies(SECRET, ts, header, &r.body));
        assert!(!readme_verifies(
            "another-secret-0123456789",
            ts,
            header,
            &r.body
        ));
        assert!(!readme_verifies(
            SECRET,
            &(ts_num + 1).to_string(),
            header,
            &r.body
        ));
        assert!(!readme_verifies(SECRET, ts, header, b"{}"));

        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "invitation_email");
        assert_eq!(body["id"], rows[0].id.as_str());
        assert_eq!(body["to"], email.as_str());
        let link = format!("{ACCEPT_BASE}{}", resp.token);
        assert!(body["text"].as_str().unwrap().contains(&link));
        assert!(body["html"].as_str().unwrap().contains(&link));
        assert!(body["subject"].as_str().unwrap().contains("Acme Rockets"));
    }
    assert!(received.try_recv().is_err(), "delivered exactly twice");
}

async fn bad_tokens_are_rate_limited(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "business").await;
    let good = invite(&s, &owner, &org, &unique_email("good"), "")
        .await
        .unwrap();
    for i in 0..10 {
        let err = unwrap_err(accept(&s, &format!("guess-{i}-{}", uuid::Uuid::now_v7())).await);
        assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
    }
    let err = unwrap_err(accept(&s, "guess-eleven").await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert!(err.message().contains("retry in"), "{err:?}");
    // The caller is held off whatever token it sends, until the window has passed.
    let err = unwrap_err(accept(&s, &good.token).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    s.clock.advance(chrono::Duration::minutes(11));
    accept(&s, &good.token).await.unwrap();
    // Failures other than an unknown token do not count.
    for _ in 0..12 {
        let err = unwrap_err(accept(&s, &good.token).await);
        assert_error(&err, Code::FailedPrecondition, "INVITATION_USED");
    }
    let err = unwrap_err(accept(&s, "one-more-guess").await);
    assert_error(&err, Code::NotFound, "INVITATION_NOT_FOUND");
}
