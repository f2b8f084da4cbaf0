//! AuthzService: Check, BatchCheck, ListPermissions, LookupOrganizations, consistency modes.

use teamgate::proto::teamgate::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, TestServer, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    check_reasons,
    consistency_modes,
    batch_check_in_order,
    list_permissions_and_lookup,
);

async fn check_reasons(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let c = s.check(&org, &member, "projects.view").await;
    assert!(c.allowed);
    assert_eq!(c.reason(), pb::Reason::Allowed);
    assert!(!c.consistency_token.is_empty());
    let c = s.check(&org, &member, "org.delete").await;
    assert!(!c.allowed);
    assert_eq!(c.reason(), pb::Reason::MissingPermission);
    let stranger = uuid::Uuid::now_v7().to_string();
    let c = s.check(&org, &stranger, "projects.view").await;
    assert_eq!(c.reason(), pb::Reason::NotMember);
    let c = s
        .check(&uuid::Uuid::now_v7().to_string(), &member, "projects.view")
        .await;
    assert_eq!(c.reason(), pb::Reason::OrgNotFound);

    let err = unwrap_err(
        s.authz
            .clone()
            .check(pb::CheckRequest {
                org_id: org.clone(),
                user_id: member.clone(),
                permission: "projects.fly".into(),
                consistency: None,
            })
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_PERMISSION");
    let err = unwrap_err(
        s.authz
            .clone()
            .check(pb::CheckRequest {
                org_id: "not-an-id".into(),
                user_id: member.clone(),
                permission: "projects.view".into(),
                consistency: None,
            })
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_ID");
    s.stop().await;
}

fn with(
    req: pb::consistency::Requirement,
    org: &str,
    user: &str,
    permission: &str,
) -> pb::CheckRequest {
    pb::CheckRequest {
        org_id: org.into(),
        user_id: user.into(),
        permission: permission.into(),
        consistency: Some(pb::Consistency {
            requirement: Some(req),
        }),
    }
}

async fn consistency_modes(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    use pb::consistency::Requirement::*;
    for req in [MinimizeLatency(true), FullyConsistent(true)] {
        let c = s
            .authz
            .clone()
            .check(with(req, &org, &member, "projects.view"))
            .await
            .unwrap()
            .into_inner();
        assert!(c.allowed);
    }
    let err = unwrap_err(
        s.authz
            .clone()
            .check(with(
                AtLeastAsFresh("garbage".into()),
                &org,
                &member,
                "projects.view",
            ))
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_CONSISTENCY_TOKEN");

    // A second replica on the same database: with the write's token it reads its own write.
    let replica = s.replica().await;
    assert!(replica.allowed(&org, &member, "projects.view").await);
    let token = s
        .team
        .clone()
        .update_member_role(crate::helpers::as_actor(
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
    let c = replica
        .authz
        .clone()
        .check(with(
            AtLeastAsFresh(token.clone()),
            &org,
            &member,
            "projects.delete",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(c.allowed, "at_least_as_fresh must see the role change");
    let c = replica
        .authz
        .clone()
        .check(with(
            FullyConsistent(true),
            &org,
            &member,
            "projects.delete",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(c.allowed);
    replica.stop().await;
    s.stop().await;
}

async fn batch_check_in_order(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let (org2, owner2) = s.org("Other", "").await;
    let item = |o: &str, u: &str, p: &str| pb::CheckItem {
        org_id: o.into(),
        user_id: u.into(),
        permission: p.into(),
    };
    let items = vec![
        item(&org, &owner, "org.delete"),
        item(&org, &member, "org.delete"),
        item(&org, &member, "projects.view"),
        item(&org2, &member, "projects.view"),
        item(&org2, &owner2, "audit.view"),
        item(&uuid::Uuid::now_v7().to_string(), &owner, "audit.view"),
    ];
    let results = s
        .authz
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: items.clone(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let got: Vec<(bool, pb::Reason)> = results.iter().map(|r| (r.allowed, r.reason())).collect();
    assert_eq!(
        got,
        vec![
            (true, pb::Reason::Allowed),
            (false, pb::Reason::MissingPermission),
            (true, pb::Reason::Allowed),
            (false, pb::Reason::NotMember),
            (true, pb::Reason::Allowed),
            (false, pb::Reason::OrgNotFound),
        ]
    );
    // 1000 items are fine; 1001 and 0 are not.
    let many: Vec<pb::CheckItem> = (0..1000).map(|i| items[i % items.len()].clone()).collect();
    let r = s
        .authz
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: many.clone(),
            consistency: None,
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().results.len(), 1000);
    let mut too_many = many;
    too_many.push(items[0].clone());
    let err = unwrap_err(
        s.authz
            .clone()
            .batch_check(pb::BatchCheckRequest {
                items: too_many,
                consistency: None,
            })
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_BATCH_SIZE");
    let err = unwrap_err(
        s.authz
            .clone()
            .batch_check(pb::BatchCheckRequest {
                items: vec![],
                consistency: None,
            })
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "INVALID_BATCH_SIZE");
    let err = unwrap_err(
        s.authz
            .clone()
            .batch_check(pb::BatchCheckRequest {
                items: vec![item(&org, &owner, "nope.nope")],
                consistency: None,
            })
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_PERMISSION");
    s.stop().await;
}

async fn list_permissions_and_lookup(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Acme", "").await;
    let member = s.member(&org, &owner, "member").await;
    let resp = s
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
    assert_eq!(resp.role, "member");
    assert!(resp.permissions.contains(&"projects.view".to_string()));
    assert!(!resp.permissions.contains(&"org.delete".to_string()));

    // The owner owns several orgs; in one they are only a member.
    let mut owned = vec![org.clone()];
    for i in 0..4 {
        let r = s
            .team
            .clone()
            .create_organization(pb::CreateOrganizationRequest {
                name: format!("O{i}"),
                plan: String::new(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::OwnerUserId(
                    owner.clone(),
                )),
            })
            .await
            .unwrap()
            .into_inner();
        owned.push(r.organization.unwrap().id);
    }
    let (foreign, foreign_owner) = s.org("Foreign", "").await;
    let email = s
        .team
        .clone()
        .get_member(crate::helpers::as_actor(
            &owner,
            pb::GetMemberRequest {
                org_id: org.clone(),
                user_id: owner.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .email;
    s.member_with_email(&foreign, &foreign_owner, "member", &email)
        .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .authz
            .clone()
            .lookup_organizations(pb::LookupOrganizationsRequest {
                user_id: owner.clone(),
                permission: "org.delete".into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.org_ids);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    owned.sort();
    assert_eq!(
        seen, owned,
        "every owned org, never the one where they are a member"
    );
    s.stop().await;
}
