//! IdentityService: accounts, disabled users, passwords, session tokens (verified with an
//! independent JWT library against GetJwks), key rotation, password reset, TOTP and
//! organizations that require two-factor sign-in.

use chrono::Duration;
use hmac::{Hmac, Mac};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use teamgate::config::Config;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::identity_service_client::IdentityServiceClient;
use teamgate::store::entities::outbox;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    users_can_be_read_renamed_disabled_and_enabled,
    passwords_set_on_accept_sign_in_and_tokens_verify,
    hashes_are_upgraded_on_sign_in_when_parameters_change,
    sign_in_failures_look_alike_and_are_rate_limited,
    sign_in_failures_are_limited_per_caller_across_accounts,
    concurrent_sign_in_failures_stay_within_the_account_limit,
    signing_keys_rotate_and_old_ones_stay_until_tokens_expire,
    password_reset_is_single_use_and_expires,
    totp_enrolment_and_orgs_requiring_mfa,
);

const PASSWORD: &str = "correct horse battery staple";

/// Cheap hashes, and invitation tokens that travel only by email, as in production: a
/// password can be set on acceptance only then.
pub(crate) fn cheap_hashing(c: &mut Config) {
    c.invitations.return_token = Some(false);
    c.identity.argon2_memory_kib = 64;
    c.identity.argon2_iterations = 1;
    c.identity.argon2_parallelism = 1;
}

async fn spawn(backend: Backend) -> TestServer {
    TestServer::spawn_with(backend, cheap_hashing).await
}

/// A server that refuses an account after 3 failed sign-ins within 10 minutes.
async fn spawn_with_account_limit(backend: Backend) -> TestServer {
    TestServer::spawn_with(backend, |c| {
        cheap_hashing(c);
        c.identity.max_failed_sign_ins = 3;
        c.identity.failure_window_secs = 600;
    })
    .await
}

pub(crate) fn identity(s: &TestServer) -> IdentityServiceClient<Channel> {
    IdentityServiceClient::new(s.channel.clone())
}

/// Invites `email` into `org` and accepts with `password`; returns the user id.
pub(crate) async fn member_with_password(
    s: &TestServer,
    org: &str,
    owner: &str,
    role: &str,
    email: &str,
    password: Option<&str>,
) -> Result<String, tonic::Status> {
    let token = s
        .team
        .clone()
        .invite_member(as_actor(
            owner,
            pb::InviteMemberRequest {
                org_id: org.into(),
                email: email.into(),
                first_name: "Pat".into(),
                last_name: "Person".into(),
                role: role.into(),
            },
        ))
        .await?
        .into_inner()
        .token;
    let token = s.delivered_token(token, email).await;
    Ok(s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token,
            password: password.map(str::to_owned),
            ..Default::default()
        })
        .await?
        .into_inner()
        .member
        .unwrap()
        .user_id)
}

