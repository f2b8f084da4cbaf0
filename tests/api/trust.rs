//! Trust boundaries, tried as an attacker who owns one tenant: account status across tenants,
//! actors held to their account's status and two-factor, invitation tokens kept from the
//! inviter, sign-in activity kept out of the change feed, identity calls that return
//! consistency tokens, and the smaller holes (GetUser, password reset, TOTP replay, JWT
//! audience).

use std::time::Duration as StdDuration;

use chrono::Duration;
use teamgate::config::{Config, ServiceKeyConfig};
use teamgate::proto::teamgate::v1 as pb;
use tonic::{Code, Request};

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::identity::{
    cheap_hashing, enable_two_factor, identity, jwks, member_with_password, now, set_status,
    sign_in, totp_code, verify_for,
};
use crate::on_both_backends;

on_both_backends!(
    a_manager_cannot_disable_their_owner,
    a_throwaway_org_gives_no_power_over_a_members_account,
    a_disabled_user_cannot_reenable_themselves_through_a_second_account,
    only_the_operator_changes_the_status_of_users_without_orgs,
    disabled_actors_manage_nothing,
    actors_without_two_factor_manage_nothing_in_orgs_that_require_it,
    inviters_never_see_tokens_where_email_delivers_them,
    a_token_returned_to_the_inviter_cannot_set_a_password,
    sign_in_activity_stays_out_of_the_change_feed,
    disabling_races_an_accept_into_another_org,
    get_user_answers_only_those_who_may_see_the_user,
    password_reset_requests_are_limited_per_address_and_retire_older_links,
    a_totp_code_signs_in_once_under_concurrency,
    wrong_totp_codes_count_against_the_account,
    session_tokens_carry_the_configured_issuer_and_audience,
);

const PASSWORD: &str = "correct horse battery staple";

fn service_key(name: &str, scope: &str) -> (String, ServiceKeyConfig) {
    let (secret, hash) = teamgate::api::auth::new_key();
    (
        secret,
        ServiceKeyConfig {
            name: name.into(),
            hash,
            scopes: vec![serde_json::from_value(serde_json::Value::String(scope.into())).unwrap()],
            rate_limit_per_sec: None,
            trust_client_address: false,
        },
    )
}

