//! Discovery (RFC 7644 §4): what this server supports, its resource types and their schemas.
//! They carry no tenant data, so they answer without a token.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::groups::GROUP_SCHEMA;
use super::listing::LIST_SCHEMA;
use super::users::USER_SCHEMA;
use super::{ScimError, State, scim_json};

const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

fn list(items: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": items.len(),
            "startIndex": 1,
            "itemsPerPage": items.len(),
            "Resources": items,
        }),
    )
}

pub async fn service_provider_config(state: State) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [SPC_SCHEMA],
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": state.max_results},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A per-organization token from TeamService/CreateScimToken, as `Authorization: Bearer <token>`",
                "primary": true,
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{}/ServiceProviderConfig", state.base),
            },
        }),
    )
}

fn resource_type_docs(base: &str) -> Vec<Value> {
    [
        ("User", "/Users", USER_SCHEMA),
        ("Group", "/Groups", GROUP_SCHEMA),
    ]
    .into_iter()
    .map(|(name, endpoint, schema)| {
        json!({
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": name,
            "name": name,
            "endpoint": endpoint,
            "description": format!("{name} Account"),
            "schema": schema,
            "schemaExtensions": [],
            "meta": {
                "resourceType": "ResourceType",
                "location": format!("{base}/ResourceTypes/{name}"),
            },
        })
    })
    .collect()
}

pub async fn resource_types(state: State) -> Response {
    list(resource_type_docs(&state.base))
}

pub async fn resource_type(state: State, Path(id): Path<String>) -> Result<Response, ScimError> {
    resource_type_docs(&state.base)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .map(|r| scim_json(StatusCode::OK, &r))
        .ok_or_else(|| ScimError::not_found(format!("NOT_FOUND: no resource type `{id}`")))
}

fn attr(name: &str, kind: &str, required: bool, case_exact: bool, mutability: &str) -> Value {
    json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": name,
        "required": required,
        "caseExact": case_exact,
        "mutability": mutability,
        "returned": "default",
        "uniqueness": "none",
    })
}

fn complex(name: &str, multi: bool, mutability: &str, sub: Vec<Value>) -> Value {
    json!({
        "name": name,
        "type": "complex",
        "multiValued": multi,
        "description": name,
        "required": false,
        "mutability": mutability,
        "returned": "default",
        "uniqueness": "none",
        "subAttributes": sub,
    })
}

fn reference(name: &str, types: &[&str], mutability: &str) -> Value {
    let mut a = attr(name, "reference", false, true, mutability);
    a["referenceTypes"] = json!(types);
    a
}

fn schema_docs(base: &str) -> Vec<Value> {
    let mut user_name = attr("userName", "string", true, false, "readWrite");
    user_name["uniqueness"] = json!("server");
    let user = json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A member of the organization; userName is the account's email",
        "attributes": [
            user_name,
            complex("name", false, "readWrite", vec![
                attr("familyName", "string", false, false, "readWrite"),
                attr("givenName", "string", false, false, "readWrite"),
            ]),
            attr("displayName", "string", false, false, "readOnly"),
            complex("emails", true, "readOnly", vec![
                attr("value", "string", false, false, "readOnly"),
                attr("type", "string", false, false, "readOnly"),
                attr("primary", "boolean", false, false, "readOnly"),
            ]),
            attr("active", "boolean", false, false, "readWrite"),
            complex("groups", true, "readOnly", vec![
                attr("value", "string", false, true, "readOnly"),
                reference("$ref", &["Group"], "readOnly"),
                attr("display", "string", false, false, "readOnly"),
                attr("type", "string", false, false, "readOnly"),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}")},
    });
    let mut display = attr("displayName", "string", true, false, "readOnly");
    display["uniqueness"] = json!("server");
    let group = json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A directory group mapped to a role: its members hold that role",
        "attributes": [
            display,
            complex("members", true, "readWrite", vec![
                attr("value", "string", false, true, "immutable"),
                reference("$ref", &["User"], "immutable"),
                attr("display", "string", false, false, "readOnly"),
                attr("type", "string", false, false, "immutable"),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}")},
    });
    vec![user, group]
}

pub async fn schemas(state: State) -> Response {
    list(schema_docs(&state.base))
}

pub async fn schema(state: State, Path(id): Path<String>) -> Result<Response, ScimError> {
    schema_docs(&state.base)
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .map(|s| scim_json(StatusCode::OK, &s))
        .ok_or_else(|| ScimError::not_found(format!("NOT_FOUND: no schema `{id}`")))
}
