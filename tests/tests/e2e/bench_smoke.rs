//! The benchmark (`tests/src/bin/bench/`) in its smoke mode, so that it
//! cannot rot: it runs against real servers and writes a report with every
//! cell of the load and the scale run measured (throughput, latency, CPU
//! time per call on both sides, calls per commit of the server's batches,
//! the share of reads the server answered from memory), and the plot.

use rekey_tests::binary;

#[test]
fn the_benchmark_runs_and_reports_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smoke.json");
    let output = std::process::Command::new(binary("bench"))
        .args(["--smoke", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let load = &report["load"];
    let mut cells = load["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 10, "{report}");
    assert!(load["fsync_loop_per_second"].as_f64().unwrap() > 0.0);
    assert!(
        load["fsync_loop_p99_ms"].as_f64().unwrap() >= load["fsync_loop_p50_ms"].as_f64().unwrap()
    );
    assert!(load["fsync_loop_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(load["server_rss_mib_idle"].as_f64().unwrap() > 0.0);
    let sizes = report["scale"]["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2, "{report}");
    for size in sizes {
        let size_cells = size["cells"].as_array().unwrap();
        assert_eq!(size_cells.len(), 7, "{size}");
        cells.extend(size_cells.iter().cloned());
    }
    for cell in &cells {
        assert!(cell["calls"].as_u64().unwrap() > 0, "{cell}");
        assert!(cell["p99_ms"].as_f64().unwrap() >= cell["p50_ms"].as_f64().unwrap());
        // Both sides work for every call (CPU time from /proc, in ticks).
        for side in ["server_cpu_us_per_call", "client_cpu_us_per_call"] {
            assert!(cell[side].as_f64().unwrap() > 0.0, "{side}: {cell}");
        }
        // Every call wakes at least one of the server's threads.
        let switches = cell["server_context_switches_per_call"].as_f64().unwrap();
        assert!(switches > 0.0, "{cell}");
        // Read from the server's metrics for every call that commits; the
        // ping commits nothing, so it has none.
        let per_commit = &cell["calls_per_commit"];
        if cell["call"] == "ping" {
            assert!(per_commit.is_null(), "{cell}");
        } else {
            assert!(per_commit.as_f64().unwrap() > 0.0, "{cell}");
        }
        // From the server's metrics, for the calls that read values: one
        // secret read over and over comes from memory.
        let from_memory = &cell["read_cache_hit_ratio"];
        match cell["call"].as_str().unwrap() {
            "get_one" => assert!(from_memory.as_f64().unwrap() > 0.5, "{cell}"),
            "get_random" | "get_working_set" => {
                assert!(
                    (0.0..=1.0).contains(&from_memory.as_f64().unwrap()),
                    "{cell}"
                );
            }
            _ => assert!(from_memory.is_null(), "{cell}"),
        }
    }
    let plot = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("rotate"),
        "{plot}"
    );
}
