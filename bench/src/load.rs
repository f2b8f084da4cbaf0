//! The load generator: a fixed number of in-flight requests spread over a fixed number of
//! HTTP/2 connections, for a bounded time after a warm-up, with every latency recorded in an
//! HDR histogram. Closed loop: each worker sends its next request when the previous one has
//! answered, so the concurrency is exactly the number of workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::authz_service_client::AuthzServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest as EnvoyCheck;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::cpu::{Snapshot, Usage, process_cpu_s};

/// The header naming the user on whose behalf a management call is made.
pub const ACTOR_HEADER: &str = "x-actor-user-id";

/// One HTTP/2 connection with the two clients the scenarios use.
#[derive(Clone)]
pub struct Conn {
    pub authz: AuthzServiceClient<Channel>,
    pub team: TeamServiceClient<Channel>,
    pub ext_authz: AuthorizationClient<Channel>,
}

impl Conn {
    /// Opens one connection (a tonic `Channel` is one HTTP/2 connection).
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Conn {
            authz: AuthzServiceClient::new(channel.clone()),
            ext_authz: AuthorizationClient::new(channel.clone()),
            team: TeamServiceClient::new(channel),
        })
    }

    /// Opens `n` separate connections.
    pub async fn open_many(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            conns.push(Conn::open(addr).await?);
        }
        Ok(conns)
    }

    /// Sends one call; tells whether it was a read or a write.
    pub async fn execute(&mut self, call: Call) -> Result<Kind, tonic::Status> {
        match call {
            Call::Check(req) => {
                self.authz.check(req).await?;
                Ok(Kind::Read)
            }
            Call::Batch(req) => {
                let want = req.items.len();
                let got = self
                    .authz
                    .batch_check(req)
                    .await?
                    .into_inner()
                    .results
                    .len();
                if got != want {
                    return Err(tonic::Status::internal(format!(
                        "BatchCheck answered {got} results for {want} items"
                    )));
                }
                Ok(Kind::Read)
            }
            Call::ExtAuthz(req) => {
                // A denial is an answer too (an OK response carrying the HTTP status).
                let r = self.ext_authz.check(*req).await?.into_inner();
                if r.status.is_none() {
                    return Err(tonic::Status::internal(
                        "ext_authz answered without a status",
                    ));
                }
                Ok(Kind::Read)
            }
            Call::SetRole { req, actor } => {
                let mut request = tonic::Request::new(req);
                request.metadata_mut().insert(ACTOR_HEADER, actor);
                self.team.update_member_role(request).await?;
                Ok(Kind::Write)
            }
        }
    }
}

