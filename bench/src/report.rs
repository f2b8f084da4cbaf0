//! The report: every figure as JSON, and the same as Markdown with the targets of issues 4
//! and 16.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::cpu::Usage;
use crate::lag::LagReport;
use crate::load::Summary;
use crate::machine::Machine;
use crate::server::Memory;

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub label: String,
    pub orgs: usize,
    pub members_per_org: usize,
    pub members_total: usize,
    /// Extra members seeded for the invalidation-lag test (kept out of the load scenarios).
    pub extra_members: usize,
    pub working_set: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub batch_size: usize,
    pub write_percent: f64,
    pub lag_iterations: usize,
    pub backends: Vec<String>,
    /// Members checked once (BatchCheck) before reading the server's peak RSS.
    pub rss_warm_members: usize,
    /// `cache.max_entries` given to the server; `None` means its default.
    pub cache_max_entries: Option<u64>,
    pub postgres_url: String,
    pub redis_url: String,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    #[serde(flatten)]
    pub summary: Summary,
    /// Decisions per second (items × requests/s) for BatchCheck; requests/s otherwise.
    pub decisions_per_s: f64,
    /// For the mixed run: the writes alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The machine's CPU use during the row; `others_pct` is what processes outside the
    /// benchmark (not teamgate, the load generator, PostgreSQL or Redis) took.
    pub cpu: Option<Usage>,
    /// Cores the server process used during the row (its CPU seconds over the row's).
    pub server_cores: Option<f64>,
    /// The server's CPU time per request, in µs.
    pub server_cpu_us_per_call: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Mean of the no-op runs before and after the cache-hit row.
    pub noop_requests_per_s: f64,
    pub noop_p99_ms: f64,
    /// teamgate's Check cache-hit requests/s over the no-op server's.
    pub throughput_ratio: f64,
    /// teamgate's Check cache-hit p99 over the no-op server's.
    pub p99_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    pub backend: String,
    pub seed_rows: u64,
    pub seed_s: f64,
    pub server_ready_s: f64,
    pub warm_s: f64,
    pub noop_before: Row,
    pub rows: Vec<Row>,
    pub noop_after: Row,
    pub ratios: Ratios,
    pub memory: Memory,
    pub rss_warm_s: f64,
}

impl BackendReport {
    pub fn row(&self, scenario: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario == scenario)
    }
}

pub const CHECK_CACHED: &str = "Check cache hit";
pub const CHECK_CONSISTENT: &str = "Check fully_consistent";
pub const MIXED: &str = "Mixed";
pub const CHECK_REDIS: &str = "Check Redis hit (L1 miss)";
pub const EXT_AUTHZ: &str = "ext_authz Check (Envoy)";

pub fn batch_name(size: usize) -> String {
    format!("BatchCheck {size}")
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Met } else { Verdict::Missed }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub backend: String,
    pub measured: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    pub finished_at: String,
    pub command: String,
    pub machine: Machine,
    pub params: Params,
    pub backends: Vec<BackendReport>,
    pub invalidation_lag: Option<LagReport>,
    pub targets: Vec<TargetResult>,
    pub notes: Vec<String>,
}

