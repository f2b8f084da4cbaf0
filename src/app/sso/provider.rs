//! An OpenID provider's metadata (discovery document and JWKS), fetched over HTTP(S) and
//! cached per issuer, and the token request that trades a code for an ID token.
//!
//! Nothing here logs a code, a secret or a token: failures log the endpoint's host, the
//! HTTP status and the OAuth `error` code only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::domain::DomainError;

/// Largest discovery document, JWKS or token response read.
const MAX_BODY: usize = 1024 * 1024;
/// Issuers whose metadata is kept; past it the cache starts over (issuers are those of
/// connections, and of connections being created by their orgs' owners).
const MAX_CACHED_ISSUERS: usize = 1000;

/// The discovery fields teamgate uses (OpenID Connect Discovery 1.0 §3).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// A provider's metadata as last fetched.
#[derive(Debug, Clone)]
pub(super) struct Metadata {
    pub discovery: Discovery,
    pub keys: JwkSet,
    fetched_at: Instant,
}

/// How the client authenticates at the token endpoint.
pub(super) struct Client<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

pub(super) struct Providers {
    http: reqwest::Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, Arc<Metadata>>>,
}

fn unavailable(what: &str) -> DomainError {
    DomainError::unavailable(
        "SSO_PROVIDER_UNAVAILABLE",
        format!(
            "the identity provider did not answer {what} usably: retry shortly, or check the connection's issuer"
        ),
    )
}

fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `application/x-www-form-urlencoded` for the Basic credentials (RFC 6749 §2.3.1).
fn form_encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
}

impl Providers {
    pub fn new(timeout: Duration, ttl: Duration) -> anyhow::Result<Providers> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The endpoints come from the discovery document; a redirect elsewhere is not
            // followed, so a code and the client secret go only where the provider said.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("teamgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Providers {
            http,
            ttl,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, DomainError> {
        let resp = self.http.get(url).send().await.map_err(|e| {
            tracing::warn!(host = %host_of(url), error = %chain(&e.without_url()), "{what}: request failed");
            unavailable(what)
        })?;
        let status = resp.status();
        let body = read_limited(resp).await.map_err(|_| unavailable(what))?;
        if !status.is_success() {
            tracing::warn!(host = %host_of(url), %status, "{what}: provider answered with an error");
            return Err(unavailable(what));
        }
        serde_json::from_slice(&body).map_err(|e| {
            tracing::warn!(host = %host_of(url), error = %e, "{what}: not the expected JSON");
            unavailable(what)
        })
    }

    async fn fetch(&self, issuer: &str) -> Result<Metadata, DomainError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.get_json(&url, "the discovery request").await?;
        // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
        if discovery.issuer != issuer {
            tracing::warn!(host = %host_of(issuer), "discovery document names another issuer");
            return Err(DomainError::precondition(
                "SSO_ISSUER_MISMATCH",
                format!(
                    "the provider's discovery document names issuer `{}`, not `{issuer}`: use exactly that as the connection's issuer",
                    crate::domain::permission::truncate(&discovery.issuer, 128)
                ),
            ));
        }
        let keys: JwkSet = self
            .get_json(&discovery.jwks_uri, "the key request")
            .await?;
        Ok(Metadata {
            discovery,
            keys,
            fetched_at: Instant::now(),
        })
    }

    /// The issuer's metadata, fetched once per `ttl`.
    pub async fn metadata(&self, issuer: &str) -> Result<Arc<Metadata>, DomainError> {
        if let Some(m) = self.cache.lock().await.get(issuer)
            && m.fetched_at.elapsed() < self.ttl
        {
            return Ok(m.clone());
        }
        let fresh = Arc::new(self.fetch(issuer).await?);
        let mut cache = self.cache.lock().await;
        if cache.len() >= MAX_CACHED_ISSUERS {
            cache.clear();
        }
        cache.insert(issuer.to_owned(), fresh.clone());
        Ok(fresh)
    }

    /// The issuer's keys fetched again (a token named a `kid` the cached set lacks: the
    /// provider rotated its keys). Not rate limited: the tokens come from the provider's own
    /// token endpoint, so only the provider can name unknown keys, and only to itself.
    pub async fn refresh_keys(&self, issuer: &str) -> Result<Arc<Metadata>, DomainError> {
        let current = self.metadata(issuer).await?;
        let keys: JwkSet = self
            .get_json(&current.discovery.jwks_uri, "the key request")
            .await?;
        let fresh = Arc::new(Metadata {
            keys,
            ..(*current).clone()
        });
        self.cache
            .lock()
            .await
            .insert(issuer.to_owned(), fresh.clone());
        Ok(fresh)
    }

    /// Trades an authorization code for the ID token (RFC 6749 §4.1.3 with the PKCE
    /// verifier, RFC 7636 §4.5), authenticating with `client_secret_basic` unless the
    /// provider supports only `client_secret_post`.
    pub async fn exchange(
        &self,
        meta: &Metadata,
        client: &Client<'_>,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, DomainError> {
        let methods = &meta.discovery.token_endpoint_auth_methods_supported;
        let post = !client.client_secret.is_empty()
            && !methods.is_empty()
            && !methods.iter().any(|m| m == "client_secret_basic")
            && methods.iter().any(|m| m == "client_secret_post");
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", client.client_id),
        ];
        let endpoint = &meta.discovery.token_endpoint;
        let mut req = self.http.post(endpoint);
        if post {
            form.push(("client_secret", client.client_secret));
        } else if !client.client_secret.is_empty() {
            let basic = STANDARD.encode(format!(
                "{}:{}",
                form_encode(client.client_id),
                form_encode(client.client_secret)
            ));
            req = req.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
        }
        let resp = req.form(&form).send().await.map_err(|e| {
            tracing::warn!(host = %host_of(endpoint), error = %chain(&e.without_url()), "token request failed");
            unavailable("the token request")
        })?;
        let status = resp.status();
        let body = read_limited(resp)
            .await
            .map_err(|_| unavailable("the token request"))?;
        if status.is_client_error() {
            let error = serde_json::from_slice::<TokenError>(&body)
                .map(|e| e.error)
                .unwrap_or_default();
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            tracing::info!(host = %host_of(endpoint), %status, error = %error, "the provider refused the code");
            return Err(DomainError::Unauthenticated {
                reason: "SSO_CODE_REJECTED",
                message: format!(
                    "the identity provider refused the authorization code ({error}): it may have been used already or expired; start again with StartSso"
                ),
            });
        }
        if !status.is_success() {
            tracing::warn!(host = %host_of(endpoint), %status, "token request: provider error");
            return Err(unavailable("the token request"));
        }
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|t| t.id_token)
            .ok_or_else(|| {
                DomainError::Unauthenticated {
                    reason: "SSO_TOKEN_MALFORMED",
                    message: "the identity provider's token response carries no ID token: is the `openid` scope allowed for this client?".into(),
                }
            })
    }
}

/// An error with its causes (reqwest's own message hides them), never a URL.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, ()> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| ())? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
