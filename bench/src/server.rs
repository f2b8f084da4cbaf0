//! Server processes under test: teamgate (the release binary next to this one) and the no-op
//! baseline (this binary re-executed with the hidden `noop-server` subcommand). Each runs as
//! its own process on a free loopback port, with its output in a log file.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A free port on 127.0.0.1 (bound, read, released; the server binds it right after).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// How to start one teamgate process.
#[derive(Debug, Clone)]
pub struct TeamgateSpec {
    pub name: String,
    pub database_url: String,
    /// Redis URL and key prefix.
    pub redis: Option<(String, String)>,
    pub cache_max_entries: Option<u64>,
    /// A policy file instead of the embedded default (the benchmark's adds Envoy routes).
    pub policy: Option<PathBuf>,
}

/// A child process that is killed when dropped.
pub struct ServerProcess {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

/// Memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Peak resident set size (VmHWM), in KiB.
    pub peak_rss_kib: u64,
    /// Current resident set size (VmRSS), in KiB.
    pub rss_kib: u64,
}

impl Memory {
    pub fn peak_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

impl ServerProcess {
    pub fn spawn_teamgate(
        bin: &Path,
        spec: &TeamgateSpec,
        log_dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        Self::spawn_teamgate_on(bin, spec, free_addr()?, log_dir)
    }

    /// Starts teamgate on a given address: a restarted replica comes back where its clients'
    /// channels reconnect to.
    pub fn spawn_teamgate_on(
        bin: &Path,
        spec: &TeamgateSpec,
        addr: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--database-url")
            .arg(&spec.database_url)
            .env("TEAMGATE__LOG__FORMAT", "json");
        if let Some((url, prefix)) = &spec.redis {
            cmd.arg("--redis-url")
                .arg(url)
                .env("TEAMGATE__REDIS__KEY_PREFIX", prefix);
        }
        if let Some(n) = spec.cache_max_entries {
            cmd.env("TEAMGATE__CACHE__MAX_ENTRIES", n.to_string());
        }
        if let Some(policy) = &spec.policy {
            cmd.env("TEAMGATE__POLICY", policy);
        }
        Self::spawn(cmd, &spec.name, addr, log_dir)
    }

    pub fn spawn_noop(log_dir: &Path) -> anyhow::Result<ServerProcess> {
        let addr = free_addr()?;
        let me = std::env::current_exe().context("locating teamgate-bench")?;
        let mut cmd = Command::new(me);
        cmd.arg("noop-server").arg("--listen").arg(addr.to_string());
        Self::spawn(cmd, "noop", addr, log_dir)
    }

    fn spawn(
        mut cmd: Command,
        name: &str,
        addr: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let log = log_dir.join(format!("{}.log", name.replace(['+', ' '], "-")));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting the {name} server"))?;
        Ok(ServerProcess {
            name: name.to_owned(),
            addr,
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the health service answers SERVING, failing early if the process exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2));
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the {} server exited ({status}) before serving; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(channel) = endpoint.connect().await {
                let mut health = HealthClient::new(channel);
                if let Ok(resp) = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    && resp.into_inner().status == ServingStatus::Serving as i32
                {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "the {} server did not report SERVING within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid())
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the process (SIGKILL: nothing it holds needs a clean shutdown).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Memory of any process, from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} missing from {path}"))
    };
    Ok(Memory {
        peak_rss_kib: field("VmHWM:")?,
        rss_kib: field("VmRSS:")?,
    })
}
