//! The read-path benchmark (`tests/src/bin/bench.rs`) in its smoke mode, so
//! that it cannot rot: it runs against a real server and writes a report
//! with every cell measured.

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
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 8, "{report}");
    for cell in cells {
        assert!(cell["calls"].as_u64().unwrap() > 0, "{cell}");
        assert!(cell["p99_ms"].as_f64().unwrap() >= cell["p50_ms"].as_f64().unwrap());
    }
}
