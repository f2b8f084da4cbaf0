//! Listing: `filter`, `startIndex` and `count` (RFC 7644 §3.4.2), and the ListResponse.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::ScimError;
use crate::domain::scim_filter::{self, Attribute, Filter};

pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

#[derive(Debug)]
pub struct ListQuery {
    pub filter: Option<Filter>,
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
            start_index,
            count,
        })
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
            .map(render)
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
