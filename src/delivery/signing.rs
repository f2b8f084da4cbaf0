//! Signed JSON webhooks: the one signature and the one HTTP client shared by mail webhooks
//! (`mail.sink = "webhook"`) and change-feed webhooks (`[[feed.webhooks]]`), so a receiver
//! built from the README's recipe verifies both.
//!
//! Each delivery is a `POST` with `content-type: application/json` and
//! - `x-teamgate-timestamp`: Unix seconds when it was signed;
//! - `x-teamgate-signature`: `sha256=` + hex HMAC-SHA256, keyed with the endpoint's secret,
//!   over `"{timestamp}.{body}"` (the timestamp is signed so a captured request cannot be
//!   replayed later under a fresh time);
//! - `x-teamgate-delivery`: an id that stays the same on every retry (drop duplicates by it).
//!
//! Any 2xx answer counts as delivered; the caller retries anything else.

use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

pub const TIMESTAMP_HEADER: &str = "x-teamgate-timestamp";
pub const SIGNATURE_HEADER: &str = "x-teamgate-signature";
pub const DELIVERY_HEADER: &str = "x-teamgate-delivery";

/// Names the MAC in the header, so a receiver can tell a future algorithm apart.
const SCHEME: &str = "sha256=";

/// `sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("{SCHEME}{}", data_encoding::HEXLOWER.encode(&tag))
}

/// Where and how to send one delivery.
pub struct Delivery<'a> {
    pub url: &'a reqwest::Url,
    pub secret: &'a Secret,
    pub timestamp: i64,
    /// The `x-teamgate-delivery` id.
    pub id: &'a str,
    pub body: Vec<u8>,
    /// The whole attempt, connecting included.
    pub timeout: Duration,
}

/// The HTTP client for webhooks; cloning shares its connection pool.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
}

impl WebhookClient {
    pub fn new() -> anyhow::Result<WebhookClient> {
        let http = reqwest::Client::builder()
            // A redirect would re-send the signed body somewhere else: refuse it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("teamgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(WebhookClient { http })
    }

    /// Signs and posts one delivery. The error is safe to log and store: it never carries the
    /// URL, whose query may hold a key.
    pub async fn post(&self, d: Delivery<'_>) -> Result<(), String> {
        let signature = signature(d.secret.expose().as_bytes(), d.timestamp, &d.body);
        let response = self
            .http
            .post(d.url.clone())
            .timeout(d.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, d.timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header(DELIVERY_HEADER, d.id)
            .body(d.body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    format!("request failed: {}", e.without_url())
                }
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", status.as_u16()))
        }
    }
}

/// Parses a configured endpoint URL; `what` names the setting in the error.
pub fn parse_url(url: &str, what: &str) -> anyhow::Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url.trim()).with_context(|| format!("{what} is not a URL"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "{what} must be an http:// or https:// URL"
    );
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_hex(key: &[u8], data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data);
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    }

    #[test]
    fn signature_is_hex_hmac_over_timestamp_and_body() {
        let sig = signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert!(sig.starts_with("sha256=") && sig.len() == "sha256=".len() + 64);
        // The signed data is "{timestamp}.{body}".
        assert_eq!(
            sig,
            format!(
                "sha256={}",
                hmac_hex(b"Jefe", b"0.what do ya want for nothing?")
            )
        );
        assert_ne!(sig, signature(b"Jefe", 1, b"what do ya want for nothing?"));
        assert_ne!(sig, signature(b"Jeff", 0, b"what do ya want for nothing?"));
        assert_ne!(sig, signature(b"Jefe", 0, b"what do ya want for nothing!"));
    }

    #[test]
    fn hmac_is_sha256() {
        // RFC 4231 test case 2, through the same primitive and hex encoding.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_http_urls_are_endpoints() {
        assert!(parse_url(" https://hooks.example/x?k=1 ", "u").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/", "u").is_ok());
        assert!(parse_url("ftp://example/", "u").is_err());
        assert!(parse_url("not a url", "u").is_err());
    }
}
