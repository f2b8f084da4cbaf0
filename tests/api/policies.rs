//! The shipped policies (embedded default, loyalty program, affiliate program): each role ×
//! representative permissions, their plans and ownership hand-over; `teamgate policy check`;
//! and policy drift (a policy that no longer covers what the database references).

use std::path::{Path, PathBuf};
use std::process::Command;

use teamgate::domain::policy::Policy;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::startup::{self, Dependencies};
use tonic::Code;

use crate::helpers::{self, Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    default_policy_role_table,
    loyalty_policy_role_table,
    loyalty_starter_plan_is_single_user,
    loyalty_transfer_leaves_previous_admin_as_manager,
    affiliate_policy_role_table,
    affiliate_only_owners_delete_and_transfer,
    drift_refuses_start_and_policy_check_reports_it,
);

const LOYALTY: &str = "deploy/policies/loyalty-program.toml";
const AFFILIATE: &str = "deploy/policies/affiliate-program.toml";
const DEFAULT: &str = "deploy/policies/default.toml";

async fn spawn_with_policy(b: Backend, file: &str) -> TestServer {
    let path = helpers::repo_path(file);
    TestServer::spawn_with(b, |c| c.policy = Some(path)).await
}

/// An org with one member per role (the owner is the first); returns the org and, per role,
/// the user holding it.
async fn org_with_roles(s: &TestServer, plan: &str, roles: &[&str]) -> (String, Vec<String>) {
    let (org, owner) = s.org("Table", plan).await;
    let mut users = vec![owner.clone()];
    for role in &roles[1..] {
        users.push(s.member(&org, &owner, role).await);
    }
    (org, users)
}

/// Checks every role × permission against the table: one row per permission, one column
/// per role (`+` allowed, `-` denied).
async fn assert_table(s: &TestServer, roles: &[&str], table: &[(&str, &str)]) {
    let (org, users) = org_with_roles(s, "", roles).await;
    let mut wrong = Vec::new();
    for (permission, expected) in table {
        assert_eq!(expected.len(), roles.len(), "row for {permission}");
        for ((role, user), want) in roles.iter().zip(&users).zip(expected.chars()) {
            let got = s.check(&org, user, permission).await;
            let want = want == '+';
            if got.allowed != want {
                wrong.push(format!(
                    "{role} × {permission}: expected {want}, got {got:?}"
                ));
            }
            let reason = if want {
                pb::Reason::Allowed
            } else {
                pb::Reason::MissingPermission
            };
            assert_eq!(got.reason(), reason, "{role} × {permission}");
        }
    }
    assert!(
        wrong.is_empty(),
        "role table mismatches:\n{}",
        wrong.join("\n")
    );
}

