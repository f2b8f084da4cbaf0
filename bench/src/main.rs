//! teamgate-bench: the load benchmark of issue 4.
//!
//! Seeds a data set straight into a fresh database, starts the release `teamgate` binary as
//! a separate process on it, drives it over real gRPC at a fixed concurrency for a bounded
//! time per scenario, and writes a Markdown + JSON report. A no-op tonic server (this binary,
//! re-executed with the hidden `noop-server` subcommand) is driven the same way before and
//! after the cache-hit row, so the figures can also be read as ratios to it.
//!
//! `cargo build --release --bin teamgate --bin teamgate-bench && target/release/teamgate-bench`
//! (or `bench/run.sh`); `teamgate-bench soak` (or `bench/soak.sh`) is the soak run of issue 7.
//! See `bench/README.md`.

mod cpu;
mod lag;
mod load;
mod machine;
mod noop;
mod private;
mod report;
mod scenarios;
mod seed;
mod server;
mod soak;
mod soak_report;
mod writes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tonic::metadata::MetadataValue;

use crate::load::{Conn, LoadResult, LoadSettings, Summary, Workload};
use crate::report::{BackendReport, Params, Ratios, Report, Row};
use crate::scenarios::{
    BatchCheck, CachedCheck, ConsistentCheck, ExtAuthzCheck, Mixed, Subjects, WriteTarget,
};
use crate::seed::{Dataset, PgDatabase, Toggles};
use crate::server::{ServerProcess, TeamgateSpec};

#[derive(Debug, Parser)]
#[command(
    name = "teamgate-bench",
    about = "Load benchmark for teamgate: seeds a data set, starts the server, drives it over gRPC, writes a report",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The no-op baseline server (started by the benchmark itself).
    #[command(hide = true)]
    NoopServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The soak run: mixed traffic for a bounded time against two replicas on a PostgreSQL and
    /// a Redis of its own, with faults injected; reports errors by code, p99 and RSS over time
    /// and reads back every acknowledged write.
    Soak(soak::SoakArgs),
    /// The write-scaling rows (issue 15): 1 writer vs 16 writers in 16 orgs vs 16 in one org,
    /// on PostgreSQL and SQLite, against the same transaction shape sent straight to
    /// PostgreSQL, and the change feed's cross-replica delivery latency.
    WriteScaling(writes::WriteArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL with the shared Redis cache.
    #[value(name = "postgres-redis")]
    PostgresRedis,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::PostgresRedis => "postgres+redis",
        }
    }
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Directory for the report (`<date>-<label>.md` and `.json`).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Organizations in the data set.
    #[arg(long, default_value_t = 1_000)]
    orgs: usize,
    /// Members per organization (one owner, the rest admin/manager/member).
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// The large data set: 100,000 orgs × 10 members.
    #[arg(long, conflicts_with_all = ["orgs", "members"])]
    large: bool,
    /// Measured seconds per row.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before each row (sent, not recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections the requests share.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Subjects (org, user) in the cache-hit working set.
    #[arg(long, default_value_t = 10_000)]
    working_set: usize,
    /// Items per BatchCheck.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Percentage of writes in the mixed row.
    #[arg(long, default_value_t = 1.0)]
    write_percent: f64,
    /// Removals in the cross-replica invalidation test (0 skips it).
    #[arg(long, default_value_t = 200)]
    lag_iterations: usize,
    /// Backends to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres,postgres-redis"
    )]
    backends: Vec<Backend>,
    /// PostgreSQL maintenance database; the bench creates and drops `bench_<pid>` next to it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Members to check once before reading the server's peak RSS (default: all).
    #[arg(long)]
    rss_warm_members: Option<usize>,
    /// `cache.max_entries` for the server (default: the server's own default).
    #[arg(long)]
    cache_max_entries: Option<u64>,
    /// The teamgate binary (default: `teamgate` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Name in the report's file names (default: `default`, `large` or `custom`).
    #[arg(long)]
    label: Option<String>,
    /// Seed for the random choices (working set, requests).
    #[arg(long, default_value_t = 4)]
    seed: u64,
    /// Keep the temporary directory (SQLite file, server logs).
    #[arg(long)]
    keep_work_dir: bool,
    /// A note to add to the report (repeatable), e.g. what was built.
    #[arg(long = "note", value_name = "TEXT")]
    notes: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    match cli.command {
        Some(Sub::NoopServer { listen }) => runtime.block_on(noop::serve(listen)),
        Some(Sub::Soak(args)) => runtime.block_on(soak::soak(args)),
        Some(Sub::WriteScaling(args)) => runtime.block_on(writes::run(args)),
        None => runtime.block_on(bench(cli.run)),
    }
}

