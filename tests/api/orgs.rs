//! Organizations: create, read, update, delete, list.

use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    create_and_get,
    create_with_existing_user_links_them,
    update_needs_permissions_and_checks_plan,
    soft_delete_denies_everything,
    list_my_organizations_paginates,
);

async fn create_and_get(b: Backend) {
    let s = TestServer::spawn(b).await;
    let resp = s
        .team
        .clone()
        .create_organization(pb::CreateOrganizationRequest {
            name: "  Acme  ".into(),
            plan: String::new(),
            owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                pb::NewUser {
                    email: " Ann@Example.COM ".into(),
                    first_name: "Ann".into(),
                    last_name: "Lee".into(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let org = resp.organization.unwrap();
    let owner = resp.owner.unwrap();
    assert_eq!(org.name, "Acme");
    assert_eq!(org.plan, "free");
    assert_eq!(org.member_count, 1);
    assert_eq!(owner.email, "ann@example.com");
    assert_eq!(owner.role, "owner");
    assert!(!resp.consistency_token.is_empty());
    assert!(uuid::Uuid::parse_str(&org.id).unwrap().get_version_num() == 7);

    let got = s
        .team
        .clone()
        .get_organization(as_actor(
            &owner.user_id,
            pb::GetOrganizationRequest {
                org_id: org.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, org.id);
    assert_eq!(got.member_count, 1);

    // No actor: UNAUTHENTICATED. A stranger: PERMISSION_DENIED naming the permission.
    let err = unwrap_err(
        s.team
            .clone()
            .get_organization(pb::GetOrganizationRequest {
                org_id: org.id.clone(),
            })
            .await,
    );
    assert_error(&err, Code::Unauthenticated, "MISSING_ACTOR");
    let (_, stranger) = s.org("Other", "").await;
    let err = unwrap_err(
        s.team
            .clone()
            .get_organization(as_actor(
                &stranger,
                pb::GetOrganizationRequest {
                    org_id: org.id.clone(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    assert!(err.message().contains("members.view"), "{}", err.message());
    s.stop().await;
}

async fn create_with_existing_user_links_them(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (_, owner) = s.org("First", "").await;
    let resp = s
        .team
        .clone()
        .create_organization(pb::CreateOrganizationRequest {
            name: "Second".into(),
            plan: "team".into(),
            owner_ref: Some(pb::create_organization_request::OwnerRef::OwnerUserId(
                owner.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.owner.unwrap().user_id, owner);
    assert_eq!(resp.organization.unwrap().plan, "team");

    let err = unwrap_err(
        s.team
            .clone()
            .create_organization(pb::CreateOrganizationRequest {
                name: "Third".into(),
                plan: String::new(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::OwnerUserId(
                    uuid::Uuid::now_v7().to_string(),
                )),
            })
            .await,
    );
    assert_error(&err, Code::NotFound, "USER_NOT_FOUND");
    s.stop().await;
}

async fn update_needs_permissions_and_checks_plan(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "team").await;
    let manager = s.member(&org, &owner, "manager").await;
    let admin = s.member(&org, &owner, "admin").await;

    let rename = |actor: &str, name: &str| {
        as_actor(
            actor,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                name: Some(name.into()),
                ..Default::default()
            },
        )
    };
    let err = unwrap_err(
        s.team
            .clone()
            .update_organization(rename(&manager, "Nope"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("org.update"));
    let resp = s
        .team
        .clone()
        .update_organization(rename(&admin, "Acme Inc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.organization.unwrap().name, "Acme Inc");
    assert!(!resp.consistency_token.is_empty());

    // Plan changes need billing.manage; unknown plans and too-small plans are refused.
    let plan = |actor: &str, plan: &str| {
        as_actor(
            actor,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                plan: Some(plan.into()),
                ..Default::default()
            },
        )
    };
    let err = unwrap_err(
        s.team
            .clone()
            .update_organization(plan(&manager, "business"))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    let err = unwrap_err(
        s.team
            .clone()
            .update_organization(plan(&owner, "platinum"))
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_PLAN");
    for _ in 0..3 {
        s.member(&org, &owner, "member").await;
    }
    // 6 members now; free allows 5.
    let err = unwrap_err(
        s.team
            .clone()
            .update_organization(plan(&owner, "free"))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");
    let ok = s
        .team
        .clone()
        .update_organization(plan(&admin, "business"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.organization.unwrap().plan, "business");
    s.stop().await;
}

async fn soft_delete_denies_everything(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Doomed", "").await;
    let admin = s.member(&org, &owner, "admin").await;
    assert!(s.allowed(&org, &admin, "members.view").await);

    let err = unwrap_err(
        s.team
            .clone()
            .delete_organization(as_actor(
                &admin,
                pb::DeleteOrganizationRequest {
                    org_id: org.clone(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_PERMISSION");
    assert!(err.message().contains("org.delete"));

    let token = s
        .team
        .clone()
        .delete_organization(as_actor(
            &owner,
            pb::DeleteOrganizationRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    assert!(!token.is_empty());

    for user in [&owner, &admin] {
        let c = s.check(&org, user, "members.view").await;
        assert!(!c.allowed);
        assert_eq!(c.reason(), pb::Reason::OrgNotFound);
    }
    let err = unwrap_err(
        s.team
            .clone()
            .get_organization(as_actor(
                &owner,
                pb::GetOrganizationRequest {
                    org_id: org.clone(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::NotFound, "ORG_NOT_FOUND");
    let list = s
        .team
        .clone()
        .list_organizations(as_actor(
            &owner,
            pb::ListOrganizationsRequest {
                user_id: owner.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(list.organizations.is_empty());
    s.stop().await;
}

async fn list_my_organizations_paginates(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (first, owner) = s.org("Org 0", "").await;
    let mut ids = vec![first];
    for i in 1..5 {
        let resp = s
            .team
            .clone()
            .create_organization(pb::CreateOrganizationRequest {
                name: format!("Org {i}"),
                plan: String::new(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::OwnerUserId(
                    owner.clone(),
                )),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(resp.organization.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .team
            .clone()
            .list_organizations(as_actor(
                &owner,
                pb::ListOrganizationsRequest {
                    user_id: owner.clone(),
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.organizations.len() <= 2);
        for o in &page.organizations {
            assert_eq!(o.role, "owner");
            seen.push(o.organization.as_ref().unwrap().id.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.sort();
    assert_eq!(seen, ids);

    // Only your own list.
    let (_, other) = s.org("Someone else's", "").await;
    let err = unwrap_err(
        s.team
            .clone()
            .list_organizations(as_actor(
                &other,
                pb::ListOrganizationsRequest {
                    user_id: owner.clone(),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "ACTOR_MISMATCH");
    s.stop().await;
}
