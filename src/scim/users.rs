//! `/Users`: the org's members (and the accounts its directory linked and deactivated) as
//! SCIM User resources. `userName` is the account's email; `active` is membership.

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::SecondsFormat;
use serde_json::{Value, json};

use super::listing::{self, ListQuery, Projection};
use super::patch::{self, Op};
use super::{
    ScimError, State, directory, ensure_schema, if_match, json_body, resource, with_consistency,
    write_ctx,
};
use crate::app::scim::DirectoryUser;
use crate::app::scim::users::{DirectoryUserChange, NewDirectoryUser};
use crate::domain::email::Email;
use crate::domain::names::parse_optional_name;
use crate::domain::scim_filter::Attribute;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// What `/Users` filters may name.
pub(super) const FILTERABLE: &[&str] = &[
    "id",
    "username",
    "externalid",
    "active",
    "displayname",
    "name.givenname",
    "name.familyname",
    "emails",
    "emails.value",
    "groups",
    "groups.value",
    "groups.display",
    "meta.created",
    "meta.lastmodified",
];

const MAX_EXTERNAL_ID: usize = 255;

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn formatted(u: &DirectoryUser) -> String {
    let name = format!("{} {}", u.first_name, u.last_name);
    let name = name.trim();
    if name.is_empty() {
        u.email.clone()
    } else {
        name.to_owned()
    }
}

pub fn render(base: &str, u: &DirectoryUser) -> Value {
    let mut v = json!({
        "schemas": [USER_SCHEMA],
        "id": u.user_id,
        "userName": u.email,
        "displayName": formatted(u),
        "emails": [{"value": u.email, "type": "work", "primary": true}],
        "active": u.active,
        "groups": u.groups.iter().map(|(id, name)| json!({
            "value": id,
            "display": name,
            "$ref": format!("{base}/Groups/{id}"),
            "type": "direct",
        })).collect::<Vec<_>>(),
        "meta": {
            "resourceType": "User",
            "created": time(u.created),
            "lastModified": time(u.last_modified),
            "location": format!("{base}/Users/{}", u.user_id),
            "version": format!("W/\"{}\"", u.version),
        },
    });
    if let Some(ext) = &u.external_id {
        v["externalId"] = json!(ext);
    }
    // Unset names are left out rather than sent empty (RFC 7643 §2.5: unassigned).
    let mut name = serde_json::Map::new();
    if !u.first_name.is_empty() {
        name.insert("givenName".into(), json!(u.first_name));
    }
    if !u.last_name.is_empty() {
        name.insert("familyName".into(), json!(u.last_name));
    }
    if !name.is_empty() {
        v["name"] = Value::Object(name);
    }
    v
}

pub(super) fn lookup(u: &DirectoryUser, path: &str) -> Option<Attribute> {
    match path {
        "id" => listing::text(&u.user_id, true),
        "username" | "emails" | "emails.value" => listing::text(&u.email, false),
        "externalid" => u
            .external_id
            .as_deref()
            .and_then(|e| listing::text(e, true)),
        "active" => listing::boolean(u.active),
        "displayname" => listing::text(&formatted(u), false),
        "name.givenname" => listing::text(&u.first_name, false),
        "name.familyname" => listing::text(&u.last_name, false),
        "groups" | "groups.value" => listing::texts(u.groups.iter().map(|g| g.0.clone()), true),
        "groups.display" => listing::texts(u.groups.iter().map(|g| g.1.clone()), false),
        "meta.created" => listing::text(&time(u.created), true),
        "meta.lastmodified" => listing::text(&time(u.last_modified), true),
        _ => None,
    }
}

fn invalid(detail: impl Into<String>) -> ScimError {
    ScimError::bad(
        "invalidValue",
        format!("INVALID_ARGUMENT: {}", detail.into()),
    )
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, ScimError> {
    v.as_str()
        .ok_or_else(|| invalid(format!("`{field}` must be a string")))
}

fn user_name(v: &Value) -> Result<Email, ScimError> {
    let raw = string(v, "userName")?;
    Email::parse("userName", raw)
        .map_err(|e| invalid(format!("userName must be an email address: {e}")))
}

fn name_part(v: &Value, field: &str) -> Result<String, ScimError> {
    if v.is_null() {
        return Ok(String::new());
    }
    parse_optional_name(field, string(v, field)?)
        .map(Option::unwrap_or_default)
        .map_err(|e| invalid(e.to_string()))
}

fn external_id(v: &Value) -> Result<Option<String>, ScimError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s.len() <= MAX_EXTERNAL_ID => Ok(Some(s.clone())),
        _ => Err(invalid(format!(
            "`externalId` must be a string of at most {MAX_EXTERNAL_ID} bytes"
        ))),
    }
}

/// A whole User as POST and PUT send it.
fn whole_user(body: &Value) -> Result<NewDirectoryUser, ScimError> {
    ensure_schema(body, USER_SCHEMA)?;
    if body["userName"].is_null() {
        return Err(invalid("`userName` is required"));
    }
    Ok(NewDirectoryUser {
        email: user_name(&body["userName"])?,
        first_name: name_part(&body["name"]["givenName"], "name.givenName")?,
        last_name: name_part(&body["name"]["familyName"], "name.familyName")?,
        external_id: external_id(&body["externalId"])?,
        active: match &body["active"] {
            Value::Null => true,
            v => patch::boolean(v, "active")?,
        },
    })
}

