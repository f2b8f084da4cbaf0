//! Hostile input over real gRPC: tampered page tokens on every list call, SQL metacharacters
//! and Unicode look-alikes in names and emails.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use teamgate::proto::teamgate::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};
use crate::on_both_backends;

on_both_backends!(
    tampered_page_tokens_are_refused_on_every_list,
    deep_pagination_stays_inside_the_org,
    sql_metacharacters_are_stored_verbatim,
    wildcards_never_match_other_rows,
    look_alike_emails_never_merge_into_the_ascii_user,
    invisible_and_bidi_characters_are_refused,
);

#[track_caller]
fn assert_field(status: &Status, code: Code, reason: &str, field: &str) {
    assert_error(status, code, reason);
    let br = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest on {status:?}"));
    assert!(
        br.field_violations.iter().any(|v| v.field == field),
        "{field} not named in {status:?}"
    );
}

/// Every paged list the service has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Organizations,
    Members,
    Invitations,
    Audit,
    Lookup,
}

const LISTS: [List; 5] = [
    List::Organizations,
    List::Members,
    List::Invitations,
    List::Audit,
    List::Lookup,
];

/// One page: the row ids, the org each row belongs to, and the next token.
struct Page {
    ids: Vec<String>,
    orgs: Vec<String>,
    next: String,
}