/// ListPermissions answers a role's full permission set, as the policy file declares it.
async fn assert_listed_permissions(s: &TestServer, org: &str, user: &str, file: &str, role: &str) {
    let policy = load(file);
    let mut expected = policy.built_in(role).unwrap().permissions.to_strings();
    expected.sort();
    let listed = s
        .authz
        .clone()
        .list_permissions(pb::ListPermissionsRequest {
            org_id: org.into(),
            user_id: user.into(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = listed.permissions;
    got.sort();
    assert_eq!(listed.role, role);
    assert_eq!(got, expected, "permissions of {role}");
}

fn load(file: &str) -> Policy {
    let source = std::fs::read_to_string(helpers::repo_path(file)).unwrap();
    Policy::parse(&source).unwrap_or_else(|e| panic!("{file} is invalid:\n{e}"))
}

async fn default_policy_role_table(b: Backend) {
    // The file is the embedded default; passing it explicitly must change nothing.
    let s = spawn_with_policy(b, DEFAULT).await;
    let roles = ["owner", "admin", "manager", "member"];
    assert_table(
        &s,
        &roles,
        &[
            ("members.view", "++++"),
            ("members.manage", "+++-"),
            ("roles.manage", "++--"),
            ("org.update", "++--"),
            ("billing.manage", "++--"),
            ("audit.view", "++--"),
            ("org.delete", "+---"),
            ("org.transfer", "+---"),
            ("projects.view", "++++"),
            ("projects.edit", "++++"),
            ("projects.delete", "+++-"),
            ("reports.view", "+++-"),
        ],
    )
    .await;
    let p = load(DEFAULT);
    assert_eq!(p.owner_role(), "owner");
    assert_eq!(p.role_below_owner(), "admin");
    assert_eq!(p.invite_role(), "member");
    assert_eq!(
        p.roles(),
        Policy::embedded_default().roles(),
        "deploy/policies/default.toml is the embedded default"
    );
    s.stop().await;
}

const LOYALTY_ROLES: [&str; 3] = ["admin", "manager", "user"];

async fn loyalty_policy_role_table(b: Backend) {
    let s = spawn_with_policy(b, LOYALTY).await;
    // The table needs three members: on the growth plan (the default starter plan is single-user).
    let (org, users) = {
        let (org, owner) = s.org("Bean There", "growth").await;
        let manager = s.member(&org, &owner, "manager").await;
        let user = s.member(&org, &owner, "user").await;
        (org, vec![owner, manager, user])
    };
    let table: &[(&str, &str)] = &[
        // Users, billing, settings, integrations, programs: admins only.
        ("members.view", "+--"),
        ("members.manage", "+--"),
        ("roles.manage", "+--"),
        ("billing.manage", "+--"),
        ("settings.manage", "+--"),
        ("integrations.manage", "+--"),
        ("programs.manage", "+--"),
        ("org.update", "+--"),
        ("org.delete", "+--"),
        ("org.transfer", "+--"),
        ("audit.view", "+--"),
        // Marketing: admins and managers.
        ("campaigns.create", "++-"),
        ("campaigns.send", "++-"),
        ("campaigns.view", "++-"),
        ("offers.manage", "++-"),
        ("customers.import", "++-"),
        ("segments.create", "++-"),
        ("analytics.view", "++-"),
        ("redemptions.handle", "++-"),
        // Front of house: everyone.
        ("customers.view", "+++"),
        ("redemptions.scan", "+++"),
        ("offers.view", "+++"),
        ("dashboard.view", "+++"),
    ];
    for (permission, expected) in table {
        for ((role, user), want) in LOYALTY_ROLES.iter().zip(&users).zip(expected.chars()) {
            assert_eq!(
                s.allowed(&org, user, permission).await,
                want == '+',
                "{role} × {permission}"
            );
        }
    }
    for (role, user) in LOYALTY_ROLES.iter().zip(&users) {
        assert_listed_permissions(&s, &org, user, LOYALTY, role).await;
    }
    // Permissions of the default policy do not exist here.
    let err = unwrap_err(
        s.authz
            .clone()
            .check(pb::CheckRequest {
                org_id: org.clone(),
                user_id: users[0].clone(),
                permission: "projects.view".into(),
                consistency: None,
            })
            .await,
    );
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_PERMISSION");

    // teamgate's own RPCs follow the same table: managers do not manage users.
    let err = unwrap_err(
        s.team
            .clone()
            .invite_member(as_actor(
                &users[1],
                pb::InviteMemberRequest {
                    org_id: org.clone(),
                    email: "new@example.com".into(),
                    first_name: "New".into(),
                    last_name: "Hire".into(),
                    role: "user".into(),
                },
            ))
            .await,
    );
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("members.manage"), "{err:?}");

    // An invitation without a role gets the policy's invite role, `user`.
    let invited = s
        .team
        .clone()
        .invite_member(as_actor(
            &users[0],
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "cashier@example.com".into(),
                first_name: "Cass".into(),
                last_name: "Ier".into(),
                role: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invited.invitation.unwrap().role, "user");

    // The policy: starter is the default plan; growth has 10 seats; scale is unlimited.
    let p = load(LOYALTY);
    assert_eq!(p.owner_role(), "admin");
    assert_eq!(p.invite_role(), "user");
    assert_eq!(p.default_plan(), "starter");
    assert_eq!(p.plan("starter").unwrap().max_members, Some(1));
    assert_eq!(p.plan("growth").unwrap().max_members, Some(10));
    assert_eq!(p.plan("scale").unwrap().max_members, None);
    s.stop().await;
}

async fn loyalty_starter_plan_is_single_user(b: Backend) {
    let s = spawn_with_policy(b, LOYALTY).await;
    // No plan named: the policy's default, starter.
    let created = s
        .team
        .clone()
        .create_organization(pb::CreateOrganizationRequest {
            name: "Corner Cafe".into(),
            plan: String::new(),
            owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                pb::NewUser {
                    email: "founder@example.com".into(),
                    first_name: "Fay".into(),
                    last_name: "Founder".into(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap();
    assert_eq!(org.plan, "starter");
    let owner = created.owner.unwrap();
    assert_eq!(
        owner.role, "admin",
        "the person who signs up is the first admin"
    );

    let invite = |role: &str| {
        as_actor(
            &owner.user_id,
            pb::InviteMemberRequest {
                org_id: org.id.clone(),
                email: "second@example.com".into(),
                first_name: "Sam".into(),
                last_name: "Second".into(),
                role: role.into(),
            },
        )
    };
    for role in ["user", "manager", "admin"] {
        let err = unwrap_err(s.team.clone().invite_member(invite(role)).await);
        assert_error(&err, Code::FailedPrecondition, "PLAN_SEAT_LIMIT");
        assert!(
            err.message()
                .contains("multi-user access needs the growth or scale plan"),
            "the upgrade hint is in the message: {err:?}"
        );
    }

    // After upgrading, the same invitation goes through.
    s.team
        .clone()
        .update_organization(as_actor(
            &owner.user_id,
            pb::UpdateOrganizationRequest {
                org_id: org.id.clone(),
                plan: Some("growth".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    s.team
        .clone()
        .invite_member(invite("manager"))
        .await
        .expect("growth has room");
    s.stop().await;
}

async fn loyalty_transfer_leaves_previous_admin_as_manager(b: Backend) {
    let s = spawn_with_policy(b, LOYALTY).await;
    let (org, first_admin) = s.org("Bean There", "growth").await;
    let user = s.member(&org, &first_admin, "user").await;
    let moved = s
        .team
        .clone()
        .transfer_ownership(as_actor(
            &first_admin,
            pb::TransferOwnershipRequest {
                org_id: org.clone(),
                new_owner_user_id: user.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.previous_owner.unwrap().role, "manager");
    assert_eq!(moved.new_owner.unwrap().role, "admin");
    // The previous admin now answers as a manager; the new one as an admin.
    assert!(s.allowed(&org, &first_admin, "campaigns.send").await);
    assert!(!s.allowed(&org, &first_admin, "members.manage").await);
    assert!(!s.allowed(&org, &first_admin, "billing.manage").await);
    assert!(s.allowed(&org, &user, "members.manage").await);
    assert!(s.allowed(&org, &user, "org.delete").await);
    assert_listed_permissions(&s, &org, &first_admin, LOYALTY, "manager").await;
    // The new admin is the only one, so they cannot step down.
    let err = unwrap_err(
        s.team
            .clone()
            .update_member_role(as_actor(
                &user,
                pb::UpdateMemberRoleRequest {
                    org_id: org.clone(),
                    user_id: user.clone(),
                    role: "user".into(),
                },
            ))
            .await,
    );
    assert_error(&err, Code::FailedPrecondition, "LAST_OWNER");
    s.stop().await;
}

const AFFILIATE_ROLES: [&str; 3] = ["owner", "admin", "member"];

async fn affiliate_policy_role_table(b: Backend) {
    let s = spawn_with_policy(b, AFFILIATE).await;
    assert_table(
        &s,
        &AFFILIATE_ROLES,
        &[
            // What every role does.
            ("dashboard.view", "+++"),
            ("reports.view", "+++"),
            ("affiliates.manage", "+++"),
            ("campaigns.manage", "+++"),
            ("payouts.process", "+++"),
            ("settings.access", "+++"),
            ("members.view", "+++"),
            // Team and organization management: owners and admins.
            ("members.manage", "++-"),
            ("roles.manage", "++-"),
            ("org.update", "++-"),
            ("billing.manage", "++-"),
            ("audit.view", "++-"),
            // Owners only.
            ("org.delete", "+--"),
            ("org.transfer", "+--"),
        ],
    )
    .await;
    let p = load(AFFILIATE);
    assert_eq!(p.owner_role(), "owner");
    assert_eq!(p.invite_role(), "member");
    assert_eq!(p.role_below_owner(), "admin");
    let plans: Vec<(&str, Option<u32>)> = p
        .plans()
        .iter()
        .map(|p| (p.key.as_str(), p.max_members))
        .collect();
    assert_eq!(
        plans,
        [
            ("free", None),
            ("starter", None),
            ("growth", None),
            ("pro", None)
        ]
    );
    for role in AFFILIATE_ROLES {
        let perms = &p.built_in(role).unwrap().permissions;
        assert_eq!(perms.contains_str("org.delete"), role == "owner", "{role}");
    }

    // Unlimited: the free plan takes more members than the default policy's free plan would.
    let (org, owner) = s.org("Partners", "free").await;
    for _ in 0..6 {
        s.member(&org, &owner, "member").await;
    }
    s.stop().await;
}

async fn affiliate_only_owners_delete_and_transfer(b: Backend) {
    let s = spawn_with_policy(b, AFFILIATE).await;
    let (org, owner) = s.org("Partners", "pro").await;
    let admin = s.member(&org, &owner, "admin").await;
    let member = s.member(&org, &owner, "member").await;
    for actor in [&admin, &member] {
        let err = unwrap_err(
            s.team
                .clone()
                .delete_organization(as_actor(
                    actor,
                    pb::DeleteOrganizationRequest {
                        org_id: org.clone(),
                    },
                ))
                .await,
        );
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("org.delete"), "{err:?}");
        let err = unwrap_err(
            s.team
                .clone()
                .transfer_ownership(as_actor(
                    actor,
                    pb::TransferOwnershipRequest {
                        org_id: org.clone(),
                        new_owner_user_id: member.clone(),
                    },
                ))
                .await,
        );
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // Admins manage the team (within their own permissions); members do not.
    s.team
        .clone()
        .update_member_role(as_actor(
            &admin,
            pb::UpdateMemberRoleRequest {
                org_id: org.clone(),
                user_id: member.clone(),
                role: "admin".into(),
            },
        ))
        .await
        .expect("admins promote members to admin");
    // The owner hands over: the previous owner stays as admin.
    let moved = s
        .team
        .clone()
        .transfer_ownership(as_actor(
            &owner,
            pb::TransferOwnershipRequest {
                org_id: org.clone(),
                new_owner_user_id: admin.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.previous_owner.unwrap().role, "admin");
    assert!(!s.allowed(&org, &owner, "org.delete").await);
    assert!(s.allowed(&org, &admin, "org.delete").await);
    s.team
        .clone()
        .delete_organization(as_actor(
            &admin,
            pb::DeleteOrganizationRequest {
                org_id: org.clone(),
            },
        ))
        .await
        .expect("the new owner deletes");
    s.stop().await;
}

// ---- `teamgate policy check` ----

fn teamgate(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teamgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("teamgate runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_check_accepts_the_shipped_policies() {
    for file in [DEFAULT, LOYALTY, AFFILIATE] {
        let path = helpers::repo_path(file);
        let (ok, stdout, stderr) = teamgate(&["policy", "check", path.to_str().unwrap()], &[]);
        assert!(ok, "{file}: {stdout}{stderr}");
        assert!(stdout.contains(": ok ("), "{file}: {stdout}");
    }
}

#[test]
fn policy_check_reports_problems_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        r#"owner_role = "boss"
invite_role = "member"
default_plan = "free"
permissions = ["members.view", "Not A Permission"]

[[roles]]
key = "member"
display_name = "Member"
permissions = ["members.view", "payouts.process"]

[[plans]]
key = "free"
max_members = 0
"#,
    )
    .unwrap();
    let (ok, stdout, stderr) = teamgate(&["policy", "check", broken.to_str().unwrap()], &[]);
    assert!(!ok, "a broken policy must fail: {stdout}{stderr}");
    for needle in [
        "line 1:",  // owner_role `boss` is not a declared role
        "line 4:",  // a malformed permission name
        "line 9:",  // a role lists a permission outside the catalog
        "line 13:", // max_members 0
        "boss",
        "payouts.process",
        "members.manage", // an enforced permission is missing from the catalog
    ] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }

    // A TOML syntax error is reported with its line as well.
    std::fs::write(&broken, "owner_role = \"owner\"\ninvite_role = \n").unwrap();
    let (ok, _, stderr) = teamgate(&["policy", "check", broken.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains("line 2"), "{stderr}");

    // A missing file is an error, not a pass.
    let (ok, _, stderr) = teamgate(
        &[
            "policy",
            "check",
            dir.path().join("nope.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

// ---- Policy drift ----

/// The default policy without the `manager` role, the `reports.view` permission and the
/// `team` plan.
fn narrowed_default_policy(dir: &Path) -> PathBuf {
    let path = dir.join("narrowed.toml");
    std::fs::write(
        &path,
        r#"owner_role = "owner"
invite_role = "member"
default_plan = "free"
permissions = [
  "members.view", "members.manage", "roles.manage", "org.update", "billing.manage",
  "org.delete", "org.transfer", "audit.view",
  "projects.view", "projects.create", "projects.edit", "projects.delete",
]

[[roles]]
key = "owner"
display_name = "Owner"
permissions = ["*"]

[[roles]]
key = "admin"
display_name = "Admin"
permissions = ["members.view", "members.manage", "roles.manage", "projects.view"]

[[roles]]
key = "member"
display_name = "Member"
permissions = ["members.view", "projects.view"]

[[plans]]
key = "free"
max_members = 5

[[plans]]
key = "business"
"#,
    )
    .unwrap();
    path
}

async fn start_error(config: &teamgate::config::Config) -> String {
    match startup::start(config, Dependencies::default()).await {
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the server started despite the policy drift");
        }
        Err(e) => format!("{e:#}"),
    }
}

/// Runs `teamgate policy check FILE --database-url …` against the test server's database.
fn policy_check_against(s: &TestServer, policy: &Path) -> (bool, String, String) {
    let url = s.config.database.url.expose().to_owned();
    let schema = s.config.database.schema.clone();
    let mut env = Vec::new();
    if !schema.is_empty() {
        env.push(("TEAMGATE__DATABASE__SCHEMA", schema.as_str()));
    }
    teamgate(
        &[
            "policy",
            "check",
            policy.to_str().unwrap(),
            "--database-url",
            &url,
        ],
        &env,
    )
}

async fn drift_refuses_start_and_policy_check_reports_it(b: Backend) {
    let mut s = TestServer::spawn(b).await;
    // What the narrowed policy lacks: one manager and one pending manager invitation, a
    // custom role listing reports.view, an org on the team plan.
    let (org, owner) = s.org("Acme", "team").await;
    let manager = s.member(&org, &owner, "manager").await;
    s.team
        .clone()
        .invite_member(as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "pending-manager@example.com".into(),
                first_name: "Pat".into(),
                last_name: "Pending".into(),
                role: "manager".into(),
            },
        ))
        .await
        .unwrap();
    s.team
        .clone()
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "analyst".into(),
                display_name: String::new(),
                permissions: vec!["reports.view".into(), "projects.view".into()],
            },
        ))
        .await
        .unwrap();
    // A deleted org's references do not count.
    let (gone, gone_owner) = s.org("Gone", "business").await;
    s.member(&gone, &gone_owner, "manager").await;
    s.team
        .clone()
        .delete_organization(as_actor(
            &gone_owner,
            pb::DeleteOrganizationRequest {
                org_id: gone.clone(),
            },
        ))
        .await
        .unwrap();
    // Stop the server but keep its database.
    if let Some(running) = s.running.take() {
        running.shutdown().await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let narrowed = narrowed_default_policy(dir.path());
    let mut config = s.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.policy = Some(narrowed.clone());
    let err = start_error(&config).await;
    let expected = [
        "refusing to start",
        "role `manager`",
        "1 member and 1 pending invitation",
        "permission `reports.view`",
        "`analyst`",
        "plan `team`",
        "1 organization is",
        &org,
    ];
    for needle in expected {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert!(
        !err.contains(&gone),
        "a deleted org is not reported:\n{err}"
    );

    // `policy check --database-url` reports the same, without starting.
    let (ok, stdout, stderr) = policy_check_against(&s, &narrowed);
    assert!(!ok, "drift must fail the check: {stdout}{stderr}");
    assert!(
        stdout.contains(": ok ("),
        "the file itself is valid: {stdout}"
    );
    for needle in &expected[1..] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }

    // The default policy still covers the database, which the refusal left untouched.
    let (ok, stdout, stderr) = policy_check_against(&s, &helpers::repo_path(DEFAULT));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("covers everything"), "{stdout}");
    let mut config = s.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let running = startup::start(&config, Dependencies::default())
        .await
        .expect("the default policy starts");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let allowed =
        teamgate::proto::teamgate::v1::authz_service_client::AuthzServiceClient::new(channel)
            .check(pb::CheckRequest {
                org_id: org.clone(),
                user_id: manager.clone(),
                permission: "reports.view".into(),
                consistency: None,
            })
            .await
            .unwrap()
            .into_inner()
            .allowed;
    assert!(allowed, "the manager kept their access");
    running.shutdown().await.unwrap();

    // Switching the owner role to one that no organization has is refused too.
    let path = dir.path().join("owner-is-admin.toml");
    let source = std::fs::read_to_string(helpers::repo_path(DEFAULT))
        .unwrap()
        .replace("owner_role = \"owner\"", "owner_role = \"admin\"");
    std::fs::write(&path, source).unwrap();
    config.policy = Some(path);
    let err = start_error(&config).await;
    assert!(err.contains("owner_role is `admin`"), "{err}");
    assert!(err.contains("1 organization has"), "{err}");
}
