//! What the machine allows, measured beside the server: how many fsyncs
//! per second its disk takes (a write-and-fsync loop on a file in the
//! directory the database lives in) and how much memory a process holds.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Appends a small block and fsyncs it, back to back for `time`, in `dir`:
/// the ceiling of commits per second for anything that syncs each one.
pub fn fsyncs_per_second(dir: &Path, time: Duration) -> f64 {
    let path = dir.join("bench-fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = [0u8; 512];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < time {
        file.write_all(&block).unwrap();
        file.sync_all().unwrap();
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    rate
}

/// The resident set of process `pid`, in MiB (Linux: `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
