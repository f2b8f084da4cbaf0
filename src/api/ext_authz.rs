//! `envoy.service.auth.v3.Authorization`: Envoy's ext_authz gRPC API, for mesh sidecars.
//!
//! The policy's `[[routes]]` table maps the HTTP request's method and path to a permission;
//! two headers (configurable, `x-user-id` and `x-org-id` by default) name the subject and the
//! organization. The decision comes from the same check path as `AuthzService/Check`.
//!
//! Every answer about the HTTP request is a `CheckResponse`: OK with an `ok_response`, or a
//! denial with a `denied_response` (403, or 401 when the user header is missing) carrying
//! `x-teamgate-reason`. Only failures of teamgate itself (database unreachable, …) are gRPC
//! errors, so Envoy's `failure_mode_allow` decides those, never a normal denial.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use crate::app::App;
use crate::app::authz::{Freshness, Reason};
use crate::config::{ExtAuthzConfig, UnmappedRoute};
use crate::domain::ids::{OrgId, UserId};
use crate::domain::routes::InvalidPath;

/// The response header (to the HTTP client) that says why a request was denied.
pub const REASON_HEADER: &str = "x-teamgate-reason";

pub struct ExtAuthzApi {
    app: Arc<App>,
    settings: ExtAuthzConfig,
}

impl ExtAuthzApi {
    pub fn new(app: Arc<App>, settings: ExtAuthzConfig) -> Self {
        ExtAuthzApi { app, settings }
    }
}

/// Why a request was let through or not. The names extend `AuthzService`'s `Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No route maps the request and `ext_authz.unmapped = "allow"`.
    UnmappedAllowed,
    NotMember,
    MissingPermission,
    OrgNotFound,
    UserDisabled,
    MfaRequired,
    /// No route maps the request and `ext_authz.unmapped = "deny"` (the default).
    UnmappedRoute,
    /// The user header is absent or empty.
    MissingUser,
    /// The org header is absent or empty.
    MissingOrg,
    /// A user or org header is not an id, or is repeated.
    InvalidHeader,
    /// The CheckRequest carries no HTTP request attributes.
    NoHttpRequest,
    /// The request path has no normal form (an encoded `/` or `\`, a NUL, a bad escape, a
    /// `..` above the root, …), so no route can be matched safely.
    InvalidPath,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "REASON_ALLOWED",
            Verdict::UnmappedAllowed => "REASON_UNMAPPED_ROUTE_ALLOWED",
            Verdict::NotMember => "REASON_NOT_MEMBER",
            Verdict::MissingPermission => "REASON_MISSING_PERMISSION",
            Verdict::OrgNotFound => "REASON_ORG_NOT_FOUND",
            Verdict::UserDisabled => "REASON_USER_DISABLED",
            Verdict::MfaRequired => "REASON_MFA_REQUIRED",
            Verdict::UnmappedRoute => "REASON_UNMAPPED_ROUTE",
            Verdict::MissingUser => "REASON_MISSING_USER",
            Verdict::MissingOrg => "REASON_MISSING_ORG",
            Verdict::InvalidHeader => "REASON_INVALID_HEADER",
            Verdict::NoHttpRequest => "REASON_NO_HTTP_REQUEST",
            Verdict::InvalidPath => "REASON_INVALID_PATH",
        }
    }

    pub fn allowed(self) -> bool {
        matches!(self, Verdict::Allowed | Verdict::UnmappedAllowed)
    }

    fn from_reason(r: Reason) -> Verdict {
        match r {
            Reason::Allowed => Verdict::Allowed,
            Reason::NotMember => Verdict::NotMember,
            Reason::MissingPermission => Verdict::MissingPermission,
            Reason::OrgNotFound => Verdict::OrgNotFound,
            Reason::UserDisabled => Verdict::UserDisabled,
            Reason::MfaRequired => Verdict::MfaRequired,
        }
    }

    /// The gRPC code in `CheckResponse.status` and the HTTP status Envoy sends the client.
    fn codes(self) -> (Code, HttpStatusCode) {
        match self {
            Verdict::Allowed | Verdict::UnmappedAllowed => (Code::Ok, HttpStatusCode::Ok),
            Verdict::MissingUser => (Code::Unauthenticated, HttpStatusCode::Unauthorized),
            Verdict::NotMember
            | Verdict::MissingPermission
            | Verdict::OrgNotFound
            | Verdict::UserDisabled
            | Verdict::MfaRequired
            | Verdict::UnmappedRoute
            | Verdict::MissingOrg
            | Verdict::InvalidHeader
            | Verdict::NoHttpRequest
            | Verdict::InvalidPath => (Code::PermissionDenied, HttpStatusCode::Forbidden),
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::UnmappedAllowed => "no route maps this request; allowed by configuration",
            Verdict::NotMember => "the user is not a member of the organization",
            Verdict::MissingPermission => "the user's role lacks the permission this route needs",
            Verdict::OrgNotFound => "the organization does not exist",
            Verdict::UserDisabled => "the user's account is disabled",
            Verdict::MfaRequired => {
                "the organization requires two-factor sign-in and the user has not enrolled"
            }
            Verdict::UnmappedRoute => "no route maps this request",
            Verdict::MissingUser => "the request names no user",
            Verdict::MissingOrg => "the request names no organization",
            Verdict::InvalidHeader => "a user or organization header is not a single valid id",
            Verdict::NoHttpRequest => "the check request carries no HTTP request",
            Verdict::InvalidPath => {
                "the request path cannot be normalized (encoded slash or backslash, NUL, invalid escape, or `..` above the root)"
            }
        }
    }

    /// The `CheckResponse` Envoy acts on.
    pub fn response(self) -> CheckResponse {
        let (code, http) = self.codes();
        let reason = self.name();
        let header = |key: &str, value: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: key.to_owned(),
                value: value.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let http_response = if self.allowed() {
            HttpResponse::OkResponse(OkHttpResponse::default())
        } else {
            HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: http.into() }),
                headers: vec![
                    header(REASON_HEADER, reason),
                    header("content-type", "text/plain; charset=utf-8"),
                ],
                body: format!("access denied: {} ({reason})\n", self.explanation()),
            })
        };
        CheckResponse {
            status: Some(rpc::Status {
                code: code.into(),
                message: if self.allowed() {
                    String::new()
                } else {
                    format!("{}: {}", reason, self.explanation())
                },
                details: Vec::new(),
            }),
            dynamic_metadata: None,
            http_response: Some(http_response),
        }
    }
}

