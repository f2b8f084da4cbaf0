//! Page sizes and opaque page tokens.
//!
//! A token is base64url JSON naming the list it belongs to and the key to continue after. It
//! is validated on the way in: a token from another list, or one that was edited, is
//! `INVALID_ARGUMENT`. Tokens carry no authority: every page is still filtered by the org the
//! caller is authorized for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::error::invalid;
use crate::app::PageRequest;

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: i32 = 500;
const MAX_TOKEN_LEN: usize = 512;

#[derive(Serialize, Deserialize)]
struct Wire {
    l: String,
    a: String,
}

/// Validates `page_size` and decodes `page_token` for the list named `list`.
pub fn page_request(list: &str, page_size: i32, page_token: &str) -> Result<PageRequest, Status> {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if (1..=MAX_PAGE_SIZE).contains(&n) => u64::try_from(n).unwrap_or(DEFAULT_PAGE_SIZE),
        n => {
            return Err(invalid(
                "page_size",
                "INVALID_PAGE_SIZE",
                format!(
                    "page_size {n} is out of range: use 1 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
                ),
            ));
        }
    };
    if page_token.is_empty() {
        return Ok(PageRequest { size, after: None });
    }
    let bad = || {
        invalid(
            "page_token",
            "INVALID_PAGE_TOKEN",
            "page_token is not one this list returned: pass next_page_token unchanged, or omit it to start over",
        )
    };
    if page_token.len() > MAX_TOKEN_LEN {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad())?;
    let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if wire.l != list || uuid::Uuid::try_parse(&wire.a).is_err() {
        return Err(bad());
    }
    Ok(PageRequest {
        size,
        after: Some(wire.a),
    })
}

pub fn next_token(list: &str, next: Option<String>) -> String {
    match next {
        None => String::new(),
        Some(a) => {
            let wire = Wire {
                l: list.to_owned(),
                a,
            };
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_scoping() {
        let id = uuid::Uuid::now_v7().to_string();
        let t = next_token("members", Some(id.clone()));
        assert_eq!(page_request("members", 10, &t).unwrap().after, Some(id));
        assert!(page_request("audit", 10, &t).is_err());
        assert!(page_request("members", 501, "").is_err());
        assert!(page_request("members", -1, "").is_err());
        assert_eq!(page_request("members", 0, "").unwrap().size, 50);
        assert_eq!(next_token("members", None), "");
    }

    proptest! {
        #[test]
        fn tampered_tokens_never_panic(s in "\\PC{0,600}") {
            let _ = page_request("members", 10, &s);
        }
    }
}