pub(crate) async fn sign_in(
    s: &TestServer,
    email: &str,
    password: &str,
    code: Option<String>,
) -> Result<pb::AuthenticateResponse, tonic::Status> {
    identity(s)
        .authenticate(pb::AuthenticateRequest {
            email: email.into(),
            password: password.into(),
            totp_code: code,
        })
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn jwks(s: &TestServer) -> jsonwebtoken::jwk::JwkSet {
    let raw = identity(s)
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    serde_json::from_str(&raw).unwrap()
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Claims {
    pub iss: String,
    pub aud: String,
    sub: String,
    email: String,
    orgs: Vec<String>,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Verifies a session token with `jsonwebtoken` against the server's JWKS.
fn verify(token: &str, set: &jsonwebtoken::jwk::JwkSet) -> Claims {
    verify_for(token, set, "teamgate", "teamgate").unwrap()
}

/// Verifies as the README's recipe does: signature, `iss` and `aud` (expiry is the clock's
/// business in these tests, which move a manual clock).
pub(crate) fn verify_for(
    token: &str,
    set: &jsonwebtoken::jwk::JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<Claims, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let kid = header.kid.expect("token names its key");
    let jwk = set.find(&kid).expect("key in JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation).map(|d| d.claims)
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

pub(crate) fn totp_code(secret_b32: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .unwrap();
    let counter = (at.timestamp() / 30) as u64;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&secret).unwrap();
    mac.update(&counter.to_be_bytes());
    let d = mac.finalize().into_bytes();
    let o = (d[19] & 0x0f) as usize;
    let n = (u32::from(d[o]) & 0x7f) << 24
        | u32::from(d[o + 1]) << 16
        | u32::from(d[o + 2]) << 8
        | u32::from(d[o + 3]);
    format!("{:06}", n % 1_000_000)
}

/// Enrols `user` in two-factor sign-in and confirms it with a current code; returns the
/// base32 secret and the confirmation's consistency token.
pub(crate) async fn enable_two_factor(s: &TestServer, user: &str) -> (String, String) {
    let enrolment = identity(s)
        .enroll_totp(as_actor(
            user,
            pb::EnrollTotpRequest {
                user_id: user.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let confirmed = identity(s)
        .confirm_totp(as_actor(
            user,
            pb::ConfirmTotpRequest {
                user_id: user.into(),
                code: totp_code(&enrolment.secret, now(s)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (enrolment.secret, confirmed.consistency_token)
}

pub(crate) fn now(s: &TestServer) -> chrono::DateTime<chrono::Utc> {
    use teamgate::domain::clock::Clock;
    s.clock.now()
}

pub(crate) async fn set_status(
    s: &TestServer,
    actor: &str,
    user: &str,
    status: pb::UserStatus,
) -> Result<pb::User, tonic::Status> {
    identity(s)
        .set_user_status(as_actor(
            actor,
            pb::SetUserStatusRequest {
                user_id: user.into(),
                status: status.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn users_can_be_read_renamed_disabled_and_enabled(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "").await;
    let (other_org, other_owner) = s.org("Other", "").await;
    let member = s.member(&org, &owner, "member").await;
    let admin = s.member(&org, &owner, "admin").await;

    let by_id = identity(&s)
        .get_user(as_actor(
            &owner,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::UserId(member.clone())),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.status(), pb::UserStatus::Active);
    assert!(!by_id.mfa_enabled);
    let by_email = identity(&s)
        .get_user(as_actor(
            &owner,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::Email(
                    by_id.email.to_uppercase(),
                )),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_email.id, member);
    let missing = unwrap_err(
        identity(&s)
            .get_user(as_actor(
                &owner,
                pb::GetUserRequest {
                    user_ref: Some(pb::get_user_request::UserRef::Email(
                        "nobody@example.com".into(),
                    )),
                },
            ))
            .await,
    );
    assert_error(&missing, Code::NotFound, "USER_NOT_FOUND");

    // Only the user renames themselves.
    let renamed = identity(&s)
        .update_user(as_actor(
            &member,
            pb::UpdateUserRequest {
                user_id: member.clone(),
                first_name: Some("Robin".into()),
                last_name: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.first_name, "Robin");
    assert_eq!(renamed.last_name, by_id.last_name);
    let err = unwrap_err(
        identity(&s)
            .update_user(as_actor(
                &admin,
                pb::UpdateUserRequest {
                    user_id: member.clone(),
                    first_name: Some("Mallory".into()),
                    last_name: None,
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "NOT_THE_USER");

    // Not oneself, not a plain member, not an admin of an unrelated org.
    let err = unwrap_err(set_status(&s, &member, &member, pb::UserStatus::Disabled).await);
    assert_error(&err, Code::PermissionDenied, "CANNOT_CHANGE_OWN_STATUS");
    let peer = s.member(&org, &owner, "member").await;
    let err = unwrap_err(set_status(&s, &peer, &member, pb::UserStatus::Disabled).await);
    assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    let err = unwrap_err(set_status(&s, &other_owner, &member, pb::UserStatus::Disabled).await);
    assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    let err = unwrap_err(set_status(&s, &admin, &member, pb::UserStatus::Unspecified).await);
    assert_error(&err, Code::InvalidArgument, "INVALID_STATUS");

    // The member also belongs to another org; disabling denies them there too, at once.
    let token = s
        .team
        .clone()
        .invite_member(as_actor(
            &other_owner,
            pb::InviteMemberRequest {
                org_id: other_org.clone(),
                email: by_id.email.clone(),
                first_name: "Robin".into(),
                last_name: "Member".into(),
                role: "member".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let token = s.delivered_token(token, &by_id.email).await;
    s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(s.allowed(&org, &member, "members.view").await);
    assert!(s.allowed(&other_org, &member, "members.view").await);

    // Managing the member in one of their orgs is not enough: the admin must manage them in
    // every org they belong to, or one tenant could switch off another tenant's user.
    let err = unwrap_err(set_status(&s, &admin, &member, pb::UserStatus::Disabled).await);
    assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    assert!(s.allowed(&other_org, &member, "members.view").await);
    let admin_email = identity(&s)
        .get_user(as_actor(
            &admin,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::UserId(admin.clone())),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .email;
    s.member_with_email(&other_org, &other_owner, "admin", &admin_email)
        .await;

    let disabled = set_status(&s, &admin, &member, pb::UserStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(disabled.status(), pb::UserStatus::Disabled);
    for o in [&org, &other_org] {
        let c = s.check(o, &member, "members.view").await;
        assert!(!c.allowed);
        assert_eq!(c.reason(), pb::Reason::UserDisabled);
        let fresh = s
            .authz
            .clone()
            .check(pb::CheckRequest {
                org_id: o.clone(),
                user_id: member.clone(),
                permission: "members.view".into(),
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(
                        disabled.consistency_token.clone(),
                    )),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fresh.reason(), pb::Reason::UserDisabled, "token names {o}");
    }
    let perms = s
        .authz
        .clone()
        .list_permissions(pb::ListPermissionsRequest {
            org_id: org.clone(),
            user_id: member.clone(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(perms.reason(), pb::Reason::UserDisabled);
    assert!(perms.permissions.is_empty());
    // Other members are unaffected.
    assert!(s.allowed(&org, &peer, "members.view").await);

    set_status(&s, &admin, &member, pb::UserStatus::Active)
        .await
        .unwrap();
    assert!(s.allowed(&org, &member, "members.view").await);
    assert!(s.allowed(&other_org, &member, "members.view").await);

    let audit = s
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
    let actions: Vec<&str> = audit.events.iter().map(|e| e.action.as_str()).collect();
    for a in ["user.updated", "user.disabled", "user.enabled"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    s.stop().await;
}

async fn passwords_set_on_accept_sign_in_and_tokens_verify(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "").await;

    let err = unwrap_err(
        member_with_password(
            &s,
            &org,
            &owner,
            "member",
            "short@example.com",
            Some("short"),
        )
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "PASSWORD_TOO_SHORT");
    let err = unwrap_err(
        member_with_password(
            &s,
            &org,
            &owner,
            "member",
            "common@example.com",
            Some("Password1234"),
        )
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "PASSWORD_TOO_COMMON");

    let user = member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "ann@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();
    let resp = sign_in(&s, "Ann@Example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(resp.user.as_ref().unwrap().id, user);
    let claims = verify(&resp.session_token, &jwks(&s).await);
    assert_eq!(claims.sub, user);
    assert_eq!(claims.email, "ann@example.com");
    assert_eq!(claims.orgs, vec![org.clone()]);
    assert_eq!(claims.exp, resp.expires_at.unwrap().seconds);
    assert_eq!(claims.exp - claims.iat, 15 * 60);
    assert!(!claims.jti.is_empty());
    let again = sign_in(&s, "ann@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_ne!(
        verify(&again.session_token, &jwks(&s).await).jti,
        claims.jti
    );

    // A password sent with an invitation for an account that already has one is refused.
    let (org2, owner2) = s.org("Beta", "").await;
    let err = unwrap_err(
        member_with_password(
            &s,
            &org2,
            &owner2,
            "member",
            "ann@example.com",
            Some("another long passphrase"),
        )
        .await,
    );
    assert_error(&err, Code::FailedPrecondition, "PASSWORD_ALREADY_SET");

    // Nor for an account without one: the inviter holds the token, so the password would be
    // theirs. An admin of another org invites the owner of Gamma (made by CreateOrganization,
    // so passwordless) and accepts with a password of their choosing: refused, nothing joins,
    // and that password signs nobody in.
    let (_gamma, victim) = s.org("Gamma", "").await;
    let victim_email = identity(&s)
        .get_user(as_actor(
            &victim,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::UserId(victim.clone())),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .email;
    let err = unwrap_err(
        member_with_password(
            &s,
            &org2,
            &owner2,
            "member",
            &victim_email,
            Some("the inviter's passphrase"),
        )
        .await,
    );
    assert_error(&err, Code::FailedPrecondition, "ACCOUNT_EXISTS");
    let denied = sign_in(&s, &victim_email, "the inviter's passphrase", None)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    assert!(
        teamgate::store::users::find(s.app().store.conn(), &victim)
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .is_none()
    );
    s.stop().await;
}

async fn stored_hash(s: &TestServer, user: &str) -> String {
    teamgate::store::users::find(s.app().store.conn(), user)
        .await
        .unwrap()
        .unwrap()
        .password_hash
        .unwrap()
}

async fn hashes_are_upgraded_on_sign_in_when_parameters_change(backend: Backend) {
    let mut s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "").await;
    let user = member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "gus@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();
    let before = stored_hash(&s, &user).await;
    assert!(
        before.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
        "{before}"
    );
    assert!(!before.contains(PASSWORD));
    sign_in(&s, "gus@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(
        stored_hash(&s, &user).await,
        before,
        "current parameters: kept"
    );

    // Another replica configured with stronger parameters upgrades the hash on sign-in.
    s.config.identity.argon2_iterations = 2;
    let r = s.replica().await;
    sign_in(&r, "gus@example.com", PASSWORD, None)
        .await
        .unwrap();
    let after = stored_hash(&r, &user).await;
    assert!(after.starts_with("$argon2id$v=19$m=64,t=2,p=1$"), "{after}");
    sign_in(&r, "gus@example.com", PASSWORD, None)
        .await
        .unwrap();
    sign_in(&s, "gus@example.com", PASSWORD, None)
        .await
        .unwrap();
    r.stop().await;
    s.stop().await;
}

async fn sign_in_failures_look_alike_and_are_rate_limited(backend: Backend) {
    let s = spawn_with_account_limit(backend).await;
    let (org, owner) = s.org("Acme", "").await;
    let user = member_with_password(&s, &org, &owner, "admin", "bo@example.com", Some(PASSWORD))
        .await
        .unwrap();
    let disabled_user =
        member_with_password(&s, &org, &owner, "member", "cy@example.com", Some(PASSWORD))
            .await
            .unwrap();
    set_status(&s, &owner, &disabled_user, pb::UserStatus::Disabled)
        .await
        .unwrap();
    let no_password = s.member(&org, &owner, "member").await;
    let no_password_email = identity(&s)
        .get_user(as_actor(
            &owner,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::UserId(no_password)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .email;

    let mut messages = Vec::new();
    for (email, password) in [
        ("bo@example.com", "wrong password entirely"),
        ("nobody@example.com", PASSWORD),
        ("cy@example.com", PASSWORD),
        (no_password_email.as_str(), PASSWORD),
        ("not an email", PASSWORD),
    ] {
        let err = unwrap_err(sign_in(&s, email, password, None).await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
        messages.push(err.message().to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "every failure reads the same");

    // Two more wrong passwords reach the limit (3); then even the right one is refused.
    for _ in 0..2 {
        let err = unwrap_err(sign_in(&s, "bo@example.com", "still the wrong one", None).await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = unwrap_err(sign_in(&s, "bo@example.com", PASSWORD, None).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    s.clock.advance(Duration::seconds(601));
    sign_in(&s, "bo@example.com", PASSWORD, None).await.unwrap();

    // Failures and successes are audited, never with the password.
    let audit = s
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
    let mine: Vec<&pb::AuditEvent> = audit
        .events
        .iter()
        .filter(|e| e.target == format!("user:{user}"))
        .collect();
    assert!(mine.iter().any(|e| e.action == "user.sign_in_failed"));
    assert!(mine.iter().any(|e| e.action == "user.signed_in"));
    for e in &audit.events {
        assert!(!e.after.contains(PASSWORD) && !e.after.contains("wrong"));
    }
    s.stop().await;
}

/// Failed sign-ins (and bad reset tokens) one caller address may make in ten minutes,
/// whatever accounts they name: `identity.max_failed_sign_ins_per_caller`, set below to
/// something other than its default (50) to show the setting is used.
const PER_CALLER_FAILURES: usize = 24;

/// A channel to `s` whose connections come from `local` (another loopback address), so the
/// server sees another caller.
pub(crate) async fn channel_from(s: &TestServer, local: std::net::IpAddr) -> Channel {
    let server = s.running.as_ref().unwrap().addr;
    tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(local, 0))?;
            let stream = socket.connect(server).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .expect("connects from another loopback address")
}

async fn audit_actions(
    s: &TestServer,
    org: &str,
    owner: &str,
    action: &str,
) -> Vec<pb::AuditEvent> {
    s.team
        .clone()
        .list_audit_events(as_actor(
            owner,
            pb::ListAuditEventsRequest {
                org_id: org.into(),
                action: Some(action.into()),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn sign_in_failures_are_limited_per_caller_across_accounts(backend: Backend) {
    // The account limit is far below the per-caller budget, to show that the budget is
    // never what refuses here.
    let s = TestServer::spawn_with(backend, |c| {
        cheap_hashing(c);
        c.identity.max_failed_sign_ins = 3;
        c.identity.failure_window_secs = 600;
        c.identity.max_failed_sign_ins_per_caller = PER_CALLER_FAILURES as u32;
    })
    .await;
    let (org, owner) = s.org("Acme", "team").await;
    let mut accounts = Vec::new();
    for i in 0..5 {
        let email = format!("real-{i}@example.com");
        let id = member_with_password(&s, &org, &owner, "member", &email, Some(PASSWORD))
            .await
            .unwrap();
        accounts.push((email, id));
    }

    // One caller, one failure per account: no account reaches its own limit (3), but the
    // caller reaches its budget.
    for i in 0..PER_CALLER_FAILURES {
        let email = match accounts.get(i) {
            Some((email, _)) => email.clone(),
            None => format!("guess-{i}-{}@example.com", uuid::Uuid::now_v7().simple()),
        };
        let err = unwrap_err(sign_in(&s, &email, "not the password at all", None).await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = unwrap_err(sign_in(&s, "one-more@example.com", "not it either", None).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert!(err.message().contains("retry in"), "{err:?}");
    // Held off whatever it sends, even a right password for an account under its own limit.
    let (first_email, first_id) = &accounts[0];
    let err = unwrap_err(sign_in(&s, first_email, PASSWORD, None).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    // Reset tokens share the caller's budget.
    let err = unwrap_err(reset(&s, "made-up-token", "yet another long passphrase").await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");

    // Another caller is not held off: it signs in, and its failures still read as failures.
    let mut other = IdentityServiceClient::new(channel_from(&s, [127, 0, 0, 2].into()).await);
    let signed_in = other
        .authenticate(pb::AuthenticateRequest {
            email: first_email.clone(),
            password: PASSWORD.into(),
            totp_code: None,
        })
        .await
        .expect("another caller signs in")
        .into_inner();
    assert_eq!(signed_in.user.unwrap().id, *first_id);
    let err = unwrap_err(
        other
            .authenticate(pb::AuthenticateRequest {
                email: "someone-else@example.com".into(),
                password: "not the password at all".into(),
                totp_code: None,
            })
            .await,
    );
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");

    // Each account's failure is audited once; the refused attempts are neither failures
    // nor sign-ins of the account (the only sign-in is the other caller's).
    let failed = audit_actions(&s, &org, &owner, "user.sign_in_failed").await;
    for (_, id) in &accounts {
        let mine: Vec<&pb::AuditEvent> = failed
            .iter()
            .filter(|e| e.target == format!("user:{id}"))
            .collect();
        assert_eq!(mine.len(), 1, "{id}: {failed:?}");
        // Which factor failed is not the org's business (and would tell a reader of the
        // audit log that the password was right).
        assert!(!mine[0].after.contains("failure"), "{:?}", mine[0]);
        assert!(!mine[0].after.contains("password"), "{:?}", mine[0]);
        assert!(!mine[0].after.contains("not the password"), "{:?}", mine[0]);
    }
    assert_eq!(failed.len(), accounts.len(), "{failed:?}");
    let signed = audit_actions(&s, &org, &owner, "user.signed_in").await;
    assert_eq!(signed.len(), 1, "{signed:?}");
    assert_eq!(signed[0].target, format!("user:{first_id}"));

    // A burst of concurrent failures from a third caller: only failures that happened count
    // (attempts in flight do not, so a burst of valid calls never spends the budget), so the
    // attempts already running when the budget is reached may still fail; after them the
    // caller is held off.
    let mut burst = IdentityServiceClient::new(channel_from(&s, [127, 0, 0, 3].into()).await);
    let codes = concurrent_failures(&burst, 2 * PER_CALLER_FAILURES, |i| {
        format!("burst-{i}-{}@example.com", uuid::Uuid::now_v7().simple())
    })
    .await;
    assert!(
        codes
            .iter()
            .filter(|c| **c == Code::Unauthenticated)
            .count()
            >= PER_CALLER_FAILURES,
        "{codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Unauthenticated | Code::ResourceExhausted)),
        "{codes:?}"
    );
    let err = unwrap_err(
        burst
            .authenticate(pb::AuthenticateRequest {
                email: accounts[1].0.clone(),
                password: PASSWORD.into(),
                totp_code: None,
            })
            .await,
    );
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");

    // Once the window has passed the caller may sign in again.
    s.clock.advance(Duration::seconds(601));
    sign_in(&s, &accounts[1].0, PASSWORD, None).await.unwrap();
    s.stop().await;
}

/// `n` wrong-password sign-ins sent at once (attempt `i` names `email(i)`); their status codes.
async fn concurrent_failures(
    client: &IdentityServiceClient<Channel>,
    n: usize,
    email: impl Fn(usize) -> String,
) -> Vec<Code> {
    let attempts = (0..n).map(|i| {
        let mut client = client.clone();
        let email = email(i);
        tokio::spawn(async move {
            client
                .authenticate(pb::AuthenticateRequest {
                    email,
                    password: "not the password at all".into(),
                    totp_code: None,
                })
                .await
                .map(|_| ())
        })
    });
    let mut codes = Vec::new();
    for attempt in futures::future::join_all(attempts).await {
        match attempt.unwrap() {
            Ok(()) => panic!("a wrong password signed in"),
            Err(status) => codes.push(status.code()),
        }
    }
    codes
}

async fn concurrent_sign_in_failures_stay_within_the_account_limit(backend: Backend) {
    let s = spawn_with_account_limit(backend).await;
    let (org, owner) = s.org("Acme", "").await;
    let user = member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "hal@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();

    // Thirty guesses at once (within the caller's budget): three are checked, the rest are
    // refused before any password is looked at.
    let codes = concurrent_failures(&identity(&s), 30, |_| "hal@example.com".into()).await;
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == Code::Unauthenticated)
            .count(),
        3,
        "{codes:?}"
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == Code::ResourceExhausted)
            .count(),
        27,
        "{codes:?}"
    );
    let failed = audit_actions(&s, &org, &owner, "user.sign_in_failed").await;
    assert_eq!(
        failed
            .iter()
            .filter(|e| e.target == format!("user:{user}"))
            .count(),
        3,
        "{failed:?}"
    );
    let err = unwrap_err(sign_in(&s, "hal@example.com", PASSWORD, None).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");

    // After the window the right password works, and a success clears the count.
    s.clock.advance(Duration::seconds(601));
    sign_in(&s, "hal@example.com", PASSWORD, None)
        .await
        .unwrap();
    for _ in 0..2 {
        let err = unwrap_err(sign_in(&s, "hal@example.com", "still not it", None).await);
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    sign_in(&s, "hal@example.com", PASSWORD, None)
        .await
        .unwrap();
    s.stop().await;
}

async fn signing_keys_rotate_and_old_ones_stay_until_tokens_expire(backend: Backend) {
    let s = TestServer::spawn_with(backend, |c| {
        cheap_hashing(c);
        c.identity.key_rotation_secs = 3600;
        c.identity.session_ttl_secs = 900;
    })
    .await;
    let (org, owner) = s.org("Acme", "").await;
    member_with_password(&s, &org, &owner, "member", "di@example.com", Some(PASSWORD))
        .await
        .unwrap();
    let first = sign_in(&s, "di@example.com", PASSWORD, None)
        .await
        .unwrap()
        .session_token;
    let same = sign_in(&s, "di@example.com", PASSWORD, None)
        .await
        .unwrap()
        .session_token;
    assert_eq!(
        kid(&first),
        kid(&same),
        "one key until it is due for rotation"
    );
    assert_eq!(jwks(&s).await.keys.len(), 1);

    s.clock.advance(Duration::seconds(3601));
    let second = sign_in(&s, "di@example.com", PASSWORD, None)
        .await
        .unwrap()
        .session_token;
    assert_ne!(
        kid(&first),
        kid(&second),
        "a new key after the rotation period"
    );
    let set = jwks(&s).await;
    assert_eq!(
        set.keys.len(),
        2,
        "the old key stays while its tokens may be valid"
    );
    verify(&first, &set);
    verify(&second, &set);

    s.clock.advance(Duration::seconds(901));
    let set = jwks(&s).await;
    assert!(
        set.find(&kid(&first)).is_none(),
        "retired once its tokens expired"
    );
    verify(&second, &set);
    s.stop().await;
}

/// The reset token from the newest password reset email in the outbox.
pub(crate) async fn reset_token(s: &TestServer) -> String {
    let row = outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("password_reset_email"))
        .order_by_desc(outbox::Column::CreatedAt)
        .order_by_desc(outbox::Column::Id)
        .one(s.app().store.conn())
        .await
        .unwrap()
        .expect("a reset email in the outbox");
    let payload: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
    payload["token"].as_str().unwrap().to_owned()
}

pub(crate) async fn reset_count(s: &TestServer) -> usize {
    outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("password_reset_email"))
        .all(s.app().store.conn())
        .await
        .unwrap()
        .len()
}

pub(crate) async fn request_reset(s: &TestServer, email: &str) {
    identity(s)
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.into(),
        })
        .await
        .unwrap();
}

pub(crate) async fn reset(
    s: &TestServer,
    token: &str,
    password: &str,
) -> Result<(), tonic::Status> {
    identity(s)
        .reset_password(pb::ResetPasswordRequest {
            token: token.into(),
            new_password: password.into(),
        })
        .await
        .map(|_| ())
}

async fn password_reset_is_single_use_and_expires(backend: Backend) {
    let s = TestServer::spawn_with(backend, |c| {
        cheap_hashing(c);
        c.identity.reset_ttl_secs = 3600;
    })
    .await;
    let (org, owner) = s.org("Acme", "").await;
    member_with_password(&s, &org, &owner, "member", "ed@example.com", Some(PASSWORD))
        .await
        .unwrap();

    // Unknown emails answer the same and send nothing.
    request_reset(&s, "nobody@example.com").await;
    assert_eq!(reset_count(&s).await, 0);

    request_reset(&s, "ed@example.com").await;
    let older = reset_token(&s).await;
    request_reset(&s, "ed@example.com").await;
    let token = reset_token(&s).await;
    assert_ne!(older, token);
    assert_eq!(reset_count(&s).await, 2);

    let err = unwrap_err(reset(&s, &token, "short").await);
    assert_error(&err, Code::InvalidArgument, "PASSWORD_TOO_SHORT");
    let new_password = "a brand new long passphrase";
    reset(&s, &token, new_password).await.unwrap();
    let err = unwrap_err(reset(&s, &token, "yet another long passphrase").await);
    assert_error(&err, Code::NotFound, "RESET_TOKEN_INVALID");
    let err = unwrap_err(reset(&s, &older, "yet another long passphrase").await);
    assert_error(&err, Code::NotFound, "RESET_TOKEN_INVALID");
    let err = unwrap_err(reset(&s, "made-up-token", "yet another long passphrase").await);
    assert_error(&err, Code::NotFound, "RESET_TOKEN_INVALID");

    let err = unwrap_err(sign_in(&s, "ed@example.com", PASSWORD, None).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    sign_in(&s, "ed@example.com", new_password, None)
        .await
        .unwrap();

    // Expiry, on the injected clock.
    request_reset(&s, "ed@example.com").await;
    let late = reset_token(&s).await;
    s.clock.advance(Duration::seconds(3601));
    let err = unwrap_err(reset(&s, &late, "yet another long passphrase").await);
    assert_error(&err, Code::NotFound, "RESET_TOKEN_INVALID");
    s.stop().await;
}

async fn totp_enrolment_and_orgs_requiring_mfa(backend: Backend) {
    let s = spawn(backend).await;
    let (org, owner) = s.org("Acme", "").await;
    let user = member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "fay@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();

    s.team
        .clone()
        .update_organization(as_actor(
            &owner,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                require_mfa: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let c = s.check(&org, &user, "members.view").await;
    assert!(!c.allowed);
    assert_eq!(c.reason(), pb::Reason::MfaRequired);

    // Only the user enrols themselves.
    let err = unwrap_err(
        identity(&s)
            .enroll_totp(as_actor(
                &owner,
                pb::EnrollTotpRequest {
                    user_id: user.clone(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "NOT_THE_USER");
    let enrolment = identity(&s)
        .enroll_totp(as_actor(
            &user,
            pb::EnrollTotpRequest {
                user_id: user.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(enrolment.otpauth_uri.starts_with("otpauth://totp/"));
    assert!(enrolment.otpauth_uri.contains(&enrolment.secret));

    // Not in force until confirmed.
    sign_in(&s, "fay@example.com", PASSWORD, None)
        .await
        .unwrap();
    let confirm = |code: String| {
        let mut client = identity(&s);
        let user = user.clone();
        async move {
            client
                .confirm_totp(as_actor(
                    &user,
                    pb::ConfirmTotpRequest {
                        user_id: user.clone(),
                        code,
                    },
                ))
                .await
        }
    };
    let err = unwrap_err(confirm("000000".into()).await);
    assert_error(&err, Code::InvalidArgument, "INVALID_CODE");
    confirm(totp_code(&enrolment.secret, now(&s)))
        .await
        .unwrap();
    assert!(
        s.allowed(&org, &user, "members.view").await,
        "enrolled: allowed again"
    );

    // Sign-in now needs a code; a used code does not work twice.
    let err = unwrap_err(sign_in(&s, "fay@example.com", PASSWORD, None).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    s.clock.advance(Duration::seconds(30));
    let code = totp_code(&enrolment.secret, now(&s));
    let err = unwrap_err(
        sign_in(
            &s,
            "fay@example.com",
            "wrong password here",
            Some(code.clone()),
        )
        .await,
    );
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    sign_in(&s, "fay@example.com", PASSWORD, Some(code.clone()))
        .await
        .unwrap();
    let err = unwrap_err(sign_in(&s, "fay@example.com", PASSWORD, Some(code)).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");

    let got = identity(&s)
        .get_user(as_actor(
            &user,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::UserId(user.clone())),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.mfa_enabled);

    // Disabling takes a current code and brings back the org's requirement.
    s.clock.advance(Duration::seconds(30));
    identity(&s)
        .disable_totp(as_actor(
            &user,
            pb::DisableTotpRequest {
                user_id: user.clone(),
                code: totp_code(&enrolment.secret, now(&s)),
            },
        ))
        .await
        .unwrap();
    let c = s.check(&org, &user, "members.view").await;
    assert_eq!(c.reason(), pb::Reason::MfaRequired);
    sign_in(&s, "fay@example.com", PASSWORD, None)
        .await
        .unwrap();

    // The org's own owner is held to the requirement too: no management without two-factor,
    // but enrolling stays open.
    let turn_off = || {
        let mut team = s.team.clone();
        let request = as_actor(
            &owner,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                require_mfa: Some(false),
                ..Default::default()
            },
        );
        async move { team.update_organization(request).await }
    };
    assert_error(
        &unwrap_err(turn_off().await),
        Code::PermissionDenied,
        "MFA_REQUIRED",
    );
    let (_, confirmed) = enable_two_factor(&s, &owner).await;
    assert!(
        !confirmed.is_empty(),
        "a consistency token for the owner's orgs"
    );

    // Turning the requirement off restores access.
    turn_off().await.unwrap();
    assert!(s.allowed(&org, &user, "members.view").await);
    s.stop().await;
}
