//! A rotator program for the end-to-end tests, run by rekeyd as
//! `exec:NAME`. It keeps its state in the directory given as its argument:
//! `target` is the "target system" (the value setSecret installed),
//! `calls` lists the steps it was asked for. Files steer it: `fail-STEP`
//! makes STEP fail (printing CURRENT to standard error, which rekeyd must
//! redact), `fail-revert` fails the revert, `hang-STEP` never finishes,
//! `garbage-createSecret` prints bytes that are not text, and `block-STEP`
//! holds STEP (after writing `blocked-STEP`, holding the process id of the
//! rekeyd that runs it) until the test removes it. With `escape`, a failure
//! also prints terminal escape sequences (a clipboard write, a forged line);
//! with `nul`, a NUL byte. With `talk-first`, it writes more than a pipe
//! holds to standard error before it reads its input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("the state directory"));
    if dir.join("talk-first").exists() {
        // More than a pipe holds, before reading any input.
        eprint!("{}", "x".repeat(70_000));
    }
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let document: serde_json::Value = serde_json::from_str(&input).unwrap();
    let step = document["step"].as_str().unwrap_or_default().to_owned();
    let revert = document["revert"].as_bool().unwrap_or(false);
    let current = document["current"].as_str().unwrap_or_default().to_owned();
    let pending = document["pending"].as_str().unwrap_or_default().to_owned();
    let env_count = std::env::vars_os().count();

    let mut calls = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls"))
        .unwrap();
    writeln!(calls, "{step} revert={revert} env={env_count}").unwrap();

    let flag = |name: &str| dir.join(name).exists();
    let block = format!("block-{step}");
    if flag(&block) {
        // Which rekeyd runs it: the test of replicas kills that one.
        let parent = std::os::unix::process::parent_id();
        std::fs::write(dir.join(format!("blocked-{step}")), parent.to_string()).unwrap();
        while flag(&block) {
            // The rekeyd that ran it was killed: an orphan must not finish
            // its step beside the run another server resumed.
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if flag(&format!("hang-{step}")) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if (revert && flag("fail-revert")) || (!revert && flag(&format!("fail-{step}"))) {
        if flag("nul") {
            eprint!("before\0after; ");
        }
        if flag("escape") {
            eprint!("\u{1b}]52;c;aGk=\u{7}\r\u{1b}[2K\nrotation succeeded\n");
        }
        eprintln!("cannot reach the target system; it still holds {current}");
        std::process::exit(1);
    }
    match step.as_str() {
        "createSecret" => {
            if flag("garbage-createSecret") {
                std::io::stdout()
                    .write_all(&[0xff, 0xfe, 0x00, 0x9f])
                    .unwrap();
                return;
            }
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            println!("rotated-{nanos}");
        }
        "setSecret" => std::fs::write(dir.join("target"), &pending).unwrap(),
        "testSecret" => {
            let installed = std::fs::read_to_string(dir.join("target")).unwrap_or_default();
            if installed != pending {
                eprintln!("the target does not hold the value under test");
                std::process::exit(1);
            }
        }
        other => {
            eprintln!("unknown step {other}");
            std::process::exit(2);
        }
    }
}
