//! The data set: organizations with their members, generated in memory and written straight
//! into a fresh database through the library's entities (bulk `insert_many`, one transaction
//! per batch of organizations). Built-in roles are synced by the server at start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use sea_orm::{DbBackend, EntityTrait, Set};
use teamgate::domain::policy::Policy;
use teamgate::store::entities::{memberships, organizations, users};
use teamgate::store::{Store, StoreOptions};
use uuid::Uuid;

/// The plan every seeded organization is on (unlimited members in the default policy).
pub const PLAN: &str = "business";
/// The role the mixed run toggles the last member of an org to and from.
pub const ROLE_MEMBER: &str = "member";
pub const ROLE_MANAGER: &str = "manager";

/// Rows per INSERT statement: well under SQLite's and PostgreSQL's bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 1_000;
/// Members (users + memberships) per transaction.
const MEMBERS_PER_TX: usize = 4_000;

/// An extra member kept out of every load scenario, for the invalidation-lag test to remove.
#[derive(Debug, Clone, Copy)]
pub struct Extra {
    pub org: usize,
    pub user: Uuid,
}

/// Organization `o` has members `users[o * members .. (o + 1) * members]`; member 0 is the
/// owner and the last member is a plain `member` that the mixed run toggles to `manager`.
pub struct Dataset {
    pub orgs: Vec<Uuid>,
    pub members: usize,
    pub users: Vec<Uuid>,
    pub extras: Vec<Extra>,
}

impl Dataset {
    /// Generates ids for `orgs` × `members`, plus `extras` extra members spread over the orgs.
    pub fn generate(orgs: usize, members: usize, extras: usize) -> anyhow::Result<Dataset> {
        anyhow::ensure!(orgs >= 1, "--orgs must be at least 1");
        anyhow::ensure!(
            members >= 2,
            "--members must be at least 2 (an owner and a member to toggle)"
        );
        let total = orgs
            .checked_mul(members)
            .context("--orgs × --members is too large")?;
        Ok(Dataset {
            orgs: (0..orgs).map(|_| Uuid::now_v7()).collect(),
            members,
            users: (0..total).map(|_| Uuid::now_v7()).collect(),
            extras: (0..extras)
                .map(|k| Extra {
                    org: (k / 2) % orgs,
                    user: Uuid::now_v7(),
                })
                .collect(),
        })
    }

    pub fn member_count(&self) -> usize {
        self.users.len()
    }

    /// The (org, user) of member `i` (0 ≤ i < member_count).
    pub fn member(&self, i: usize) -> (Uuid, Uuid) {
        (self.orgs[i / self.members], self.users[i])
    }

    pub fn owner(&self, org: usize) -> Uuid {
        self.users[org * self.members]
    }

    /// The member the mixed run toggles between `member` and `manager`.
    pub fn toggled(&self, org: usize) -> Uuid {
        self.users[org * self.members + self.members - 1]
    }

    /// The seeded role of member `j` of any org.
    pub fn role(&self, j: usize) -> &'static str {
        if j == 0 {
            "owner"
        } else if j == self.members - 1 {
            ROLE_MEMBER
        } else {
            match j % 4 {
                1 => "admin",
                2 => ROLE_MANAGER,
                _ => ROLE_MEMBER,
            }
        }
    }
}

/// Per database: whether each org's toggled member is currently `manager`.
pub struct Toggles(Vec<AtomicBool>);

impl Toggles {
    pub fn new(orgs: usize) -> Toggles {
        Toggles((0..orgs).map(|_| AtomicBool::new(false)).collect())
    }

    /// Flips org `o` and returns the role to set.
    pub fn flip(&self, o: usize) -> &'static str {
        if self.0[o].fetch_xor(true, Ordering::Relaxed) {
            ROLE_MEMBER
        } else {
            ROLE_MANAGER
        }
    }
}

pub struct SeedStats {
    pub rows: u64,
    pub elapsed: Duration,
}