/// Issue 4's targets against what was measured.
pub fn evaluate(
    params: &Params,
    backends: &[BackendReport],
    lag: Option<&LagReport>,
) -> Vec<TargetResult> {
    let mut out = Vec::new();
    let batch = batch_name(params.batch_size);
    for b in backends {
        let r = &b.ratios;
        out.push(TargetResult {
            target: "Check cache hit: ≥ 0.7× the no-op server's requests/s".into(),
            backend: b.backend.clone(),
            measured: format!(
                "{:.2}× ({:.0} vs {:.0} req/s)",
                r.throughput_ratio,
                b.row(CHECK_CACHED)
                    .map_or(0.0, |x| x.summary.requests_per_s),
                r.noop_requests_per_s
            ),
            verdict: Verdict::of(r.throughput_ratio >= 0.7),
        });
        out.push(TargetResult {
            target: "Check cache hit: p99 ≤ 1.5× the no-op server's p99".into(),
            backend: b.backend.clone(),
            measured: format!(
                "{:.2}× ({:.3} vs {:.3} ms)",
                r.p99_ratio,
                b.row(CHECK_CACHED).map_or(0.0, |x| x.summary.p99_ms),
                r.noop_p99_ms
            ),
            verdict: Verdict::of(r.p99_ratio <= 1.5),
        });
        if let Some(row) = b.row(&batch) {
            let target = if params.batch_size == 100 {
                Verdict::of(row.decisions_per_s >= 1_000_000.0)
            } else {
                Verdict::NotMeasured
            };
            out.push(TargetResult {
                target: "BatchCheck of 100: ≥ 1,000,000 decisions/s".into(),
                backend: b.backend.clone(),
                measured: format!("{:.0} decisions/s", row.decisions_per_s),
                verdict: target,
            });
        }
        if b.backend.starts_with("postgres")
            && let Some(row) = b.row(CHECK_CONSISTENT)
        {
            out.push(TargetResult {
                target: "Check fully_consistent on PostgreSQL: p99 < 5 ms".into(),
                backend: b.backend.clone(),
                measured: format!("p99 {:.3} ms", row.summary.p99_ms),
                verdict: Verdict::of(row.summary.p99_ms < 5.0 && row.summary.errors == 0),
            });
        }
        let noop_cpu = [&b.noop_before, &b.noop_after]
            .iter()
            .filter_map(|r| r.server_cpu_us_per_call)
            .sum::<f64>()
            / 2.0;
        if let Some(cpu) = b.row(CHECK_CACHED).and_then(|r| r.server_cpu_us_per_call)
            && noop_cpu > 0.0
        {
            out.push(TargetResult {
                target: "Server CPU per cache-hit Check ≤ 2× the no-op server's per call".into(),
                backend: b.backend.clone(),
                measured: format!("{:.2}× ({cpu:.1} vs {noop_cpu:.1} µs/call)", cpu / noop_cpu),
                verdict: Verdict::of(cpu <= 2.0 * noop_cpu),
            });
        }
        if let Some(row) = b.row(CHECK_REDIS) {
            out.push(TargetResult {
                target: "Check from Redis (L1 miss, L2 hit): p99 ≤ 2 ms".into(),
                backend: b.backend.clone(),
                measured: format!(
                    "p99 {:.3} ms ({:.0} req/s)",
                    row.summary.p99_ms, row.summary.requests_per_s
                ),
                verdict: Verdict::of(row.summary.p99_ms <= 2.0 && row.summary.errors == 0),
            });
        }
        if let Some(row) = b.row(EXT_AUTHZ) {
            let ratio = row.summary.requests_per_s / r.noop_requests_per_s.max(1.0);
            out.push(TargetResult {
                target: "Envoy ext_authz Check: ≥ 0.5× the no-op server's requests/s".into(),
                backend: b.backend.clone(),
                measured: format!("{ratio:.2}× ({:.0} req/s)", row.summary.requests_per_s),
                verdict: Verdict::of(ratio >= 0.5 && row.summary.errors == 0),
            });
        }
        if let (Some(mixed), Some(pure)) = (
            b.rows.iter().find(|r| r.scenario.starts_with(MIXED)),
            b.row(CHECK_CACHED),
        ) {
            let ratio = mixed.summary.requests_per_s / pure.summary.requests_per_s.max(1.0);
            out.push(TargetResult {
                target: "Mixed (1% UpdateMemberRole): ≥ 0.8× the cache-hit row's requests/s".into(),
                backend: b.backend.clone(),
                measured: format!(
                    "{ratio:.2}× ({:.0} vs {:.0} req/s)",
                    mixed.summary.requests_per_s, pure.summary.requests_per_s
                ),
                verdict: Verdict::of(ratio >= 0.8),
            });
        }
        let large = params.orgs >= 100_000;
        out.push(TargetResult {
            target: "Peak RSS < 150 MB with 100,000 orgs loaded and caches warm".into(),
            backend: b.backend.clone(),
            measured: format!(
                "{:.1} MiB VmHWM ({} orgs × {})",
                b.memory.peak_mib(),
                params.orgs,
                params.members_per_org
            ),
            verdict: if large {
                Verdict::of(b.memory.peak_rss_kib as f64 * 1024.0 < 150_000_000.0)
            } else {
                Verdict::NotMeasured
            },
        });
    }
    if lag.is_none() && params.lag_iterations > 0 {
        for target in [
            "Cross-replica invalidation: p99 < 50 ms",
            "at_least_as_fresh: zero stale answers",
        ] {
            out.push(TargetResult {
                target: target.into(),
                backend: "postgres+redis ×2".into(),
                measured: "the test did not complete (see Notes)".into(),
                verdict: Verdict::NotMeasured,
            });
        }
    }
    if let Some(l) = lag {
        out.push(TargetResult {
            target: "Cross-replica invalidation: p99 < 50 ms".into(),
            backend: "postgres+redis ×2".into(),
            measured: format!(
                "p99 {:.3} ms after the removal returned ({:.3} ms after it was sent) over {} removals, {} timed out",
                l.after_return.p99_ms, l.after_send.p99_ms, l.iterations, l.timed_out
            ),
            verdict: Verdict::of(l.after_send.p99_ms < 50.0 && l.timed_out == 0),
        });
        out.push(TargetResult {
            target: "at_least_as_fresh: zero stale answers".into(),
            backend: "postgres+redis ×2".into(),
            measured: format!("{} stale of {}", l.fresh_stale_answers, l.fresh_checks),
            verdict: Verdict::of(l.fresh_stale_answers == 0),
        });
    }
    out
}

