//! The workloads: what each scenario asks, one request at a time.

use std::sync::Arc;

use rand::Rng;
use rand::rngs::SmallRng;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::consistency::Requirement;
use tonic::metadata::{Ascii, MetadataValue};

use crate::load::{Call, Workload};
use crate::seed::{Dataset, Toggles};

/// Permissions the checks ask about: a mix that some roles hold and others do not.
pub const PERMISSIONS: [&str; 6] = [
    "projects.view",
    "projects.edit",
    "members.view",
    "members.manage",
    "billing.manage",
    "reports.view",
];

/// (org id, user id) pairs as the wire carries them.
pub type Subjects = Arc<Vec<(String, String)>>;

pub fn minimize_latency() -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(Requirement::MinimizeLatency(true)),
    })
}

pub fn fully_consistent() -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(Requirement::FullyConsistent(true)),
    })
}

pub fn at_least_as_fresh(token: &str) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(Requirement::AtLeastAsFresh(token.to_owned())),
    })
}

fn permission(rng: &mut SmallRng) -> String {
    PERMISSIONS[rng.random_range(0..PERMISSIONS.len())].to_owned()
}

/// Check over a working set that was warmed first: every answer can come from a cache.
pub struct CachedCheck {
    pub subjects: Subjects,
}

impl CachedCheck {
    fn request(&self, rng: &mut SmallRng) -> pb::CheckRequest {
        let (org, user) = &self.subjects[rng.random_range(0..self.subjects.len())];
        pb::CheckRequest {
            org_id: org.clone(),
            user_id: user.clone(),
            permission: permission(rng),
            consistency: minimize_latency(),
        }
    }
}

impl Workload for CachedCheck {
    fn next(&self, rng: &mut SmallRng) -> Call {
        Call::Check(self.request(rng))
    }
}

/// The routes the benchmark's policy adds to the default one, for the ext_authz row.
pub const ROUTES_TOML: &str = r#"
[[routes]]
method = "GET"
path_prefix = "/api/projects"
permission = "projects.view"

[[routes]]
method = "PUT"
path_prefix = "/api/projects"
permission = "projects.edit"

[[routes]]
method = "GET"
path_prefix = "/api/members"
permission = "members.view"
"#;

const ROUTED: [(&str, &str); 3] = [
    ("GET", "/api/projects/42"),
    ("PUT", "/api/projects/42"),
    ("GET", "/api/members"),
];

/// Envoy's ext_authz Check over the warmed working set, as Envoy sends it: the HTTP request's
/// method, path and headers (the user and org among a few ordinary ones), decided through a
/// route of the benchmark's policy.
pub struct ExtAuthzCheck {
    pub subjects: Subjects,
}

impl Workload for ExtAuthzCheck {
    fn next(&self, rng: &mut SmallRng) -> Call {
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
        use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
        let (org, user) = &self.subjects[rng.random_range(0..self.subjects.len())];
        let (method, path) = ROUTED[rng.random_range(0..ROUTED.len())];
        let headers = [
            (":authority", "app.example.com"),
            (":method", method),
            (":path", path),
            ("accept", "application/json"),
            ("user-agent", "teamgate-bench"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "5b2a3c1e-7d4f-4a6b-9c8d-0e1f2a3b4c5d"),
            ("x-user-id", user),
            ("x-org-id", org),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Call::ExtAuthz(Box::new(CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        id: "1".into(),
                        method: method.into(),
                        path: path.into(),
                        host: "app.example.com".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/1.1".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }))
    }
}

/// Check with `fully_consistent` over every member of the data set: each one reads the
/// database.
pub struct ConsistentCheck {
    pub dataset: Arc<Dataset>,
}

impl Workload for ConsistentCheck {
    fn next(&self, rng: &mut SmallRng) -> Call {
        let (org, user) = self
            .dataset
            .member(rng.random_range(0..self.dataset.member_count()));
        Call::Check(pb::CheckRequest {
            org_id: org.to_string(),
            user_id: user.to_string(),
            permission: permission(rng),
            consistency: fully_consistent(),
        })
    }
}

/// BatchCheck of `size` items drawn from the warmed working set.
pub struct BatchCheck {
    pub subjects: Subjects,
    pub size: usize,
}

impl Workload for BatchCheck {
    fn next(&self, rng: &mut SmallRng) -> Call {
        let items = (0..self.size)
            .map(|_| {
                let (org, user) = &self.subjects[rng.random_range(0..self.subjects.len())];
                pb::CheckItem {
                    org_id: org.clone(),
                    user_id: user.clone(),
                    permission: permission(rng),
                }
            })
            .collect();
        Call::Batch(pb::BatchCheckRequest {
            items,
            consistency: minimize_latency(),
        })
    }
}

/// An org whose toggled member the mixed run may change.
pub struct WriteTarget {
    pub org_index: usize,
    pub org_id: String,
    pub user_id: String,
    /// The org's owner, as the `x-actor-user-id` header.
    pub actor: MetadataValue<Ascii>,
}

/// Cached checks with a fraction of writes: UpdateMemberRole flipping an org's last member
/// between `member` and `manager`, made by the org's owner. Each write drops that member's
/// cached decisions (and no one else's), so their next check misses the cache once.
pub struct Mixed {
    pub reads: CachedCheck,
    pub targets: Arc<Vec<WriteTarget>>,
    pub toggles: Arc<Toggles>,
    pub write_fraction: f64,
}

impl Workload for Mixed {
    fn next(&self, rng: &mut SmallRng) -> Call {
        if self.targets.is_empty() || rng.random::<f64>() >= self.write_fraction {
            return Call::Check(self.reads.request(rng));
        }
        let t = &self.targets[rng.random_range(0..self.targets.len())];
        Call::SetRole {
            req: pb::UpdateMemberRoleRequest {
                org_id: t.org_id.clone(),
                user_id: t.user_id.clone(),
                role: self.toggles.flip(t.org_index).to_owned(),
            },
            actor: t.actor.clone(),
        }
    }
}

/// One BatchCheck of up to `size` subjects starting at `subjects[chunk * size]`, to warm the
/// caches.
pub fn warm_batch(subjects: &[(String, String)], chunk: usize, size: usize) -> Call {
    let start = (chunk * size).min(subjects.len());
    let end = (start + size).min(subjects.len());
    Call::Batch(pb::BatchCheckRequest {
        items: subjects[start..end]
            .iter()
            .map(|(org, user)| pb::CheckItem {
                org_id: org.clone(),
                user_id: user.clone(),
                permission: PERMISSIONS[0].to_owned(),
            })
            .collect(),
        consistency: minimize_latency(),
    })
}

/// One BatchCheck of up to `size` members of the data set starting at member `chunk * size`.
pub fn warm_members(dataset: &Dataset, chunk: usize, size: usize) -> Call {
    let start = (chunk * size).min(dataset.member_count());
    let end = (start + size).min(dataset.member_count());
    Call::Batch(pb::BatchCheckRequest {
        items: (start..end)
            .map(|i| {
                let (org, user) = dataset.member(i);
                pb::CheckItem {
                    org_id: org.to_string(),
                    user_id: user.to_string(),
                    permission: PERMISSIONS[0].to_owned(),
                }
            })
            .collect(),
        consistency: minimize_latency(),
    })
}
