//! What the machine allows, measured beside the server: how many fsyncs
//! per second its disk takes (a write-and-fsync loop on a file in the
//! directory the database lives in), and how much memory and CPU time a
//! process holds and has used.

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

/// The CPU time process `pid` has used so far, user and system, in
/// seconds (Linux: `/proc/PID/stat`, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_of(&format!("/proc/{pid}/stat"))
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
