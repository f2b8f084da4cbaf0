//! Single sign-on rows: connections, their domains, pending sign-ins and linked provider
//! accounts.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::StoreError;
use super::entities::{sso_connections, sso_domains, sso_identities, sso_states};

pub use sso_connections::Model as ConnectionRow;
pub use sso_domains::Model as DomainRow;
pub use sso_identities::Model as IdentityRow;
pub use sso_states::Model as StateRow;

fn connection_model(row: ConnectionRow) -> sso_connections::ActiveModel {
    sso_connections::ActiveModel {
        id: Set(row.id),
        org_id: Set(row.org_id),
        issuer: Set(row.issuer),
        client_id: Set(row.client_id),
        client_secret: Set(row.client_secret),
        redirect_uris: Set(row.redirect_uris),
        default_role: Set(row.default_role),
        jit_provisioning: Set(row.jit_provisioning),
        enforce: Set(row.enforce),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
    }
}

pub async fn insert_connection<C: ConnectionTrait>(
    c: &C,
    row: ConnectionRow,
) -> Result<(), StoreError> {
    sso_connections::Entity::insert(connection_model(row))
        .exec_without_returning(c)
        .await?;
    Ok(())
}

/// Writes every column of the connection `row.id`.
pub async fn update_connection<C: ConnectionTrait>(
    c: &C,
    row: ConnectionRow,
) -> Result<(), StoreError> {
    sso_connections::Entity::update(connection_model(row))
        .exec(c)
        .await?;
    Ok(())
}

/// Deletes the connection and its domains (pending sign-ins through it then find no
/// connection and fail).
pub async fn delete_connection<C: ConnectionTrait>(c: &C, id: &str) -> Result<(), StoreError> {
    sso_domains::Entity::delete_many()
        .filter(sso_domains::Column::ConnectionId.eq(id))
        .exec(c)
        .await?;
    sso_connections::Entity::delete_by_id(id.to_owned())
        .exec(c)
        .await?;
    Ok(())
}

pub async fn find_connection<C: ConnectionTrait>(
    c: &C,
    id: &str,
) -> Result<Option<ConnectionRow>, StoreError> {
    Ok(sso_connections::Entity::find_by_id(id.to_owned())
        .one(c)
        .await?)
}

/// The org's connections, oldest first.
pub async fn connections_of<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
) -> Result<Vec<ConnectionRow>, StoreError> {
    Ok(sso_connections::Entity::find()
        .filter(sso_connections::Column::OrgId.eq(org_id))
        .order_by_asc(sso_connections::Column::CreatedAt)
        .order_by_asc(sso_connections::Column::Id)
        .all(c)
        .await?)
}

/// The domains of a connection, in name order.
pub async fn domains_of<C: ConnectionTrait>(
    c: &C,
    connection_id: &str,
) -> Result<Vec<DomainRow>, StoreError> {
    Ok(sso_domains::Entity::find()
        .filter(sso_domains::Column::ConnectionId.eq(connection_id))
        .order_by_asc(sso_domains::Column::Domain)
        .all(c)
        .await?)
}

pub async fn find_domain<C: ConnectionTrait>(
    c: &C,
    domain: &str,
) -> Result<Option<DomainRow>, StoreError> {
    Ok(sso_domains::Entity::find_by_id(domain.to_owned())
        .one(c)
        .await?)
}

pub async fn insert_domain<C: ConnectionTrait>(c: &C, row: DomainRow) -> Result<(), StoreError> {
    sso_domains::Entity::insert(sso_domains::ActiveModel {
        domain: Set(row.domain),
        connection_id: Set(row.connection_id),
        org_id: Set(row.org_id),
        verification_token: Set(row.verification_token),
        verified_at: Set(row.verified_at),
        verified_by: Set(row.verified_by),
        created_at: Set(row.created_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn delete_domain<C: ConnectionTrait>(c: &C, domain: &str) -> Result<(), StoreError> {
    sso_domains::Entity::delete_by_id(domain.to_owned())
        .exec(c)
        .await?;
    Ok(())
}

pub async fn mark_verified<C: ConnectionTrait>(
    c: &C,
    domain: &str,
    at: DateTime<Utc>,
    by: &str,
) -> Result<(), StoreError> {
    sso_domains::Entity::update_many()
        .col_expr(sso_domains::Column::VerifiedAt, Expr::value(Some(at)))
        .col_expr(sso_domains::Column::VerifiedBy, Expr::value(Some(by)))
        .filter(sso_domains::Column::Domain.eq(domain))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn insert_state<C: ConnectionTrait>(c: &C, row: StateRow) -> Result<(), StoreError> {
    sso_states::Entity::insert(sso_states::ActiveModel {
        state_hash: Set(row.state_hash),
        connection_id: Set(row.connection_id),
        nonce: Set(row.nonce),
        pkce_verifier: Set(row.pkce_verifier),
        redirect_uri: Set(row.redirect_uri),
        created_at: Set(row.created_at),
        expires_at: Set(row.expires_at),
        used_at: Set(row.used_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn find_state<C: ConnectionTrait>(
    c: &C,
    state_hash: &str,
) -> Result<Option<StateRow>, StoreError> {
    Ok(sso_states::Entity::find_by_id(state_hash.to_owned())
        .one(c)
        .await?)
}

/// Marks the state used; `false` when it already was (a replay, or a concurrent completion).
pub async fn claim_state<C: ConnectionTrait>(
    c: &C,
    state_hash: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sso_states::Entity::update_many()
        .col_expr(sso_states::Column::UsedAt, Expr::value(Some(now)))
        .filter(sso_states::Column::StateHash.eq(state_hash))
        .filter(sso_states::Column::UsedAt.is_null())
        .exec(c)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Deletes sign-ins that expired before `before`; returns how many.
pub async fn prune_states<C: ConnectionTrait>(
    c: &C,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(sso_states::Entity::delete_many()
        .filter(sso_states::Column::ExpiresAt.lt(before))
        .exec(c)
        .await?
        .rows_affected)
}

pub async fn find_identity<C: ConnectionTrait>(
    c: &C,
    issuer: &str,
    subject: &str,
) -> Result<Option<IdentityRow>, StoreError> {
    Ok(sso_identities::Entity::find()
        .filter(sso_identities::Column::Issuer.eq(issuer))
        .filter(sso_identities::Column::Subject.eq(subject))
        .one(c)
        .await?)
}

pub async fn insert_identity<C: ConnectionTrait>(
    c: &C,
    row: IdentityRow,
) -> Result<(), StoreError> {
    sso_identities::Entity::insert(sso_identities::ActiveModel {
        id: Set(row.id),
        issuer: Set(row.issuer),
        subject: Set(row.subject),
        user_id: Set(row.user_id),
        connection_id: Set(row.connection_id),
        email: Set(row.email),
        created_at: Set(row.created_at),
        last_sign_in_at: Set(row.last_sign_in_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

/// Records a sign-in through a linked account and the email the provider sent with it.
pub async fn touch_identity<C: ConnectionTrait>(
    c: &C,
    id: &str,
    email: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sso_identities::Entity::update_many()
        .col_expr(sso_identities::Column::Email, Expr::value(email))
        .col_expr(sso_identities::Column::LastSignInAt, Expr::value(now))
        .filter(sso_identities::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}