/// Lists `list` for `scope` (an org id, or for Organizations/Lookup the user id) as `actor`.
async fn list(
    s: &TestServer,
    list: List,
    actor: &str,
    scope: &str,
    page_size: i32,
    page_token: &str,
) -> Result<Page, Status> {
    let token = page_token.to_owned();
    // A page of an org-scoped list: `$rpc` for org `scope`, rows in `$rows`, each with the id
    // `$id` and its `org_id`.
    macro_rules! org_page {
        ($rpc:ident, $request:ident, $rows:ident, $id:ident) => {{
            let r = s
                .team
                .clone()
                .$rpc(as_actor(
                    actor,
                    pb::$request {
                        org_id: scope.into(),
                        page_size,
                        page_token: token,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            Page {
                ids: r.$rows.iter().map(|x| x.$id.clone()).collect(),
                orgs: r.$rows.iter().map(|x| x.org_id.clone()).collect(),
                next: r.next_page_token,
            }
        }};
    }
    Ok(match list {
        List::Organizations => {
            let r = s
                .team
                .clone()
                .list_organizations(as_actor(
                    actor,
                    pb::ListOrganizationsRequest {
                        user_id: scope.into(),
                        page_size,
                        page_token: token,
                    },
                ))
                .await?
                .into_inner();
            let orgs: Vec<String> = r
                .organizations
                .iter()
                .map(|o| o.organization.as_ref().unwrap().id.clone())
                .collect();
            Page {
                ids: orgs.clone(),
                orgs,
                next: r.next_page_token,
            }
        }
        List::Members => org_page!(list_members, ListMembersRequest, members, user_id),
        List::Invitations => org_page!(list_invitations, ListInvitationsRequest, invitations, id),
        List::Audit => org_page!(list_audit_events, ListAuditEventsRequest, events, id),
        List::Lookup => {
            let r = s
                .authz
                .clone()
                .lookup_organizations(pb::LookupOrganizationsRequest {
                    user_id: scope.into(),
                    permission: "org.delete".into(),
                    page_size,
                    page_token: token,
                })
                .await?
                .into_inner();
            Page {
                ids: r.org_ids.clone(),
                orgs: r.org_ids,
                next: r.next_page_token,
            }
        }
    })
}

/// Two tenants, each with an owner in three orgs of their own, three more members and three
/// pending invitations in the first org (and so a dozen audit events there).
struct World {
    a_owner: String,
    a_orgs: Vec<String>,
    b_owner: String,
    b_orgs: Vec<String>,
}

impl World {
    fn scope(&self, list: List, tenant_a: bool) -> &str {
        let (owner, orgs) = if tenant_a {
            (&self.a_owner, &self.a_orgs)
        } else {
            (&self.b_owner, &self.b_orgs)
        };
        match list {
            List::Organizations | List::Lookup => owner,
            _ => &orgs[0],
        }
    }

    fn actor(&self, tenant_a: bool) -> &str {
        if tenant_a {
            &self.a_owner
        } else {
            &self.b_owner
        }
    }

    /// The orgs whose rows tenant A's `list` may ever show.
    fn allowed_orgs(&self, list: List) -> Vec<String> {
        match list {
            List::Organizations | List::Lookup => self.a_orgs.clone(),
            _ => vec![self.a_orgs[0].clone()],
        }
    }
}

async fn tenant(s: &TestServer, name: &str) -> (String, Vec<String>) {
    let (first, owner) = s.org(&format!("{name} 1"), "team").await;
    let mut orgs = vec![first.clone()];
    for i in 2..=3 {
        let r = s
            .team
            .clone()
            .create_organization(pb::CreateOrganizationRequest {
                name: format!("{name} {i}"),
                plan: "team".into(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::OwnerUserId(
                    owner.clone(),
                )),
            })
            .await
            .expect("second org")
            .into_inner();
        orgs.push(r.organization.unwrap().id);
    }
    for _ in 0..3 {
        s.member(&first, &owner, "member").await;
    }
    for i in 0..3 {
        s.team
            .clone()
            .invite_member(as_actor(
                &owner,
                pb::InviteMemberRequest {
                    org_id: first.clone(),
                    email: format!("pending-{i}-{}@example.com", uuid::Uuid::now_v7().simple()),
                    first_name: "Pat".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("invited");
    }
    orgs.sort();
    let first_pos = orgs.iter().position(|o| *o == first).unwrap();
    orgs.swap(0, first_pos);
    (owner, orgs)
}

async fn world(s: &TestServer) -> World {
    let (a_owner, a_orgs) = tenant(s, "Alpha").await;
    let (b_owner, b_orgs) = tenant(s, "Bravo").await;
    World {
        a_owner,
        a_orgs,
        b_owner,
        b_orgs,
    }
}

/// Tenant A's first-page token of `list` (page size 1, so there is always a next page).
async fn first_token(s: &TestServer, w: &World, l: List, tenant_a: bool) -> String {
    let page = list(s, l, w.actor(tenant_a), w.scope(l, tenant_a), 1, "")
        .await
        .unwrap_or_else(|e| panic!("{l:?}: {e:?}"));
    assert!(!page.next.is_empty(), "{l:?} has a second page");
    page.next
}

/// Every edit of a real token that this service would not have issued.
fn structural_edits(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    for cut in [1, 2, 3, t.len() / 4, t.len() / 2, t.len() - 2, t.len() - 1] {
        out.push(t[..cut].to_owned());
        out.push(t[cut..].to_owned());
    }
    for extra in ["=", "==", "A", "AA", "x!", " ", "\n", "%00", "'--"] {
        out.push(format!("{t}{extra}"));
        out.push(format!("{extra}{t}"));
    }
    out.push(t.replace('-', "+").replace('_', "/") + if t.contains(['-', '_']) { "" } else { "+" });
    out.push(t.to_uppercase());
    out.push(t.chars().rev().collect());
    out.push(format!("{t}{t}"));
    out
}

fn encode(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json.as_bytes())
}

fn decode(token: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap()
}

#[track_caller]
fn assert_bad_token(r: Result<Page, Status>, what: &str) {
    match r {
        Ok(p) => panic!("{what}: accepted, returned {:?}", p.ids),
        Err(e) => {
            assert_field(
                &e,
                Code::InvalidArgument,
                "INVALID_PAGE_TOKEN",
                "page_token",
            );
            assert!(
                !e.message().contains("panic"),
                "{what}: the message leaks internals: {e:?}"
            );
        }
    }
}

/// Tampered, truncated and spliced tokens on every paged list are `INVALID_ARGUMENT` /
/// `INVALID_PAGE_TOKEN`; a single changed character either is refused or (when it still
/// spells a valid key for the same list and scope) pages within the caller's own rows.
async fn tampered_page_tokens_are_refused_on_every_list(b: Backend) {
    let s = TestServer::spawn(b).await;
    let w = world(&s).await;
    let mut tokens_a = Vec::new();
    let mut tokens_b = Vec::new();
    for l in LISTS {
        tokens_a.push(first_token(&s, &w, l, true).await);
        tokens_b.push(first_token(&s, &w, l, false).await);
    }

    for (i, l) in LISTS.into_iter().enumerate() {
        let (actor, scope) = (w.actor(true), w.scope(l, true));
        let allowed = w.allowed_orgs(l);
        let t = &tokens_a[i];
        // The untouched token works.
        let page = list(&s, l, actor, scope, 1, t).await.unwrap();
        assert!(page.orgs.iter().all(|o| allowed.contains(o)), "{l:?}");

        // Structural damage: always refused.
        for edited in structural_edits(t) {
            let r = list(&s, l, actor, scope, 1, &edited).await;
            assert_bad_token(r, &format!("{l:?} {edited:?}"));
        }

        // Every single character replaced by another base64url character: refused, or still a
        // well-formed key that pages inside the caller's scope only.
        let alphabet = ['A', 'z', '0', '_', '-', 'Q'];
        let mut accepted = 0;
        for at in 0..t.len() {
            let c = alphabet
                .iter()
                .copied()
                .find(|&c| c != t.as_bytes()[at] as char)
                .unwrap();
            let edited = format!("{}{c}{}", &t[..at], &t[at + 1..]);
            match list(&s, l, actor, scope, 5, &edited).await {
                Ok(p) => {
                    accepted += 1;
                    assert!(
                        p.orgs.iter().all(|o| allowed.contains(o)),
                        "{l:?}: edited token {edited:?} showed rows of {:?}",
                        p.orgs
                    );
                }
                Err(e) => assert_field(
                    &e,
                    Code::InvalidArgument,
                    "INVALID_PAGE_TOKEN",
                    "page_token",
                ),
            }
        }
        assert!(
            accepted < t.len() / 4,
            "{l:?}: {accepted} of {} one-character edits were accepted",
            t.len()
        );

        // Spliced from tenant B's listing of the same list.
        let r = list(&s, l, actor, scope, 1, &tokens_b[i]).await;
        assert_bad_token(r, &format!("{l:?} with tenant B's token"));
        // Spliced from every other list, A's and B's.
        for (j, other) in LISTS.into_iter().enumerate() {
            if j != i {
                let r = list(&s, l, actor, scope, 1, &tokens_a[j]).await;
                assert_bad_token(r, &format!("{l:?} with A's {other:?} token"));
                let r = list(&s, l, actor, scope, 1, &tokens_b[j]).await;
                assert_bad_token(r, &format!("{l:?} with B's {other:?} token"));
            }
        }

        // Forged JSON: right list and scope but a hostile or non-canonical key, a scope
        // swapped for tenant B's, duplicate or missing fields, deep nesting.
        let real = decode(t);
        let name = real["l"].as_str().unwrap();
        let scope_in = real["s"].as_str().unwrap();
        let key = real["a"].as_str().unwrap();
        let b_real = decode(&tokens_b[i]);
        let b_scope_in = b_real["s"].as_str().unwrap();
        for json in [
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":"' OR 1=1--"}}"#),
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":"%"}}"#),
            format!(
                r#"{{"l":"{name}","s":"{scope_in}","a":"{}"}}"#,
                key.to_uppercase()
            ),
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":"{{{key}}}"}}"#),
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":"urn:uuid:{key}"}}"#),
            format!(
                r#"{{"l":"{name}","s":"{scope_in}","a":"{}"}}"#,
                key.replace('-', "")
            ),
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":"{key} "}}"#),
            format!(r#"{{"l":"{name}","s":"{b_scope_in}","a":"{key}"}}"#),
            format!(r#"{{"l":"{name}","s":"","a":"{key}"}}"#),
            format!(r#"{{"l":"{name}","a":"{key}"}}"#),
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":"{key}","a":"{key}"}}"#),
            format!(r#"{{"l":"{name}","s":"{scope_in}","a":null}}"#),
            "[".repeat(380),
            "{\"l\":".repeat(60),
            "\u{0}".into(),
        ] {
            let r = list(&s, l, actor, scope, 1, &encode(&json)).await;
            assert_bad_token(r, &format!("{l:?} forged {json:?}"));
        }

        // A well-formed token whose key is one of tenant B's rows: it is only a position, so
        // the page holds the caller's rows and nothing else.
        let b_scope = w.scope(l, false);
        let b_page = list(&s, l, w.actor(false), b_scope, 1, "").await.unwrap();
        let b_key = &b_page.ids[0];
        let forged = encode(&format!(
            r#"{{"l":"{name}","s":"{scope_in}","a":"{b_key}"}}"#
        ));
        let page = list(&s, l, actor, scope, 50, &forged).await.unwrap();
        assert!(
            page.orgs.iter().all(|o| allowed.contains(o)),
            "{l:?}: a key from tenant B leaked {:?}",
            page.orgs
        );
        assert!(!page.ids.contains(b_key), "{l:?}");

        // Tenant B's token, presented by tenant A on tenant B's own list: never rows.
        let r = list(&s, l, actor, b_scope, 1, &tokens_b[i]).await;
        match l {
            // AuthzService answers for any user id: the token is B's own, so it pages B.
            List::Lookup => {
                assert!(r.unwrap().orgs.iter().all(|o| w.b_orgs.contains(o)));
            }
            _ => assert_eq!(
                unwrap_err(r.map(|p| p.ids)).code(),
                Code::PermissionDenied,
                "{l:?}"
            ),
        }
    }

    // LookupOrganizations binds the permission as well: a token for another permission is
    // refused.
    let err = unwrap_err(
        s.authz
            .clone()
            .lookup_organizations(pb::LookupOrganizationsRequest {
                user_id: w.a_owner.clone(),
                permission: "members.view".into(),
                page_size: 1,
                page_token: tokens_a[4].clone(),
            })
            .await,
    );
    assert_field(
        &err,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
        "page_token",
    );

    // The server is unharmed.
    for l in LISTS {
        list(&s, l, w.actor(true), w.scope(l, true), 0, "")
            .await
            .unwrap();
    }
    s.stop().await;
}

/// Paging all the way through each list one row at a time visits exactly the caller's rows,
/// each once and in order, though the other tenant has rows of every list too.
async fn deep_pagination_stays_inside_the_org(b: Backend) {
    let s = TestServer::spawn(b).await;
    let w = world(&s).await;
    for l in LISTS {
        let (actor, scope) = (w.actor(true), w.scope(l, true));
        let all = list(&s, l, actor, scope, 500, "").await.unwrap();
        assert!(all.next.is_empty());
        let mut seen = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = list(&s, l, actor, scope, 1, &token).await.unwrap();
            assert!(
                page.orgs.iter().all(|o| w.allowed_orgs(l).contains(o)),
                "{l:?}"
            );
            seen.extend(page.ids);
            if page.next.is_empty() {
                break;
            }
            token = page.next;
        }
        assert_eq!(seen, all.ids, "{l:?}: one by one equals all at once");
        assert!(seen.len() >= 3, "{l:?}");
    }
    s.stop().await;
}

const SQLISH: [&str; 8] = [
    "Robert'); DROP TABLE members;--",
    "%_\\",
    "%",
    "_",
    "\"quoted\" `ticks` 'single'",
    "a; DELETE FROM users WHERE '1'='1",
    "x' OR '1'='1",
    "\\x00 \\' \\\" $1 ?",
];

/// SQL metacharacters in org names, people's names and role display names are plain text:
/// stored and returned byte for byte, and every table still works afterwards.
async fn sql_metacharacters_are_stored_verbatim(b: Backend) {
    let s = TestServer::spawn(b).await;
    let mut team = s.team.clone();
    let mut orgs = Vec::new();
    for (i, name) in SQLISH.into_iter().enumerate() {
        let r = team
            .create_organization(pb::CreateOrganizationRequest {
                name: name.into(),
                plan: "team".into(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                    pb::NewUser {
                        email: format!("o'brien+{i}%_@example.com"),
                        first_name: name.into(),
                        last_name: SQLISH[(i + 1) % SQLISH.len()].into(),
                    },
                )),
            })
            .await
            .unwrap()
            .into_inner();
        let org = r.organization.unwrap();
        assert_eq!(org.name, name);
        let owner = r.owner.unwrap();
        assert_eq!(owner.first_name, name);
        assert_eq!(owner.email, format!("o'brien+{i}%_@example.com"));
        orgs.push((org.id, owner.user_id));
    }
    let (org, owner) = orgs[0].clone();

    // Renames, invitations, acceptance name overrides and role display names.
    let renamed = team
        .update_organization(as_actor(
            &owner,
            pb::UpdateOrganizationRequest {
                org_id: org.clone(),
                name: Some("%_\\'; --".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.organization.unwrap().name, "%_\\'; --");
    let mut invited = Vec::new();
    for (i, name) in SQLISH.into_iter().enumerate() {
        let inv = team
            .invite_member(as_actor(
                &owner,
                pb::InviteMemberRequest {
                    org_id: org.clone(),
                    email: format!("m{i}'--@example.com"),
                    first_name: name.into(),
                    last_name: name.into(),
                    role: "member".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(inv.invitation.as_ref().unwrap().first_name, name);
        let accepted = team
            .accept_invitation(pb::AcceptInvitationRequest {
                token: inv.token,
                last_name: Some(format!("{name} jr")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap();
        assert_eq!(accepted.first_name, name);
        assert_eq!(accepted.last_name, format!("{name} jr"));
        invited.push((accepted.user_id, name));
    }
    let role = team
        .create_role(as_actor(
            &owner,
            pb::CreateRoleRequest {
                org_id: org.clone(),
                key: "drop_tables".into(),
                display_name: "Admins'); DROP TABLE roles;-- %_\\".into(),
                permissions: vec!["members.view".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_eq!(role.display_name, "Admins'); DROP TABLE roles;-- %_\\");

    // Read back through every path, byte for byte.
    let members = s.members(&org, &owner).await;
    assert_eq!(members.len(), 1 + SQLISH.len());
    for (user, name) in &invited {
        let m = members.iter().find(|m| &m.user_id == user).unwrap();
        assert_eq!(m.first_name, *name);
        assert_eq!(m.last_name, format!("{name} jr"));
        let got = team
            .get_member(as_actor(
                &owner,
                pb::GetMemberRequest {
                    org_id: org.clone(),
                    user_id: user.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.first_name, *name);
    }
    let roles = team
        .list_roles(as_actor(
            &owner,
            pb::ListRolesRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert!(
        roles
            .iter()
            .any(|r| r.key == "drop_tables" && r.display_name == role.display_name)
    );
    for (i, (o, owner)) in orgs.iter().enumerate() {
        let got = team
            .get_organization(as_actor(
                owner,
                pb::GetOrganizationRequest { org_id: o.clone() },
            ))
            .await
            .unwrap()
            .into_inner();
        let want = if i == 0 { "%_\\'; --" } else { SQLISH[i] };
        assert_eq!(got.name, want);
    }

    // The tables all still work: a new org, a member, a role change, audit and checks.
    let (fresh, fresh_owner) = s.org("After the storm", "").await;
    let m = s.member(&fresh, &fresh_owner, "member").await;
    assert!(s.allowed(&fresh, &m, "members.view").await);
    assert!(s.allowed(&org, &invited[0].0, "members.view").await);
    team.update_member_role(as_actor(
        &owner,
        pb::UpdateMemberRoleRequest {
            org_id: org.clone(),
            user_id: invited[0].0.clone(),
            role: "drop_tables".into(),
        },
    ))
    .await
    .unwrap();
    let events = team
        .list_audit_events(as_actor(
            &owner,
            pb::ListAuditEventsRequest {
                org_id: org.clone(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    // created + updated + (invited + accepted) per member + role created + role changed.
    assert_eq!(events.len(), 2 + 2 * SQLISH.len() + 2);
    s.stop().await;
}

/// LIKE-style wildcards in emails and filters are literal: they never match other rows.
async fn wildcards_never_match_other_rows(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Wild", "team").await;
    let mut team = s.team.clone();
    s.member_with_email(&org, &owner, "member", "obrien@example.com")
        .await;
    // Had any lookup used LIKE, these would be ALREADY_MEMBER / ALREADY_INVITED.
    for (i, email) in [
        "%@example.com",
        "_brien@example.com",
        "obrie_@example.com",
        "o%@example.com",
    ]
    .into_iter()
    .enumerate()
    {
        let inv = team
            .invite_member(as_actor(
                &owner,
                pb::InviteMemberRequest {
                    org_id: org.clone(),
                    email: email.into(),
                    first_name: format!("Wild {i}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{email}: {e:?}"))
            .into_inner();
        assert_eq!(inv.invitation.unwrap().email, email);
    }
    // ... and inviting `%@example.com` again is ALREADY_INVITED for exactly that one.
    let err = unwrap_err(
        team.invite_member(as_actor(
            &owner,
            pb::InviteMemberRequest {
                org_id: org.clone(),
                email: "%@example.com".into(),
                first_name: "Again".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_error(&err, Code::AlreadyExists, "ALREADY_INVITED");

    // Audit filters: a wildcard action matches nothing; a wildcard actor is not an id.
    for action in ["%", "member.%", "_%", "%' OR '1'='1", "member.invite_"] {
        let events = team
            .list_audit_events(as_actor(
                &owner,
                pb::ListAuditEventsRequest {
                    org_id: org.clone(),
                    action: Some(action.into()),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(events.is_empty(), "{action} matched {events:?}");
    }
    let err = unwrap_err(
        team.list_audit_events(as_actor(
            &owner,
            pb::ListAuditEventsRequest {
                org_id: org.clone(),
                actor_user_id: Some("%".into()),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_field(&err, Code::InvalidArgument, "INVALID_ID", "actor_user_id");
    // A wildcard role filter is not a role key.
    for role in ["%", "member%", "_ember"] {
        let err = unwrap_err(
            team.list_members(as_actor(
                &owner,
                pb::ListMembersRequest {
                    org_id: org.clone(),
                    role: Some(role.into()),
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_field(&err, Code::InvalidArgument, "INVALID_ROLE_KEY", "role");
    }
    // A wildcard org id is not an id (and so never lists every org).
    let err = unwrap_err(
        team.list_members(as_actor(
            &owner,
            pb::ListMembersRequest {
                org_id: "%".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_field(&err, Code::InvalidArgument, "INVALID_ID", "org_id");
    s.stop().await;
}

async fn invite(
    s: &TestServer,
    org: &str,
    actor: &str,
    email: &str,
) -> Result<pb::InviteMemberResponse, Status> {
    s.team
        .clone()
        .invite_member(as_actor(
            actor,
            pb::InviteMemberRequest {
                org_id: org.into(),
                email: email.into(),
                first_name: "Ada".into(),
                last_name: "Min".into(),
                role: "member".into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn orgs_of(s: &TestServer, user: &str) -> Vec<String> {
    let mut ids: Vec<String> = s
        .team
        .clone()
        .list_organizations(as_actor(
            user,
            pb::ListOrganizationsRequest {
                user_id: user.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .organizations
        .into_iter()
        .map(|o| o.organization.unwrap().id)
        .collect();
    ids.sort();
    ids
}

/// Homoglyph emails are distinct identities: inviting one while the ASCII address is a member
/// is not ALREADY_MEMBER, accepting it creates a new user and never touches the ASCII one.
/// Case folding that lands on ASCII (the Kelvin sign) is the same address, so it is
/// ALREADY_MEMBER rather than a second look-alike account. A fullwidth @ is no address.
async fn look_alike_emails_never_merge_into_the_ascii_user(b: Backend) {
    // Tokens by email only, so acceptance may set a password.
    let s = TestServer::spawn_with(b, |c| c.invitations.return_token = Some(false)).await;
    let (org, owner) = s.org("Victim", "team").await;
    let (evil, mallory) = s.org("Evil", "team").await;
    let admin = s
        .member_with_email(&org, &owner, "admin", "admin@example.com")
        .await;
    let kim = s
        .member_with_email(&org, &owner, "member", "kim@example.com")
        .await;
    assert_eq!(orgs_of(&s, &admin).await, vec![org.clone()]);

    for (i, lookalike) in [
        "\u{0430}dmin@example.com", // Cyrillic а
        "adm\u{0456}n@example.com", // Cyrillic і
        "admin@ex\u{0430}mple.com", // Cyrillic а in the domain
        "\u{FF41}dmin@example.com", // fullwidth ａ
        "\u{0391}DMIN@example.com", // Greek Α (lower-cases to α)
        "ADM\u{0130}N@example.com", // Turkish İ (lower-cases to i + combining dot)
    ]
    .into_iter()
    .enumerate()
    {
        // In the victim's org, beside the ASCII member: not ALREADY_MEMBER.
        let inv = invite(&s, &org, &owner, lookalike)
            .await
            .unwrap_or_else(|e| panic!("{lookalike}: {e:?}"));
        let stored = inv.invitation.unwrap().email;
        assert_ne!(stored, "admin@example.com");
        let m = s
            .team
            .clone()
            .accept_invitation(pb::AcceptInvitationRequest {
                token: s.delivered_token(inv.token, &stored).await,
                password: Some(format!("correct horse battery staple {i}")),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{lookalike}: {e:?}"))
            .into_inner()
            .member
            .unwrap();
        assert_ne!(m.user_id, admin, "{lookalike} merged into the ASCII user");
        assert_eq!(m.email, stored);
        assert_eq!(m.role, "member");

        // In the attacker's org: the look-alike's own account again, never the ASCII one.
        let inv = invite(&s, &evil, &mallory, lookalike).await.unwrap();
        let m2 = s
            .team
            .clone()
            .accept_invitation(pb::AcceptInvitationRequest {
                token: s.delivered_token(inv.token, &stored).await,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap();
        assert_ne!(m2.user_id, admin);
        assert_eq!(m2.user_id, m.user_id);
    }

    // The ASCII user is untouched: one org, still admin, and Authenticate with the
    // look-alike's password is not them.
    assert_eq!(orgs_of(&s, &admin).await, vec![org.clone()]);
    let me = s
        .team
        .clone()
        .get_member(as_actor(
            &owner,
            pb::GetMemberRequest {
                org_id: org.clone(),
                user_id: admin.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.email.as_str(), me.role.as_str()),
        ("admin@example.com", "admin")
    );
    let members = s.members(&org, &owner).await;
    let mut emails: Vec<&str> = members.iter().map(|m| m.email.as_str()).collect();
    let n = emails.len();
    emails.sort();
    emails.dedup();
    assert_eq!(emails.len(), n, "every member has an address of their own");
    assert_eq!(n, 3 + 6);

    // The Kelvin sign folds to ASCII `k`: the same identity, so ALREADY_MEMBER.
    let err = unwrap_err(invite(&s, &org, &owner, "\u{212A}im@example.com").await);
    assert_error(&err, Code::AlreadyExists, "ALREADY_MEMBER");
    let inv = invite(&s, &evil, &mallory, "\u{212A}IM@EXAMPLE.COM")
        .await
        .unwrap();
    assert_eq!(inv.invitation.unwrap().email, "kim@example.com");
    // Upper-case and padded ASCII is the same member too.
    let err = unwrap_err(invite(&s, &org, &owner, "  ADMIN@Example.COM ").await);
    assert_error(&err, Code::AlreadyExists, "ALREADY_MEMBER");
    assert_eq!(orgs_of(&s, &kim).await, vec![org.clone()]);

    // A fullwidth @ (and other non-ASCII separators) is not an address.
    for bad in ["admin\u{FF20}example.com", "admin\u{FE6B}example.com"] {
        let err = unwrap_err(invite(&s, &org, &owner, bad).await);
        assert_field(&err, Code::InvalidArgument, "INVALID_EMAIL", "email");
    }
    s.stop().await;
}

/// Zero-width and bidi-control characters are refused in every name field and every email,
/// with the field named, and nothing is written.
async fn invisible_and_bidi_characters_are_refused(b: Backend) {
    let s = TestServer::spawn(b).await;
    let (org, owner) = s.org("Clean", "team").await;
    let mut team = s.team.clone();
    let hidden = [
        "Ali\u{200B}ce",            // zero-width space
        "Mallory\u{202E}gnp.exe",   // right-to-left override
        "\u{2066}Admin\u{2069}",    // isolates
        "\u{200F}Olivia",           // right-to-left mark
        "Olivia\u{FEFF}",           // zero-width no-break space
        "Ol\u{2060}ivia",           // word joiner
        "Olivia\u{E0041}\u{E007F}", // tag characters
    ];
    for name in hidden {
        let create = |first: &str, last: &str, org_name: &str| pb::CreateOrganizationRequest {
            name: org_name.into(),
            plan: String::new(),
            owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                pb::NewUser {
                    email: format!("c-{}@example.com", uuid::Uuid::now_v7().simple()),
                    first_name: first.into(),
                    last_name: last.into(),
                },
            )),
        };
        for (req, field) in [
            (create("Ann", "Lee", name), "name"),
            (create(name, "Lee", "Org"), "owner.first_name"),
            (create("Ann", name, "Org"), "owner.last_name"),
        ] {
            let err = unwrap_err(team.create_organization(req).await);
            assert_field(&err, Code::InvalidArgument, "INVALID_NAME", field);
        }
        let err = unwrap_err(
            team.update_organization(as_actor(
                &owner,
                pb::UpdateOrganizationRequest {
                    org_id: org.clone(),
                    name: Some(name.into()),
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_field(&err, Code::InvalidArgument, "INVALID_NAME", "name");
        for (first, last, field) in [(name, "Lee", "first_name"), ("Ann", name, "last_name")] {
            let err = unwrap_err(
                team.invite_member(as_actor(
                    &owner,
                    pb::InviteMemberRequest {
                        org_id: org.clone(),
                        email: "ann@example.com".into(),
                        first_name: first.into(),
                        last_name: last.into(),
                        role: "member".into(),
                    },
                ))
                .await,
            );
            assert_field(&err, Code::InvalidArgument, "INVALID_NAME", field);
        }
        let err = unwrap_err(
            team.create_role(as_actor(
                &owner,
                pb::CreateRoleRequest {
                    org_id: org.clone(),
                    key: "sneaky".into(),
                    display_name: name.into(),
                    permissions: vec!["members.view".into()],
                },
            ))
            .await,
        );
        assert_field(&err, Code::InvalidArgument, "INVALID_NAME", "display_name");
    }

    // An acceptance that overrides the invited name with a hidden character is refused, and
    // the invitation stays usable.
    let inv = invite(&s, &org, &owner, "olivia@example.com")
        .await
        .unwrap();
    for name in hidden {
        let err = unwrap_err(
            team.accept_invitation(pb::AcceptInvitationRequest {
                token: inv.token.clone(),
                first_name: Some(name.into()),
                ..Default::default()
            })
            .await,
        );
        assert_field(&err, Code::InvalidArgument, "INVALID_NAME", "first_name");
    }
    let olivia = team
        .accept_invitation(pb::AcceptInvitationRequest {
            token: inv.token,
            first_name: Some("Olivia".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(olivia.first_name, "Olivia");

    // Emails with invisible or bidi characters anywhere are refused.
    for email in [
        "a\u{200B}dmin@example.com",
        "admin@example.com\u{202E}",
        "\u{202E}moc.elpmaxe@nimda",
        "admin\u{2066}@example.com",
        "admin@exa\u{00AD}mple.com",
        "admin\u{FEFF}@example.com",
    ] {
        let err = unwrap_err(invite(&s, &org, &owner, email).await);
        assert_field(&err, Code::InvalidArgument, "INVALID_EMAIL", "email");
    }

    // Nothing above was written: the owner and Olivia, the org's name, no sneaky role.
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
    assert_eq!((got.name.as_str(), got.member_count), ("Clean", 2));
    let roles = team
        .list_roles(as_actor(
            &owner,
            pb::ListRolesRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert!(roles.iter().all(|r| r.key != "sneaky"));
    let invitations = team
        .list_invitations(as_actor(
            &owner,
            pb::ListInvitationsRequest {
                org_id: org.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert_eq!(invitations.len(), 1, "only Olivia's");

    // Look-alike names that are visible text stay distinct from the name they imitate.
    let renamed = team
        .accept_invitation(pb::AcceptInvitationRequest {
            token: invite(&s, &org, &owner, "olivia2@example.com")
                .await
                .unwrap()
                .token,
            first_name: Some("\u{041E}livia".into()), // Cyrillic О
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_ne!(renamed.first_name, olivia.first_name);
    assert_eq!(renamed.first_name, "\u{041E}livia");
    assert_ne!(renamed.user_id, olivia.user_id);
    s.stop().await;
}