fn f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn row_line(md: &mut String, label: &str, row: &Row) {
    let s = &row.summary;
    let _ = writeln!(
        md,
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        thousands(s.requests as f64),
        thousands(s.requests_per_s),
        thousands(row.decisions_per_s),
        f(s.p50_ms, 3),
        f(s.p95_ms, 3),
        f(s.p99_ms, 3),
        f(s.p999_ms, 3),
        f(s.max_ms, 2),
        s.errors,
        row.cpu.map_or_else(
            || "?".to_owned(),
            |c| format!("{:.0}% / {:.0}%", c.busy_pct, c.others_pct)
        ),
        match (row.server_cpu_us_per_call, row.server_cores) {
            (Some(us), Some(cores)) => format!("{us:.1} ({cores:.2})"),
            _ => "?".to_owned(),
        }
    );
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let p = &self.params;
        let m = &self.machine;
        let _ = writeln!(
            md,
            "# teamgate load benchmark — {} ({} orgs × {} members)\n",
            p.label, p.orgs, p.members_per_org
        );
        let _ = writeln!(
            md,
            "Started {}, finished {}. Command: `{}`\n",
            self.started_at, self.finished_at, self.command
        );
        let _ = writeln!(md, "## Machine\n\n| | |\n|---|---|");
        let _ = writeln!(md, "| CPUs (nproc) | {} |", m.nproc);
        let _ = writeln!(md, "| CPU model | {} |", m.cpu_model);
        let _ = writeln!(md, "| memory | {} MiB |", m.memory_total_mib);
        let _ = writeln!(md, "| kernel | {} |", m.kernel);
        let _ = writeln!(md, "| rustc | {} |", m.rustc);
        let _ = writeln!(
            md,
            "| load average (1/5/15 min) | {} at start, {} at end |",
            m.load_average_start, m.load_average_end
        );
        let _ = writeln!(
            md,
            "| teamgate | {} ({}), commit {}{} |",
            m.server_version,
            if m.release_build { "release" } else { "DEBUG" },
            m.git_commit,
            if m.git_dirty {
                " with uncommitted changes"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "\nThe load generator (this process), the servers, PostgreSQL and Redis share these \
             CPUs.\n"
        );

        let _ = writeln!(md, "## Parameters\n\n| | |\n|---|---|");
        let _ = writeln!(
            md,
            "| data set | {} orgs × {} members = {} members (+{} extra for the lag test); plan `business`, one owner per org |",
            thousands(p.orgs as f64),
            p.members_per_org,
            thousands(p.members_total as f64),
            p.extra_members
        );
        let _ = writeln!(
            md,
            "| load | {} requests in flight over {} HTTP/2 connections, closed loop; {} s warm-up, then {} s measured per row |",
            p.concurrency, p.connections, p.warmup_s, p.duration_s
        );
        let _ = writeln!(
            md,
            "| cache-hit working set | {} subjects (org, user), each checked once before the row; permissions drawn from 6 |",
            thousands(p.working_set as f64)
        );
        let _ = writeln!(
            md,
            "| BatchCheck | {} items from the working set per request |",
            p.batch_size
        );
        let _ = writeln!(
            md,
            "| mixed | {}% UpdateMemberRole (an org's last member toggled member ↔ manager by its owner), the rest cache-hit Checks |",
            p.write_percent
        );
        let _ = writeln!(
            md,
            "| peak RSS | VmHWM of the server after all rows and after checking {} members once; cache.max_entries = {} |",
            thousands(p.rss_warm_members as f64),
            p.cache_max_entries
                .map_or_else(|| "server default".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(
            md,
            "| backends | {} (PostgreSQL `{}`, Redis `{}`) |",
            p.backends.join(", "),
            p.postgres_url,
            p.redis_url
        );

        let _ = writeln!(md, "\n## Results\n");
        for b in &self.backends {
            let _ = writeln!(md, "### {}\n", b.backend);
            let _ = writeln!(
                md,
                "Seeded {} rows in {:.1} s; server ready in {:.2} s; working set warmed in {:.2} s.\n",
                thousands(b.seed_rows as f64),
                b.seed_s,
                b.server_ready_s,
                b.warm_s
            );
            let _ = writeln!(
                md,
                "| scenario | requests | requests/s | decisions/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors | CPU busy / others | server µs/call (cores) |"
            );
            let _ = writeln!(
                md,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            row_line(&mut md, "no-op server (before)", &b.noop_before);
            let mut rows = b.rows.iter();
            if let Some(first) = rows.next() {
                row_line(&mut md, &first.scenario, first);
            }
            row_line(&mut md, "no-op server (after)", &b.noop_after);
            for r in rows {
                row_line(&mut md, &r.scenario, r);
                if let Some(w) = &r.writes {
                    let _ = writeln!(
                        md,
                        "| ↳ writes only | {} | {} | | {} | {} | {} | {} | {} | | | |",
                        thousands(w.requests as f64),
                        f(w.requests_per_s, 1),
                        f(w.p50_ms, 3),
                        f(w.p95_ms, 3),
                        f(w.p99_ms, 3),
                        f(w.p999_ms, 3),
                        f(w.max_ms, 2)
                    );
                }
            }
            let _ = writeln!(
                md,
                "\nCPU busy / others: the share of the machine's {} CPUs in use during the row, and \
                 the share used by processes outside the benchmark (teamgate, the load generator, \
                 PostgreSQL and Redis are the benchmark). Server µs/call: the server process's CPU \
                 time (user + system, all threads) per request during the row, and in brackets the \
                 cores it used; for BatchCheck a call is a request of all its items.",
                m.nproc
            );
            let r = &b.ratios;
            let _ = writeln!(
                md,
                "\nAgainst the no-op server (mean of before/after: {} req/s, p99 {:.3} ms): \
                 Check cache hit throughput **{:.2}×**, p99 **{:.2}×**.\n",
                thousands(r.noop_requests_per_s),
                r.noop_p99_ms,
                r.throughput_ratio,
                r.p99_ratio
            );
            let _ = writeln!(
                md,
                "Server peak RSS (VmHWM): **{:.1} MiB**; RSS at the end {:.1} MiB (after warming {} members in {:.1} s).\n",
                b.memory.peak_mib(),
                b.memory.rss_mib(),
                thousands(p.rss_warm_members as f64),
                b.rss_warm_s
            );
            for r in std::iter::once(&b.noop_before)
                .chain(&b.rows)
                .chain(std::iter::once(&b.noop_after))
            {
                if let Some(e) = &r.first_error {
                    let _ = writeln!(md, "- {}: first error: `{e}`", r.scenario);
                }
            }
        }

        if let Some(l) = &self.invalidation_lag {
            let _ = writeln!(
                md,
                "## Cross-replica invalidation (two teamgate processes, PostgreSQL + Redis)\n"
            );
            let _ = writeln!(
                md,
                "{} times: a member cached on replica B is removed on replica A (RemoveMember by the org's owner), \
                 then B is polled with minimize_latency Checks until it denies.\n",
                l.iterations
            );
            let _ = writeln!(
                md,
                "| measure | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|"
            );
            for (label, s) in [
                (
                    "B denies, after RemoveMember returned on A",
                    &l.after_return,
                ),
                ("B denies, after RemoveMember was sent to A", &l.after_send),
                ("RemoveMember on A", &l.remove),
                ("Check with at_least_as_fresh on B", &l.fresh_check),
            ] {
                let _ = writeln!(
                    md,
                    "| {label} | {} | {} | {} |",
                    f(s.p50_ms, 3),
                    f(s.p99_ms, 3),
                    f(s.max_ms, 3)
                );
            }
            let _ = writeln!(
                md,
                "\nAllowed answers from B after the removal had returned (the pub/sub window): {}; \
                 polls that timed out after {} ms: {}.\n\
                 With at_least_as_fresh = A's consistency_token, right after each of {} more removals: \
                 **{} stale answers**.\n",
                l.stale_minimize_latency_answers,
                l.poll_timeout_ms,
                l.timed_out,
                l.fresh_checks,
                l.fresh_stale_answers
            );
        }

        let _ = writeln!(md, "## Targets (issues 4 and 16)\n");
        let _ = writeln!(
            md,
            "| target | backend | measured | verdict |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                t.target,
                t.backend,
                t.measured,
                t.verdict.label()
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    /// Writes `<date>-<label>.md` and `.json` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, date: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("{date}-{}", self.params.label);
        let md = dir.join(format!("{stem}.md"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        let mut body = serde_json::to_string_pretty(self)?;
        body.push('\n');
        std::fs::write(&json, body).with_context(|| format!("writing {}", json.display()))?;
        Ok((md, json))
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }
}
