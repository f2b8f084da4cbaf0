//! `/Groups`: the org's mapped groups (SetScimGroupMapping). A group's members are the
//! members holding its role; adding or removing members assigns or takes back that role.
//! Groups themselves are created, renamed and deleted by owners over gRPC, not by SCIM.

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::listing::{self, ListQuery, Projection};
use super::patch::{self, Op};
use super::{
    ScimError, State, directory, ensure_schema, if_match, json_body, resource, with_consistency,
    write_ctx,
};
use crate::app::scim::DirectoryGroup;
use crate::app::scim::groups::GroupMembersChange;
use crate::domain::scim_filter::Attribute;

pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

pub(super) const FILTERABLE: &[&str] = &[
    "id",
    "displayname",
    "members",
    "members.value",
    "members.display",
    "meta.created",
    "meta.lastmodified",
];

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn render(base: &str, g: &DirectoryGroup) -> Value {
    json!({
        "schemas": [GROUP_SCHEMA],
        "id": g.id,
        "displayName": g.display_name,
        "members": g.members.iter().map(|(id, email)| json!({
            "value": id,
            "display": email,
            "$ref": format!("{base}/Users/{id}"),
            "type": "User",
        })).collect::<Vec<_>>(),
        "meta": {
            "resourceType": "Group",
            "created": time(g.created),
            "lastModified": time(g.last_modified),
            "location": format!("{base}/Groups/{}", g.id),
            "version": format!("W/\"{}\"", g.version),
        },
    })
}

pub(super) fn lookup(g: &DirectoryGroup, path: &str) -> Option<Attribute> {
    match path {
        "id" => listing::text(&g.id, true),
        "displayname" => listing::text(&g.display_name, false),
        "members" | "members.value" => listing::texts(g.members.iter().map(|m| m.0.clone()), true),
        "members.display" => listing::texts(g.members.iter().map(|m| m.1.clone()), false),
        "meta.created" => listing::text(&time(g.created), true),
        "meta.lastmodified" => listing::text(&time(g.last_modified), true),
        _ => None,
    }
}

fn invalid(detail: impl Into<String>) -> ScimError {
    ScimError::bad(
        "invalidValue",
        format!("INVALID_ARGUMENT: {}", detail.into()),
    )
}

/// `[{"value": "<user id>"}, …]` → the user ids.
fn member_ids(v: &Value) -> Result<Vec<String>, ScimError> {
    let items = match v {
        Value::Array(items) => items.clone(),
        Value::Object(_) => vec![v.clone()],
        Value::Null => Vec::new(),
        _ => return Err(invalid("`members` must be a list of {\"value\": user id}")),
    };
    items
        .iter()
        .map(|m| {
            m["value"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid("each member needs a string `value` (a user id)"))
        })
        .collect()
}

/// `members[value eq "<id>"]` → the id.
fn member_filter(path: &str) -> Option<String> {
    let inner = path.strip_prefix("members[")?.strip_suffix(']')?;
    let f = crate::domain::scim_filter::parse(inner).ok()?;
    match f {
        crate::domain::scim_filter::Filter::Compare {
            path,
            op: crate::domain::scim_filter::Op::Eq,
            value: crate::domain::scim_filter::Literal::Str(id),
        } if path == "value" => Some(id),
        _ => None,
    }
}

