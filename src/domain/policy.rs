//! The deployment's policy: permission catalog, built-in roles, owner and invite roles, plans.
//!
//! A policy is parsed from TOML and validated as a whole; a `Policy` value that exists is
//! internally consistent, so the rest of the service never re-checks it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::permission::{Permission, PermissionBit, PermissionBits, PermissionSet};

/// The permissions teamgate itself enforces; every policy's catalog must declare them.
pub const ENFORCED_PERMISSIONS: [&str; 8] = [
    "members.view",
    "members.manage",
    "roles.manage",
    "org.update",
    "billing.manage",
    "org.delete",
    "org.transfer",
    "audit.view",
];

/// Permissions teamgate enforces that arrived after policies were already deployed: a policy
/// that does not declare one still loads (an upgrade must not break it), the permission joins
/// its catalog and is granted to the owner role only — least privilege until the operator
/// decides otherwise by declaring it.
pub const IMPLIED_PERMISSIONS: [&str; 1] = ["sso.manage"];

/// The policy compiled into the binary, used when no policy file is configured.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../deploy/policies/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    owner_role: Spanned<String>,
    invite_role: Spanned<String>,
    default_plan: Spanned<String>,
    permissions: Vec<Spanned<String>>,
    #[serde(default)]
    roles: Vec<RawRole>,
    #[serde(default)]
    plans: Vec<RawPlan>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    key: Spanned<String>,
    display_name: String,
    permissions: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    key: Spanned<String>,
    max_members: Option<Spanned<i64>>,
    #[serde(default)]
    upgrade_hint: String,
}

/// Maps a request (method + path prefix) to the permission it needs, for Envoy ext_authz.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    method: Option<String>,
    path_prefix: String,
    permission: Spanned<String>,
}

/// A built-in role as the policy declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltInRole {
    pub key: String,
    pub display_name: String,
    pub permissions: PermissionSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub key: String,
    pub max_members: Option<u32>,
    pub upgrade_hint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Option<String>,
    pub path_prefix: String,
    pub permission: Permission,
}

#[derive(Debug, Clone)]
pub struct Policy {
    catalog: BTreeSet<Permission>,
    /// Catalog positions by name (the catalog's order), for the check path.
    bits: HashMap<String, PermissionBit>,
    roles: Vec<BuiltInRole>,
    owner_role: String,
    invite_role: String,
    default_plan: String,
    plans: Vec<Plan>,
    routes: Vec<Route>,
}

/// Catalog positions are u16 (see `PermissionBit`); no real catalog comes near this.
const MAX_CATALOG: usize = 4096;

fn positions(catalog: &BTreeSet<Permission>) -> HashMap<String, PermissionBit> {
    catalog
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // `MAX_CATALOG` keeps every position within u16.
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            (p.as_str().to_owned(), PermissionBit::new(i))
        })
        .collect()
}

/// One problem found in a policy file, with the line it is on when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub line: Option<usize>,
    pub message: String,
}

/// Everything wrong with a policy file, rendered with line context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub problems: Vec<PolicyProblem>,
    rendered: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rendered)
    }
}

impl std::error::Error for PolicyError {}

struct Problems<'a> {
    source: &'a str,
    found: Vec<(Option<Range<usize>>, String)>,
}

impl<'a> Problems<'a> {
    fn at(&mut self, span: Range<usize>, message: String) {
        self.found.push((Some(span), message));
    }

    fn general(&mut self, message: String) {
        self.found.push((None, message));
    }

    fn into_result<T>(self, value: T) -> Result<T, PolicyError> {
        if self.found.is_empty() {
            return Ok(value);
        }
        let mut rendered = String::new();
        let mut problems = Vec::new();
        for (span, message) in self.found {
            let line = span.map(|s| line_of(self.source, s.start));
            match line {
                Some(n) => {
                    let text = self.source.lines().nth(n - 1).unwrap_or("");
                    rendered.push_str(&format!("line {n}: {message}\n  {n:>4} | {text}\n"));
                }
                None => rendered.push_str(&format!("{message}\n")),
            }
            problems.push(PolicyProblem { line, message });
        }
        Err(PolicyError { problems, rendered })
    }
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

impl Policy {
    /// Parses and validates a policy, reporting every problem found, each with its line.
    pub fn parse(source: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(e) => {
                let mut problems = Problems {
                    source,
                    found: Vec::new(),
                };
                let message = e.message().to_string();
                match e.span() {
                    Some(span) => problems.at(span, message),
                    None => problems.general(message),
                }
                return problems.into_result(Policy::empty());
            }
        };
        let mut problems = Problems {
            source,
            found: Vec::new(),
        };

