//! Route matching for Envoy ext_authz: which permission an HTTP request needs, from the
//! policy's `[[routes]]` table. Pure: no I/O.

use super::policy::{Policy, Route};

/// The path without its query string or fragment (Envoy's `path` attribute carries both).
fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

impl Policy {
    /// The route an HTTP request falls under, if any.
    ///
    /// A route applies when the request path (without query string) starts with its
    /// `path_prefix` and, if the route names a method, the request's method is that method
    /// (case-insensitive). Among the routes that apply, the longest prefix wins; at equal
    /// length a route naming a method beats one that does not, then the first declared wins.
    pub fn route_for(&self, method: &str, path: &str) -> Option<&Route> {
        let path = path_only(path);
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
        best
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{DEFAULT_POLICY_TOML, Policy};

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
        assert!(p.route_for("GET", "/").is_none());
        assert!(p.route_for("GET", "/health").is_none());
        assert!(p.route_for("GET", "").is_none());
        assert!(
            Policy::embedded_default()
                .route_for("GET", "/api")
                .is_none()
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
                let bare = path.split('?').next().unwrap_or("");
                match p.route_for(method, &path) {
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
        }
    }
}