fn apply_object(change: &mut GroupMembersChange, op: Op, obj: &Value) -> Result<(), ScimError> {
    let Some(map) = obj.as_object() else {
        return Err(invalid(
            "an operation without a path needs an object `value`",
        ));
    };
    for (k, v) in map {
        match patch::strip_urn(k).as_str() {
            "members" if op == Op::Add => change.add.extend(member_ids(v)?),
            "members" => change.replace = Some(member_ids(v)?),
            "displayname" => change.display_name = Some(display_name(v)?),
            "id" | "meta" => {
                return Err(ScimError::bad(
                    "mutability",
                    format!("SCIM_IMMUTABLE: `{k}` is read-only"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn display_name(v: &Value) -> Result<String, ScimError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid("`displayName` must be a string"))
}

fn patch_change(body: &Value) -> Result<GroupMembersChange, ScimError> {
    let mut change = GroupMembersChange::default();
    for op in patch::operations(body)? {
        match (op.op, op.path.as_deref()) {
            (Op::Add | Op::Replace, None) => apply_object(&mut change, op.op, &op.value)?,
            (Op::Add, Some("members")) => change.add.extend(member_ids(&op.value)?),
            (Op::Replace, Some("members")) => change.replace = Some(member_ids(&op.value)?),
            (Op::Add | Op::Replace, Some("displayname")) => {
                change.display_name = Some(display_name(&op.value)?);
            }
            (Op::Remove, Some("members")) if op.value.is_null() => {
                change.replace = Some(Vec::new());
            }
            (Op::Remove, Some("members")) => change.remove.extend(member_ids(&op.value)?),
            (Op::Remove, Some(p)) if p.starts_with("members[") => {
                let id = member_filter(p).ok_or_else(|| {
                    ScimError::bad(
                        "invalidPath",
                        "INVALID_PATCH: member paths are `members[value eq \"<user id>\"]`",
                    )
                })?;
                change.remove.push(id);
            }
            (_, Some(p)) => {
                return Err(ScimError::bad(
                    "invalidPath",
                    format!(
                        "INVALID_PATCH: `{p}` is not a path a group can be patched at (members, displayName)"
                    ),
                ));
            }
            (Op::Remove, None) => {
                return Err(ScimError::bad(
                    "noTarget",
                    "INVALID_PATCH: a remove operation needs a `path`",
                ));
            }
        }
    }
    Ok(change)
}

pub async fn list(
    state: State,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let q = ListQuery::parse(&params, FILTERABLE, state.max_results)?;
    let groups = state.app.directory_groups(&dir).await?;
    Ok(q.respond(groups, lookup, |g| render(&state.base, g)))
}

/// `POST /Groups/.search`: a list with its parameters in the body.
pub async fn search(state: State, headers: HeaderMap, body: Bytes) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let q = ListQuery::from_search(&json_body(&body)?, FILTERABLE, state.max_results)?;
    let groups = state.app.directory_groups(&dir).await?;
    Ok(q.respond(groups, lookup, |g| render(&state.base, g)))
}

pub async fn get(
    state: State,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let g = state.app.directory_group(&dir, &id).await?;
    let shown = Projection::from_params(&params).apply(render(&state.base, &g));
    Ok(resource(StatusCode::OK, &shown))
}

/// Groups come from the org's mappings: POST finds the mapped group of that name (a
/// uniqueness conflict, as the RFC has it for an existing resource) or says how to map it.
pub async fn create(state: State, headers: HeaderMap, body: Bytes) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let body = json_body(&body)?;
    ensure_schema(&body, GROUP_SCHEMA)?;
    let name = display_name(&body["displayName"])?;
    let groups = state.app.directory_groups(&dir).await?;
    if let Some(g) = groups.iter().find(|g| g.display_name == name) {
        return Err(ScimError::new(
            StatusCode::CONFLICT,
            Some("uniqueness"),
            format!(
                "SCIM_GROUP_EXISTS: the group `{name}` exists as {}: PATCH its members",
                g.id
            ),
        ));
    }
    Err(ScimError::new(
        StatusCode::FORBIDDEN,
        None,
        format!(
            "SCIM_GROUP_NOT_MAPPED: the group `{name}` maps to no role: an owner maps it with SetScimGroupMapping"
        ),
    ))
}

pub async fn replace(
    state: State,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (ctx, secret) = write_ctx(&state, &headers).await?;
    let body = json_body(&body)?;
    ensure_schema(&body, GROUP_SCHEMA)?;
    let change = GroupMembersChange {
        replace: Some(member_ids(&body["members"])?),
        display_name: Some(display_name(&body["displayName"])?),
        ..GroupMembersChange::default()
    };
    let (g, token) = state
        .app
        .directory_change_group(&ctx, &secret, &id, change, if_match(&headers).as_deref())
        .await?;
    Ok(with_consistency(
        resource(StatusCode::OK, &render(&state.base, &g)),
        &token,
    ))
}

pub async fn patch(
    state: State,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ScimError> {
    let (ctx, secret) = write_ctx(&state, &headers).await?;
    let change = patch_change(&json_body(&body)?)?;
    let (g, token) = state
        .app
        .directory_change_group(&ctx, &secret, &id, change, if_match(&headers).as_deref())
        .await?;
    Ok(with_consistency(
        resource(StatusCode::OK, &render(&state.base, &g)),
        &token,
    ))
}

pub async fn delete(
    state: State,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    state.app.directory_group(&dir, &id).await?;
    Err(ScimError::new(
        StatusCode::FORBIDDEN,
        None,
        "SCIM_GROUP_MANAGED: groups are the org's mappings: an owner removes one with DeleteScimGroupMapping",
    ))
}
