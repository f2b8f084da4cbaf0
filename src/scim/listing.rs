//! Listing: `filter`, `startIndex` and `count` (RFC 7644 §3.4.2), and the ListResponse.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::ScimError;
use crate::domain::scim_filter::{self, Attribute, Filter};

pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

#[derive(Debug)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub projection: Projection,
    /// 1-based.
    pub start_index: usize,
    pub count: usize,
}

impl ListQuery {
    /// Reads the query parameters; `known` lists the attribute paths (lower-case) that
    /// filters may name for this resource type.
    pub fn parse(
        params: &[(String, String)],
        known: &[&str],
        max_results: u32,
    ) -> Result<ListQuery, ScimError> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let filter = match get("filter") {
            None => None,
            Some(raw) => {
                let f = scim_filter::parse(raw)
                    .map_err(|e| ScimError::bad("invalidFilter", format!("INVALID_FILTER: {e}")))?;
                if let Some(unknown) = f.paths().into_iter().find(|p| !known.contains(&p.as_str()))
                {
                    return Err(ScimError::bad(
                        "invalidFilter",
                        format!(
                            "INVALID_FILTER: `{unknown}` cannot be filtered on here (filterable: {})",
                            known.join(", ")
                        ),
                    ));
                }
                Some(f)
            }
        };
        let number = |name: &str| -> Result<Option<i64>, ScimError> {
            get(name)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ScimError::bad(
                            "invalidValue",
                            format!("INVALID_ARGUMENT: {name} must be an integer"),
                        )
                    })
                })
                .transpose()
        };
        // RFC 7644 §3.4.2.4: a startIndex below 1 is 1; a negative count is 0.
        let start_index = usize::try_from(number("startIndex")?.unwrap_or(1).max(1)).unwrap_or(1);
        let max = usize::try_from(max_results).unwrap_or(usize::MAX);
        let count = number("count")?
            .map_or(max, |c| usize::try_from(c.max(0)).unwrap_or(0))
            .min(max);
        Ok(ListQuery {
            filter,
            projection: Projection::from_params(params),
            start_index,
            count,
        })
    }

    /// The same, from a `POST …/.search` body (RFC 7644 §3.4.3).
    pub fn from_search(
        body: &Value,
        known: &[&str],
        max_results: u32,
    ) -> Result<ListQuery, ScimError> {
        super::ensure_schema(body, SEARCH_SCHEMA)?;
        let mut params = Vec::new();
        for (key, param) in [
            ("attributes", "attributes"),
            ("excludedAttributes", "excludedAttributes"),
        ] {
            if let Some(list) = body[key].as_array() {
                let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                params.push((param.to_owned(), names.join(",")));
            }
        }
        if let Some(f) = body["filter"].as_str() {
            params.push(("filter".to_owned(), f.to_owned()));
        }
        for key in ["startIndex", "count"] {
            match &body[key] {
                Value::Null => {}
                Value::Number(n) => params.push((key.to_owned(), n.to_string())),
                _ => {
                    return Err(ScimError::bad(
                        "invalidValue",
                        format!("INVALID_ARGUMENT: {key} must be an integer"),
                    ));
                }
            }
        }
        ListQuery::parse(&params, known, max_results)
    }

    /// Filters, pages and renders `items` (already in a stable order).
    pub fn respond<T>(
        &self,
        items: Vec<T>,
        lookup: impl Fn(&T, &str) -> Option<Attribute>,
        render: impl Fn(&T) -> Value,
    ) -> Response {
        let matched: Vec<T> = match &self.filter {
            None => items,
            Some(f) => items
                .into_iter()
                .filter(|item| f.matches(&|path| lookup(item, path)))
                .collect(),
        };
        let total = matched.len();
        let page: Vec<Value> = matched
            .iter()
            .skip(self.start_index - 1)
            .take(self.count)
            .map(|item| self.projection.apply(render(item)))
            .collect();
        super::scim_json(
            StatusCode::OK,
            &json!({
                "schemas": [LIST_SCHEMA],
                "totalResults": total,
                "startIndex": self.start_index,
                "itemsPerPage": page.len(),
                "Resources": page,
            }),
        )
    }
}

