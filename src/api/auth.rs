//! Caller authentication: service keys with scopes, checked on every call before any
//! handler runs, plus a per-key rate limit and a server-wide concurrency limit that sheds
//! load with RESOURCE_EXHAUSTED instead of queueing without bound.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::Code;
use tower::{Layer, Service};

use super::context::CallerKey;
use super::error::with_reason;
use crate::domain::token::hash_secret;

pub use crate::config::Scope;

/// A configured service key, stored as the SHA-256 of the key.
#[derive(Debug, Clone)]
pub struct ServiceKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub rate_per_sec: Option<u32>,
    /// May name the end client in `x-client-address`, which per-caller limits then key on.
    pub trust_client_address: bool,
}

/// Prefix of generated keys, so leaked ones are easy to spot in code and logs.
pub const KEY_PREFIX: &str = "tgk_";

/// A new random key and the hash to put in the configuration.
pub fn new_key() -> (String, String) {
    let key = format!("{KEY_PREFIX}{}", crate::domain::token::new_secret());
    let hash = format!("sha256:{}", hash_secret(&key));
    (key, hash)
}

/// The scope a gRPC method path needs; `None` for health and reflection, which stay open
/// so probes and operators' grpcurl work.
pub fn scope_for(path: &str) -> Option<Scope> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "teamgate.v1.TeamService" | "teamgate.v1.IdentityService" => Some(Scope::Team),
        "teamgate.v1.AuthzService" | "envoy.service.auth.v3.Authorization" => Some(Scope::Authz),
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        // Anything else is an admin matter (and will be UNIMPLEMENTED anyway).
        _ => Some(Scope::Admin),
    }
}

/// A token bucket per key.
struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Keys {
    by_hash: HashMap<String, ServiceKey>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Keys {
    /// `hashes` maps `sha256:<hex>` to the key's settings.
    pub fn new(keys: Vec<(String, ServiceKey)>) -> Keys {
        Keys {
            by_hash: keys
                .into_iter()
                .map(|(h, k)| (h.trim_start_matches("sha256:").to_ascii_lowercase(), k))
                .collect(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn identify(&self, header: Option<&str>) -> Result<&ServiceKey, tonic::Status> {
        let presented = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                with_reason(
                    Code::Unauthenticated,
                    "MISSING_CREDENTIALS",
                    "send `authorization: Bearer <service key>`",
                )
            })?;
        // Keys are high-entropy, so looking up their hash leaks nothing an attacker can use.
        self.by_hash.get(&hash_secret(presented)).ok_or_else(|| {
            with_reason(
                Code::Unauthenticated,
                "INVALID_CREDENTIALS",
                "the service key is not valid: check the key or ask for a new one",
            )
        })
    }

    fn take_token(&self, key: &ServiceKey) -> bool {
        let Some(rate) = key.rate_per_sec else {
            return true;
        };
        let rate = f64::from(rate.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = buckets.entry(key.name.clone()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Authenticates and authorizes a call to `path`; returns the key that did.
    pub fn admit(
        &self,
        path: &str,
        header: Option<&str>,
    ) -> Result<Option<CallerKey>, tonic::Status> {
        if self.is_empty() {
            return Ok(None);
        }
        let Some(needed) = scope_for(path) else {
            return Ok(None);
        };
        let key = self.identify(header)?;
        if !(key.scopes.contains(&needed) || key.scopes.contains(&Scope::Admin)) {
            return Err(with_reason(
                Code::PermissionDenied,
                "MISSING_SCOPE",
                format!(
                    "service key `{}` lacks the `{}` scope this call needs",
                    key.name,
                    match needed {
                        Scope::Authz => "authz",
                        Scope::Team => "team",
                        Scope::Admin => "admin",
                    }
                ),
            ));
        }
        if !self.take_token(key) {
            return Err(with_reason(
                Code::ResourceExhausted,
                "RATE_LIMITED",
                format!(
                    "service key `{}` is over its rate limit: slow down and retry",
                    key.name
                ),
            ));
        }
        Ok(Some(CallerKey {
            name: key.name.clone(),
            trust_client_address: key.trust_client_address,
            operator: key.scopes.contains(&Scope::Admin),
        }))
    }
}

/// The guard layer: concurrency limit (shed, never queue), key check, then the per-call
/// deadline. The deadline lives here rather than in tonic's `Server::timeout`, which answers
/// an expired call with CANCELLED; a server that ran out of time owes DEADLINE_EXCEEDED.
#[derive(Clone)]
pub struct GuardLayer {
    keys: Arc<Keys>,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl GuardLayer {
    pub fn new(keys: Arc<Keys>, max_concurrent: usize, timeout: Duration) -> GuardLayer {
        GuardLayer {
            keys,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            timeout,
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            keys: self.keys.clone(),
            slots: self.slots.clone(),
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    keys: Arc<Keys>,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl<S, B, RB> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            let status = with_reason(
                Code::ResourceExhausted,
                "OVERLOADED",
                "teamgate is at its concurrency limit: retry with backoff",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.keys.admit(req.uri().path(), header) {
            Err(status) => Box::pin(async move {
                drop(permit);
                Ok(status.into_http())
            }),
            Ok(key) => {
                if let Some(key) = key {
                    tracing::Span::current().record("service_key", key.name.as_str());
                    req.extensions_mut().insert(key);
                }
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let timeout = self.timeout;
                Box::pin(async move {
                    let resp = match tokio::time::timeout(timeout, inner.call(req)).await {
                        Ok(resp) => resp,
                        Err(_) => Ok(with_reason(
                            Code::DeadlineExceeded,
                            "TIMEOUT",
                            format!(
                                "no answer within server.request_timeout_ms ({} ms)",
                                timeout.as_millis()
                            ),
                        )
                        .into_http()),
                    };
                    drop(permit);
                    resp
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Keys, String) {
        let (key, hash) = new_key();
        let keys = Keys::new(vec![(
            hash,
            ServiceKey {
                name: "billing".into(),
                scopes: vec![Scope::Authz],
                rate_per_sec: Some(2),
                trust_client_address: false,
            },
        )]);
        (keys, key)
    }

    #[test]
    fn scopes_and_credentials() {
        let (keys, key) = keys();
        let bearer = format!("Bearer {key}");
        let admitted = keys
            .admit("/teamgate.v1.AuthzService/Check", Some(&bearer))
            .unwrap()
            .unwrap();
        assert_eq!(admitted.name, "billing");
        assert!(!admitted.trust_client_address);
        let e = keys
            .admit("/teamgate.v1.TeamService/GetOrganization", Some(&bearer))
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = keys
            .admit("/teamgate.v1.AuthzService/Check", None)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = keys
            .admit("/teamgate.v1.AuthzService/Check", Some("Bearer tgk_wrong"))
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            keys.admit("/grpc.health.v1.Health/Check", None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rate_limit_per_key() {
        let (keys, key) = keys();
        let bearer = format!("Bearer {key}");
        let results: Vec<bool> = (0..5)
            .map(|_| {
                keys.admit("/teamgate.v1.AuthzService/Check", Some(&bearer))
                    .is_ok()
            })
            .collect();
        assert_eq!(results.iter().filter(|ok| **ok).count(), 2);
    }
}
