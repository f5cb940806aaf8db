//! The `rekey` binary's exit codes before it reaches a server. (These tests
//! also make `cargo test` build `rekey` for the end-to-end suite in `tests/`.)

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn rekey(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .env_remove("REKEY_IDENTITY")
        .env("REKEY_SERVER", "https://127.0.0.1:1")
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(rekey(&["get"]).status.code(), Some(2));
    assert_eq!(rekey(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        rekey(&["get", "x", "--stage", "A", "--version", "B"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn a_missing_identity_is_named() {
    let output = rekey(&["get", "app/db"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        "rekey: no identity: pass --identity FILE or set REKEY_IDENTITY\n"
    );
}

#[test]
fn help_lists_the_commands() {
    let output = rekey(&["--help"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for command in [
        "create", "get", "put", "describe", "list", "versions", "stage",
    ] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn completions_and_the_manual_come_from_the_flags_without_a_server() {
    for shell in ["bash", "zsh", "fish"] {
        let output = rekey(&["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        for subcommand in ["get", "rotation", "run", "audit", "approvals"] {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
    }
    // The bash script is valid bash.
    let script = rekey(&["completions", "bash"]).stdout;
    let path = std::env::temp_dir().join(format!("rekey-completion-{}.bash", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(checked.success());

    let man = rekey(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(page.contains(".TH rekey 1"), "{page}");
    assert!(page.contains("completions"));
    assert_eq!(rekey(&["completions", "tcsh"]).status.code(), Some(2));
}
