//! `POST /.search` (RFC 7644 §3.4.3): one query across Users and Groups.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;

use super::listing::ListQuery;
use super::{ScimError, State, directory, groups, json_body, users};
use crate::app::scim::{DirectoryGroup, DirectoryUser};

enum Item {
    User(DirectoryUser),
    Group(DirectoryGroup),
}

pub async fn root(state: State, headers: HeaderMap, body: Bytes) -> Result<Response, ScimError> {
    let dir = directory(&state, &headers).await?;
    let mut known: Vec<&str> = users::FILTERABLE.to_vec();
    known.extend(
        groups::FILTERABLE
            .iter()
            .filter(|a| !known.contains(a))
            .collect::<Vec<_>>(),
    );
    let q = ListQuery::from_search(&json_body(&body)?, &known, state.max_results)?;
    let mut items: Vec<Item> = state
        .app
        .directory_users(&dir)
        .await?
        .into_iter()
        .map(Item::User)
        .collect();
    items.extend(
        state
            .app
            .directory_groups(&dir)
            .await?
            .into_iter()
            .map(Item::Group),
    );
    Ok(q.respond(
        items,
        |item, path| match item {
            Item::User(u) => users::lookup(u, path),
            Item::Group(g) => groups::lookup(g, path),
        },
        |item| match item {
            Item::User(u) => users::render(&state.base, u),
            Item::Group(g) => groups::render(&state.base, g),
        },
    ))
}
