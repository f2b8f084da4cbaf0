//! PATCH requests (RFC 7644 §3.5.2): the PatchOp message, read into operations that the User
//! and Group handlers turn into their use cases' changes.

use serde_json::Value;

use super::{ScimError, ensure_schema};

pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Replace,
    Remove,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub op: Op,
    /// Lower-cased, without a schema URN prefix; `None` when absent.
    pub path: Option<String>,
    pub value: Value,
}

pub fn operations(body: &Value) -> Result<Vec<Operation>, ScimError> {
    ensure_schema(body, PATCH_SCHEMA)?;
    let ops = body["Operations"].as_array().ok_or_else(|| {
        ScimError::bad(
            "invalidSyntax",
            "INVALID_PATCH: `Operations` must be an array of operations",
        )
    })?;
    if ops.is_empty() {
        return Err(ScimError::bad(
            "invalidSyntax",
            "INVALID_PATCH: `Operations` is empty",
        ));
    }
    ops.iter()
        .map(|o| {
            let op = match o["op"].as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("add") => Op::Add,
                Some("replace") => Op::Replace,
                Some("remove") => Op::Remove,
                _ => {
                    return Err(ScimError::bad(
                        "invalidSyntax",
                        "INVALID_PATCH: each operation's `op` is add, replace or remove",
                    ));
                }
            };
            let path = match &o["path"] {
                Value::Null => None,
                Value::String(p) if p.trim().is_empty() => None,
                Value::String(p) => Some(strip_urn(p.trim())),
                _ => {
                    return Err(ScimError::bad(
                        "invalidPath",
                        "INVALID_PATCH: `path` must be a string",
                    ));
                }
            };
            if op == Op::Remove && path.is_none() {
                return Err(ScimError::bad(
                    "noTarget",
                    "INVALID_PATCH: a remove operation needs a `path`",
                ));
            }
            if op != Op::Remove && o.get("value").is_none_or(Value::is_null) {
                return Err(ScimError::bad(
                    "invalidValue",
                    "INVALID_PATCH: add and replace operations need a `value`",
                ));
            }
            Ok(Operation {
                op,
                path,
                value: o["value"].clone(),
            })
        })
        .collect()
}

/// `urn:ietf:params:scim:schemas:core:2.0:User:name.givenName` → `name.givenname`. Value
/// filters in brackets keep their case (`members[value eq "…"]`).
pub fn strip_urn(path: &str) -> String {
    let (head, bracket) = match path.find('[') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    let head = if head.to_ascii_lowercase().starts_with("urn:") {
        head.rsplit_once(':').map_or(head, |(_, p)| p)
    } else {
        head
    };
    format!("{}{bracket}", head.to_ascii_lowercase())
}

/// A boolean, as JSON or as the strings some directories send (`"False"`).
pub fn boolean(v: &Value, field: &str) -> Result<bool, ScimError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimError::bad(
            "invalidValue",
            format!("INVALID_ARGUMENT: `{field}` must be true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_operations_in_any_case_and_strips_schema_prefixes() {
        let ops = operations(&json!({
            "schemas": [PATCH_SCHEMA],
            "Operations": [
                {"op": "Replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:active", "value": "False"},
                {"op": "remove", "path": "members[value eq \"AbC\"]"},
                {"op": "add", "value": {"externalId": "x"}},
            ]
        }))
        .unwrap();
        assert_eq!(ops[0].op, Op::Replace);
        assert_eq!(ops[0].path.as_deref(), Some("active"));
        assert!(!boolean(&ops[0].value, "active").unwrap());
        assert_eq!(ops[1].path.as_deref(), Some("members[value eq \"AbC\"]"));
        assert_eq!(ops[2].path, None);
    }

    #[test]
    fn refuses_malformed_patches() {
        for bad in [
            json!({"Operations": [{"op": "add", "value": 1}]}),
            json!({"schemas": [PATCH_SCHEMA], "Operations": []}),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "move", "value": 1}]}),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove"}]}),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "x"}]}),
        ] {
            assert!(operations(&bad).is_err(), "{bad}");
        }
    }
}
