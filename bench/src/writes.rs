//! The write-scaling rows of issue 15: do writes to different organizations wait for each
//! other? UpdateMemberRole toggles through the public API with 1 writer, 16 writers in 16
//! orgs and 16 writers in one org, on PostgreSQL and SQLite; the same transaction shape sent
//! straight to PostgreSQL (no teamgate in between) as the ceiling, with the variants that
//! explain the design (a global counter row, a NOTIFY in the transaction); and how long a
//! change takes to reach a WatchChanges stream on another replica.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use sea_orm::sqlx::postgres::{PgPool, PgPoolOptions};
use serde::Serialize;
use teamgate::proto::teamgate::v1 as pb;
use tonic::metadata::MetadataValue;

use crate::load::{ACTOR_HEADER, Conn, Summary, new_histogram};
use crate::seed::{Dataset, PgDatabase};
use crate::server::{ServerProcess, TeamgateSpec};
use crate::{log, machine};

const WRITERS: usize = 16;

#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Directory for the report (`<date>-write-scaling.md` and `.json`).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Measured seconds per row.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Warm-up seconds before each row.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Changes timed from the write returning on one replica to the event on another.
    #[arg(long, default_value_t = 300)]
    feed_changes: usize,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// The teamgate binary (default: `teamgate` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// A note to add to the report (repeatable).
    #[arg(long = "note", value_name = "TEXT")]
    notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteRow {
    pub backend: String,
    pub row: String,
    pub writers: usize,
    pub writes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub started_at: String,
    pub command: String,
    pub machine: machine::Machine,
    pub duration_s: f64,
    pub rows: Vec<WriteRow>,
    pub feed_latency: Option<Summary>,
    pub notes: Vec<String>,
}

/// Who writes what: writer `w` toggles one member between `member` and `manager`.
#[derive(Clone)]
struct Target {
    org: String,
    user: String,
    actor: MetadataValue<tonic::metadata::Ascii>,
    /// The seeded role is `manager`: start by setting `member`.
    starts_manager: bool,
}

/// 16 orgs of 20 members; writer `w` in "16 orgs" toggles org `w`'s last member, in "one
/// org" it toggles member `w + 2` of org 0 (never the owner, each writer its own member, so
/// every call is a real change).
fn targets(ds: &Dataset, one_org: bool) -> anyhow::Result<Vec<Target>> {
    (0..WRITERS)
        .map(|w| {
            let (o, j) = if one_org {
                (0, w + 2)
            } else {
                (w, ds.members - 1)
            };
            Ok(Target {
                org: ds.orgs[o].to_string(),
                user: ds.users[o * ds.members + j].to_string(),
                actor: MetadataValue::try_from(ds.owner(o).to_string())?,
                starts_manager: ds.role(j) == "manager",
            })
        })
        .collect()
}

struct Measured {
    h: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one closed-loop writer per target (each on its own task), warm-up then measured.
async fn drive<F, Fut>(
    writers: usize,
    warmup: Duration,
    duration: Duration,
    make: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let make = make.clone();
        let mut h = new_histogram()?;
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let mut first_error = None;
            let mut i = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let outcome = make(w, i).await;
                i += 1;
                if sent < measure_from {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        h.saturating_record(
                            u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX),
                        );
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (h, errors, first_error)
        }));
    }
    let mut total = Measured {
        h: new_histogram()?,
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        let (h, e, f) = t.await.context("writer task")?;
        total.h.add(&h).context("merging histograms")?;
        total.errors += e;
        if total.first_error.is_none() {
            total.first_error = f;
        }
    }
    Ok(total)
}

fn row(backend: &str, name: &str, writers: usize, m: &Measured, duration: Duration) -> WriteRow {
    let s = Summary::of(&m.h, m.errors, duration);
    let r = WriteRow {
        backend: backend.to_owned(),
        row: name.to_owned(),
        writers,
        writes_per_s: s.requests_per_s,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        errors: m.errors,
        first_error: m.first_error.clone(),
    };
    log(format!(
        "{backend}: {name}: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        r.writes_per_s, r.p50_ms, r.p99_ms, r.errors
    ));
    r
}

fn role_for(t: &Target, i: u64) -> &'static str {
    if i.is_multiple_of(2) != t.starts_manager {
        "manager"
    } else {
        "member"
    }
}

