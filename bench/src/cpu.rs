//! How busy the machine was during a row, and how much of that was someone else: the CPU
//! time of every process minus that of the system under test (teamgate, this load generator,
//! the no-op server, PostgreSQL, Redis). On a shared machine this says how far a row's
//! figures are from an idle box's.

use std::fs;

use serde::Serialize;

/// Process names that belong to the benchmark (as `/proc/<pid>/comm` shows them, cut to 15
/// characters by the kernel).
const OURS: [&str; 4] = ["teamgate", "teamgate-bench", "postgres", "redis-server"];

#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// All CPU time, idle included, in clock ticks.
    total: u64,
    /// CPU time not idle and not waiting for I/O.
    busy: u64,
    /// CPU time of the benchmark's processes.
    ours: u64,
}

/// Shares of the machine's CPU capacity during a window, in percent.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub busy_pct: f64,
    pub others_pct: f64,
}

fn machine_times() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(field).sum();
    let busy = total - field(3) - field(4);
    Some((total, busy))
}

/// utime + stime of one process, if its name is one of ours.
fn our_time(stat: &str) -> Option<u64> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    if !OURS.contains(&comm) {
        return None;
    }
    // Fields after the name: state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl Snapshot {
    pub fn take() -> Option<Snapshot> {
        let (total, busy) = machine_times()?;
        let mut ours = 0;
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some(t) = our_time(&stat)
            {
                ours += t;
            }
        }
        Some(Snapshot { total, busy, ours })
    }

    /// Usage between `self` (earlier) and `later`.
    pub fn until(&self, later: &Snapshot) -> Option<Usage> {
        let total = later.total.checked_sub(self.total)?;
        if total == 0 {
            return None;
        }
        let busy = later.busy.saturating_sub(self.busy);
        let ours = later.ours.saturating_sub(self.ours);
        let pct = |x: u64| x as f64 * 100.0 / total as f64;
        Some(Usage {
            busy_pct: pct(busy),
            others_pct: pct(busy.saturating_sub(ours)),
        })
    }
}

/// Ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user + system, all threads) one process has used so far.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::our_time;

    #[test]
    fn reads_our_processes_only() {
        let ours = "123 (teamgate) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0";
        assert_eq!(our_time(ours), Some(300));
        let pg = "9 (postgres) S 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(our_time(pg), Some(3));
        let other = "77 (rustc) R 1 2 3 4 5 6 7 8 9 10 900 100 0 0";
        assert_eq!(our_time(other), None);
        let tricky = "78 (a) b) R 1 2 3 4 5 6 7 8 9 10 900 100 0 0";
        assert_eq!(our_time(tricky), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let me = super::process_cpu_s(std::process::id()).unwrap();
        assert!(me >= 0.0);
    }

    #[test]
    fn snapshots_are_readable_here() {
        let a = super::Snapshot::take().unwrap();
        let b = super::Snapshot::take().unwrap();
        assert!(b.total >= a.total);
    }
}
