//! `teamgate-bench soak`: a bounded run of mixed traffic against two teamgate replicas that
//! share a PostgreSQL and a Redis of the run's own, with faults injected on a schedule:
//! PostgreSQL stopped and restarted, Redis killed and restarted, one replica SIGKILLed and
//! restarted. Every window it records latency, errors by code and both replicas' RSS; it
//! checks every answer it can predict; at the end it reads back every acknowledged write.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::rngs::SmallRng;
use teamgate::domain::policy::Policy;
use teamgate::proto::teamgate::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};

use crate::load::{ACTOR_HEADER, Conn, new_histogram, worker_rng};
use crate::private::{OwnPostgres, OwnRedis};
use crate::scenarios::{PERMISSIONS, at_least_as_fresh, fully_consistent, minimize_latency};
use crate::seed::{self, Dataset};
use crate::server::{ServerProcess, TeamgateSpec, free_addr, memory_of};
use crate::soak_report::{
    Event, KILL_EVENT, Outcome, RssSample, SevereError, SoakReport, Verification, Window,
};

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Length of the run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds per reporting window.
    #[arg(long, default_value_t = 10)]
    pub window_secs: u64,
    /// Seconds per fault cycle (PostgreSQL outage, Redis restart, replica kill).
    #[arg(long, default_value_t = 120)]
    pub cycle_secs: u64,
    /// Run without injecting faults.
    #[arg(long)]
    pub no_faults: bool,
    /// Requests in flight, split over the two replicas.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Organizations in the data set.
    #[arg(long, default_value_t = 200)]
    pub orgs: usize,
    /// Members per organization.
    #[arg(long, default_value_t = 20)]
    pub members: usize,
    /// Directory for the report (`<date>-soak.md` and `.json`).
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// The teamgate binary (default: `teamgate` next to this binary).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The permission that tells a `manager` (allowed) from a `member` (denied).
const TELLS_ROLES_APART: &str = "members.manage";
const ROLES: [&str; 2] = ["member", "manager"];

fn other_role(role: &'static str) -> &'static str {
    if role == ROLES[0] { ROLES[1] } else { ROLES[0] }
}

struct Shared {
    dataset: Dataset,
    policy: Policy,
    started: Instant,
    window: Duration,
    deadline: Instant,
    owners: Vec<MetadataValue<Ascii>>,
}

impl Shared {
    fn expected(&self, member: usize, permission: &str) -> bool {
        let role = self.dataset.role(member % self.dataset.members);
        self.policy
            .built_in(role)
            .is_some_and(|r| r.permissions.contains_str(permission))
    }

    /// A request made by the org's owner.
    fn as_owner<T>(&self, org: usize, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(ACTOR_HEADER, self.owners[org].clone());
        request
    }

    fn window_of(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.started).as_nanos() / self.window.as_nanos()) as usize
    }
}

/// What one window saw from one worker.
struct WindowStats {
    latency: Histogram<u64>,
    reads_ok: u64,
    errors: BTreeMap<String, u64>,
}

/// Readers only ask cached questions; writers change data and ask `fully_consistent` ones.
/// Separate pools, as in a real deployment, so a database outage that stalls the writers
/// shows whether the readers keep being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Reader,
    Writer,
}

/// A member whose role the soak flips: the last acknowledged role and the attempts since,
/// which may or may not have committed (an error does not say).
struct Toggle {
    acked: &'static str,
    unacked: Vec<&'static str>,
    next: &'static str,
}

#[derive(Default)]
struct WorkerLog {
    windows: Vec<Option<WindowStats>>,
    wrong: u64,
    wrong_examples: Vec<String>,
    toggles: HashMap<usize, Toggle>,
    role_writes: u64,
    invitations: Vec<(usize, String, String)>,
    unacked_invitations: Vec<(usize, String)>,
    /// The first message seen per "<replica> <code>".
    error_examples: BTreeMap<String, String>,
    /// INTERNAL and UNKNOWN answers, with when they came.
    severe: Vec<SevereError>,
}

