//! Route matching for Envoy ext_authz: which permission an HTTP request needs, from the
//! policy's `[[routes]]` table. Pure: no I/O.
//!
//! Prefixes are matched against the request path in normal form, never the raw one: an
//! upstream resolves `/api/../admin` to `/admin`, so matching the raw text against `/api`
//! would authorize one resource and serve another.

use percent_encoding::percent_decode;

use super::policy::{Policy, Route};

/// A request path that cannot be put in normal form; the `&str` says why (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPath(pub &'static str);

/// RFC 3986 unreserved characters: decoding them never changes what the path means.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes the unreserved characters of one segment and upper-cases the hex of the other
/// escapes. An escape that would turn into a separator (`/`, `\`) or a NUL is refused:
/// upstreams disagree on whether `%2F` splits a segment, so no single normal form exists.
fn normalize_segment(segment: &str, out: &mut String) -> Result<(), InvalidPath> {
    let bytes = segment.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let triplet = bytes.get(i..i + 3).ok_or(InvalidPath("truncated escape"))?;
                // The crate yields the escape's byte alone for a valid escape, and the raw
                // bytes one by one for an invalid one.
                let mut decoded = percent_decode(triplet);
                let byte = match (decoded.next(), decoded.next()) {
                    (Some(b), None) => b,
                    _ => return Err(InvalidPath("invalid escape")),
                };
                out.push_str(&segment[start..i]);
                match byte {
                    b'/' | b'\\' => return Err(InvalidPath("encoded separator")),
                    0 => return Err(InvalidPath("NUL")),
                    b if unreserved(b) => out.push(char::from(b)),
                    b => out.push_str(&format!("%{b:02X}")),
                }
                i += 3;
                start = i;
            }
            b'\\' => return Err(InvalidPath("backslash")),
            0 => return Err(InvalidPath("NUL")),
            _ => i += 1,
        }
    }
    out.push_str(&segment[start..]);
    Ok(())
}