        let mut catalog = BTreeSet::new();
        for p in &raw.permissions {
            match Permission::parse(p.get_ref()) {
                Ok(perm) => {
                    if !catalog.insert(perm) {
                        problems.at(
                            p.span(),
                            format!("permission `{}` is declared twice", p.get_ref()),
                        );
                    }
                }
                Err(e) => problems.at(p.span(), e.to_string()),
            }
        }
        if catalog.len() > MAX_CATALOG {
            problems.general(format!(
                "the permission catalog declares {} permissions; at most {MAX_CATALOG} are supported",
                catalog.len()
            ));
        }
        for enforced in ENFORCED_PERMISSIONS {
            if !catalog.iter().any(|p| p.as_str() == enforced) {
                problems.general(format!(
                    "the permission catalog must declare `{enforced}`: teamgate enforces it"
                ));
            }
        }

        let mut implied = Vec::new();
        for name in IMPLIED_PERMISSIONS {
            let perm = Permission::parse(name).expect("implied permissions are valid names");
            if catalog.insert(perm.clone()) {
                implied.push(perm);
            }
        }

        let mut roles: Vec<BuiltInRole> = Vec::new();
        for role in &raw.roles {
            let key = role.key.get_ref();
            if let Err(e) = super::roles::RoleKey::parse(key) {
                problems.at(role.key.span(), e.to_string());
            }
            if roles.iter().any(|r| &r.key == key) {
                problems.at(role.key.span(), format!("role `{key}` is declared twice"));
            }
            let mut perms = PermissionSet::default();
            for p in &role.permissions {
                if p.get_ref() == "*" {
                    perms.extend(catalog.iter().cloned());
                    continue;
                }
                match Permission::parse(p.get_ref()) {
                    Ok(perm) if catalog.contains(&perm) => {
                        perms.insert(perm);
                    }
                    Ok(_) => problems.at(
                        p.span(),
                        format!(
                            "role `{key}` lists `{}`, which is not in the permission catalog",
                            p.get_ref()
                        ),
                    ),
                    Err(e) => problems.at(p.span(), e.to_string()),
                }
            }
            if key == raw.owner_role.get_ref() {
                perms.extend(implied.iter().cloned());
            } else {
                for perm in &implied {
                    perms.remove(perm);
                }
            }
            roles.push(BuiltInRole {
                key: key.clone(),
                display_name: role.display_name.clone(),
                permissions: perms,
            });
        }
        if roles.is_empty() {
            problems.general("the policy declares no roles: add at least the owner role".into());
        }
        for (field, value) in [
            ("owner_role", &raw.owner_role),
            ("invite_role", &raw.invite_role),
        ] {
            if !roles.iter().any(|r| &r.key == value.get_ref()) {
                problems.at(
                    value.span(),
                    format!(
                        "{field} `{}` is not one of the declared roles",
                        value.get_ref()
                    ),
                );
            }
        }

        let mut plans: Vec<Plan> = Vec::new();
        for plan in &raw.plans {
            let key = plan.key.get_ref();
            if plans.iter().any(|p| &p.key == key) {
                problems.at(plan.key.span(), format!("plan `{key}` is declared twice"));
            }
            if key.is_empty() || key.len() > 64 {
                problems.at(
                    plan.key.span(),
                    "a plan key must be 1 to 64 characters".into(),
                );
            }
            let max_members = match &plan.max_members {
                None => None,
                Some(m) => match u32::try_from(*m.get_ref()) {
                    Ok(v) if v >= 1 => Some(v),
                    _ => {
                        problems.at(
                            m.span(),
                            format!("plan `{key}`: max_members must be at least 1"),
                        );
                        None
                    }
                },
            };
            plans.push(Plan {
                key: key.clone(),
                max_members,
                upgrade_hint: plan.upgrade_hint.clone(),
            });
        }
        if !plans.iter().any(|p| &p.key == raw.default_plan.get_ref()) {
            problems.at(
                raw.default_plan.span(),
                format!(
                    "default_plan `{}` is not one of the declared plans",
                    raw.default_plan.get_ref()
                ),
            );
        }