/// One header's value: Envoy sends lower-cased keys in `headers`, or every raw header in
/// `header_map` when `encode_raw_headers` is on. Keys compare case-insensitively; a header
/// given more than once (or merged by Envoy into `a,b`) is not a single id and fails parsing.
enum Header<'a> {
    Missing,
    One(&'a str),
    Invalid,
}

fn header<'a>(http: &'a HttpRequest, name: &str) -> Header<'a> {
    let mut values: Vec<Option<&str>> = http
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| Some(v.as_str()))
        .collect();
    if let Some(map) = &http.header_map {
        values.extend(
            map.headers
                .iter()
                .filter(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| {
                    if h.raw_value.is_empty() {
                        Some(h.value.as_str())
                    } else {
                        std::str::from_utf8(&h.raw_value).ok()
                    }
                }),
        );
    }
    let mut present = values
        .into_iter()
        .filter(|v| v.is_none_or(|v| !v.trim().is_empty()));
    match (present.next(), present.next()) {
        (None, _) => Header::Missing,
        (Some(Some(v)), None) => Header::One(v.trim()),
        _ => Header::Invalid,
    }
}

impl ExtAuthzApi {
    /// Decides one HTTP request. `Err` only for teamgate's own failures.
    async fn decide(&self, http: Option<&HttpRequest>) -> Result<Verdict, Status> {
        let span = tracing::Span::current();
        let Some(http) = http else {
            return Ok(Verdict::NoHttpRequest);
        };
        // Refused before the unmapped-route setting applies: a path with no normal form
        // could be served as a mapped route by an upstream that decodes it differently.
        let route = match self.app.policy.route_for(&http.method, &http.path) {
            Ok(route) => route,
            Err(InvalidPath(why)) => {
                tracing::debug!(why, "request path has no normal form");
                return Ok(Verdict::InvalidPath);
            }
        };
        let Some(route) = route else {
            return Ok(match self.settings.unmapped {
                UnmappedRoute::Allow => Verdict::UnmappedAllowed,
                UnmappedRoute::Deny => Verdict::UnmappedRoute,
            });
        };
        span.record("permission", route.permission.as_str());
        let user = match header(http, &self.settings.user_header) {
            Header::Missing => return Ok(Verdict::MissingUser),
            Header::Invalid => return Ok(Verdict::InvalidHeader),
            Header::One(v) => match UserId::parse(&self.settings.user_header, v) {
                Ok(user) => user,
                Err(_) => return Ok(Verdict::InvalidHeader),
            },
        };
        let org = match header(http, &self.settings.org_header) {
            Header::Missing => return Ok(Verdict::MissingOrg),
            Header::Invalid => return Ok(Verdict::InvalidHeader),
            Header::One(v) => match OrgId::parse(&self.settings.org_header, v) {
                Ok(org) => org,
                Err(_) => return Ok(Verdict::InvalidHeader),
            },
        };
        span.record("org_id", tracing::field::display(&org));
        // Routes name catalog permissions (the policy refuses others), so this always finds one.
        let Some(permission) = self.app.decisions.bit_of(&route.permission) else {
            return Ok(Verdict::MissingPermission);
        };
        let (reason, _) = self
            .app
            .decisions
            .check(org, user, permission, &Freshness::MinimizeLatency)
            .await?;
        Ok(Verdict::from_reason(reason))
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    #[tracing::instrument(
        target = "teamgate::trace",
        skip_all,
        fields(method, permission, org_id, allowed, reason)
    )]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let http = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let span = tracing::Span::current();
        if let Some(http) = http {
            span.record("method", http.method.as_str());
        }
        let verdict = self.decide(http).await?;
        span.record("allowed", verdict.allowed());
        span.record("reason", verdict.name());
        Ok(Response::new(verdict.response()))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;

    use super::*;

    fn denied(r: &CheckResponse) -> &DeniedHttpResponse {
        match &r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d,
            other => panic!("expected a denied response, got {other:?}"),
        }
    }

    #[test]
    fn allowed_is_ok_with_an_ok_response() {
        for v in [Verdict::Allowed, Verdict::UnmappedAllowed] {
            let r = v.response();
            assert_eq!(r.status.as_ref().map(|s| s.code), Some(0));
            assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
        }
    }

    #[test]
    fn denials_carry_status_and_reason() {
        let r = Verdict::NotMember.response();
        assert_eq!(
            r.status.as_ref().map(|s| s.code),
            Some(Code::PermissionDenied as i32)
        );
        let d = denied(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(403));
        assert!(d.headers.iter().any(|h| {
            h.header
                .as_ref()
                .is_some_and(|h| h.key == REASON_HEADER && h.value == "REASON_NOT_MEMBER")
        }));
        assert!(d.body.contains("REASON_NOT_MEMBER"));

        let r = Verdict::MissingUser.response();
        assert_eq!(
            r.status.as_ref().map(|s| s.code),
            Some(Code::Unauthenticated as i32)
        );
        assert_eq!(denied(&r).status.as_ref().map(|s| s.code), Some(401));
    }

    fn http(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn headers_are_found_case_insensitively_and_must_be_single() {
        let h = http(&[("x-user-id", " abc ")]);
        assert!(matches!(header(&h, "X-User-Id"), Header::One("abc")));
        assert!(matches!(header(&h, "x-org-id"), Header::Missing));
        let h = http(&[("x-user-id", "")]);
        assert!(matches!(header(&h, "x-user-id"), Header::Missing));
        let h = http(&[("x-user-id", "a"), ("X-USER-ID", "b")]);
        assert!(matches!(header(&h, "x-user-id"), Header::Invalid));

        let raw = |k: &str, v: &[u8]| HeaderValue {
            key: k.to_owned(),
            raw_value: v.to_vec(),
            ..Default::default()
        };
        let mut h = http(&[]);
        h.header_map = Some(HeaderMap {
            headers: vec![raw("x-user-id", b"abc")],
        });
        assert!(matches!(header(&h, "x-user-id"), Header::One("abc")));
        h.header_map = Some(HeaderMap {
            headers: vec![raw("x-user-id", b"abc"), raw("x-user-id", b"def")],
        });
        assert!(matches!(header(&h, "x-user-id"), Header::Invalid));
        h.header_map = Some(HeaderMap {
            headers: vec![raw("x-user-id", &[0xff, 0xfe])],
        });
        assert!(matches!(header(&h, "x-user-id"), Header::Invalid));
    }
}