/// The three teamgate rows against one server.
async fn teamgate_rows(
    backend: &str,
    addr: std::net::SocketAddr,
    ds: &Dataset,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<WriteRow>> {
    let conns = Conn::open_many(addr, 4).await?;
    let mut rows = Vec::new();
    for (name, writers, one_org) in [
        ("1 writer, one org", 1, false),
        ("16 writers, 16 orgs", WRITERS, false),
        ("16 writers, one org", WRITERS, true),
    ] {
        let targets = Arc::new(targets(ds, one_org)?);
        let conns = conns.clone();
        // Each row continues the toggles where the previous one left them: restart from a
        // known role by setting it explicitly (idempotent) first.
        for t in targets.iter().take(writers) {
            set_role(
                &conns[0],
                t,
                if t.starts_manager {
                    "manager"
                } else {
                    "member"
                },
            )
            .await
            .ok();
        }
        let m = drive(writers, warmup, duration, move |w, i| {
            let conn = conns[w % conns.len()].clone();
            let t = targets[w].clone();
            async move { set_role(&conn, &t, role_for(&t, i)).await }
        })
        .await?;
        rows.push(row(backend, name, writers, &m, duration));
    }
    Ok(rows)
}

async fn set_role(conn: &Conn, t: &Target, role: &str) -> Result<(), String> {
    let mut req = tonic::Request::new(pb::UpdateMemberRoleRequest {
        org_id: t.org.clone(),
        user_id: t.user.clone(),
        role: role.to_owned(),
    });
    req.metadata_mut().insert(ACTOR_HEADER, t.actor.clone());
    conn.team
        .clone()
        .update_member_role(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// What a raw transaction adds to the shape teamgate's UpdateMemberRole has (lock the org row
/// and bump its version, update the membership, write the audit row).
#[derive(Clone, Copy)]
enum Extra {
    /// Nothing: the pgbench shape.
    None,
    /// The audit row and the change row in teamgate's one statement (what it sends now).
    FeedRow,
    /// The old design: every writer bumps one counter row.
    GlobalCounter,
    /// The feed row plus a NOTIFY inside the transaction.
    FeedRowAndNotify,
}

const AUDIT_SQL: &str = "INSERT INTO audit_events (id, org_id, actor_user_id, action, target, before, after, occurred_at, request_id) VALUES ($1, $2, $3, 'member.role_changed', $4, NULL, NULL, now(), 'bench')";

const FEED_SQL: &str = concat!(
    "WITH audit AS (INSERT INTO audit_events (id, org_id, actor_user_id, action, target, before, after, occurred_at, request_id) ",
    "VALUES ($1, $2, $3, 'member.role_changed', $4, NULL, NULL, now(), 'bench')), ",
    "tx AS (SELECT pg_current_xact_id()::text::bigint AS xid) ",
    "INSERT INTO changes (org_id, action, target, actor_user_id, occurred_at, org_version, xid, pos) ",
    "SELECT $2, 'member.role_changed', $4, $3, now(), COALESCE((SELECT version FROM organizations WHERE id = $2), 0), ",
    "tx.xid, GREATEST(tx.xid, (SELECT max(pos) FROM changes WHERE org_id = $2)) FROM tx"
);

async fn raw_transaction(
    pool: &PgPool,
    t: &Target,
    role: &str,
    extra: Extra,
) -> Result<(), sea_orm::sqlx::Error> {
    use sea_orm::sqlx::query;
    let mut tx = pool.begin().await?;
    query("UPDATE organizations SET version = version + 1 WHERE id = $1 AND deleted_at IS NULL")
        .bind(&t.org)
        .execute(&mut *tx)
        .await?;
    query("UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2")
        .bind(&t.org)
        .bind(&t.user)
        .bind(role)
        .execute(&mut *tx)
        .await?;
    let id = uuid::Uuid::now_v7().to_string();
    let actor = t.actor.to_str().unwrap_or_default().to_owned();
    let target = format!("user:{}", t.user);
    let sql = match extra {
        Extra::None | Extra::GlobalCounter => AUDIT_SQL,
        Extra::FeedRow | Extra::FeedRowAndNotify => FEED_SQL,
    };
    query(sql)
        .bind(&id)
        .bind(&t.org)
        .bind(&actor)
        .bind(&target)
        .execute(&mut *tx)
        .await?;
    match extra {
        Extra::GlobalCounter => {
            query("UPDATE bench_counter SET n = n + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        Extra::FeedRowAndNotify => {
            query("SELECT pg_notify('bench_feed', $1)")
                .bind(&t.org)
                .execute(&mut *tx)
                .await?;
        }
        Extra::None | Extra::FeedRow => {}
    }
    tx.commit().await
}

async fn raw_rows(
    url: &str,
    ds: &Dataset,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<WriteRow>> {
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32)
        .connect(url)
        .await
        .context("connecting for the raw rows")?;
    sea_orm::sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_counter (id int PRIMARY KEY, n bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sea_orm::sqlx::query("INSERT INTO bench_counter VALUES (1, 0) ON CONFLICT DO NOTHING")
        .execute(&pool)
        .await?;
    let targets = Arc::new(targets(ds, false)?);
    let mut rows = Vec::new();
    for (name, extra) in [
        ("raw shape (org lock, membership, audit row)", Extra::None),
        (
            "raw shape + feed row (teamgate's statement)",
            Extra::FeedRow,
        ),
        (
            "raw shape + one global counter row (the old feed)",
            Extra::GlobalCounter,
        ),
        (
            "raw shape + feed row + NOTIFY in the transaction",
            Extra::FeedRowAndNotify,
        ),
    ] {
        for writers in [1, WRITERS] {
            let pool = pool.clone();
            let targets = targets.clone();
            let m = drive(writers, warmup, duration, move |w, i| {
                let pool = pool.clone();
                let t = targets[w].clone();
                async move {
                    raw_transaction(&pool, &t, role_for(&t, i), extra)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await?;
            let label = if writers == 1 {
                "1 client"
            } else {
                "16 clients, 16 orgs"
            };
            rows.push(row(
                "postgres (raw SQL)",
                &format!("{name}, {label}"),
                writers,
                &m,
                duration,
            ));
        }
    }
    pool.close().await;
    Ok(rows)
}

/// From UpdateMemberRole returning on replica A to the change arriving on a WatchChanges
/// stream opened on replica B (which polls only every 200 ms: a wake-up must come from
/// LISTEN/NOTIFY to beat that).
async fn feed_latency(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    ds: &Dataset,
    n: usize,
) -> anyhow::Result<Summary> {
    let conn_a = Conn::open(a).await?;
    let conn_b = Conn::open(b).await?;
    let t = targets(ds, false)?[0].clone();
    // From a known role (before the stream opens, so the reset is no event of it).
    set_role(
        &conn_a,
        &t,
        if t.starts_manager {
            "manager"
        } else {
            "member"
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut req = tonic::Request::new(pb::WatchChangesRequest {
        org_id: t.org.clone(),
        after: String::new(),
    });
    req.metadata_mut().insert(ACTOR_HEADER, t.actor.clone());
    let mut stream = conn_b.team.clone().watch_changes(req).await?.into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut h = new_histogram()?;
    let started = Instant::now();
    for i in 0..n {
        set_role(&conn_a, &t, role_for(&t, i as u64))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let returned = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .context("no event on the other replica within 5 s")??
            .context("the stream ended")?;
        h.saturating_record(u64::try_from(returned.elapsed().as_nanos()).unwrap_or(u64::MAX));
        // Spread the writes out a little, like independent requests.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(Summary::of(&h, 0, started.elapsed()))
}

pub async fn run(args: WriteArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let warmup = crate::seconds("warmup", args.warmup)?;
    let duration = crate::seconds("duration", args.duration)?;
    let server_bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("teamgate"),
    };
    anyhow::ensure!(
        server_bin.is_file(),
        "no teamgate binary at {}",
        server_bin.display()
    );
    let started_at = chrono::Utc::now();
    let mut machine = machine::describe(&server_bin);
    let work = std::env::temp_dir().join(format!("teamgate-bench-writes-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let ds = Dataset::generate(WRITERS, 20, 0)?;
    let mut rows = Vec::new();
    let mut notes = args.notes.clone();

    // PostgreSQL: teamgate, then the raw ceiling on the same database, then the feed latency.
    let name = format!("bench_w_{}", std::process::id());
    let db = PgDatabase::create(&args.postgres_url, &name).await?;
    let outcome = async {
        crate::seed::seed(&db.url, &ds).await?;
        let spec = |n: &str| TeamgateSpec {
            name: n.to_owned(),
            database_url: db.url.clone(),
            redis: None,
            cache_max_entries: None,
            policy: None,
        };
        let mut a = ServerProcess::spawn_teamgate(&server_bin, &spec("writes-a"), &work)?;
        a.wait_healthy(Duration::from_secs(120)).await?;
        rows.extend(teamgate_rows("postgres", a.addr, &ds, warmup, duration).await?);
        let mut b = ServerProcess::spawn_teamgate(&server_bin, &spec("writes-b"), &work)?;
        b.wait_healthy(Duration::from_secs(120)).await?;
        let latency = feed_latency(a.addr, b.addr, &ds, args.feed_changes).await?;
        log(format!(
            "feed: change on replica B after the write returned on A: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latency.p50_ms, latency.p99_ms, latency.max_ms
        ));
        a.stop();
        b.stop();
        rows.extend(raw_rows(&db.url, &ds, warmup, duration).await?);
        anyhow::Ok(latency)
    }
    .await;
    if let Err(e) = db.drop_database().await {
        notes.push(format!("could not drop {name}: {e:#}"));
    }
    let latency = outcome?;

    // SQLite: one writer at a time by design; the rows show what that costs.
    let file = work.join("writes.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    crate::seed::seed(&url, &ds).await?;
    let spec = TeamgateSpec {
        name: "writes-sqlite".into(),
        database_url: url,
        redis: None,
        cache_max_entries: None,
        policy: None,
    };
    let mut s = ServerProcess::spawn_teamgate(&server_bin, &spec, &work)?;
    s.wait_healthy(Duration::from_secs(120)).await?;
    rows.extend(teamgate_rows("sqlite", s.addr, &ds, warmup, duration).await?);
    s.stop();
    let _ = std::fs::remove_dir_all(&work);

    machine.load_average_end = machine::load_average();
    let report = WriteReport {
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command,
        machine,
        duration_s: args.duration,
        rows,
        feed_latency: Some(latency),
        notes,
    };
    let date = started_at.format("%Y-%m-%d").to_string();
    let (md, json) = write(&report, &args.out, &date)?;
    println!("{}", markdown(&report));
    log(format!("report: {} and {}", md.display(), json.display()));
    Ok(())
}

fn find<'a>(r: &'a WriteReport, backend: &str, row: &str) -> Option<&'a WriteRow> {
    r.rows.iter().find(|x| x.backend == backend && x.row == row)
}

pub fn markdown(r: &WriteReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# teamgate write scaling ({})\n", r.started_at);
    let _ = writeln!(
        s,
        "Machine: {} × {} ({} MiB), kernel {}, load average {} → {}; commit {}{}; release build: {}.\n",
        m.nproc,
        m.cpu_model,
        m.memory_total_mib,
        m.kernel,
        m.load_average_start,
        m.load_average_end,
        m.git_commit,
        if m.git_dirty { " (dirty)" } else { "" },
        m.release_build
    );
    let _ = writeln!(
        s,
        "Command: `{}`; {} s measured per row, PostgreSQL and teamgate on the same box.\n",
        r.command, r.duration_s
    );
    let _ = writeln!(
        s,
        "| backend | row | writers | writes/s | p50 ms | p99 ms | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for x in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            x.backend, x.row, x.writers, x.writes_per_s, x.p50_ms, x.p99_ms, x.errors
        );
    }
    if let Some(l) = &r.feed_latency {
        let _ = writeln!(
            s,
            "\nWatchChanges on replica B, change made through replica A: {} changes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms after UpdateMemberRole returned (poll interval 200 ms).",
            l.requests, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    let tg = |b: &str, row: &str| find(r, b, row).map_or(0.0, |x| x.writes_per_s);
    let one = tg("postgres", "1 writer, one org");
    let many = tg("postgres", "16 writers, 16 orgs");
    let raw1 = tg(
        "postgres (raw SQL)",
        "raw shape (org lock, membership, audit row), 1 client",
    );
    let raw16 = tg(
        "postgres (raw SQL)",
        "raw shape (org lock, membership, audit row), 16 clients, 16 orgs",
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let _ = writeln!(s, "\n## Against the targets of issue 15\n");
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    let mut line = |what: &str, value: f64, want: f64| {
        let _ = writeln!(
            s,
            "| {what} ≥ {want} | {value:.2} | {} |",
            if value >= want { "yes" } else { "no" }
        );
    };
    line(
        "16 writers in 16 orgs / 1 writer (PostgreSQL)",
        ratio(many, one),
        3.0,
    );
    line(
        "16 writers in 16 orgs / raw 16-client ceiling",
        ratio(many, raw16),
        0.5,
    );
    line("1 writer / raw 1-client ceiling", ratio(one, raw1), 0.7);
    if let Some(l) = &r.feed_latency {
        let _ = writeln!(
            s,
            "| cross-replica feed delivery p99 < 20 ms | {:.2} ms | {} |",
            l.p99_ms,
            if l.p99_ms < 20.0 { "yes" } else { "no" }
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "\n{n}");
    }
    s
}

fn write(r: &WriteReport, dir: &Path, date: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let md = dir.join(format!("{date}-write-scaling.md"));
    let json = dir.join(format!("{date}-write-scaling.json"));
    std::fs::write(&md, markdown(r))?;
    std::fs::write(&json, serde_json::to_string_pretty(r)?)?;
    Ok((md, json))
}