/// Applies one attribute of a PATCH add/replace to `change`. Attributes teamgate does not
/// keep (phone numbers, titles…) are ignored; read-only ones are refused.
fn apply(change: &mut DirectoryUserChange, path: &str, v: &Value) -> Result<(), ScimError> {
    match path {
        "active" => change.active = Some(patch::boolean(v, "active")?),
        "externalid" => change.external_id = Some(external_id(v)?),
        "username" => change.email = Some(user_name(v)?),
        "name.givenname" => change.first_name = Some(name_part(v, "name.givenName")?),
        "name.familyname" => change.last_name = Some(name_part(v, "name.familyName")?),
        "name" => {
            let obj = v
                .as_object()
                .ok_or_else(|| invalid("`name` must be an object"))?;
            for (k, sub) in obj {
                apply(change, &format!("name.{}", k.to_ascii_lowercase()), sub)?;
            }
        }
        "id" | "meta" | "groups" | "schemas" => {
            return Err(ScimError::bad(
                "mutability",
                format!("SCIM_IMMUTABLE: `{path}` is read-only"),
            ));
        }
        _ => {}
    }
    Ok(())
}

fn patch_change(body: &Value) -> Result<DirectoryUserChange, ScimError> {
    let mut change = DirectoryUserChange::default();
    for op in patch::operations(body)? {
        match (op.op, op.path.as_deref()) {
            (Op::Add | Op::Replace, None) => {
                let obj = op.value.as_object().ok_or_else(|| {
                    invalid("an operation without a path needs an object `value`")
                })?;
                for (k, v) in obj {
                    apply(&mut change, &patch::strip_urn(k), v)?;
                }
            }
            (Op::Add | Op::Replace, Some(path)) => apply(&mut change, path, &op.value)?,
            (Op::Remove, Some("externalid")) => change.external_id = Some(None),
            (Op::Remove, Some(path @ ("name.givenname" | "name.familyname"))) => {
                apply(&mut change, path, &Value::Null)?;
            }
            (Op::Remove, Some("name")) => {
                change.first_name = Some(String::new());
                change.last_name = Some(String::new());
            }
            (Op::Remove, Some(path)) => {
                return Err(ScimError::bad(
                    "mutability",
                    format!(
                        "SCIM_IMMUTABLE: `{path}` cannot be removed (deactivate with `active: false`)"
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
    let users = state.app.directory_users(&dir).await?;
    Ok(q.respond(users, lookup, |u| render(&state.base, u)))
}

/// `POST /Users/.search`: a list with its parameters in the body.
pub async fn search(state: State, headers: HeaderMap, body: Bytes) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let q = ListQuery::from_search(&json_body(&body)?, FILTERABLE, state.max_results)?;
    let users = state.app.directory_users(&dir).await?;
    Ok(q.respond(users, lookup, |u| render(&state.base, u)))
}

pub async fn get(
    state: State,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let u = state.app.directory_user(&dir, &id).await?;
    let shown = Projection::from_params(&params).apply(render(&state.base, &u));
    Ok(resource(StatusCode::OK, &shown))
}

pub async fn create(state: State, headers: HeaderMap, body: Bytes) -> Result<Response, ScimError> {
    let (ctx, secret) = write_ctx(&state, &headers).await?;
    let new = whole_user(&json_body(&body)?)?;
    let (u, token) = state.app.directory_create_user(&ctx, &secret, new).await?;
    Ok(with_consistency(
        resource(StatusCode::CREATED, &render(&state.base, &u)),
        &token,
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
    if let Some(sent) = body["id"].as_str()
        && sent != id
    {
        return Err(ScimError::bad(
            "mutability",
            "SCIM_IMMUTABLE: `id` in the body differs from the resource's",
        ));
    }
    let whole = whole_user(&body)?;
    let change = DirectoryUserChange {
        email: Some(whole.email),
        first_name: Some(whole.first_name),
        last_name: Some(whole.last_name),
        external_id: Some(whole.external_id),
        active: Some(whole.active),
    };
    let (u, token) = state
        .app
        .directory_update_user(&ctx, &secret, &id, change, if_match(&headers).as_deref())
        .await?;
    Ok(with_consistency(
        resource(StatusCode::OK, &render(&state.base, &u)),
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
    let (u, token) = state
        .app
        .directory_update_user(&ctx, &secret, &id, change, if_match(&headers).as_deref())
        .await?;
    Ok(with_consistency(
        resource(StatusCode::OK, &render(&state.base, &u)),
        &token,
    ))
}

pub async fn delete(
    state: State,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let (ctx, secret) = write_ctx(&state, &headers).await?;
    let token = state
        .app
        .directory_delete_user(&ctx, &secret, &id, if_match(&headers).as_deref())
        .await?;
    Ok(with_consistency(
        axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT),
        &token,
    ))
}