struct Worker {
    id: usize,
    pool: Pool,
    replica: &'static str,
    conn: Conn,
    rng: SmallRng,
    shared: Arc<Shared>,
    own_orgs: Vec<usize>,
    log: WorkerLog,
    sent_invitations: usize,
    /// Set after UNAVAILABLE (or a cut connection): like a gRPC client's retry policy, the
    /// worker waits 20 ms instead of spinning on instant failures.
    back_off: bool,
}

impl Worker {
    /// Records one call sent at `sent`; a reader's answers also count as reads.
    fn record(&mut self, sent: Instant, outcome: Result<(), &tonic::Status>) -> anyhow::Result<()> {
        let read = self.pool == Pool::Reader;
        let w = self.shared.window_of(sent);
        if self.log.windows.len() <= w {
            self.log.windows.resize_with(w + 1, || None);
        }
        let stats = match &mut self.log.windows[w] {
            Some(s) => s,
            slot => slot.insert(WindowStats {
                latency: new_histogram()?,
                reads_ok: 0,
                errors: BTreeMap::new(),
            }),
        };
        match outcome {
            Ok(()) => {
                stats.latency.saturating_record(
                    u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX),
                );
                stats.reads_ok += u64::from(read);
            }
            Err(status) => {
                let key = format!("{} {:?}", self.replica, status.code());
                *stats.errors.entry(key.clone()).or_default() += 1;
                let code = status.code();
                if matches!(code, tonic::Code::Internal | tonic::Code::Unknown)
                    && self.log.severe.len() < 100
                {
                    self.log.severe.push(SevereError {
                        t_s: sent
                            .saturating_duration_since(self.shared.started)
                            .as_secs_f64(),
                        replica: self.replica.to_owned(),
                        code: format!("{code:?}"),
                        message: status.message().chars().take(200).collect(),
                    });
                }
                self.log
                    .error_examples
                    .entry(key)
                    .or_insert_with(|| status.message().chars().take(200).collect());
                self.back_off = matches!(
                    code,
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                );
            }
        }
        Ok(())
    }

    fn wrong(&mut self, what: String) {
        self.log.wrong += 1;
        if self.log.wrong_examples.len() < 10 {
            self.log.wrong_examples.push(what);
        }
    }

    fn stable_member(&mut self) -> usize {
        // Neither the owner (0) nor the toggled last member: roles that never change.
        let ds = &self.shared.dataset;
        let org = self.rng.random_range(0..ds.orgs.len());
        org * ds.members + self.rng.random_range(1..ds.members - 1)
    }

    fn permission(&mut self) -> &'static str {
        PERMISSIONS[self.rng.random_range(0..PERMISSIONS.len())]
    }

    async fn check(&mut self, consistency: Option<pb::Consistency>) -> anyhow::Result<()> {
        let member = self.stable_member();
        let permission = self.permission();
        let (org, user) = self.shared.dataset.member(member);
        let sent = Instant::now();
        let answer = self
            .conn
            .authz
            .check(pb::CheckRequest {
                org_id: org.to_string(),
                user_id: user.to_string(),
                permission: permission.to_owned(),
                consistency,
            })
            .await
            .map(|r| r.into_inner().allowed);
        self.record(sent, answer.as_ref().map(|_| ()))?;
        if let Ok(allowed) = answer
            && allowed != self.shared.expected(member, permission)
        {
            self.wrong(format!(
                "Check {user} {permission} in {org}: allowed={allowed}"
            ));
        }
        Ok(())
    }

    async fn batch(&mut self) -> anyhow::Result<()> {
        let picks: Vec<(usize, &'static str)> = (0..20)
            .map(|_| (self.stable_member(), self.permission()))
            .collect();
        let items = picks
            .iter()
            .map(|&(m, p)| {
                let (org, user) = self.shared.dataset.member(m);
                pb::CheckItem {
                    org_id: org.to_string(),
                    user_id: user.to_string(),
                    permission: p.to_owned(),
                }
            })
            .collect();
        let sent = Instant::now();
        let answer = self
            .conn
            .authz
            .batch_check(pb::BatchCheckRequest {
                items,
                consistency: minimize_latency(),
            })
            .await
            .map(|r| r.into_inner().results);
        self.record(sent, answer.as_ref().map(|_| ()))?;
        if let Ok(results) = answer {
            if results.len() != picks.len() {
                self.wrong(format!(
                    "BatchCheck: {} results for {} items",
                    results.len(),
                    picks.len()
                ));
                return Ok(());
            }
            for (r, &(m, p)) in results.iter().zip(&picks) {
                if r.allowed != self.shared.expected(m, p) {
                    self.wrong(format!("BatchCheck member {m} {p}: allowed={}", r.allowed));
                }
            }
        }
        Ok(())
    }

    /// Flips an own org's last member between member and manager, then asks, at least as
    /// fresh as the write, whether the new role shows.
    async fn toggle(&mut self) -> anyhow::Result<()> {
        let org = self.own_orgs[self.rng.random_range(0..self.own_orgs.len())];
        let state = self.log.toggles.entry(org).or_insert(Toggle {
            acked: ROLES[0],
            unacked: Vec::new(),
            next: ROLES[1],
        });
        let role = state.next;
        state.next = other_role(role);
        let ds = &self.shared.dataset;
        let (org_id, user_id) = (ds.orgs[org].to_string(), ds.toggled(org).to_string());
        let request = self.shared.as_owner(
            org,
            pb::UpdateMemberRoleRequest {
                org_id: org_id.clone(),
                user_id: user_id.clone(),
                role: role.to_owned(),
            },
        );
        let sent = Instant::now();
        let written = self.conn.team.update_member_role(request).await;
        self.record(sent, written.as_ref().map(|_| ()))?;
        let Some(state) = self.log.toggles.get_mut(&org) else {
            return Ok(());
        };
        let token = match written {
            Ok(r) => {
                state.acked = role;
                state.unacked.clear();
                self.log.role_writes += 1;
                r.into_inner().consistency_token
            }
            Err(_) => {
                state.unacked.push(role);
                return Ok(());
            }
        };
        let sent = Instant::now();
        let answer = self
            .conn
            .authz
            .check(pb::CheckRequest {
                org_id,
                user_id: user_id.clone(),
                permission: TELLS_ROLES_APART.to_owned(),
                consistency: at_least_as_fresh(&token),
            })
            .await
            .map(|r| r.into_inner().allowed);
        self.record(sent, answer.as_ref().map(|_| ()))?;
        if let Ok(allowed) = answer
            && allowed != (role == "manager")
        {
            self.wrong(format!(
                "Check after UpdateMemberRole({user_id} → {role}) at least as fresh: allowed={allowed}"
            ));
        }
        Ok(())
    }

    async fn invite(&mut self) -> anyhow::Result<()> {
        let org = self.own_orgs[self.rng.random_range(0..self.own_orgs.len())];
        self.sent_invitations += 1;
        let email = format!("soak-{}-{}@example.test", self.id, self.sent_invitations);
        let request = self.shared.as_owner(
            org,
            pb::InviteMemberRequest {
                org_id: self.shared.dataset.orgs[org].to_string(),
                email: email.clone(),
                first_name: "Soak".into(),
                last_name: format!("Worker {}", self.id),
                role: "member".into(),
            },
        );
        let sent = Instant::now();
        let answer = self.conn.team.invite_member(request).await;
        self.record(sent, answer.as_ref().map(|_| ()))?;
        match answer {
            Ok(r) => {
                let id = r.into_inner().invitation.map(|i| i.id).unwrap_or_default();
                self.log.invitations.push((org, id, email));
            }
            Err(_) => self.log.unacked_invitations.push((org, email)),
        }
        Ok(())
    }

    async fn run(mut self) -> anyhow::Result<WorkerLog> {
        while Instant::now() < self.shared.deadline {
            if std::mem::take(&mut self.back_off) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let roll: f64 = self.rng.random();
            match self.pool {
                Pool::Reader if roll < 0.85 => self.check(minimize_latency()).await?,
                Pool::Reader => self.batch().await?,
                Pool::Writer if roll < 0.40 => self.check(fully_consistent()).await?,
                Pool::Writer if roll < 0.75 => self.toggle().await?,
                Pool::Writer => self.invite().await?,
            }
        }
        Ok(self.log)
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[teamgate-bench soak] {}", msg.as_ref());
}

/// A process's RSS, or `None` once it has gone.
fn rss_mib(pid: u32) -> Option<f64> {
    memory_of(pid).ok().map(|m| m.rss_mib())
}

/// The replica the fault schedule kills and restarts, with its pid for the RSS sampler.
struct ReplicaB {
    process: Option<ServerProcess>,
    pid: Arc<AtomicU32>,
    restarts: usize,
}

struct Faults {
    postgres: Arc<OwnPostgres>,
    redis: Arc<Mutex<OwnRedis>>,
    b: ReplicaB,
    a_addr: std::net::SocketAddr,
    bin: PathBuf,
    spec_b: TeamgateSpec,
    work: PathBuf,
    started: Instant,
    events: Vec<Event>,
}

impl Faults {
    fn event(&mut self, what: &str, detail: String) {
        let t_s = self.started.elapsed().as_secs_f64();
        log(format!("{t_s:6.1} s  {what} {detail}"));
        self.events.push(Event {
            t_s,
            what: what.to_owned(),
            detail,
        });
    }

    async fn health_of_a(&self) -> String {
        let endpoint =
            match tonic::transport::Endpoint::from_shared(format!("http://{}", self.a_addr)) {
                Ok(e) => e.timeout(Duration::from_secs(2)),
                Err(e) => return format!("bad address: {e}"),
            };
        let Ok(channel) = endpoint.connect().await else {
            return "unreachable".into();
        };
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        match client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
        {
            Ok(r) => r.into_inner().status().as_str_name().to_owned(),
            Err(s) => format!("{:?}", s.code()),
        }
    }

    async fn until(&self, t: Duration) {
        tokio::time::sleep_until((self.started + t).into()).await;
    }

    async fn postgres_outage(&mut self, at: Duration, length: Duration) -> anyhow::Result<()> {
        self.until(at).await;
        let pg = self.postgres.clone();
        tokio::task::spawn_blocking(move || pg.down()).await??;
        self.event("postgres stopped", String::new());
        tokio::time::sleep(length.min(Duration::from_secs(4))).await;
        let health = self.health_of_a().await;
        self.event("replica A health during the outage:", health);
        self.until(at + length).await;
        let pg = self.postgres.clone();
        tokio::task::spawn_blocking(move || pg.up()).await??;
        self.event("postgres started", String::new());
        let back = Instant::now();
        while self.health_of_a().await != "SERVING" {
            anyhow::ensure!(
                back.elapsed() < Duration::from_secs(60),
                "replica A did not report SERVING within 60 s of PostgreSQL's return"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.event(
            "replica A SERVING again",
            format!("after {:.1} s", back.elapsed().as_secs_f64()),
        );
        Ok(())
    }

    async fn redis_restart(&mut self, at: Duration, length: Duration) -> anyhow::Result<()> {
        self.until(at).await;
        if let Ok(mut r) = self.redis.lock() {
            r.kill();
        }
        self.event("redis killed", String::new());
        self.until(at + length).await;
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || {
            redis
                .lock()
                .map_err(|_| anyhow::anyhow!("redis lock poisoned"))?
                .up()
        })
        .await??;
        self.event("redis started", String::new());
        Ok(())
    }

    async fn kill_replica_b(&mut self, at: Duration) -> anyhow::Result<()> {
        self.until(at).await;
        let Some(b) = self.b.process.take() else {
            return Ok(());
        };
        let addr = b.addr;
        b.stop();
        self.b.pid.store(0, Ordering::Relaxed);
        self.event(KILL_EVENT, String::new());
        self.b.restarts += 1;
        let spec = TeamgateSpec {
            name: format!("{}-{}", self.spec_b.name, self.b.restarts),
            ..self.spec_b.clone()
        };
        let mut b = ServerProcess::spawn_teamgate_on(&self.bin, &spec, addr, &self.work)?;
        let ready = b.wait_healthy(Duration::from_secs(60)).await?;
        self.b.pid.store(b.pid(), Ordering::Relaxed);
        self.b.process = Some(b);
        self.event(
            "replica B restarted",
            format!("SERVING after {:.1} s", ready.as_secs_f64()),
        );
        Ok(())
    }

    /// Per cycle: a PostgreSQL outage, a Redis restart, a replica kill. No fault starts in
    /// the run's last 90 seconds, so the end shows recovery.
    async fn run(mut self, duration: Duration, cycle: Duration) -> anyhow::Result<Faults> {
        let mut start = Duration::ZERO;
        while start + cycle.mul_f64(0.8) + Duration::from_secs(90) <= duration {
            self.postgres_outage(start + cycle.mul_f64(0.25), cycle.mul_f64(0.125))
                .await?;
            self.redis_restart(start + cycle.mul_f64(0.55), cycle.mul_f64(0.1))
                .await?;
            self.kill_replica_b(start + cycle.mul_f64(0.8)).await?;
            start += cycle;
        }
        Ok(self)
    }
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.members >= 3, "--members must be at least 3");
    anyhow::ensure!(
        args.concurrency >= 12,
        "--concurrency must be at least 12 (readers and writers on both replicas)"
    );
    anyhow::ensure!(
        args.orgs >= args.concurrency,
        "--orgs must be at least --concurrency (each writer writes to orgs of its own)"
    );
    let duration = Duration::try_from_secs_f64(args.minutes * 60.0)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--minutes must be more than 0")?;
    anyhow::ensure!(args.window_secs >= 1, "--window-secs must be at least 1");
    let bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("teamgate"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "no teamgate binary at {}: `cargo build --release --bin teamgate --bin teamgate-bench`",
        bin.display()
    );
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut machine = crate::machine::describe(&bin);
    let started_at = chrono::Utc::now();

    let work = std::env::temp_dir().join(format!("teamgate-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    log(format!("work dir {}", work.display()));
    let postgres = Arc::new(OwnPostgres::start(&work).context("starting PostgreSQL")?);
    let redis = OwnRedis::start(&work).context("starting Redis")?;
    log(format!(
        "PostgreSQL on port {}, Redis on port {}",
        postgres.port, redis.port
    ));
    let dataset = Dataset::generate(args.orgs, args.members, 0)?;
    let stats = seed::seed(&postgres.url(), &dataset).await?;
    log(format!("seeded {} rows", stats.rows));

    let spec = |name: &str| TeamgateSpec {
        name: name.to_owned(),
        database_url: postgres.url(),
        redis: Some((redis.url(), "soak".to_owned())),
        cache_max_entries: None,
        policy: None,
    };
    let mut a = ServerProcess::spawn_teamgate(&bin, &spec("replica-a"), &work)?;
    a.wait_healthy(Duration::from_secs(120)).await?;
    let spec_b = spec("replica-b");
    let mut b = ServerProcess::spawn_teamgate_on(&bin, &spec_b, free_addr()?, &work)?;
    b.wait_healthy(Duration::from_secs(120)).await?;
    log(format!("replicas on {} and {}", a.addr, b.addr));

    let owners = (0..dataset.orgs.len())
        .map(|o| MetadataValue::try_from(dataset.owner(o).to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let window = Duration::from_secs(args.window_secs);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        dataset,
        policy: Policy::embedded_default(),
        started,
        window,
        deadline: started + duration,
        owners,
    });

    let conn_a = Conn::open(a.addr).await?;
    let conn_b = Conn::open(b.addr).await?;
    // Alternate replicas; within each, about three in eight workers write.
    let pools: Vec<Pool> = (0..args.concurrency)
        .map(|id| {
            if (id / 2) % 8 >= 5 {
                Pool::Writer
            } else {
                Pool::Reader
            }
        })
        .collect();
    let writers: Vec<usize> = (0..args.concurrency)
        .filter(|&id| pools[id] == Pool::Writer)
        .collect();
    let mut workers = Vec::new();
    for (id, &pool) in pools.iter().enumerate() {
        let (replica, conn) = if id % 2 == 0 {
            ("A", conn_a.clone())
        } else {
            ("B", conn_b.clone())
        };
        // Each writer owns a share of the orgs, so the writes to one member are sequential
        // and "the last acknowledged role" means something.
        let own_orgs = match writers.iter().position(|&w| w == id) {
            Some(k) => (0..shared.dataset.orgs.len())
                .filter(|o| o % writers.len() == k)
                .collect(),
            None => Vec::new(),
        };
        let worker = Worker {
            id,
            pool,
            replica,
            conn,
            rng: worker_rng(args.seed, id),
            own_orgs,
            shared: shared.clone(),
            log: WorkerLog::default(),
            sent_invitations: 0,
            back_off: false,
        };
        workers.push(tokio::spawn(worker.run()));
    }

    let pid_a = a.pid();
    let pid_b = Arc::new(AtomicU32::new(b.pid()));
    let sampler = {
        let pid_b = pid_b.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval_at((started + window).into(), window);
            while Instant::now() < started + duration {
                tick.tick().await;
                let b = pid_b.load(Ordering::Relaxed);
                samples.push(RssSample {
                    t_s: started.elapsed().as_secs_f64(),
                    a_mib: rss_mib(pid_a),
                    b_mib: (b != 0).then(|| rss_mib(b)).flatten(),
                });
            }
            samples
        })
    };

    let redis = Arc::new(Mutex::new(redis));
    let faults = Faults {
        postgres: postgres.clone(),
        redis: redis.clone(),
        b: ReplicaB {
            process: Some(b),
            pid: pid_b,
            restarts: 0,
        },
        a_addr: a.addr,
        bin: bin.clone(),
        spec_b,
        work: work.clone(),
        started,
        events: Vec::new(),
    };
    let faults = if args.no_faults {
        faults
    } else {
        faults
            .run(duration, Duration::from_secs(args.cycle_secs))
            .await?
    };

    let mut logs = Vec::new();
    for w in workers {
        logs.push(w.await.context("soak worker")??);
    }
    let rss = sampler.await.context("RSS sampler")?;
    log("traffic stopped; reading back every acknowledged write");
    a.wait_healthy(Duration::from_secs(60)).await?;
    let verification = verify(&shared, &Conn::open(a.addr).await?, &logs).await?;
    let a_alive = a.memory().is_ok();
    a.stop();
    drop(faults.b.process);
    machine.load_average_end = crate::machine::load_average();

    let windows = merge_windows(&logs, window)?;
    let wrong_answers = logs.iter().map(|l| l.wrong).sum();
    let severe: Vec<SevereError> = logs.iter().flat_map(|l| l.severe.clone()).collect();
    let mut error_examples = BTreeMap::new();
    for l in &logs {
        for (k, v) in &l.error_examples {
            error_examples.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let report = SoakReport {
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command,
        machine,
        minutes: args.minutes,
        concurrency: args.concurrency,
        orgs: args.orgs,
        members: args.members,
        faults_injected: !args.no_faults,
        outcome: Outcome::of(
            &windows,
            &rss,
            &verification,
            (wrong_answers, &severe, &faults.events),
            a_alive,
        ),
        windows,
        rss,
        events: faults.events,
        error_examples,
        severe,
        verification,
        wrong_answers,
        wrong_examples: logs
            .iter()
            .flat_map(|l| l.wrong_examples.iter().cloned())
            .take(10)
            .collect(),
    };
    let (md, json) = report.write(&args.out, &started_at.format("%Y-%m-%d").to_string())?;
    println!("{}", report.markdown());
    log(format!("report: {} and {}", md.display(), json.display()));
    drop(postgres);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn merge_windows(logs: &[WorkerLog], window: Duration) -> anyhow::Result<Vec<Window>> {
    let n = logs.iter().map(|l| l.windows.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for w in 0..n {
        let mut latency = new_histogram()?;
        let mut reads_ok = 0;
        let mut errors = BTreeMap::new();
        for stats in logs.iter().filter_map(|l| l.windows.get(w)?.as_ref()) {
            latency.add(&stats.latency).context("merging histograms")?;
            reads_ok += stats.reads_ok;
            for (code, n) in &stats.errors {
                *errors.entry(code.clone()).or_default() += n;
            }
        }
        out.push(Window::of(w, window, &latency, reads_ok, errors));
    }
    Ok(out)
}

/// Reads back, through replica A, every invitation and role change the run was told had
/// committed.
async fn verify(shared: &Shared, conn: &Conn, logs: &[WorkerLog]) -> anyhow::Result<Verification> {
    let mut v = Verification::default();
    let mut team = conn.team.clone();
    let mut orgs: Vec<usize> = logs
        .iter()
        .flat_map(|l| {
            l.invitations
                .iter()
                .map(|i| i.0)
                .chain(l.unacked_invitations.iter().map(|i| i.0))
        })
        .collect();
    orgs.sort_unstable();
    orgs.dedup();
    // Every invitation of those orgs, by id and by email.
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut emails: HashMap<String, u32> = HashMap::new();
    for &org in &orgs {
        let mut page_token = String::new();
        loop {
            let request = shared.as_owner(
                org,
                pb::ListInvitationsRequest {
                    org_id: shared.dataset.orgs[org].to_string(),
                    status: None,
                    page_size: 100,
                    page_token: page_token.clone(),
                },
            );
            let page = team
                .list_invitations(request)
                .await
                .map_err(|s| anyhow::anyhow!("ListInvitations: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            for i in page.invitations {
                *ids.entry(i.id).or_default() += 1;
                *emails.entry(i.email).or_default() += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    for (_, id, email) in logs.iter().flat_map(|l| &l.invitations) {
        v.invitations_acknowledged += 1;
        let found = ids.get(id).copied().unwrap_or(0);
        let same_email = emails.get(email).copied().unwrap_or(0);
        if found == 0 {
            v.invitations_lost += 1;
        } else if found > 1 || same_email > 1 {
            v.invitations_duplicated += 1;
        }
    }
    for (_, email) in logs.iter().flat_map(|l| &l.unacked_invitations) {
        v.invitations_unacknowledged += 1;
        match emails.get(email).copied().unwrap_or(0) {
            0 => {}
            1 => v.unacknowledged_but_committed += 1,
            _ => v.invitations_duplicated += 1,
        }
    }
    for (&org, toggle) in logs.iter().flat_map(|l| &l.toggles) {
        v.members_toggled += 1;
        let request = shared.as_owner(
            org,
            pb::GetMemberRequest {
                org_id: shared.dataset.orgs[org].to_string(),
                user_id: shared.dataset.toggled(org).to_string(),
            },
        );
        let role = team
            .get_member(request)
            .await
            .map_err(|s| anyhow::anyhow!("GetMember: {:?}: {}", s.code(), s.message()))?
            .into_inner()
            .role;
        if role == toggle.acked {
            continue;
        }
        if toggle.unacked.iter().any(|r| *r == role) {
            v.roles_from_unacknowledged_writes += 1;
        } else {
            v.roles_lost += 1;
        }
    }
    v.role_writes_acknowledged = logs.iter().map(|l| l.role_writes).sum();
    Ok(v)
}
