//! Rotation end to end: automatic and manual runs and schedules here,
//! approvals in `approvals`, reverts, failures and configuration checks in
//! `failures`, the server's own failures during a run in
//! `server_failures`; with the password rotator and the test rotator
//! (`src/bin/test-rotator.rs`) as `exec:fixture`.

mod approvals;
mod failures;
mod server_failures;

use rekey_tests::{Installation, Rekey, eventually};
use serde_json::Value;
use std::path::Path;

fn show(rekey: &Rekey, name: &str) -> Value {
    rekey
        .run(&["rotation", "show", name, "--output", "json"])
        .ok()
        .json()
}

fn step_states(rekey: &Rekey, name: &str) -> Vec<String> {
    show(rekey, name)["run"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_for_state(rekey: &Rekey, name: &str, state: &str) -> Value {
    eventually(&format!("run of {name} in state {state}"), || {
        let shown = show(rekey, name);
        (shown["run"]["state"] == state).then_some(shown)
    })
}

fn stages(rekey: &Rekey, name: &str) -> Value {
    let mut map = serde_json::Map::new();
    let described = rekey
        .run(&["describe", name, "--output", "json"])
        .ok()
        .json();
    for version in described["versions"].as_array().unwrap() {
        for stage in version["stages"].as_array().unwrap() {
            map.insert(
                stage.as_str().unwrap().to_owned(),
                version["version_id"].clone(),
            );
        }
    }
    Value::Object(map)
}

fn fixture(installation: &Installation) -> std::path::PathBuf {
    let state = installation.dir().join("rotator-state");
    std::fs::create_dir_all(&state).unwrap();
    installation.configure_fixture_rotator(&state);
    state
}

fn flag(state: &Path, name: &str) {
    std::fs::write(state.join(name), "").unwrap();
}

fn target(state: &Path) -> String {
    std::fs::read_to_string(state.join("target")).unwrap_or_default()
}

#[test]
fn automatic_password_rotation() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&[
            "create",
            "rot/db",
            "--value",
            r#"{"username":"orders","password":"old"}"#,
        ])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "rot/db",
            "--rotator",
            "password",
            "--field",
            "password",
            "--schedule",
            "rate(30 days)",
            "--length",
            "24",
            "--exclude-punctuation",
        ])
        .ok();
    let before = admin
        .run(&["get", "rot/db", "--output", "json"])
        .ok()
        .json();

    let run = admin
        .run(&["rotate", "rot/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(run["state"], "succeeded", "{run}");
    let current = admin
        .run(&["get", "rot/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(current["version_id"], run["version_id"]);
    let document: Value = serde_json::from_str(current["secret_string"].as_str().unwrap()).unwrap();
    assert_eq!(document["username"], "orders");
    let password = document["password"].as_str().unwrap();
    assert_eq!(password.len(), 24);
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    let previous = admin
        .run(&["get", "rot/db", "--stage", "PREVIOUS", "--output", "json"])
        .ok()
        .json();
    assert_eq!(previous["version_id"], before["version_id"]);
    let stage_map = stages(&admin, "rot/db");
    assert!(stage_map.get("PENDING").is_none(), "{stage_map}");

    let described = admin
        .run(&["describe", "rot/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["rotation_enabled"], true);
    assert!(described["last_rotated_at"].is_string(), "{described}");
    assert!(described["next_rotation_at"].is_string(), "{described}");
    let text = admin.run(&["describe", "rot/db"]).ok().stdout;
    assert!(
        text.contains("last rotated:") && text.contains("next rotation:"),
        "{text}"
    );
}

#[test]
fn manual_mode_runs_each_step_only_when_asked() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "man/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "man/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();

    let started = admin
        .run(&["rotate", "man/db", "--manual", "--output", "json"])
        .ok()
        .json();
    assert_eq!(started["state"], "waiting_for_operator");
    assert_eq!(
        step_states(&admin, "man/db"),
        ["waiting_for_operator", "pending", "pending", "pending"]
    );
    assert!(
        !state.join("calls").exists(),
        "nothing ran before it was asked"
    );
    // Asked for another run than the active one (one seen before, that has
    // ended since), step, retry and cancel change nothing.
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    for verb in ["step", "retry", "cancel"] {
        let stale = admin.run(&["rotation", verb, "man/db", "--run", "an-earlier-run"]);
        assert_eq!(stale.code, 1, "{verb}: {}", stale.stderr);
        assert!(
            stale
                .stderr
                .contains("run an-earlier-run of man/db is no longer the active one")
                && stale.stderr.contains("(FAILED_PRECONDITION)"),
            "{verb}: {}",
            stale.stderr
        );
    }
    assert_eq!(
        show(&admin, "man/db")["run"]["state"],
        "waiting_for_operator"
    );
    admin
        .run(&["rotation", "step", "man/db", "--run", &run_id])
        .ok();
    assert_eq!(
        step_states(&admin, "man/db"),
        ["done", "waiting_for_operator", "pending", "pending"]
    );

    let expected = [
        ["done", "done", "waiting_for_operator", "pending"],
        ["done", "done", "done", "waiting_for_operator"],
    ];
    for states in expected {
        admin.run(&["rotation", "step", "man/db"]).ok();
        assert_eq!(step_states(&admin, "man/db"), states);
        assert_eq!(admin.run(&["get", "man/db"]).ok().stdout, "v1\n");
    }
    let pending = admin
        .run(&["get", "man/db", "--stage", "PENDING"])
        .ok()
        .stdout;
    assert_eq!(target(&state), pending.trim_end());
    let done = admin
        .run(&["rotation", "step", "man/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(done["state"], "succeeded");
    assert_eq!(admin.run(&["get", "man/db"]).ok().stdout, pending);
    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    assert_eq!(
        calls
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect::<Vec<_>>(),
        ["createSecret", "setSecret", "testSecret"]
    );
    assert!(
        calls.lines().all(|line| line.ends_with("env=0")),
        "the environment is empty: {calls}"
    );
    let nothing = admin.run(&["rotation", "step", "man/db"]);
    assert!(
        nothing.stderr.contains("no active rotation run"),
        "{}",
        nothing.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_run_starts_by_itself_and_its_configurer_cannot_approve() {
    let installation = Installation::new();
    let _state = fixture(&installation);
    let alice = installation.issue("alice", &["approver", "operator"]);
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let (alice, bob) = (server.rekey(&alice), server.rekey(&bob));
    admin.run(&["create", "sched/db", "--value", "v1"]).ok();
    alice
        .run(&[
            "rotation",
            "configure",
            "sched/db",
            "--rotator",
            "exec:fixture",
            "--schedule",
            "rate(1 days)",
            "--approve",
            "finish",
            "--approvals",
            "1",
        ])
        .ok();
    assert_eq!(show(&admin, "sched/db")["run"], Value::Null);
    // The schedule comes due: move its time into the past.
    installation
        .execute_sql("UPDATE rotation_configs SET next_rotation_at = 1000")
        .await;
    let shown = wait_for_state(&admin, "sched/db", "awaiting_approval");
    assert_eq!(shown["run"]["scheduled"], true);
    assert_eq!(shown["run"]["initiator"], "alice");
    let own = alice.run(&["approve", "sched/db"]);
    assert!(
        own.stderr.contains("configured the scheduled rotation"),
        "{}",
        own.stderr
    );
    bob.run(&["approve", "sched/db"]).ok();
    wait_for_state(&admin, "sched/db", "succeeded");
    let described = admin
        .run(&["describe", "sched/db", "--output", "json"])
        .ok()
        .json();
    assert!(described["last_rotated_at"].is_string());
    let next = described["next_rotation_at"].as_str().unwrap().to_owned();
    assert!(
        next.as_str() > described["last_rotated_at"].as_str().unwrap(),
        "{described}"
    );
}

/// An `exec` command given as a relative path is the installation's, not
/// one relative to where rekeyd was started (the tests start it elsewhere).
#[test]
fn a_relative_rotator_command_is_the_installations() {
    let installation = Installation::new();
    fixture(&installation);
    let local = installation.dir().join("rotators");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::copy(rekey_tests::binary("test-rotator"), local.join("fixture")).unwrap();
    installation.edit_config(|table| {
        let fixture = table
            .get_mut("rotation")
            .and_then(|rotation| rotation.get_mut("exec"))
            .and_then(|exec| exec.get_mut("fixture"))
            .and_then(|fixture| fixture.as_table_mut())
            .unwrap();
        fixture.insert("command".into(), "rotators/fixture".into());
    });
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "rel/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "rel/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    admin.run(&["rotate", "rel/db"]).ok();
    let rotated = admin.run(&["get", "rel/db"]).ok().stdout;
    assert!(rotated.starts_with("rotated-"), "{rotated}");
}

/// A rotator that writes more than a pipe holds before it reads its input,
/// given more input than a pipe holds (a value of the largest size): both
/// go through. rekeyd wrote all the input before reading any output, and
/// the step hung until its time limit.
#[test]
fn a_rotator_may_talk_before_it_reads_a_large_input() {
    let installation = Installation::new();
    let state = fixture(&installation);
    installation.no_retries();
    flag(&state, "talk-first");
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let largest = "a".repeat(rekey_shared::value::MAX_VALUE_BYTES);
    admin
        .run_with_input(
            &["create", "big/db", "--value-file", "-"],
            largest.as_bytes(),
        )
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "big/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    admin.run(&["rotate", "big/db"]).ok();
    let rotated = admin.run(&["get", "big/db"]).ok().stdout;
    assert!(rotated.starts_with("rotated-"), "{rotated}");
}

/// A schedule whose window passed while no server ran moves on to its
/// next time without a run, and that move commits with its event
/// (`rotation:Schedule`, the window passed): it was a statement of its own
/// and an event after, so a failure between them moved the schedule with
/// nothing in the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_whose_window_passed_moves_on_with_its_event() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "window/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "window/db",
            "--rotator",
            "password",
            "--schedule",
            "rate(1 days)",
            "--window",
            "1h",
        ])
        .ok();
    drop(server);
    installation
        .execute_sql("UPDATE rotation_configs SET next_rotation_at = 1000")
        .await;
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let events = eventually("the schedule to move on", || {
        let log = admin
            .run(&["audit", "--resource", "window/db", "--output", "json"])
            .ok()
            .stdout;
        log.contains("rotation window passed").then_some(log)
    });
    let skipped: Vec<Value> = events
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &Value| event["action"] == "rotation:Schedule")
        .collect();
    assert_eq!(skipped.len(), 1, "{events}");
    let described = admin
        .run(&["describe", "window/db", "--output", "json"])
        .ok()
        .json();
    assert!(described["next_rotation_at"].is_string(), "{described}");
    assert_eq!(show(&admin, "window/db")["run"], Value::Null);
}