/// A request a scenario wants sent.
pub enum Call {
    Check(pb::CheckRequest),
    ExtAuthz(Box<EnvoyCheck>),
    Batch(pb::BatchCheckRequest),
    SetRole {
        req: pb::UpdateMemberRoleRequest,
        actor: MetadataValue<tonic::metadata::Ascii>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// Makes the next request; called by every worker with its own random generator.
pub trait Workload: Send + Sync + 'static {
    fn next(&self, rng: &mut SmallRng) -> Call;
}

#[derive(Debug, Clone, Copy)]
pub struct LoadSettings {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Worker `w`'s own random generator, derived from the run's seed (the multiplication spreads
/// neighbouring workers apart and is meant to wrap).
pub fn worker_rng(seed: u64, w: usize) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A latency histogram in nanoseconds, from 1 µs to 2 minutes at 3 significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).context("creating a histogram")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

/// What one run measured.
pub struct LoadResult {
    pub all: Histogram<u64>,
    pub writes: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    /// How busy the machine was during the measured window.
    pub cpu: Option<Usage>,
    /// CPU seconds the server process used during the measured window.
    pub server_cpu_s: Option<f64>,
}

struct WorkerResult {
    all: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `workload` against `conns` at `settings.concurrency` in-flight requests: first for
/// the warm-up (not recorded), then for the measured duration. Requests that start in the
/// measured window are recorded, including the tail that finishes after it.
pub async fn run(
    conns: &[Conn],
    settings: LoadSettings,
    workload: Arc<dyn Workload>,
    seed: u64,
    server_pid: Option<u32>,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!conns.is_empty(), "no connection to drive");
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let deadline = measure_from + settings.duration;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = Snapshot::take();
        let server_before = server_pid.and_then(process_cpu_s);
        tokio::time::sleep_until(deadline.into()).await;
        let after = Snapshot::take();
        let server_after = server_pid.and_then(process_cpu_s);
        (
            before.zip(after).and_then(|(a, b)| a.until(&b)),
            server_before.zip(server_after).map(|(a, b)| b - a),
        )
    });
    let mut tasks = Vec::with_capacity(settings.concurrency);
    for w in 0..settings.concurrency.max(1) {
        let mut conn = conns[w % conns.len()].clone();
        let workload = workload.clone();
        let mut all = new_histogram()?;
        let mut writes = new_histogram()?;
        tasks.push(tokio::spawn(async move {
            let mut rng = worker_rng(seed, w);
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let call = workload.next(&mut rng);
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let outcome = conn.execute(call).await;
                if sent < measure_from {
                    continue;
                }
                let took = sent.elapsed();
                match outcome {
                    Ok(kind) => {
                        record(&mut all, took);
                        if kind == Kind::Write {
                            record(&mut writes, took);
                        }
                    }
                    Err(status) => {
                        errors += 1;
                        if first_error.is_none() {
                            first_error =
                                Some(format!("{:?}: {}", status.code(), status.message()));
                        }
                    }
                }
            }
            WorkerResult {
                all,
                writes,
                errors,
                first_error,
            }
        }));
    }
    let mut total = LoadResult {
        all: new_histogram()?,
        writes: new_histogram()?,
        errors: 0,
        first_error: None,
        measured: settings.duration,
        cpu: None,
        server_cpu_s: None,
    };
    for task in tasks {
        let part = task.await.context("load worker")?;
        total.all.add(&part.all).context("merging histograms")?;
        total
            .writes
            .add(&part.writes)
            .context("merging histograms")?;
        total.errors += part.errors;
        if total.first_error.is_none() {
            total.first_error = part.first_error;
        }
    }
    (total.cpu, total.server_cpu_s) = sampler.await.context("CPU sampler")?;
    Ok(total)
}

/// Sends `count` calls made by `make(i)` for i in 0..count, `concurrency` at a time, and
/// fails on the first error. Used to warm caches.
pub async fn run_all<F>(
    conns: &[Conn],
    concurrency: usize,
    count: usize,
    make: F,
) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Call + Send + Sync + 'static,
{
    anyhow::ensure!(!conns.is_empty(), "no connection to drive");
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let mut conn = conns[w % conns.len()].clone();
        let next = next.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), tonic::Status>(());
                }
                conn.execute(make(i)).await?;
            }
        }));
    }
    for task in tasks {
        task.await
            .context("warm-up worker")?
            .map_err(|s| anyhow::anyhow!("warm-up call failed: {:?}: {}", s.code(), s.message()))?;
    }
    Ok(started.elapsed())
}

/// Latency figures in milliseconds and throughput, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

const NS_PER_MS: f64 = 1_000_000.0;

impl Summary {
    pub fn of(h: &Histogram<u64>, errors: u64, measured: Duration) -> Summary {
        let seconds = measured.as_secs_f64();
        let q = |p: f64| h.value_at_quantile(p) as f64 / NS_PER_MS;
        Summary {
            requests: h.len(),
            errors,
            seconds,
            requests_per_s: if seconds > 0.0 {
                h.len() as f64 / seconds
            } else {
                0.0
            },
            mean_ms: h.mean() / NS_PER_MS,
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / NS_PER_MS,
        }
    }
}