        let mut routes = Vec::new();
        for route in &raw.routes {
            match Permission::parse(route.permission.get_ref()) {
                Ok(perm) if catalog.contains(&perm) => routes.push(Route {
                    method: route.method.as_ref().map(|m| m.to_ascii_uppercase()),
                    path_prefix: route.path_prefix.clone(),
                    permission: perm,
                }),
                Ok(_) => problems.at(
                    route.permission.span(),
                    format!(
                        "route `{}` needs `{}`, which is not in the permission catalog",
                        route.path_prefix,
                        route.permission.get_ref()
                    ),
                ),
                Err(e) => problems.at(route.permission.span(), e.to_string()),
            }
        }

        problems.into_result(Policy {
            bits: positions(&catalog),
            catalog,
            roles,
            owner_role: raw.owner_role.into_inner(),
            invite_role: raw.invite_role.into_inner(),
            default_plan: raw.default_plan.into_inner(),
            plans,
            routes,
        })
    }

    fn empty() -> Policy {
        Policy {
            catalog: BTreeSet::new(),
            bits: HashMap::new(),
            roles: Vec::new(),
            owner_role: String::new(),
            invite_role: String::new(),
            default_plan: String::new(),
            plans: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The embedded default policy.
    pub fn embedded_default() -> Policy {
        #[allow(clippy::expect_used)]
        Policy::parse(DEFAULT_POLICY_TOML).expect("the embedded default policy is valid")
    }

    pub fn catalog(&self) -> &BTreeSet<Permission> {
        &self.catalog
    }

    pub fn knows(&self, permission: &Permission) -> bool {
        self.catalog.contains(permission)
    }

    /// The catalog position of a permission name; `None` for a name not in the catalog
    /// (whether or not it is well-formed). Allocates nothing.
    pub fn bit(&self, name: &str) -> Option<PermissionBit> {
        self.bits.get(name).copied()
    }

    /// The name at a catalog position.
    pub fn name_of(&self, bit: PermissionBit) -> Option<&Permission> {
        self.catalog.iter().nth(bit.index())
    }

    /// The catalog positions of `set` (names outside the catalog are left out).
    pub fn bits_of<'a>(&self, set: impl IntoIterator<Item = &'a str>) -> PermissionBits {
        set.into_iter().filter_map(|p| self.bit(p)).collect()
    }

    /// Built-in roles, highest first.
    pub fn roles(&self) -> &[BuiltInRole] {
        &self.roles
    }

    pub fn built_in(&self, key: &str) -> Option<&BuiltInRole> {
        self.roles.iter().find(|r| r.key == key)
    }

    pub fn owner_role(&self) -> &str {
        &self.owner_role
    }

    pub fn invite_role(&self) -> &str {
        &self.invite_role
    }

    /// The role a previous owner keeps after handing over ownership: the next built-in role
    /// below the owner role, or the owner role itself when it is the only one.
    pub fn role_below_owner(&self) -> &str {
        let idx = self
            .roles
            .iter()
            .position(|r| r.key == self.owner_role)
            .unwrap_or(0);
        self.roles
            .get(idx + 1)
            .map(|r| r.key.as_str())
            .unwrap_or(&self.owner_role)
    }

    pub fn default_plan(&self) -> &str {
        &self.default_plan
    }

    pub fn plan(&self, key: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.key == key)
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// A one-line summary for start-up logs.
    pub fn summary(&self) -> String {
        let roles: Vec<&str> = self.roles.iter().map(|r| r.key.as_str()).collect();
        let plans: BTreeMap<&str, Option<u32>> = self
            .plans
            .iter()
            .map(|p| (p.key.as_str(), p.max_members))
            .collect();
        format!(
            "{} permissions, roles {:?} (owner `{}`), plans {:?}",
            self.catalog.len(),
            roles,
            self.owner_role,
            plans
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let p = Policy::embedded_default();
        assert_eq!(p.owner_role(), "owner");
        assert_eq!(p.role_below_owner(), "admin");
        assert_eq!(p.plan("free").and_then(|p| p.max_members), Some(5));
    }

    #[test]
    fn a_policy_from_before_sso_still_loads_and_only_the_owner_manages_sso() {
        let src = DEFAULT_POLICY_TOML
            .replace("  \"sso.manage\",\n", "")
            .replace(
                "permissions = [\"*\"]",
                "permissions = [\"members.view\", \"members.manage\"]",
            );
        assert!(!src.contains("sso.manage"));
        let p = Policy::parse(&src).unwrap();
        let sso = Permission::parse("sso.manage").unwrap();
        assert!(p.knows(&sso));
        assert!(p.built_in("owner").unwrap().permissions.contains(&sso));
        for role in p.roles().iter().filter(|r| r.key != "owner") {
            assert!(
                !role.permissions.contains(&sso),
                "{} holds sso.manage",
                role.key
            );
        }
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let src = r#"owner_role = "boss"
invite_role = "member"
default_plan = "free"
permissions = ["members.view", "Bad Perm"]

[[roles]]
key = "member"
display_name = "Member"
permissions = ["members.view", "nope.nothing"]

[[plans]]
key = "free"
max_members = 0
"#;
        let err = Policy::parse(src).unwrap_err();
        let lines: Vec<Option<usize>> = err.problems.iter().map(|p| p.line).collect();
        assert!(lines.contains(&Some(1)), "{err}"); // owner_role not declared
        assert!(lines.contains(&Some(4)), "{err}"); // bad permission name
        assert!(lines.contains(&Some(9)), "{err}"); // unknown permission in role
        assert!(lines.contains(&Some(13)), "{err}"); // max_members 0
        assert!(err.to_string().contains("members.manage"), "{err}");
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser, and every problem it reports has a line
        /// inside the file.
        #[test]
        fn arbitrary_input_never_panics(src in "\\PC{0,400}") {
            if let Err(e) = Policy::parse(&src) {
                let lines = src.lines().count().max(1);
                for p in &e.problems {
                    if let Some(l) = p.line {
                        proptest::prop_assert!(l >= 1 && l <= lines + 1);
                    }
                }
            }
        }

        /// Damaging the default policy at any point is reported, never a panic.
        #[test]
        fn damaged_default_never_panics(cut in 0usize..2000, junk in "[\\[\\]=\"a-z.*, \n]{0,20}") {
            let mut src = DEFAULT_POLICY_TOML.to_owned();
            let at = src.char_indices().map(|(i, _)| i).nth(cut % src.chars().count()).unwrap_or(0);
            src.insert_str(at, &junk);
            let _ = Policy::parse(&src);
        }

        /// Arbitrary strings (quotes, newlines, Unicode, TOML syntax) put where a permission
        /// name, a role key and a display name go are refused with problems, or admitted only
        /// when valid: a parsed policy never holds a malformed permission or role key.
        #[test]
        fn hostile_names_are_refused_or_valid(
            perm in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "[a-z]{1,6}\\.[a-z]{1,6}",
                "[a-z\"'.\\\\\n=\\[\\] \u{0430}\u{202E}]{0,20}",
            ],
            key in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "[a-z][a-z0-9_-]{0,10}",
                "[a-zA-Z0-9\"'.%_\\\\ \u{0430}\u{200B}-]{0,20}",
            ],
            display in "\\PC{0,30}",
        ) {
            let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
            let mut src = DEFAULT_POLICY_TOML
                .replacen("\"reports.view\",", &format!("\"reports.view\", {},", q(&perm)), 1);
            src.push_str(&format!(
                "\n[[roles]]\nkey = {}\ndisplay_name = {}\npermissions = [{}]\n",
                q(&key),
                q(&display),
                q(&perm)
            ));
            if let Ok(policy) = Policy::parse(&src) {
                for p in policy.catalog() {
                    proptest::prop_assert_eq!(Permission::parse(p.as_str()).unwrap(), p.clone());
                }
                for r in policy.roles() {
                    proptest::prop_assert!(super::super::roles::RoleKey::parse(&r.key).is_ok(), "{:?}", r.key);
                }
                proptest::prop_assert!(policy.built_in(&key).is_some());
            }
        }
    }

    #[test]
    fn rejects_unknown_keys_with_line() {
        let src = format!("{DEFAULT_POLICY_TOML}\nsurprise = 1\n");
        let err = Policy::parse(&src).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
        assert!(err.problems[0].line.is_some());
    }
}