pub fn text(value: &str, case_exact: bool) -> Option<Attribute> {
    Some(Attribute {
        values: vec![scim_filter::Literal::Str(value.to_owned())],
        case_exact,
    })
}

pub fn boolean(value: bool) -> Option<Attribute> {
    Some(Attribute {
        values: vec![scim_filter::Literal::Bool(value)],
        case_exact: true,
    })
}

pub fn texts(values: impl IntoIterator<Item = String>, case_exact: bool) -> Option<Attribute> {
    let values: Vec<_> = values.into_iter().map(scim_filter::Literal::Str).collect();
    (!values.is_empty()).then_some(Attribute { values, case_exact })
}

/// `attributes` / `excludedAttributes` (RFC 7644 §3.4.2.5): which attributes a response
/// carries. `id` and `schemas` are always returned. Names are matched case-insensitively, with
/// or without the schema URN, at the top level or one sub-attribute deep (`name.givenName`).
#[derive(Debug, Clone, Default)]
pub struct Projection {
    only: Option<Vec<String>>,
    excluded: Vec<String>,
}

fn names(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|n| super::patch::strip_urn(n.trim()))
        .filter(|n| !n.is_empty())
        .collect()
}

impl Projection {
    pub fn new(attributes: Option<&str>, excluded: Option<&str>) -> Projection {
        Projection {
            only: attributes.map(names).filter(|n| !n.is_empty()),
            excluded: excluded.map(names).unwrap_or_default(),
        }
    }

    pub fn from_params(params: &[(String, String)]) -> Projection {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        Projection::new(get("attributes"), get("excludedAttributes"))
    }

    pub fn apply(&self, mut v: Value) -> Value {
        let Some(obj) = v.as_object_mut() else {
            return v;
        };
        let always = |k: &str| matches!(k, "id" | "schemas");
        if let Some(only) = &self.only {
            let keys: Vec<String> = obj.keys().cloned().collect();
            for k in keys {
                let lower = k.to_ascii_lowercase();
                if always(&lower) {
                    continue;
                }
                let whole = only.contains(&lower);
                let subs: Vec<&str> = only
                    .iter()
                    .filter_map(|n| n.strip_prefix(&format!("{lower}.")))
                    .collect();
                if whole {
                    continue;
                }
                match (
                    subs.is_empty(),
                    obj.get_mut(&k).and_then(Value::as_object_mut),
                ) {
                    (false, Some(inner)) => {
                        inner.retain(|sk, _| subs.contains(&sk.to_ascii_lowercase().as_str()));
                    }
                    _ => {
                        obj.remove(&k);
                    }
                }
            }
        }
        for ex in &self.excluded {
            if always(ex) {
                continue;
            }
            let (head, sub) = match ex.split_once('.') {
                Some((h, s)) => (h, Some(s)),
                None => (ex.as_str(), None),
            };
            let key = obj.keys().find(|k| k.eq_ignore_ascii_case(head)).cloned();
            if let Some(key) = key {
                match sub {
                    None => {
                        obj.remove(&key);
                    }
                    Some(sub) => {
                        if let Some(inner) = obj.get_mut(&key).and_then(Value::as_object_mut) {
                            inner.retain(|sk, _| !sk.eq_ignore_ascii_case(sub));
                        }
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Value {
        json!({
            "schemas": ["s"], "id": "1", "userName": "a@b.c",
            "name": {"givenName": "A", "familyName": "B"}, "active": true,
        })
    }

    #[test]
    fn attributes_keep_only_those_named_and_id() {
        let p = Projection::new(Some("userName,name.givenName"), None);
        assert_eq!(
            p.apply(user()),
            json!({"schemas": ["s"], "id": "1", "userName": "a@b.c", "name": {"givenName": "A"}})
        );
    }

    #[test]
    fn excluded_attributes_drop_those_named_but_never_id() {
        let p = Projection::new(
            None,
            Some("urn:ietf:params:scim:schemas:core:2.0:User:name,id,Active"),
        );
        assert_eq!(
            p.apply(user()),
            json!({"schemas": ["s"], "id": "1", "userName": "a@b.c"})
        );
    }
}