fn seconds(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{what} must be a number of seconds ≥ 0"))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[teamgate-bench] {}", msg.as_ref());
}

/// Everything the run needs, decided from the flags.
struct Plan {
    args: RunArgs,
    orgs: usize,
    members: usize,
    settings: LoadSettings,
    server_bin: PathBuf,
    label: String,
    lag: bool,
}

impl Plan {
    fn new(args: RunArgs) -> anyhow::Result<Plan> {
        let (orgs, members) = if args.large {
            (100_000, 10)
        } else {
            (args.orgs, args.members)
        };
        anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!(args.working_set >= 1, "--working-set must be at least 1");
        anyhow::ensure!(
            (1..=1000).contains(&args.batch_size),
            "--batch-size must be 1 to 1000 (the server's limit)"
        );
        anyhow::ensure!(
            (0.0..=100.0).contains(&args.write_percent),
            "--write-percent must be 0 to 100"
        );
        anyhow::ensure!(!args.backends.is_empty(), "--backends names none");
        let settings = LoadSettings {
            concurrency: args.concurrency,
            warmup: seconds("warmup", args.warmup)?,
            duration: seconds("duration", args.duration)?,
        };
        anyhow::ensure!(
            !settings.duration.is_zero(),
            "--duration must be more than 0"
        );
        let server_bin = match &args.server_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating teamgate-bench")?
                .with_file_name("teamgate"),
        };
        anyhow::ensure!(
            server_bin.is_file(),
            "no teamgate binary at {}: build it with `cargo build --release --bin teamgate --bin teamgate-bench` (or run bench/run.sh)",
            server_bin.display()
        );
        let label = args.label.clone().unwrap_or_else(|| {
            if args.large {
                "large".into()
            } else if (orgs, members) == (1_000, 20) {
                "default".into()
            } else {
                "custom".into()
            }
        });
        let lag = args.lag_iterations > 0 && args.backends.contains(&Backend::PostgresRedis);
        Ok(Plan {
            orgs,
            members,
            settings,
            server_bin,
            label,
            lag,
            args,
        })
    }

    fn uses_postgres(&self) -> bool {
        self.args
            .backends
            .iter()
            .any(|b| matches!(b, Backend::Postgres | Backend::PostgresRedis))
    }
}

