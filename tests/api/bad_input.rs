//! Bad input: every malformed field is INVALID_ARGUMENT with the field named, and nothing is
//! written.

use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(rejects_malformed_fields, oversized_messages_are_refused);

#[track_caller]
fn assert_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let br = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest on {status:?}"));
    assert!(
        br.field_violations.iter().any(|v| v.field == field),
        "{field} not named in {status:?}"
    );
}

fn create(name: &str, email: &str, plan: &str) -> pb::CreateOrganizationRequest {
    pb::CreateOrganizationRequest {
        name: name.into(),
        plan: plan.into(),
        owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
            pb::NewUser {
                email: email.into(),
                first_name: "Ann".into(),
                last_name: "Lee".into(),
            },
        )),
    }
}

async fn rejects_malformed_fields(b: Backend) {
    let s = TestServer::spawn(b).await;
    let mut team = s.team.clone();
    for (req, field) in [
        (create("", "a@example.com", ""), "name"),
        (create(&"x".repeat(201), "a@example.com", ""), "name"),
        (create("Acme", "not-an-email", ""), "owner.email"),
        (
            create("Acme", "a@example.com'; DROP TABLE users; --", ""),
            "owner.email",
        ),
        (create("Acme", "a@example.com", "platinum"), "plan"),
    ] {
        let err = unwrap_err(team.create_organization(req).await);
        assert_field(&err, field);
    }
    let err = unwrap_err(
        team.create_organization(pb::CreateOrganizationRequest {
            name: "Acme".into(),
            ..Default::default()
        })
        .await,
    );
    assert_field(&err, "owner");

    let (org, owner) = s.org("Acme", "").await;
    let err = unwrap_err(
        team.get_organization(as_actor(
            &owner,
            pb::GetOrganizationRequest {
                org_id: "123".into(),
            },
        ))
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_ID");
    assert_field(&err, "org_id");
    let mut bad_actor = tonic::Request::new(pb::GetOrganizationRequest {
        org_id: org.clone(),
    });
    bad_actor
        .metadata_mut()
        .insert("x-actor-user-id", "robert'); --".parse().unwrap());
    let err = unwrap_err(team.get_organization(bad_actor).await);
    assert_error(&err, Code::Unauthenticated, "INVALID_ACTOR");

    for (size, ok) in [(0, true), (500, true), (501, false), (-5, false)] {
        let r = team
            .list_members(as_actor(
                &owner,
                pb::ListMembersRequest {
                    org_id: org.clone(),
                    page_size: size,
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(r.is_ok(), ok, "page_size {size}");
        if let Err(e) = r {
            assert_error(&e, Code::InvalidArgument, "INVALID_PAGE_SIZE");
        }
    }
    for token in [
        "garbage",
        "eyJsIjoibWVtYmVycyIsImEiOiInIE9SIDE9MS0tIn0",
        &"A".repeat(5000),
    ] {
        let err = unwrap_err(
            team.list_members(as_actor(
                &owner,
                pb::ListMembersRequest {
                    org_id: org.clone(),
                    page_token: token.into(),
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_error(&err, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    }
    let err = unwrap_err(
        team.update_member_role(as_actor(
            &owner,
            pb::UpdateMemberRoleRequest {
                org_id: org.clone(),
                user_id: owner.clone(),
                role: "Owner!".into(),
            },
        ))
        .await,
    );
    assert_field(&err, "role");
    let err = unwrap_err(
        team.invite_member(as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "two@@example.com".into(),
                first_name: "T".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_EMAIL");

    // Nothing above wrote anything: the org still has one member and one audit event.
    let got = team
        .get_organization(as_actor(
            &owner,
            pb::GetOrganizationRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.member_count, 1);
    let events = team
        .list_audit_events(as_actor(
            &owner,
            pb::ListAuditEventsRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    s.stop().await;
}

async fn oversized_messages_are_refused(b: Backend) {
    let s = TestServer::spawn_with(b, |c| c.server.max_message_bytes = 64 * 1024).await;
    let err = unwrap_err(
        s.team
            .clone()
            .create_organization(create(&"x".repeat(100_000), "a@example.com", ""))
            .await,
    );
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // The server is unharmed.
    s.org("Still fine", "").await;
    s.stop().await;
}
