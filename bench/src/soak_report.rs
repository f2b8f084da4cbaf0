//! The soak run's report: per-window latency, errors by code and RSS, the fault timeline,
//! the read-back of acknowledged writes, and the verdicts drawn from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::machine::Machine;

const NS_PER_MS: f64 = 1_000_000.0;

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub t_end_s: f64,
    pub ok: u64,
    pub requests_per_s: f64,
    /// Answered reads (the reader pool's cached Checks and BatchChecks) per second.
    pub reads_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// "<replica> <code>" → count.
    pub errors: BTreeMap<String, u64>,
}

impl Window {
    pub fn of(
        index: usize,
        length: Duration,
        latency: &Histogram<u64>,
        reads_ok: u64,
        errors: BTreeMap<String, u64>,
    ) -> Window {
        let q = |p: f64| latency.value_at_quantile(p) as f64 / NS_PER_MS;
        Window {
            t_end_s: (index as f64 + 1.0) * length.as_secs_f64(),
            ok: latency.len(),
            requests_per_s: latency.len() as f64 / length.as_secs_f64(),
            reads_per_s: reads_ok as f64 / length.as_secs_f64(),
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            max_ms: latency.max() as f64 / NS_PER_MS,
            errors,
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    pub t_s: f64,
    /// Replica A runs the whole time.
    pub a_mib: Option<f64>,
    /// Replica B is killed and restarted by the fault schedule.
    pub b_mib: Option<f64>,
}

/// An INTERNAL or UNKNOWN answer.
#[derive(Debug, Clone, Serialize)]
pub struct SevereError {
    pub t_s: f64,
    pub replica: String,
    pub code: String,
    pub message: String,
}

/// How long after replica B is SIGKILLed its clients may see the cut connections as UNKNOWN
/// (tonic's code for a transport error mid-call): the kill, not teamgate, answered those.
const KILL_GRACE_S: f64 = 3.0;

impl SevereError {
    fn caused_by_a_kill(&self, events: &[Event]) -> bool {
        self.replica == "B"
            && events
                .iter()
                .any(|e| e.what == KILL_EVENT && (self.t_s - e.t_s).abs() <= KILL_GRACE_S)
    }
}

pub const KILL_EVENT: &str = "replica B SIGKILLed";

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t_s: f64,
    pub what: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    pub invitations_acknowledged: u64,
    /// Acknowledged but absent afterwards.
    pub invitations_lost: u64,
    /// An invitation stored twice, or two invitations for one email the run sent once.
    pub invitations_duplicated: u64,
    /// Answered with an error (the outcome unknown to the caller).
    pub invitations_unacknowledged: u64,
    /// Of those, the ones that had committed all the same (allowed: the error came after).
    pub unacknowledged_but_committed: u64,
    pub role_writes_acknowledged: u64,
    pub members_toggled: u64,
    /// Members whose final role is neither the last acknowledged one nor one attempted after.
    pub roles_lost: u64,
    /// Members whose final role came from a write that answered with an error.
    pub roles_from_unacknowledged_writes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub requests_ok: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub p99_ms_first_half_median: f64,
    pub p99_ms_second_half_median: f64,
    pub rss_a_first_mib: f64,
    pub rss_a_last_mib: f64,
    pub rss_a_max_mib: f64,
    /// Least-squares slope of replica A's RSS over the second half of the run.
    pub rss_a_slope_mib_per_min_second_half: f64,
    pub lost_writes: u64,
    pub wrong_answers: u64,
    /// INTERNAL/UNKNOWN answers not explained by a replica being killed mid-call.
    pub unexplained_severe_errors: u64,
    /// The lowest reads/s of a window that overlaps a PostgreSQL outage, and the median
    /// reads/s of all windows.
    pub reads_per_s_worst_during_postgres_outage: f64,
    pub reads_per_s_median: f64,
    pub replica_a_alive_at_end: bool,
    pub verdicts: Vec<String>,
    pub passed: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Above this, replica A's RSS is said to grow over the second half of the run.
const RSS_GROWTH_LIMIT_MIB_PER_MIN: f64 = 0.5;

/// The share of the median read rate the reader pool must keep during a PostgreSQL outage.
const READS_DURING_OUTAGE_MIN: f64 = 0.10;

impl Outcome {
    pub fn of(
        windows: &[Window],
        rss: &[RssSample],
        v: &Verification,
        (wrong_answers, severe, events): (u64, &[SevereError], &[Event]),
        replica_a_alive_at_end: bool,
    ) -> Outcome {
        let mut errors_by_code = BTreeMap::new();
        for w in windows {
            for (code, n) in &w.errors {
                *errors_by_code.entry(code.clone()).or_default() += n;
            }
        }
        let half = windows.len() / 2;
        let p99 = |ws: &[Window]| median(ws.iter().map(|w| w.p99_ms).collect());
        let a: Vec<(f64, f64)> = rss
            .iter()
            .filter_map(|s| Some((s.t_s / 60.0, s.a_mib?)))
            .collect();
        let rss_slope = slope(&a[a.len() / 2..]);
        let lost_writes = v.invitations_lost + v.roles_lost;
        let mut verdicts = Vec::new();
        let mut passed = true;
        let mut judge = |ok: bool, text: String| {
            passed &= ok;
            verdicts.push(format!("{} {text}", if ok { "PASS" } else { "FAIL" }));
        };
        judge(
            lost_writes == 0 && v.invitations_duplicated == 0,
            format!(
                "no lost writes: {} of {} acknowledged invitations and {} of {} toggled members' roles missing; {} duplicated",
                v.invitations_lost,
                v.invitations_acknowledged,
                v.roles_lost,
                v.members_toggled,
                v.invitations_duplicated
            ),
        );
        judge(
            wrong_answers == 0,
            format!("no wrong answer: {wrong_answers} Check answers differed from the data"),
        );
        judge(
            rss_slope < RSS_GROWTH_LIMIT_MIB_PER_MIN,
            format!(
                "no RSS growth trend: replica A's RSS grew {rss_slope:.3} MiB/min over the second half (limit {RSS_GROWTH_LIMIT_MIB_PER_MIN})"
            ),
        );
        judge(
            replica_a_alive_at_end,
            "replica A (never killed) survived every fault".into(),
        );
        let unexplained = severe
            .iter()
            .filter(|e| !e.caused_by_a_kill(events))
            .count() as u64;
        judge(
            unexplained == 0,
            format!(
                "no INTERNAL or UNKNOWN answer from teamgate: {unexplained} (of {} seen; the rest are calls cut by the SIGKILL of replica B)",
                severe.len()
            ),
        );
        // Windows [t_end - len, t_end] that overlap an outage [stopped, started].
        let outages: Vec<(f64, f64)> = events
            .iter()
            .filter(|e| e.what == "postgres stopped")
            .filter_map(|stop| {
                let start = events
                    .iter()
                    .find(|e| e.what == "postgres started" && e.t_s > stop.t_s)?;
                Some((stop.t_s, start.t_s))
            })
            .collect();
        let length = windows.first().map_or(1.0, |w| w.t_end_s);
        let during: Vec<f64> = windows
            .iter()
            .filter(|w| {
                outages
                    .iter()
                    .any(|&(a, b)| w.t_end_s - length < b && w.t_end_s > a)
            })
            .map(|w| w.reads_per_s)
            .collect();
        let reads_median = median(windows.iter().map(|w| w.reads_per_s).collect());
        let reads_worst = during.iter().copied().fold(f64::INFINITY, f64::min);
        let reads_worst = if reads_worst.is_finite() {
            reads_worst
        } else {
            0.0
        };
        // Not all reads can be answered during an outage: a subject whose org changed since it
        // was cached needs the database (with the default write mix about half of them at any
        // moment), and those fail at once. What must not happen is the readers stalling.
        if !outages.is_empty() {
            judge(
                reads_worst >= READS_DURING_OUTAGE_MIN * reads_median,
                format!(
                    "cached reads kept answering while PostgreSQL was down: {reads_worst:.0} reads/s in the worst outage window, {reads_median:.0} median (limit: {:.0}% of the median)",
                    READS_DURING_OUTAGE_MIN * 100.0
                ),
            );
        }
        Outcome {
            requests_ok: windows.iter().map(|w| w.ok).sum(),
            errors_by_code,
            p99_ms_first_half_median: p99(&windows[..half]),
            p99_ms_second_half_median: p99(&windows[half..]),
            rss_a_first_mib: a.first().map_or(0.0, |p| p.1),
            rss_a_last_mib: a.last().map_or(0.0, |p| p.1),
            rss_a_max_mib: a.iter().map(|p| p.1).fold(0.0, f64::max),
            rss_a_slope_mib_per_min_second_half: rss_slope,
            lost_writes,
            wrong_answers,
            unexplained_severe_errors: unexplained,
            reads_per_s_worst_during_postgres_outage: reads_worst,
            reads_per_s_median: reads_median,
            replica_a_alive_at_end,
            verdicts,
            passed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub started_at: String,
    pub finished_at: String,
    pub command: String,
    pub machine: Machine,
    pub minutes: f64,
    pub concurrency: usize,
    pub orgs: usize,
    pub members: usize,
    pub faults_injected: bool,
    pub outcome: Outcome,
    pub windows: Vec<Window>,
    pub rss: Vec<RssSample>,
    pub events: Vec<Event>,
    /// The first message seen per "<replica> <code>".
    pub error_examples: BTreeMap<String, String>,
    pub severe: Vec<SevereError>,
    pub verification: Verification,
    pub wrong_answers: u64,
    pub wrong_examples: Vec<String>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.1}"))
}

impl SoakReport {
    pub fn write(&self, dir: &Path, date: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join(format!("{date}-soak.md"));
        let json = dir.join(format!("{date}-soak.json"));
        std::fs::write(&md, self.markdown())?;
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        Ok((md, json))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let o = &self.outcome;
        let m = &self.machine;
        let _ = writeln!(
            md,
            "# teamgate soak run — {} min, {} in flight, {} orgs × {} members\n",
            self.minutes, self.concurrency, self.orgs, self.members
        );
        let _ = writeln!(
            md,
            "Started {}, finished {}. Command: `{}`\n",
            self.started_at, self.finished_at, self.command
        );
        let _ = writeln!(
            md,
            "Machine: {} × {}, {} MiB, kernel {}, {}; load average {} → {}; teamgate {} ({}{}), {} build.\n",
            m.nproc,
            m.cpu_model,
            m.memory_total_mib,
            m.kernel,
            m.rustc,
            m.load_average_start,
            m.load_average_end,
            m.server_version,
            m.git_commit,
            if m.git_dirty {
                ", uncommitted changes"
            } else {
                ""
            },
            if m.release_build { "release" } else { "debug" }
        );
        let _ = writeln!(
            md,
            "Two replicas (A, B) on one PostgreSQL and one Redis of the run's own, half the workers \
             on each. Readers (5 of every 8 workers): 85% Check (minimize_latency), 15% BatchCheck of \
             20. Writers (3 of 8, each owning a share of the orgs): 40% Check (fully_consistent), \
             35% UpdateMemberRole followed by a Check at_least_as_fresh as it, 25% InviteMember. \
             After UNAVAILABLE or a cut connection a worker waits 20 ms, as a gRPC retry policy \
             would. Faults: {}.\n",
            if self.faults_injected {
                "per cycle, PostgreSQL stopped (fast shutdown) and restarted, Redis SIGKILLed and \
                 restarted, replica B SIGKILLed and restarted on the same port"
            } else {
                "none"
            }
        );
        let _ = writeln!(md, "## Verdicts\n");
        for v in &o.verdicts {
            let _ = writeln!(md, "- {v}");
        }
        let _ = writeln!(
            md,
            "\n{} requests answered OK. p99 (median of windows): {:.2} ms in the first half, {:.2} ms \
             in the second. Replica A RSS: {:.1} MiB first sample, {:.1} MiB last, {:.1} MiB max.\n",
            o.requests_ok,
            o.p99_ms_first_half_median,
            o.p99_ms_second_half_median,
            o.rss_a_first_mib,
            o.rss_a_last_mib,
            o.rss_a_max_mib
        );
        let _ = writeln!(md, "## Errors by replica and code\n");
        if o.errors_by_code.is_empty() {
            let _ = writeln!(md, "None.\n");
        } else {
            let _ = writeln!(
                md,
                "| replica code | count | first message |\n|---|---:|---|"
            );
            for (code, n) in &o.errors_by_code {
                let example = self
                    .error_examples
                    .get(code)
                    .map(|m| m.replace('|', "\\|"))
                    .unwrap_or_default();
                let _ = writeln!(md, "| {code} | {n} | {example} |");
            }
            let _ = writeln!(md);
        }
        let v = &self.verification;
        let _ = writeln!(md, "## Writes read back\n");
        let _ = writeln!(
            md,
            "- Invitations: {} acknowledged, {} lost, {} duplicated; {} answered with an error, of which {} had committed.",
            v.invitations_acknowledged,
            v.invitations_lost,
            v.invitations_duplicated,
            v.invitations_unacknowledged,
            v.unacknowledged_but_committed
        );
        let _ = writeln!(
            md,
            "- Role changes: {} acknowledged over {} members; {} members' final role lost, {} holding a role from a write that answered with an error.",
            v.role_writes_acknowledged,
            v.members_toggled,
            v.roles_lost,
            v.roles_from_unacknowledged_writes
        );
        let _ = writeln!(md, "- Wrong Check answers: {}.", self.wrong_answers);
        for e in &self.wrong_examples {
            let _ = writeln!(md, "  - {e}");
        }
        let _ = writeln!(md, "\n## Faults\n");
        if self.events.is_empty() {
            let _ = writeln!(md, "None injected.");
        } else {
            let _ = writeln!(md, "| t (s) | event |\n|---:|---|");
            for e in &self.events {
                let _ = writeln!(md, "| {:.1} | {} {} |", e.t_s, e.what, e.detail);
            }
        }
        let _ = writeln!(
            md,
            "\n## Timeline\n\nOK req/s counts every answered call; reads/s only the reader pool's cached Checks and BatchChecks.\n\n| t (s) | OK req/s | reads/s | p50 ms | p99 ms | max ms | errors | RSS A MiB | RSS B MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for w in &self.windows {
            let sample = self.rss.iter().min_by(|x, y| {
                (x.t_s - w.t_end_s)
                    .abs()
                    .total_cmp(&(y.t_s - w.t_end_s).abs())
            });
            let _ = writeln!(
                md,
                "| {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} | {} |",
                w.t_end_s,
                w.requests_per_s,
                w.reads_per_s,
                w.p50_ms,
                w.p99_ms,
                w.max_ms,
                w.error_count(),
                opt(sample.and_then(|s| s.a_mib)),
                opt(sample.and_then(|s| s.b_mib))
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        let flat = [(0.0, 5.0), (1.0, 6.0), (2.0, 5.0), (3.0, 6.0), (4.0, 5.0)];
        assert!(slope(&flat).abs() < 0.2);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }

    #[test]
    fn lost_writes_and_wrong_answers_fail_the_run() {
        let v = Verification {
            invitations_acknowledged: 3,
            invitations_lost: 1,
            ..Verification::default()
        };
        let o = Outcome::of(&[], &[], &v, (0, &[], &[]), true);
        assert!(!o.passed);
        assert_eq!(o.lost_writes, 1);
        let o = Outcome::of(&[], &[], &Verification::default(), (2, &[], &[]), true);
        assert!(!o.passed);
        let o = Outcome::of(&[], &[], &Verification::default(), (0, &[], &[]), true);
        assert!(o.passed, "{:?}", o.verdicts);
    }

    #[test]
    fn unknown_errors_count_unless_a_kill_cut_the_call() {
        let kill = Event {
            t_s: 100.0,
            what: KILL_EVENT.into(),
            detail: String::new(),
        };
        let cut = SevereError {
            t_s: 100.5,
            replica: "B".into(),
            code: "Unknown".into(),
            message: "transport error".into(),
        };
        let own = SevereError {
            t_s: 50.0,
            ..cut.clone()
        };
        let events = [kill];
        let o = Outcome::of(
            &[],
            &[],
            &Verification::default(),
            (0, std::slice::from_ref(&cut), &events),
            true,
        );
        assert!(o.passed, "{:?}", o.verdicts);
        let o = Outcome::of(
            &[],
            &[],
            &Verification::default(),
            (0, &[cut, own], &events),
            true,
        );
        assert!(!o.passed);
        assert_eq!(o.unexplained_severe_errors, 1);
    }
}