/// Migrates the database at `url` and writes the data set into it.
pub async fn seed(url: &str, ds: &Dataset) -> anyhow::Result<SeedStats> {
    let policy = Policy::embedded_default();
    anyhow::ensure!(
        policy.plan(PLAN).is_some(),
        "the default policy has no plan `{PLAN}`"
    );
    for j in 0..ds.members.min(8) {
        anyhow::ensure!(
            policy.built_in(ds.role(j)).is_some(),
            "the default policy has no role `{}`",
            ds.role(j)
        );
    }
    let started = Instant::now();
    let store = Store::connect(&StoreOptions {
        url: url.to_owned(),
        max_connections: 2,
        connect_timeout: Duration::from_secs(10),
        pg_schema: None,
    })
    .await
    .context("connecting to the bench database")?;
    store
        .migrate()
        .await
        .context("migrating the bench database")?;
    let now = Utc::now();
    let mut rows = 0u64;
    let orgs_per_tx = (MEMBERS_PER_TX / ds.members).max(1);
    for first in (0..ds.orgs.len()).step_by(orgs_per_tx) {
        let last = (first + orgs_per_tx).min(ds.orgs.len());
        let org_rows: Vec<organizations::ActiveModel> = (first..last)
            .map(|o| organizations::ActiveModel {
                id: Set(ds.orgs[o].to_string()),
                name: Set(format!("Bench Org {o}")),
                plan: Set(PLAN.to_owned()),
                require_mfa: Set(false),
                created_at: Set(now),
                deleted_at: Set(None),
                version: Set(1),
            })
            .collect();
        let member_range = first * ds.members..last * ds.members;
        let user_rows: Vec<users::ActiveModel> = member_range
            .clone()
            .map(|i| users::ActiveModel {
                id: Set(ds.users[i].to_string()),
                email: Set(format!("u{i}@bench.example")),
                first_name: Set("Bench".to_owned()),
                last_name: Set(format!("User {i}")),
                created_at: Set(now),
                // Account columns keep their defaults (active, no password, no MFA).
                ..Default::default()
            })
            .collect();
        let membership_rows: Vec<memberships::ActiveModel> = member_range
            .map(|i| memberships::ActiveModel {
                org_id: Set(ds.orgs[i / ds.members].to_string()),
                user_id: Set(ds.users[i].to_string()),
                role: Set(ds.role(i % ds.members).to_owned()),
                joined_at: Set(now),
            })
            .collect();
        let tx = store.write().await?;
        rows += insert_chunked::<organizations::Entity, _>(&tx, org_rows).await?;
        rows += insert_chunked::<users::Entity, _>(&tx, user_rows).await?;
        rows += insert_chunked::<memberships::Entity, _>(&tx, membership_rows).await?;
        tx.commit().await?;
    }
    if !ds.extras.is_empty() {
        let user_rows: Vec<users::ActiveModel> = ds
            .extras
            .iter()
            .enumerate()
            .map(|(k, e)| users::ActiveModel {
                id: Set(e.user.to_string()),
                email: Set(format!("x{k}@bench.example")),
                first_name: Set("Extra".to_owned()),
                last_name: Set(format!("User {k}")),
                created_at: Set(now),
                // Account columns keep their defaults (active, no password, no MFA).
                ..Default::default()
            })
            .collect();
        let membership_rows: Vec<memberships::ActiveModel> = ds
            .extras
            .iter()
            .map(|e| memberships::ActiveModel {
                org_id: Set(ds.orgs[e.org].to_string()),
                user_id: Set(e.user.to_string()),
                role: Set(ROLE_MEMBER.to_owned()),
                joined_at: Set(now),
            })
            .collect();
        let tx = store.write().await?;
        rows += insert_chunked::<users::Entity, _>(&tx, user_rows).await?;
        rows += insert_chunked::<memberships::Entity, _>(&tx, membership_rows).await?;
        tx.commit().await?;
    }
    // Fresh planner statistics, as a database that has been running a while would have.
    let analyze = match store.backend() {
        DbBackend::Postgres => "ANALYZE",
        _ => "ANALYZE;",
    };
    store
        .execute_unprepared(analyze)
        .await
        .context("analyzing the bench database")?;
    store.close().await;
    Ok(SeedStats {
        rows,
        elapsed: started.elapsed(),
    })
}

async fn insert_chunked<E, A>(tx: &teamgate::store::WriteTx, rows: Vec<A>) -> anyhow::Result<u64>
where
    E: EntityTrait<ActiveModel = A>,
    A: sea_orm::ActiveModelTrait<Entity = E> + Send,
{
    let mut inserted = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        let n = chunk.len() as u64;
        E::insert_many(chunk)
            .exec_without_returning(&**tx)
            .await
            .with_context(|| format!("inserting {n} rows"))?;
        inserted += n;
    }
    Ok(inserted)
}

/// A database of its own on a PostgreSQL server, dropped at the end of the run.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    /// Creates `name` through the maintenance database at `admin_url`.
    pub async fn create(admin_url: &str, name: &str) -> anyhow::Result<PgDatabase> {
        let url = with_database(admin_url, name)?;
        let admin = admin_store(admin_url).await?;
        let created = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"));
        admin.close().await;
        created?;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            name: name.to_owned(),
            url,
        })
    }

    pub async fn drop_database(self) -> anyhow::Result<()> {
        let admin = admin_store(&self.admin_url).await?;
        let dropped = admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping database {}", self.name));
        admin.close().await;
        dropped
    }
}

async fn admin_store(admin_url: &str) -> anyhow::Result<Store> {
    Store::connect(&StoreOptions {
        url: admin_url.to_owned(),
        max_connections: 1,
        connect_timeout: Duration::from_secs(10),
        pg_schema: None,
    })
    .await
    .with_context(|| {
        format!(
            "connecting to {} (is PostgreSQL running? --postgres-url sets where)",
            teamgate::config::redact_url(admin_url)
        )
    })
}

/// `postgres://user@host:port/postgres?x=y` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("{} is not a URL", teamgate::config::redact_url(url)))?;
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b2").unwrap(),
            "postgres://u:p@h/b2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "b3").unwrap(),
            "postgres://h:5432/b3"
        );
    }

    #[test]
    fn every_org_has_one_owner_and_a_member_to_toggle() {
        let ds = Dataset::generate(3, 6, 4).unwrap();
        let roles: Vec<&str> = (0..6).map(|j| ds.role(j)).collect();
        assert_eq!(roles.iter().filter(|r| **r == "owner").count(), 1);
        assert_eq!(roles[5], ROLE_MEMBER);
        assert_eq!(ds.member(7), (ds.orgs[1], ds.users[7]));
        assert_eq!(ds.owner(2), ds.users[12]);
        assert_eq!(ds.toggled(0), ds.users[5]);
        assert_eq!(ds.extras[3].org, 1);
    }
}
