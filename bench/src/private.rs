//! PostgreSQL and Redis servers of the soak run's own, on private ports in its work
//! directory, so it can stop and restart them without touching anyone else's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::server::free_addr;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// PostgreSQL refuses to run as root: as root, its tools run as the `postgres` user.
fn pg_command(tool: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A PostgreSQL cluster made with initdb in the work directory.
pub struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

impl OwnPostgres {
    /// The newest installed server version's binaries (Debian's layout).
    fn bin_dir() -> anyhow::Result<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL server binaries not found in /usr/lib/postgresql")?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|d| d.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
            .context("no initdb under /usr/lib/postgresql/*/bin")
    }

    pub fn start(work: &Path) -> anyhow::Result<OwnPostgres> {
        let bin = Self::bin_dir()?;
        let dir = work.join("postgres");
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run(chown, "chown")?;
        }
        let mut initdb = pg_command(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb")?;
        let pg = OwnPostgres {
            bin,
            dir,
            port: free_addr()?.port(),
        };
        pg.up()?;
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) -> anyhow::Result<()> {
        let mut ctl = pg_command(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                self.port,
                self.dir.display()
            ))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "start"]);
        run(ctl, "pg_ctl start")
    }

    /// A fast shutdown: open connections are cut, as when the database host goes away.
    pub fn down(&self) -> anyhow::Result<()> {
        let mut ctl = pg_command(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(ctl, "pg_ctl stop")
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// A Redis server without persistence, started as a child process.
pub struct OwnRedis {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start(work: &Path) -> anyhow::Result<OwnRedis> {
        let mut redis = OwnRedis {
            port: free_addr()?.port(),
            log: work.join("redis.log"),
            child: None,
        };
        redis.up()?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting redis-server (is Redis installed?)")?;
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL: the cache and every subscription vanish at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
