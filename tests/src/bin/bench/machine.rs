//! What the machine allows, measured beside the server: how fast its disk
//! takes a write and an fsync (a loop on a file in the directory the
//! database lives in), and how much memory and CPU time a process holds
//! and has used, and how often its threads were switched off a core.

use crate::load::percentile;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Blocks the size of a page written and fsynced in the loop.
const BLOCK: usize = 4096;
/// How many blocks the loop's file holds; it writes them over in turn.
const BLOCKS: u64 = 1024;

/// The bare fsync loop: a rate and each fsync's latency.
#[derive(Debug, Clone, Copy)]
pub struct FsyncLoop {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Writes a page-sized block and fsyncs it, back to back for `time`, in
/// `dir`: the ceiling of commits per second for anything that syncs each
/// one. The blocks are written over in a file already written and synced,
/// as SQLite's write-ahead log is once it starts over (an fsync that also
/// grows the file costs more).
pub fn fsync_loop(dir: &Path, time: Duration) -> FsyncLoop {
    let path = dir.join("bench-fsync-probe");
    let file = std::fs::File::create(&path).unwrap();
    let block = [0u8; BLOCK];
    for index in 0..BLOCKS {
        file.write_all_at(&block, index * BLOCK as u64).unwrap();
    }
    file.sync_all().unwrap();
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < time {
        let one = Instant::now();
        let offset = (latencies.len() as u64 % BLOCKS) * BLOCK as u64;
        file.write_all_at(&block, offset).unwrap();
        file.sync_all().unwrap();
        latencies.push(one.elapsed());
    }
    let per_second = latencies.len() as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    latencies.sort();
    FsyncLoop {
        per_second,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// The resident set of process `pid`, in MiB (Linux: `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The CPU time process `pid` has used so far, user and system, in
/// seconds (Linux: `/proc/PID/stat`, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_of(&format!("/proc/{pid}/stat"))
}

/// The context switches of every thread of process `pid` so far, given
/// up (waiting) and forced (Linux: `/proc/PID/task/*/status`). Steadier
/// than CPU time on a noisy machine: each hand-off between threads is one
/// or two, however fast the core that runs it.
pub fn context_switches(pid: u32) -> Option<f64> {
    let mut switches = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread that ends takes its count with it: a cell in which one
        // of the runtime's idle blocking threads ends counts a few low.
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(count) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += count.trim().parse::<f64>().ok()?;
            }
        }
    }
    Some(switches)
}

/// The CPU time this process has used so far, in seconds.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_of("/proc/self/stat")
}

fn cpu_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command's closing parenthesis start at the
    // third, the state; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / rustix::param::clock_ticks_per_second() as f64)
}