/// The path in normal form: without query string or fragment, unreserved characters
/// decoded, other escapes in upper-case hex, empty segments (`//`) dropped, `.` and `..`
/// resolved. A trailing `/` is kept (also the one a final `.` or `..` leaves, as in
/// RFC 3986). Normalizing a normal path returns it unchanged.
pub fn normalize_path(raw: &str) -> Result<String, InvalidPath> {
    // Envoy's `path` attribute carries the query string and fragment.
    let path = raw.split(['?', '#']).next().unwrap_or(raw);
    let Some(rest) = path.strip_prefix('/') else {
        return Err(InvalidPath("not an absolute path"));
    };
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in rest.split('/') {
        let mut segment = String::with_capacity(raw_segment.len());
        normalize_segment(raw_segment, &mut segment)?;
        trailing_slash = matches!(segment.as_str(), "" | "." | "..");
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(InvalidPath("`..` above the root"));
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

impl Policy {
    /// The route an HTTP request falls under, if any; `Err` when the path has no normal form
    /// (see [`normalize_path`]), which callers must deny rather than treat as unmapped.
    ///
    /// A route applies when the normalized request path starts with its `path_prefix` and,
    /// if the route names a method, the request's method is that method (case-insensitive).
    /// Among the routes that apply, the longest prefix wins; at equal length a route naming a
    /// method beats one that does not, then the first declared wins.
    pub fn route_for(&self, method: &str, path: &str) -> Result<Option<&Route>, InvalidPath> {
        let path = normalize_path(path)?;
        let mut best: Option<&Route> = None;
        for route in self.routes() {
            let method_ok = route
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method));
            if !method_ok || !path.starts_with(route.path_prefix.as_str()) {
                continue;
            }
            let rank = |r: &Route| (r.path_prefix.len(), r.method.is_some());
            if best.is_none_or(|b| rank(route) > rank(b)) {
                best = Some(route);
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{DEFAULT_POLICY_TOML, Policy};
    use super::{InvalidPath, normalize_path};

    fn policy(routes: &str) -> Policy {
        Policy::parse(&format!("{DEFAULT_POLICY_TOML}\n{routes}")).unwrap()
    }

    fn sample() -> Policy {
        policy(
            r#"
[[routes]]
path_prefix = "/api"
permission = "members.view"

[[routes]]
method = "GET"
path_prefix = "/api/projects"
permission = "projects.view"

[[routes]]
method = "post"
path_prefix = "/api/projects"
permission = "projects.create"

[[routes]]
method = "DELETE"
path_prefix = "/api/projects"
permission = "projects.delete"

[[routes]]
path_prefix = "/admin"
permission = "org.update"

[[routes]]
method = "GET"
path_prefix = "/admin"
permission = "audit.view"
"#,
        )
    }

    fn permission(p: &Policy, method: &str, path: &str) -> Option<String> {
        p.route_for(method, path)
            .expect("a path with a normal form")
            .map(|r| r.permission.as_str().to_owned())
    }

    #[test]
    fn longest_prefix_with_matching_method_wins() {
        let p = sample();
        assert_eq!(
            permission(&p, "GET", "/api/projects/1").as_deref(),
            Some("projects.view")
        );
        assert_eq!(
            permission(&p, "DELETE", "/api/projects/1").as_deref(),
            Some("projects.delete")
        );
        assert_eq!(
            permission(&p, "POST", "/api/projects").as_deref(),
            Some("projects.create")
        );
    }

    #[test]
    fn methods_compare_case_insensitively() {
        let p = sample();
        assert_eq!(
            permission(&p, "delete", "/api/projects/1").as_deref(),
            Some("projects.delete")
        );
        assert_eq!(
            permission(&p, "Post", "/api/projects").as_deref(),
            Some("projects.create")
        );
    }

    #[test]
    fn a_method_mismatch_falls_back_to_a_shorter_prefix() {
        let p = sample();
        assert_eq!(
            permission(&p, "PUT", "/api/projects/1").as_deref(),
            Some("members.view")
        );
    }

    #[test]
    fn a_route_naming_the_method_beats_one_without_at_equal_length() {
        let p = sample();
        assert_eq!(
            permission(&p, "GET", "/admin/users").as_deref(),
            Some("audit.view")
        );
        assert_eq!(
            permission(&p, "POST", "/admin/users").as_deref(),
            Some("org.update")
        );
    }

    #[test]
    fn query_strings_and_fragments_are_ignored() {
        let p = sample();
        assert_eq!(
            permission(&p, "GET", "/api/projects?x=/admin").as_deref(),
            Some("projects.view")
        );
        assert_eq!(permission(&p, "GET", "/other?next=/admin").as_deref(), None);
        assert_eq!(permission(&p, "GET", "/other#/admin").as_deref(), None);
    }

    #[test]
    fn unmapped_paths_have_no_route() {
        let p = sample();
        assert_eq!(p.route_for("GET", "/"), Ok(None));
        assert_eq!(p.route_for("GET", "/health"), Ok(None));
        assert_eq!(
            Policy::embedded_default().route_for("GET", "/api"),
            Ok(None)
        );
    }

    #[test]
    fn the_first_declared_wins_a_full_tie() {
        let p = policy(
            r#"
[[routes]]
path_prefix = "/x"
permission = "projects.view"

[[routes]]
path_prefix = "/x"
permission = "projects.edit"
"#,
        );
        assert_eq!(
            permission(&p, "GET", "/x").as_deref(),
            Some("projects.view")
        );
    }

    #[test]
    fn routes_match_the_normalized_path() {
        let p = sample();
        // Matched raw, these would fall under `/api` (or `GET /api/projects`).
        for path in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/%2E%2E/admin",
            "/api/projects/../../admin",
            "/api/./../admin/",
            "//admin",
            "/%61dmin",
        ] {
            assert_eq!(
                permission(&p, "POST", path).as_deref(),
                Some("org.update"),
                "{path}"
            );
        }
        assert_eq!(
            permission(&p, "GET", "/api//projects/1").as_deref(),
            Some("projects.view")
        );
        assert_eq!(
            permission(&p, "GET", "/api/projects/1/../2").as_deref(),
            Some("projects.view")
        );
        assert!(p.route_for("GET", "/api/%2Fadmin").is_err());
        assert!(p.route_for("GET", "").is_err());
    }

    #[test]
    fn normal_form() {
        for (raw, normal) in [
            ("/", "/"),
            ("/api/projects/1", "/api/projects/1"),
            ("/api/projects/", "/api/projects/"),
            ("/api/projects?x=/../admin#f", "/api/projects"),
            ("/a#/../b", "/a"),
            ("//a///b//", "/a/b/"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a/%2e/b/%2E%2e/c", "/a/c"),
            ("/%41%7a%30%2D%2e%5F%7E", "/Az0-._~"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
            ("/a%3bb/%3F", "/a%3Bb/%3F"),
            ("/%25", "/%25"),
            ("/%2541", "/%2541"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn paths_without_a_normal_form_are_refused() {
        for raw in [
            "",
            "api/projects",
            "*",
            "?/admin",
            "/..",
            "/a/../..",
            "/%2e%2e/admin",
            "/api/%2Fadmin",
            "/api/%2fadmin",
            "/api/%5Cadmin",
            "/api/%5cadmin",
            "/api\\admin",
            "/api/\0admin",
            "/api/%00",
            "/api/%",
            "/api/%4",
            "/api/%G1",
            "/api/%+1",
            "/api/%%41",
        ] {
            assert!(
                matches!(normalize_path(raw), Err(InvalidPath(_))),
                "{raw:?} -> {:?}",
                normalize_path(raw)
            );
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::sample;

        proptest! {
            #[test]
            fn the_chosen_route_applies_and_none_longer_does(
                method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "get"]),
                path in "(/api|/admin|/api/projects|/other)?(/[a-z0-9]{0,4}){0,3}(\\?[a-z=/]{0,6})?",
            ) {
                let p = sample();
                let Ok(normal) = super::normalize_path(&path) else {
                    prop_assert!(p.route_for(method, &path).is_err());
                    return Ok(());
                };
                let bare = normal.as_str();
                match p.route_for(method, &path).unwrap() {
                    Some(r) => {
                        prop_assert!(bare.starts_with(r.path_prefix.as_str()));
                        prop_assert!(r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method)));
                        for other in p.routes() {
                            let applies = bare.starts_with(other.path_prefix.as_str())
                                && other.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method));
                            if applies {
                                prop_assert!(other.path_prefix.len() <= r.path_prefix.len());
                            }
                        }
                    }
                    None => {
                        let none_applies = p.routes().iter().all(|r| {
                            !bare.starts_with(r.path_prefix.as_str())
                                || r.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case(method))
                        });
                        prop_assert!(none_applies);
                    }
                }
            }

            /// Normalizing twice equals normalizing once, and a normal path has no empty, `.`
            /// or `..` segment and no escape of an unreserved character.
            #[test]
            fn normalizing_is_idempotent(
                path in "(/([a-zA-Z0-9._~-]{0,3}|\\.|\\.\\.|%2[eEfF]|%5[cC]|%[0-9a-fA-F]{2}|%|[;:@ ?#\\\\]|é)){0,8}",
            ) {
                if let Ok(once) = super::normalize_path(&path) {
                    prop_assert_eq!(super::normalize_path(&once), Ok(once.clone()));
                    let inner = once.strip_suffix('/').unwrap_or(&once);
                    for segment in inner.split('/').skip(1) {
                        prop_assert!(!matches!(segment, "" | "." | ".."), "{} -> {}", path, once);
                    }
                    let bytes = once.as_bytes();
                    for (i, b) in bytes.iter().enumerate() {
                        if *b == b'%' {
                            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                            let decoded = u8::from_str_radix(hex, 16).unwrap();
                            prop_assert!(!super::super::unreserved(decoded), "{} -> {}", path, once);
                            prop_assert_eq!(hex.to_ascii_uppercase(), hex);
                        }
                    }
                }
            }
        }
    }
}
