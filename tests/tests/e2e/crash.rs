//! Crash safety: the real rekeyd killed with SIGKILL during each step of a
//! run, then restarted: the run completes, with one new version, and
//! CURRENT stays readable throughout.

use rekey_tests::{Installation, Rekey, eventually};
use serde_json::Value;

fn show(rekey: &Rekey, name: &str) -> Value {
    rekey
        .run(&["rotation", "show", name, "--output", "json"])
        .ok()
        .json()
}

fn versions(rekey: &Rekey, name: &str) -> Vec<Value> {
    rekey
        .run(&["versions", name, "--all", "--output", "json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_server_killed_during_any_step_finishes_the_run_after_restart() {
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        let installation = Installation::new();
        let state = installation.dir().join("rotator-state");
        std::fs::create_dir_all(&state).unwrap();
        installation.configure_fixture_rotator(&state);
        let approver = installation.issue("bob", &["approver"]);
        let server = installation.serve();
        let admin = server.rekey(&installation.admin());
        admin.run(&["create", "crash/db", "--value", "v1"]).ok();
        let first = admin
            .run(&["get", "crash/db", "--output", "json"])
            .ok()
            .json();

        if step == "finishSecret" {
            // finishSecret runs no program: stop the run at its gate.
            admin
                .run(&[
                    "rotation",
                    "configure",
                    "crash/db",
                    "--rotator",
                    "exec:fixture",
                    "--approve",
                    "finish",
                    "--approvals",
                    "1",
                ])
                .ok();
            admin.run(&["rotate", "crash/db", "--no-wait"]).ok();
            eventually("the finish gate", || {
                (show(&admin, "crash/db")["run"]["state"] == "awaiting_approval").then_some(())
            });
        } else {
            admin
                .run(&[
                    "rotation",
                    "configure",
                    "crash/db",
                    "--rotator",
                    "exec:fixture",
                ])
                .ok();
            std::fs::write(state.join(format!("block-{step}")), "").unwrap();
            admin.run(&["rotate", "crash/db", "--no-wait"]).ok();
            eventually(&format!("the rotator blocked in {step}"), || {
                state.join(format!("blocked-{step}")).exists().then_some(())
            });
        }
        // CURRENT is readable in the middle of the run.
        assert_eq!(admin.run(&["get", "crash/db"]).ok().stdout, "v1\n");
        server.kill();

        // The step blocks again when the run resumes, so CURRENT is read
        // before the run can finish; then the step may go on.
        let server = installation.serve();
        let admin = server.rekey(&installation.admin());
        assert_eq!(
            admin.run(&["get", "crash/db"]).ok().stdout,
            "v1\n",
            "{step}: CURRENT after the crash"
        );
        let _ = std::fs::remove_file(state.join(format!("block-{step}")));
        if step == "finishSecret" {
            server.rekey(&approver).run(&["approve", "crash/db"]).ok();
        }
        let shown = eventually(&format!("the run interrupted in {step} to finish"), || {
            let shown = show(&admin, "crash/db");
            (shown["run"]["state"] == "succeeded").then_some(shown)
        });
        let all = versions(&admin, "crash/db");
        assert_eq!(all.len(), 2, "{step}: one new version only: {all:?}");
        let current = admin
            .run(&["get", "crash/db", "--output", "json"])
            .ok()
            .json();
        assert_eq!(current["version_id"], shown["run"]["version_id"], "{step}");
        assert!(
            current["secret_string"]
                .as_str()
                .unwrap()
                .starts_with("rotated-")
        );
        let previous = admin
            .run(&["get", "crash/db", "--stage", "PREVIOUS", "--output", "json"])
            .ok()
            .json();
        assert_eq!(previous["version_id"], first["version_id"], "{step}");
        assert!(
            all.iter().all(|v| !v["stages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "PENDING")),
            "{step}: {all:?}"
        );
        admin.run(&["audit", "verify"]).ok();
    }
}