async fn bench(args: RunArgs) -> anyhow::Result<()> {
    let command = std::env::args()
        .map(|a| {
            if a.contains(char::is_whitespace) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let plan = Plan::new(args)?;
    if cfg!(debug_assertions) {
        log("warning: this is a debug build of teamgate-bench; use --release for real figures");
    }
    let started_at = chrono::Utc::now();
    let mut machine = machine::describe(&plan.server_bin);
    let work = std::env::temp_dir().join(format!("teamgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    log(format!(
        "{} orgs × {} members; backends {}; work dir {}",
        plan.orgs,
        plan.members,
        plan.args
            .backends
            .iter()
            .map(|b| b.label())
            .collect::<Vec<_>>()
            .join(", "),
        work.display()
    ));
    let extras = if plan.lag {
        2 * plan.args.lag_iterations
    } else {
        0
    };
    let dataset = Arc::new(Dataset::generate(plan.orgs, plan.members, extras)?);

    let mut pg: Option<PgDatabase> = None;
    let outcome = run_all(&plan, &dataset, &work, &mut pg).await;
    if let Some(db) = pg.take() {
        let name = db.name.clone();
        match db.drop_database().await {
            Ok(()) => log(format!("dropped database {name}")),
            Err(e) => log(format!("warning: could not drop database {name}: {e:#}")),
        }
    }
    if plan.args.backends.contains(&Backend::PostgresRedis) {
        let pattern = format!("bench-{}-*", std::process::id());
        match delete_redis_keys(&plan.args.redis_url, &pattern).await {
            Ok(n) => log(format!("deleted {n} Redis keys {pattern}")),
            Err(e) => log(format!(
                "warning: could not delete Redis keys {pattern}: {e:#}"
            )),
        }
    }
    let (backends, lag, notes) = match outcome {
        Ok(r) => r,
        Err(e) => {
            log(format!(
                "failed; server logs are kept in {}",
                work.display()
            ));
            return Err(e);
        }
    };
    machine.load_average_end = machine::load_average();

    let params = Params {
        label: plan.label.clone(),
        orgs: plan.orgs,
        members_per_org: plan.members,
        members_total: dataset.member_count(),
        extra_members: dataset.extras.len(),
        working_set: plan.args.working_set.min(dataset.member_count()),
        concurrency: plan.args.concurrency,
        connections: plan.args.connections,
        warmup_s: plan.args.warmup,
        duration_s: plan.args.duration,
        batch_size: plan.args.batch_size,
        write_percent: plan.args.write_percent,
        lag_iterations: if plan.lag {
            plan.args.lag_iterations
        } else {
            0
        },
        backends: plan
            .args
            .backends
            .iter()
            .map(|b| b.label().to_owned())
            .collect(),
        rss_warm_members: rss_warm_members(&plan, &dataset),
        cache_max_entries: plan.args.cache_max_entries,
        postgres_url: teamgate::config::redact_url(&plan.args.postgres_url),
        redis_url: teamgate::config::redact_url(&plan.args.redis_url),
        seed: plan.args.seed,
    };
    let targets = report::evaluate(&params, &backends, lag.as_ref());
    let finished_at = chrono::Utc::now();
    let report = Report {
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command,
        machine,
        params,
        backends,
        invalidation_lag: lag,
        targets,
        notes,
    };
    let (md, json) = report.write(&plan.args.out, &started_at.format("%Y-%m-%d").to_string())?;
    println!("{}", report.markdown());
    log(format!("report: {} and {}", md.display(), json.display()));
    if plan.args.keep_work_dir {
        log(format!("work dir kept: {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// Deletes the keys this run left in Redis (entries expire anyway; the epoch key does not).
async fn delete_redis_keys(url: &str, pattern: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting to Redis timed out")??;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

fn rss_warm_members(plan: &Plan, dataset: &Dataset) -> usize {
    plan.args
        .rss_warm_members
        .unwrap_or(dataset.member_count())
        .min(dataset.member_count())
}

type Outcome = (Vec<BackendReport>, Option<lag::LagReport>, Vec<String>);

async fn run_all(
    plan: &Plan,
    dataset: &Arc<Dataset>,
    work: &Path,
    pg: &mut Option<PgDatabase>,
) -> anyhow::Result<Outcome> {
    let mut notes = plan.args.notes.clone();
    let policy = bench_policy(work)?;
    let mut noop = ServerProcess::spawn_noop(work)?;
    noop.wait_healthy(Duration::from_secs(30)).await?;
    let noop_conns = Conn::open_many(noop.addr, plan.args.connections).await?;

    let mut pg_seed: Option<(seed::SeedStats, Arc<Toggles>)> = None;
    if plan.uses_postgres() {
        let name = format!("bench_{}", std::process::id());
        let db = PgDatabase::create(&plan.args.postgres_url, &name).await?;
        let url = db.url.clone();
        *pg = Some(db);
        log(format!("seeding PostgreSQL database {name}"));
        let stats = seed::seed(&url, dataset).await?;
        log(format!(
            "seeded {} rows in {:.1} s",
            stats.rows,
            stats.elapsed.as_secs_f64()
        ));
        pg_seed = Some((stats, Arc::new(Toggles::new(dataset.orgs.len()))));
    }

    let mut reports = Vec::new();
    for &backend in &plan.args.backends {
        let (url, seed_rows, seed_s, toggles) = match backend {
            Backend::Sqlite => {
                let file = work.join("bench.db");
                let url = format!("sqlite://{}?mode=rwc", file.display());
                log("seeding SQLite");
                let stats = seed::seed(&url, dataset).await?;
                log(format!(
                    "seeded {} rows in {:.1} s",
                    stats.rows,
                    stats.elapsed.as_secs_f64()
                ));
                (
                    url,
                    stats.rows,
                    stats.elapsed.as_secs_f64(),
                    Arc::new(Toggles::new(dataset.orgs.len())),
                )
            }
            Backend::Postgres | Backend::PostgresRedis => {
                let (Some(db), Some((stats, toggles))) = (pg.as_ref(), pg_seed.as_ref()) else {
                    anyhow::bail!("the PostgreSQL database was not created");
                };
                (
                    db.url.clone(),
                    stats.rows,
                    stats.elapsed.as_secs_f64(),
                    toggles.clone(),
                )
            }
        };
        let spec = TeamgateSpec {
            name: backend.label().to_owned(),
            database_url: url,
            redis: (backend == Backend::PostgresRedis).then(|| {
                (
                    plan.args.redis_url.clone(),
                    format!("bench-{}-{}", std::process::id(), backend.label()),
                )
            }),
            cache_max_entries: plan.args.cache_max_entries,
            policy: Some(policy.clone()),
        };
        let report = run_backend(
            plan,
            dataset,
            &spec,
            work,
            (&noop_conns, noop.pid()),
            toggles,
            (seed_rows, seed_s),
            &mut notes,
        )
        .await
        .with_context(|| format!("the {} backend", backend.label()))?;
        reports.push(report);
    }

    // A failure here is reported, not fatal: the rows above are worth keeping.
    let lag = match (plan.lag, pg.as_ref()) {
        (true, Some(db)) => match run_lag(plan, dataset, &db.url, work, &policy).await {
            Ok(report) => Some(report),
            Err(e) => {
                log(format!("the cross-replica invalidation test failed: {e:#}"));
                notes.push(format!(
                    "The cross-replica invalidation test failed: {}",
                    format!("{e:#}").replace('\n', " ")
                ));
                None
            }
        },
        _ => None,
    };
    noop.stop();
    Ok((reports, lag, notes))
}

fn summarize(scenario: &str, r: &LoadResult, items: usize) -> Row {
    let summary = Summary::of(&r.all, r.errors, r.measured);
    let writes = (!r.writes.is_empty()).then(|| Summary::of(&r.writes, 0, r.measured));
    let calls = (summary.requests + summary.errors).max(1) as f64;
    Row {
        scenario: scenario.to_owned(),
        decisions_per_s: summary.requests_per_s * items as f64,
        server_cores: r.server_cpu_s.map(|s| s / r.measured.as_secs_f64()),
        server_cpu_us_per_call: r.server_cpu_s.map(|s| s * 1e6 / calls),
        summary,
        writes,
        first_error: r.first_error.clone(),
        cpu: r.cpu,
    }
}

/// The default policy plus a few Envoy routes (for the ext_authz row), written to `work`.
fn bench_policy(work: &Path) -> anyhow::Result<PathBuf> {
    let path = work.join("bench-policy.toml");
    let text = format!(
        "{}\n{}",
        teamgate::domain::policy::DEFAULT_POLICY_TOML,
        scenarios::ROUTES_TOML
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn short(row: &Row) -> String {
    format!(
        "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
        row.summary.requests_per_s, row.summary.p50_ms, row.summary.p99_ms, row.summary.errors
    )
}

#[allow(clippy::too_many_arguments)]
async fn run_backend(
    plan: &Plan,
    dataset: &Arc<Dataset>,
    spec: &TeamgateSpec,
    work: &Path,
    (noop_conns, noop_pid): (&[Conn], u32),
    toggles: Arc<Toggles>,
    (seed_rows, seed_s): (u64, f64),
    notes: &mut Vec<String>,
) -> anyhow::Result<BackendReport> {
    let label: &str = &spec.name;
    let mut server = ServerProcess::spawn_teamgate(&plan.server_bin, spec, work)?;
    let ready = server.wait_healthy(Duration::from_secs(300)).await?;
    log(format!(
        "{label}: teamgate (pid {}) serving on {} after {:.2} s",
        server.pid(),
        server.addr,
        ready.as_secs_f64()
    ));
    let conns = Conn::open_many(server.addr, plan.args.connections).await?;
    let settings = plan.settings;
    let seed = plan.args.seed;

    // The working set: distinct members, and the orgs they belong to for the writes.
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = plan.args.working_set.min(dataset.member_count());
    let picked = rand::seq::index::sample(&mut rng, dataset.member_count(), n).into_vec();
    let subjects: Subjects = Arc::new(
        picked
            .iter()
            .map(|&i| {
                let (o, u) = dataset.member(i);
                (o.to_string(), u.to_string())
            })
            .collect(),
    );
    let mut org_indexes: Vec<usize> = picked.iter().map(|i| i / dataset.members).collect();
    org_indexes.sort_unstable();
    org_indexes.dedup();
    let mut targets = Vec::with_capacity(org_indexes.len());
    for o in org_indexes {
        targets.push(WriteTarget {
            org_index: o,
            org_id: dataset.orgs[o].to_string(),
            user_id: dataset.toggled(o).to_string(),
            actor: MetadataValue::try_from(dataset.owner(o).to_string())?,
        });
    }

    let warm = {
        let subjects = subjects.clone();
        let chunks = subjects.len().div_ceil(100);
        load::run_all(&conns, plan.args.concurrency, chunks, move |i| {
            scenarios::warm_batch(&subjects, i, 100)
        })
        .await?
    };
    log(format!(
        "{label}: working set of {n} warmed in {:.2} s",
        warm.as_secs_f64()
    ));

    let cached: Arc<dyn Workload> = Arc::new(CachedCheck {
        subjects: subjects.clone(),
    });
    let server_pid = server.pid();
    let run =
        |name: String, conns: &[Conn], pid: u32, workload: Arc<dyn Workload>, items: usize| {
            let conns = conns.to_vec();
            async move {
                let r = load::run(&conns, settings, workload, seed, Some(pid)).await?;
                let row = summarize(&name, &r, items);
                log(format!("{label}: {name}: {}", short(&row)));
                anyhow::Ok(row)
            }
        };
    let noop_before = run(
        "no-op server (before)".into(),
        noop_conns,
        noop_pid,
        cached.clone(),
        1,
    )
    .await?;
    let check_cached = run(
        report::CHECK_CACHED.into(),
        &conns,
        server_pid,
        cached.clone(),
        1,
    )
    .await?;
    let noop_after = run(
        "no-op server (after)".into(),
        noop_conns,
        noop_pid,
        cached.clone(),
        1,
    )
    .await?;
    let consistent = run(
        report::CHECK_CONSISTENT.into(),
        &conns,
        server_pid,
        Arc::new(ConsistentCheck {
            dataset: dataset.clone(),
        }),
        1,
    )
    .await?;
    let batch = run(
        report::batch_name(plan.args.batch_size),
        &conns,
        server_pid,
        Arc::new(BatchCheck {
            subjects: subjects.clone(),
            size: plan.args.batch_size,
        }),
        plan.args.batch_size,
    )
    .await?;
    let mixed = run(
        format!("{} {}% writes", report::MIXED, plan.args.write_percent),
        &conns,
        server_pid,
        Arc::new(Mixed {
            reads: CachedCheck {
                subjects: subjects.clone(),
            },
            targets: Arc::new(targets),
            toggles,
            write_fraction: plan.args.write_percent / 100.0,
        }),
        1,
    )
    .await?;

    let ext_authz = run(
        report::EXT_AUTHZ.into(),
        &conns,
        server_pid,
        Arc::new(ExtAuthzCheck {
            subjects: subjects.clone(),
        }),
        1,
    )
    .await?;
    // Served from Redis: a second replica on the same database and Redis prefix whose
    // in-process level holds one entry, so nearly every Check misses it and finds the entry
    // shared in Redis.
    let redis_hit = match &spec.redis {
        Some(_) => {
            let l2_spec = TeamgateSpec {
                name: format!("{}-l2", spec.name),
                cache_max_entries: Some(1),
                ..spec.clone()
            };
            let mut l2 = ServerProcess::spawn_teamgate(&plan.server_bin, &l2_spec, work)?;
            l2.wait_healthy(Duration::from_secs(300)).await?;
            // Subscribing to the invalidation channel happens just after start-up.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let l2_conns = Conn::open_many(l2.addr, plan.args.connections).await?;
            // Shared entries live `cache.ttl_secs` (60 s), less than the rows above took: warm
            // the working set again through this replica, which loads and shares each subject.
            let subjects_again = subjects.clone();
            load::run_all(
                &l2_conns,
                plan.args.concurrency,
                subjects.len().div_ceil(100),
                move |i| scenarios::warm_batch(&subjects_again, i, 100),
            )
            .await?;
            let row = run(
                report::CHECK_REDIS.into(),
                &l2_conns,
                l2.pid(),
                cached.clone(),
                1,
            )
            .await?;
            l2.stop();
            Some(row)
        }
        None => None,
    };

    // Peak RSS with the data set loaded and the caches warm.
    let warm_members = rss_warm_members(plan, dataset);
    let rss_warm = {
        let dataset = dataset.clone();
        load::run_all(
            &conns,
            plan.args.concurrency,
            warm_members.div_ceil(100),
            move |i| scenarios::warm_members(&dataset, i, 100),
        )
        .await?
    };
    let memory = server.memory()?;
    log(format!(
        "{label}: peak RSS {:.1} MiB after checking {warm_members} members in {:.1} s",
        memory.peak_mib(),
        rss_warm.as_secs_f64()
    ));
    server.stop();

    let mut rows = vec![check_cached, consistent, batch, mixed, ext_authz];
    rows.extend(redis_hit);
    for row in std::iter::once(&noop_before)
        .chain(&rows)
        .chain(std::iter::once(&noop_after))
    {
        if row.summary.errors > 0 {
            notes.push(format!(
                "{label}: {}: {} errors (first: {})",
                row.scenario,
                row.summary.errors,
                row.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    let check_cached = &rows[0];
    let noop_rps = (noop_before.summary.requests_per_s + noop_after.summary.requests_per_s) / 2.0;
    let noop_p99 = (noop_before.summary.p99_ms + noop_after.summary.p99_ms) / 2.0;
    let ratios = Ratios {
        noop_requests_per_s: noop_rps,
        noop_p99_ms: noop_p99,
        throughput_ratio: ratio(check_cached.summary.requests_per_s, noop_rps),
        p99_ratio: ratio(check_cached.summary.p99_ms, noop_p99),
    };
    Ok(BackendReport {
        backend: label.to_owned(),
        seed_rows,
        seed_s,
        server_ready_s: ready.as_secs_f64(),
        warm_s: warm.as_secs_f64(),
        ratios,
        noop_before,
        rows,
        noop_after,
        memory,
        rss_warm_s: rss_warm.as_secs_f64(),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

async fn run_lag(
    plan: &Plan,
    dataset: &Dataset,
    database_url: &str,
    work: &Path,
    policy: &Path,
) -> anyhow::Result<lag::LagReport> {
    let prefix = format!("bench-{}-lag", std::process::id());
    let spec = |name: &str| TeamgateSpec {
        name: name.to_owned(),
        database_url: database_url.to_owned(),
        redis: Some((plan.args.redis_url.clone(), prefix.clone())),
        cache_max_entries: plan.args.cache_max_entries,
        policy: Some(policy.to_owned()),
    };
    // One after the other: replicas starting at the same moment on one database race in
    // start-up (built-in role sync) and one of them exits.
    let mut a = ServerProcess::spawn_teamgate(&plan.server_bin, &spec("replica-a"), work)?;
    a.wait_healthy(Duration::from_secs(300)).await?;
    let mut b = ServerProcess::spawn_teamgate(&plan.server_bin, &spec("replica-b"), work)?;
    b.wait_healthy(Duration::from_secs(300)).await?;
    // Both replicas subscribe to the invalidation channel (and agree on the epoch) in the
    // background after start-up; give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut conn_a = Conn::open(a.addr).await?;
    let mut conn_b = Conn::open(b.addr).await?;
    log(format!(
        "invalidation lag: replicas on {} and {}, {} removals",
        a.addr, b.addr, plan.args.lag_iterations
    ));
    let started = Instant::now();
    let report = lag::run(
        &mut conn_a,
        &mut conn_b,
        dataset,
        plan.args.lag_iterations,
        Duration::from_secs(5),
    )
    .await?;
    log(format!(
        "invalidation lag: p50 {:.3} ms, p99 {:.3} ms after the removal returned; {} stale of {} with at_least_as_fresh ({:.1} s)",
        report.after_return.p50_ms,
        report.after_return.p99_ms,
        report.fresh_stale_answers,
        report.fresh_checks,
        started.elapsed().as_secs_f64()
    ));
    a.stop();
    b.stop();
    Ok(report)
}