fn keyed<T>(key: &str, actor: Option<&str>, message: T) -> Request<T> {
    let mut req = match actor {
        Some(a) => as_actor(a, message),
        None => Request::new(message),
    };
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

/// Creates an org through a keyed server; returns (org id, owner id).
async fn keyed_org(s: &TestServer, key: &str, name: &str, owner_email: &str) -> (String, String) {
    let created = s
        .team
        .clone()
        .create_organization(keyed(
            key,
            None,
            pb::CreateOrganizationRequest {
                name: name.into(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                    pb::NewUser {
                        email: owner_email.into(),
                        first_name: "O".into(),
                        last_name: String::new(),
                    },
                )),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (
        created.organization.unwrap().id,
        created.owner.unwrap().user_id,
    )
}

async fn email_of(s: &TestServer, user: &str) -> String {
    teamgate::store::users::find(s.app().store.conn(), user)
        .await
        .unwrap()
        .expect("user exists")
        .email
}

/// Tokens in emails of `kind` delivered to `to`, newest first.
fn mailed_tokens(s: &TestServer, kind: &str, to: &str) -> Vec<String> {
    s.sink
        .sent
        .lock()
        .unwrap()
        .iter()
        .rev()
        .filter(|m| m.kind == kind && m.to == to)
        .filter_map(|m| {
            let (_, rest) = m.text.split_once("token=")?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

/// Waits until `n` emails of `kind` reached `to` (the outbox worker delivers them).
async fn wait_for_mail(s: &TestServer, kind: &str, to: &str, n: usize) -> Vec<String> {
    for _ in 0..500 {
        let tokens = mailed_tokens(s, kind, to);
        if tokens.len() >= n {
            return tokens;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!("fewer than {n} {kind} emails reached {to}");
}

/// (a) A manager holds members.manage but does not outrank the owner.
async fn a_manager_cannot_disable_their_owner(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (org, owner) = s.org("Acme", "team").await;
    let manager = s.member(&org, &owner, "manager").await;
    let admin = s.member(&org, &owner, "admin").await;
    for target in [&owner, &admin] {
        let err = unwrap_err(set_status(&s, &manager, target, pb::UserStatus::Disabled).await);
        assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
        assert!(s.allowed(&org, target, "members.view").await);
    }
    // What the manager does outrank, they may switch off.
    let member = s.member(&org, &owner, "member").await;
    set_status(&s, &manager, &member, pb::UserStatus::Disabled)
        .await
        .unwrap();
    assert!(!s.allowed(&org, &member, "members.view").await);
    s.stop().await;
}

/// (b) Mallory makes an org, gets the victim's address into it, and tries to switch the
/// victim's account off everywhere.
async fn a_throwaway_org_gives_no_power_over_a_members_account(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (corp, corp_owner) = s.org("Corp", "team").await;
    let victim = s.member(&corp, &corp_owner, "member").await;
    let victim_email = email_of(&s, &victim).await;
    let (evil, mallory) = s.org("Evil", "team").await;
    s.member_with_email(&evil, &mallory, "member", &victim_email)
        .await;
    for status in [pb::UserStatus::Disabled, pb::UserStatus::Active] {
        let err = unwrap_err(set_status(&s, &mallory, &victim, status).await);
        assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    }
    assert!(s.allowed(&corp, &victim, "projects.view").await);
    let user = identity(&s)
        .get_user(as_actor(
            &victim,
            pb::GetUserRequest {
                user_ref: Some(pb::get_user_request::UserRef::UserId(victim.clone())),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.status(), pb::UserStatus::Active);
    s.stop().await;
}

/// (c) A disabled user owns a second account, makes an org with it, brings the disabled
/// account in and tries to switch it back on.
async fn a_disabled_user_cannot_reenable_themselves_through_a_second_account(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (corp, corp_owner) = s.org("Corp", "team").await;
    let leaver = s.member(&corp, &corp_owner, "member").await;
    let leaver_email = email_of(&s, &leaver).await;
    set_status(&s, &corp_owner, &leaver, pb::UserStatus::Disabled)
        .await
        .unwrap();
    let (side, second_account) = s.org("Side project", "team").await;
    s.member_with_email(&side, &second_account, "member", &leaver_email)
        .await;
    let err = unwrap_err(set_status(&s, &second_account, &leaver, pb::UserStatus::Active).await);
    assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    let c = s.check(&corp, &leaver, "projects.view").await;
    assert_eq!(c.reason(), pb::Reason::UserDisabled);
    s.stop().await;
}

/// Nobody outranks a user in no org at all; the operator's admin-scoped key may still act,
/// without naming an actor. A team-scoped key with an actor gets the tenant rule.
async fn only_the_operator_changes_the_status_of_users_without_orgs(b: Backend) {
    let (operator, operator_cfg) = service_key("platform", "admin");
    let (backend_key, backend_cfg) = service_key("settings-ui", "team");
    let s = TestServer::spawn_with(b, |c| {
        cheap_hashing(c);
        c.auth.keys = vec![operator_cfg, backend_cfg];
    })
    .await;
    let mut team = s.team.clone();
    let (org, owner) = keyed_org(&s, &backend_key, "Acme", "owner@example.com").await;
    let (other_org, other_owner) = keyed_org(&s, &backend_key, "Other", "other@example.com").await;
    // The other org is deleted: its owner now belongs to no live org.
    team.delete_organization(keyed(
        &backend_key,
        Some(&other_owner),
        pb::DeleteOrganizationRequest {
            org_id: other_org.clone(),
        },
    ))
    .await
    .unwrap();
    let set = |key: &str, actor: Option<&str>, user: &str, status: pb::UserStatus| {
        let mut id = identity(&s);
        let req = keyed(
            key,
            actor,
            pb::SetUserStatusRequest {
                user_id: user.into(),
                status: status.into(),
            },
        );
        async move { id.set_user_status(req).await.map(|r| r.into_inner()) }
    };
    let err = unwrap_err(
        set(
            &backend_key,
            Some(&owner),
            &other_owner,
            pb::UserStatus::Disabled,
        )
        .await,
    );
    assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    let err = unwrap_err(set(&backend_key, None, &other_owner, pb::UserStatus::Disabled).await);
    assert_error(&err, Code::Unauthenticated, "MISSING_ACTOR");
    let done = set(&operator, None, &other_owner, pb::UserStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(done.status(), pb::UserStatus::Disabled);
    // The operator also acts on users in orgs, and the token names their org.
    let done = set(&operator, None, &owner, pb::UserStatus::Disabled)
        .await
        .unwrap();
    assert!(!done.consistency_token.is_empty());
    let c = s
        .authz
        .clone()
        .check(keyed(
            &operator,
            None,
            pb::CheckRequest {
                org_id: org.clone(),
                user_id: owner.clone(),
                permission: "org.delete".into(),
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(
                        done.consistency_token,
                    )),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.reason(), pb::Reason::UserDisabled);
    s.stop().await;
}

/// A disabled admin keeps their membership but manages nothing, on either service.
async fn disabled_actors_manage_nothing(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (org, owner) = s.org("Acme", "team").await;
    let admin = s.member(&org, &owner, "admin").await;
    let member = s.member(&org, &owner, "member").await;
    set_status(&s, &owner, &admin, pb::UserStatus::Disabled)
        .await
        .unwrap();
    let mut team = s.team.clone();
    let mut errors = vec![
        team.invite_member(as_actor(
            &admin,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "new@example.com".into(),
                first_name: "N".into(),
                last_name: String::new(),
                role: "member".into(),
            },
        ))
        .await
        .map(|_| ()),
        team.update_member_role(as_actor(
            &admin,
            pb::UpdateMemberRoleRequest {
                org_id: org.clone(),
                user_id: member.clone(),
                role: "manager".into(),
            },
        ))
        .await
        .map(|_| ()),
        team.remove_member(as_actor(
            &admin,
            pb::RemoveMemberRequest {
                org_id: org.clone(),
                user_id: member.clone(),
            },
        ))
        .await
        .map(|_| ()),
        team.list_members(as_actor(
            &admin,
            pb::ListMembersRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        team.list_organizations(as_actor(
            &admin,
            pb::ListOrganizationsRequest {
                user_id: admin.clone(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
    ];
    errors.push(
        identity(&s)
            .update_user(as_actor(
                &admin,
                pb::UpdateUserRequest {
                    user_id: admin.clone(),
                    first_name: Some("Still here".into()),
                    last_name: None,
                },
            ))
            .await
            .map(|_| ()),
    );
    errors.push(
        set_status(&s, &admin, &member, pb::UserStatus::Disabled)
            .await
            .map(|_| ()),
    );
    for (i, r) in errors.into_iter().enumerate() {
        let e = r.err().unwrap_or_else(|| panic!("call {i} succeeded"));
        assert_error(&e, Code::PermissionDenied, "USER_DISABLED");
    }
    assert_eq!(s.members(&org, &owner).await.len(), 3, "nothing changed");
    s.stop().await;
}

/// In an org that requires two-factor, an admin without it manages nothing until they enrol,
/// and enrolling stays open to them.
async fn actors_without_two_factor_manage_nothing_in_orgs_that_require_it(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (org, owner) = s.org("Acme", "team").await;
    let admin = s.member(&org, &owner, "admin").await;
    enable_two_factor(&s, &owner).await;
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
    let list = || {
        let mut team = s.team.clone();
        let req = as_actor(
            &admin,
            pb::ListMembersRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        );
        async move { team.list_members(req).await }
    };
    assert_error(
        &unwrap_err(list().await),
        Code::PermissionDenied,
        "MFA_REQUIRED",
    );
    let err = unwrap_err(
        s.team
            .clone()
            .remove_member(as_actor(
                &admin,
                pb::RemoveMemberRequest {
                    org_id: org.clone(),
                    user_id: owner.clone(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MFA_REQUIRED");
    let (_, confirmed) = enable_two_factor(&s, &admin).await;
    assert!(!confirmed.is_empty());
    list().await.unwrap();
    s.stop().await;
}

/// With service keys (or `invitations.return_token = false`), InviteMember and
/// ResendInvitation answer with an empty token; the invitee's email carries it.
async fn inviters_never_see_tokens_where_email_delivers_them(b: Backend) {
    let (key, key_cfg) = service_key("settings-ui", "team");
    let s = TestServer::spawn_with(b, |c| {
        cheap_hashing(c);
        c.auth.keys = vec![key_cfg];
    })
    .await;
    let (org, owner) = keyed_org(&s, &key, "Acme", "owner@example.com").await;
    let invited = s
        .team
        .clone()
        .invite_member(keyed(
            &key,
            Some(&owner),
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "victim@corp.example".into(),
                first_name: "V".into(),
                last_name: String::new(),
                role: "member".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invited.token, "", "the inviter gets no token");
    let resent = s
        .team
        .clone()
        .resend_invitation(keyed(
            &key,
            Some(&owner),
            pb::ResendInvitationRequest {
                invitation_id: invited.invitation.unwrap().id,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resent.token, "", "nor on a resend");
    // The invitee's email works, and may set the new account's password.
    let token = s.delivered_token(resent.token, "victim@corp.example").await;
    assert!(
        mailed_tokens(&s, "invitation_email", "victim@corp.example").contains(&token),
        "the token came by email"
    );
    s.team
        .clone()
        .accept_invitation(keyed(
            &key,
            None,
            pb::AcceptInvitationRequest {
                token,
                password: Some(PASSWORD.into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut id = identity(&s);
    id.authenticate(keyed(
        &key,
        None,
        pb::AuthenticateRequest {
            email: "victim@corp.example".into(),
            password: PASSWORD.into(),
            totp_code: None,
        },
    ))
    .await
    .unwrap();
    s.stop().await;
}

/// Pre-hijacking: where the inviter is handed the token, accepting with a password is
/// refused, so no password the inviter chose ever opens the invitee's account.
async fn a_token_returned_to_the_inviter_cannot_set_a_password(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing_returning_tokens).await;
    let (evil, mallory) = s.org("Evil", "team").await;
    let invited = s
        .team
        .clone()
        .invite_member(as_actor(
            &mallory,
            pb::InviteMemberRequest {
                org_id: evil.clone(),
                email: "victim@corp.example".into(),
                first_name: "V".into(),
                last_name: String::new(),
                role: "member".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!invited.token.is_empty(), "development mode returns it");
    let err = unwrap_err(
        s.team
            .clone()
            .accept_invitation(pb::AcceptInvitationRequest {
                token: invited.token.clone(),
                password: Some("mallory's own passphrase".into()),
                ..Default::default()
            })
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "PASSWORD_NOT_ACCEPTED");
    let user = teamgate::store::users::find_by_email(s.app().store.conn(), "victim@corp.example")
        .await
        .unwrap();
    assert!(user.is_none(), "no account was made");
    // Accepted without one, the account has no password until its owner resets it by email.
    s.team
        .clone()
        .accept_invitation(pb::AcceptInvitationRequest {
            token: invited.token,
            ..Default::default()
        })
        .await
        .unwrap();
    let err =
        unwrap_err(sign_in(&s, "victim@corp.example", "mallory's own passphrase", None).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    s.stop().await;
}

fn cheap_hashing_returning_tokens(c: &mut Config) {
    cheap_hashing(c);
    c.invitations.return_token = Some(true);
}

/// Sign-ins, failed sign-ins and reset requests reach the audit log (behind audit.view) and
/// never the change feed; the next event a watcher sees is the real change after them.
async fn sign_in_activity_stays_out_of_the_change_feed(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (org, owner) = s.org("Acme", "team").await;
    member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "pat@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();
    let mut stream = s
        .team
        .clone()
        .watch_changes(as_actor(
            &owner,
            pb::WatchChangesRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    sign_in(&s, "pat@example.com", PASSWORD, None)
        .await
        .unwrap();
    sign_in(&s, "pat@example.com", "not the password", None)
        .await
        .unwrap_err();
    identity(&s)
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "pat@example.com".into(),
        })
        .await
        .unwrap();
    s.team
        .clone()
        .update_organization(as_actor(
            &owner,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                name: Some("Acme renamed".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let next = tokio::time::timeout(StdDuration::from_secs(5), stream.message())
        .await
        .expect("the rename arrives")
        .unwrap()
        .unwrap();
    assert_eq!(next.action, "organization.updated");
    let audit = s
        .team
        .clone()
        .list_audit_events(as_actor(
            &owner,
            pb::ListAuditEventsRequest {
                org_id: org.clone(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "user.signed_in",
        "user.sign_in_failed",
        "user.password_reset_requested",
    ] {
        assert!(actions.contains(&action), "{action} audited: {actions:?}");
    }
    s.stop().await;
}

/// SetUserStatus locks the user before reading their orgs, so an AcceptInvitation into
/// another org either lands first (and is disabled with the rest) or waits: no cached allow
/// survives in the new org.
async fn disabling_races_an_accept_into_another_org(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (home, home_owner) = s.org("Home", "business").await;
    let (away, away_owner) = s.org("Away", "business").await;
    // The away owner also manages everyone in Home, so the status change is allowed.
    let away_owner_email = email_of(&s, &away_owner).await;
    s.member_with_email(&home, &home_owner, "admin", &away_owner_email)
        .await;
    for round in 0..8 {
        let user = s.member(&home, &home_owner, "member").await;
        let email = email_of(&s, &user).await;
        let invited = s
            .team
            .clone()
            .invite_member(as_actor(
                &away_owner,
                pb::InviteMemberRequest {
                    org_id: away.clone(),
                    email: email.clone(),
                    first_name: "R".into(),
                    last_name: String::new(),
                    role: "member".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let token = s.delivered_token(invited.token, &email).await;
        let disable = set_status(&s, &away_owner, &user, pb::UserStatus::Disabled);
        let accept_and_check = async {
            s.team
                .clone()
                .accept_invitation(pb::AcceptInvitationRequest {
                    token,
                    ..Default::default()
                })
                .await
                .unwrap();
            // Warms the cache with whatever the accept's commit made visible.
            s.check(&away, &user, "projects.view").await
        };
        let (disabled, _) = tokio::join!(disable, accept_and_check);
        match disabled {
            Ok(_) => {}
            // The accept landed first: the away owner now must (and does) manage the user
            // there too, so this only happens if the rule misfired.
            Err(e) => panic!("round {round}: {e:?}"),
        }
        for org in [&home, &away] {
            let c = s.check(org, &user, "projects.view").await;
            assert_eq!(
                c.reason(),
                pb::Reason::UserDisabled,
                "round {round}: a stale allow survived in {org}"
            );
        }
    }
    s.stop().await;
}

/// GetUser: the user, members.view holders of the user's orgs and the operator; to anyone
/// else a real account and a missing one look the same.
async fn get_user_answers_only_those_who_may_see_the_user(b: Backend) {
    let s = TestServer::spawn_with(b, cheap_hashing).await;
    let (org, owner) = s.org("Acme", "team").await;
    let member = s.member(&org, &owner, "member").await;
    let email = email_of(&s, &member).await;
    let (_other, stranger) = s.org("Other", "team").await;
    let get = |actor: Option<&str>, r: pb::get_user_request::UserRef| {
        let mut id = identity(&s);
        let message = pb::GetUserRequest { user_ref: Some(r) };
        let req = match actor {
            Some(a) => as_actor(a, message),
            None => Request::new(message),
        };
        async move { id.get_user(req).await.map(|r| r.into_inner()) }
    };
    use pb::get_user_request::UserRef;
    for actor in [&member, &owner] {
        let u = get(Some(actor), UserRef::UserId(member.clone()))
            .await
            .unwrap();
        assert_eq!(u.email, email);
    }
    let hidden = unwrap_err(get(Some(&stranger), UserRef::Email(email.clone())).await);
    let missing =
        unwrap_err(get(Some(&stranger), UserRef::Email("nobody@example.com".into())).await);
    assert_error(&hidden, Code::NotFound, "USER_NOT_FOUND");
    assert_error(&missing, Code::NotFound, "USER_NOT_FOUND");
    assert_eq!(hidden.message(), missing.message(), "indistinguishable");
    let by_id = unwrap_err(get(Some(&stranger), UserRef::UserId(member.clone())).await);
    assert_error(&by_id, Code::NotFound, "USER_NOT_FOUND");
    let anonymous = unwrap_err(get(None, UserRef::UserId(member.clone())).await);
    assert_error(&anonymous, Code::Unauthenticated, "MISSING_ACTOR");
    s.stop().await;
}

/// Reset requests: at most `max_reset_requests_per_email` emails per address per window,
/// the same answer for unknown addresses, and a new link retires the older ones.
async fn password_reset_requests_are_limited_per_address_and_retire_older_links(b: Backend) {
    let s = TestServer::spawn_with(b, |c| {
        cheap_hashing(c);
        c.identity.max_reset_requests_per_email = 2;
    })
    .await;
    let (org, owner) = s.org("Acme", "team").await;
    member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "pat@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();
    let request = |email: &str| {
        let mut id = identity(&s);
        let req = pb::RequestPasswordResetRequest {
            email: email.into(),
        };
        async move { id.request_password_reset(req).await.map(|_| ()) }
    };
    for _ in 0..4 {
        request("pat@example.com").await.unwrap();
        request("nobody@example.com").await.unwrap();
    }
    let tokens = wait_for_mail(&s, "password_reset_email", "pat@example.com", 2).await;
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    assert_eq!(
        mailed_tokens(&s, "password_reset_email", "pat@example.com").len(),
        2,
        "two emails within the window, no more"
    );
    let reset = |token: &str| {
        let mut id = identity(&s);
        let req = pb::ResetPasswordRequest {
            token: token.into(),
            new_password: "a brand new passphrase".into(),
        };
        async move { id.reset_password(req).await.map(|_| ()) }
    };
    // tokens[0] is the newest; the older link was retired by it.
    let err = unwrap_err(reset(&tokens[1]).await);
    assert_error(&err, Code::NotFound, "RESET_TOKEN_INVALID");
    reset(&tokens[0]).await.unwrap();
    // After the window, the address may ask again.
    s.clock.advance(Duration::minutes(16));
    request("pat@example.com").await.unwrap();
    wait_for_mail(&s, "password_reset_email", "pat@example.com", 3).await;
    s.stop().await;
}

async fn enrolled_user(s: &TestServer, email: &str) -> (String, String) {
    let (org, owner) = s.org("Acme", "team").await;
    let user = member_with_password(s, &org, &owner, "member", email, Some(PASSWORD))
        .await
        .unwrap();
    let (secret, _) = enable_two_factor(s, &user).await;
    (user, secret)
}

/// Two sign-ins racing with the same code: one gets in.
async fn a_totp_code_signs_in_once_under_concurrency(b: Backend) {
    // The losers' failures must not throttle the rounds that follow.
    let s = TestServer::spawn_with(b, |c| {
        cheap_hashing(c);
        c.identity.max_failed_sign_ins = 1000;
        c.identity.max_failed_sign_ins_per_caller = 1000;
    })
    .await;
    let (_user, secret) = enrolled_user(&s, "fay@example.com").await;
    for _ in 0..5 {
        s.clock.advance(Duration::seconds(30));
        let code = totp_code(&secret, now(&s));
        let attempts = (0..4).map(|_| sign_in(&s, "fay@example.com", PASSWORD, Some(code.clone())));
        let results = futures::future::join_all(attempts).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
    }
    s.stop().await;
}

/// ConfirmTotp/DisableTotp wrong codes count like wrong passwords on the account.
async fn wrong_totp_codes_count_against_the_account(b: Backend) {
    let s = TestServer::spawn_with(b, |c| {
        cheap_hashing(c);
        c.identity.max_failed_sign_ins = 3;
        c.identity.max_failed_sign_ins_per_caller = 1000;
    })
    .await;
    let (user, secret) = enrolled_user(&s, "gil@example.com").await;
    let disable = |code: String| {
        let mut id = identity(&s);
        let req = as_actor(
            &user,
            pb::DisableTotpRequest {
                user_id: user.clone(),
                code,
            },
        );
        async move { id.disable_totp(req).await }
    };
    for _ in 0..3 {
        let err = unwrap_err(disable("000000".into()).await);
        assert_error(&err, Code::InvalidArgument, "INVALID_CODE");
    }
    s.clock.advance(Duration::seconds(30));
    let err = unwrap_err(disable(totp_code(&secret, now(&s))).await);
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    s.clock.advance(Duration::minutes(16));
    let done = disable(totp_code(&secret, now(&s)))
        .await
        .unwrap()
        .into_inner();
    assert!(!done.consistency_token.is_empty());
    s.stop().await;
}

/// Session tokens carry `iss` and `aud` from config; a verifier expecting another audience
/// (a token minted for a different deployment) rejects them.
async fn session_tokens_carry_the_configured_issuer_and_audience(b: Backend) {
    let s = TestServer::spawn_with(b, |c| {
        cheap_hashing(c);
        c.identity.issuer = "https://id.acme.example".into();
        c.identity.audience = "acme-web".into();
    })
    .await;
    let (org, owner) = s.org("Acme", "team").await;
    member_with_password(
        &s,
        &org,
        &owner,
        "member",
        "pat@example.com",
        Some(PASSWORD),
    )
    .await
    .unwrap();
    let token = sign_in(&s, "pat@example.com", PASSWORD, None)
        .await
        .unwrap()
        .session_token;
    let set = jwks(&s).await;
    let claims = verify_for(&token, &set, "https://id.acme.example", "acme-web").unwrap();
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str()),
        ("https://id.acme.example", "acme-web")
    );
    assert!(verify_for(&token, &set, "https://id.acme.example", "billing").is_err());
    assert!(verify_for(&token, &set, "https://evil.example", "acme-web").is_err());
    s.stop().await;
}
