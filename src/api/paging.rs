//! Page sizes and opaque page tokens.
//!
//! A token is base64url JSON naming the list it belongs to, the scope it was issued for (the
//! org, or the user whose orgs are listed) and the key to continue after, in the canonical
//! form this service stores. It is validated on the way in: a token from another list or
//! another scope, or one that was edited, is `INVALID_ARGUMENT`. Tokens carry no authority:
//! every page is still filtered by the org the caller is authorized for.

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
    s: String,
    a: String,
}

/// Validates `page_size` and decodes `page_token` for the list named `list` in `scope` (the
/// org id, or the user id, the list is for).
pub fn page_request(
    list: &str,
    scope: &str,
    page_size: i32,
    page_token: &str,
) -> Result<PageRequest, Status> {
    // Only the canonical (lower-case, hyphenated) form the service issued is a key: keys are
    // compared as text, so `{…}`, `urn:uuid:…` or upper-case spellings would page wrongly.
    page_request_keyed(list, scope, page_size, page_token, |a| {
        uuid::Uuid::try_parse(a).is_ok_and(|u| u.hyphenated().to_string() == a)
    })
}

/// [`page_request`] for a list keyed by something other than a UUID: `is_key` says whether
/// a token's key is in the canonical form the list issues (anything else is an edit).
pub fn page_request_keyed(
    list: &str,
    scope: &str,
    page_size: i32,
    page_token: &str,
    is_key: impl Fn(&str) -> bool,
) -> Result<PageRequest, Status> {
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
    if wire.l != list || wire.s != scope || !is_key(&wire.a) {
        return Err(bad());
    }
    Ok(PageRequest {
        size,
        after: Some(wire.a),
    })
}

pub fn next_token(list: &str, scope: &str, next: Option<String>) -> String {
    match next {
        None => String::new(),
        Some(a) => {
            let wire = Wire {
                l: list.to_owned(),
                s: scope.to_owned(),
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
        let t = next_token("members", "org-a", Some(id.clone()));
        assert_eq!(
            page_request("members", "org-a", 10, &t).unwrap().after,
            Some(id.clone())
        );
        assert!(page_request("audit", "org-a", 10, &t).is_err());
        assert!(page_request("members", "org-b", 10, &t).is_err());
        assert!(page_request("members", "org-a", 501, "").is_err());
        assert!(page_request("members", "org-a", -1, "").is_err());
        assert_eq!(page_request("members", "org-a", 0, "").unwrap().size, 50);
        assert_eq!(next_token("members", "org-a", None), "");
        // Other spellings of the same UUID are edits, not keys.
        for a in [
            id.to_uppercase(),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            id.replace('-', ""),
        ] {
            let t = next_token("members", "org-a", Some(a.clone()));
            assert!(page_request("members", "org-a", 10, &t).is_err(), "{a}");
        }
    }

    proptest! {
        #[test]
        fn tampered_tokens_never_panic(s in "\\PC{0,600}") {
            let _ = page_request("members", "org-a", 10, &s);
        }

        /// Any byte of a real token changed to any other base64url character is either refused
        /// or still names the same list and scope with a canonical key.
        #[test]
        fn edited_tokens_are_refused_or_canonical(at in 0usize..200, c in "[A-Za-z0-9_-]") {
            let id = uuid::Uuid::now_v7().to_string();
            let t = next_token("members", "org-a", Some(id));
            let at = at % t.len();
            let edited = format!("{}{}{}", &t[..at], c, &t[at + 1..]);
            if let Ok(p) = page_request("members", "org-a", 10, &edited) {
                let a = p.after.unwrap();
                prop_assert_eq!(uuid::Uuid::parse_str(&a).unwrap().hyphenated().to_string(), a);
            }
        }
    }
}
