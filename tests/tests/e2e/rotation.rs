//! Rotation end to end: automatic and manual runs, approvals, reverts,
//! failures, schedules and crash safety, with the password rotator and the
//! test rotator (`src/bin/test-rotator.rs`) as `exec:fixture`.

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

    let expected = [
        ["done", "waiting_for_operator", "pending", "pending"],
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

#[test]
fn approvals_gate_steps() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let alice = installation.issue("alice", &["operator"]);
    let bob = installation.issue("bob", &["approver"]);
    let carol = installation.issue("carol", &["approver"]);
    let dave = installation.issue("dave", &["reader"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let (alice, bob, carol, dave) = (
        server.rekey(&alice),
        server.rekey(&bob),
        server.rekey(&carol),
        server.rekey(&dave),
    );
    admin.run(&["create", "gate/db", "--value", "v1"]).ok();
    alice
        .run(&[
            "rotation",
            "configure",
            "gate/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "set",
            "--approvals",
            "2",
        ])
        .ok();

    // The gate waits; the initiator's own approval is refused.
    admin.run(&["rotate", "gate/db", "--no-wait"]).ok();
    wait_for_state(&admin, "gate/db", "awaiting_approval");
    let own = admin.run(&["approve", "gate/db"]);
    assert!(
        own.stderr.contains("started this run") && own.stderr.contains("(PERMISSION_DENIED)"),
        "{}",
        own.stderr
    );
    let not_approver = dave.run(&["approve", "gate/db"]);
    assert!(
        not_approver.stderr.contains("(PERMISSION_DENIED)"),
        "{}",
        not_approver.stderr
    );
    // The approvals inbox shows it to approvers.
    let inbox = bob.run(&["approvals", "--output", "json"]).ok().json();
    assert_eq!(inbox[0]["name"], "gate/db");
    assert_eq!(
        admin.run(&["approvals", "--output", "json"]).ok().json(),
        serde_json::json!([])
    );

    // Two required approvals need two principals.
    bob.run(&["approve", "gate/db", "--comment", "looks right"])
        .ok();
    let twice = bob.run(&["approve", "gate/db"]);
    assert!(twice.stderr.contains("counts once"), "{}", twice.stderr);
    let shown = show(&admin, "gate/db");
    assert_eq!(shown["run"]["state"], "awaiting_approval");
    assert_eq!(shown["run"]["steps"][1]["approvals"], 1);
    assert!(
        !target(&state).starts_with("rotated-"),
        "setSecret ran without its approvals"
    );
    carol.run(&["approve", "gate/db"]).ok();
    wait_for_state(&admin, "gate/db", "succeeded");
    assert!(target(&state).starts_with("rotated-"));
    let approvals = show(&admin, "gate/db")["run"]["approvals"].clone();
    assert_eq!(approvals[0]["principal"], "bob");
    assert_eq!(approvals[0]["comment"], "looks right");

    // A rejection cancels, CURRENT unchanged.
    let current = admin.run(&["get", "gate/db"]).ok().stdout;
    admin.run(&["rotate", "gate/db", "--no-wait"]).ok();
    wait_for_state(&admin, "gate/db", "awaiting_approval");
    let no_comment = bob.run(&["reject", "gate/db", "--comment", " "]);
    assert!(
        no_comment.stderr.contains("needs a comment"),
        "{}",
        no_comment.stderr
    );
    bob.run(&["reject", "gate/db", "--comment", "not during the sale"])
        .ok();
    let rejected = wait_for_state(&admin, "gate/db", "rejected");
    assert!(
        rejected["run"]["end_reason"]
            .as_str()
            .unwrap()
            .contains("not during the sale")
    );
    assert_eq!(admin.run(&["get", "gate/db"]).ok().stdout, current);
    assert!(stages(&admin, "gate/db").get("PENDING").is_none());

    // An expired request fails the run.
    alice
        .run(&[
            "rotation",
            "configure",
            "gate/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "set",
            "--approvals",
            "1",
            "--approval-expiry",
            "1s",
        ])
        .ok();
    admin.run(&["rotate", "gate/db", "--no-wait"]).ok();
    let failed = wait_for_state(&admin, "gate/db", "failed");
    assert!(
        failed["run"]["end_reason"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{failed}"
    );
    assert_eq!(admin.run(&["get", "gate/db"]).ok().stdout, current);
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
    let url = format!("sqlite://{}", installation.database().display());
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE rotation_configs SET next_rotation_at = 1000")
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
    }
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

#[test]
fn a_run_ending_after_set_secret_reverts_the_target() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let bob = server.rekey(&bob);
    admin.run(&["create", "rev/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "rev/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "test",
            "--approvals",
            "1",
        ])
        .ok();

    // Rejected after setSecret installed the pending value: CURRENT goes back.
    admin.run(&["rotate", "rev/db", "--no-wait"]).ok();
    wait_for_state(&admin, "rev/db", "awaiting_approval");
    assert!(target(&state).starts_with("rotated-"), "setSecret ran");
    bob.run(&["reject", "rev/db", "--comment", "no"]).ok();
    let ended = wait_for_state(&admin, "rev/db", "rejected");
    assert_eq!(target(&state), "v1");
    assert_eq!(ended["run"]["steps"][2]["state"], "reverted", "{ended}");
    assert!(
        std::fs::read_to_string(state.join("calls"))
            .unwrap()
            .contains("setSecret revert=true")
    );

    // A failing step after setSecret: retries, gives up, reverts.
    admin
        .run(&[
            "rotation",
            "configure",
            "rev/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    flag(&state, "fail-testSecret");
    admin.run(&["rotate", "rev/db", "--no-wait"]).ok();
    let failed = wait_for_state(&admin, "rev/db", "failed");
    assert_eq!(target(&state), "v1");
    let test_step = &failed["run"]["steps"][2];
    assert_eq!(test_step["attempts"], 2, "{failed}");
    assert_eq!(admin.run(&["get", "rev/db"]).ok().stdout, "v1\n");

    // A revert that fails leaves the run needing attention.
    flag(&state, "fail-revert");
    admin.run(&["rotate", "rev/db", "--no-wait"]).ok();
    let attention = wait_for_state(&admin, "rev/db", "needs_attention");
    assert!(
        attention["run"]["steps"][2]["state"] == "needs_attention",
        "{attention}"
    );
    let runs = admin
        .run(&["rotation", "runs", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        runs[0]["state"], "needs_attention",
        "needs attention comes first: {runs}"
    );
    let listed = admin.run(&["rotation", "runs"]).ok().stdout;
    assert!(
        listed.lines().nth(1).unwrap().contains("needs_attention"),
        "{listed}"
    );
    assert_eq!(admin.run(&["get", "rev/db"]).ok().stdout, "v1\n");
}

#[test]
fn failing_rotators_leave_current_untouched_and_say_why() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&["create", "fail/db", "--value", "the-current-value-83f2"])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "fail/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();

    let cases = [
        (
            "fail-setSecret",
            "setSecret",
            "failed setSecret with status 1",
        ),
        (
            "hang-createSecret",
            "createSecret",
            "did not finish createSecret within 3 seconds",
        ),
        ("garbage-createSecret", "createSecret", "not UTF-8 text"),
    ];
    for (steer, step, cause) in cases {
        flag(&state, steer);
        // A manual run pauses at the failure for the operator.
        admin.run(&["rotate", "fail/db", "--manual"]).ok();
        let mut shown = show(&admin, "fail/db");
        while shown["run"]["state"] == "waiting_for_operator" {
            let _ = admin.run(&["rotation", "step", "fail/db"]);
            shown = show(&admin, "fail/db");
        }
        assert_eq!(shown["run"]["state"], "step_failed", "{steer}: {shown}");
        let failed = shown["run"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .unwrap()
            .clone();
        assert_eq!(failed["state"], "failed", "{steer}: {shown}");
        assert_eq!(failed["attempts"], 1);
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains(cause), "{steer}: {error}");
        assert!(
            !error.contains("the-current-value-83f2"),
            "a value in an error: {error}"
        );
        let text = admin.run(&["rotation", "show", "fail/db"]).ok().stdout;
        assert!(text.contains(cause) && text.contains("attempt 1"), "{text}");
        let history = admin.run(&["rotation", "history", "fail/db"]).ok().stdout;
        assert!(
            history.contains("step_failed") && history.contains(cause),
            "{history}"
        );
        assert!(!history.contains("the-current-value-83f2"));
        assert_eq!(
            admin.run(&["get", "fail/db"]).ok().stdout,
            "the-current-value-83f2\n"
        );

        // Retry fails again while steered; then the operator fixes it and retries.
        std::fs::remove_file(state.join(steer)).unwrap();
        let retried = admin
            .run(&["rotation", "retry", "fail/db", "--output", "json"])
            .ok()
            .json();
        assert_ne!(retried["state"], "step_failed", "{retried}");
        admin.run(&["rotation", "cancel", "fail/db"]).ok();
        assert_eq!(
            admin.run(&["get", "fail/db"]).ok().stdout,
            "the-current-value-83f2\n"
        );
        assert!(stages(&admin, "fail/db").get("PENDING").is_none());
    }
    let nothing = admin.run(&["rotation", "retry", "fail/db"]);
    assert!(
        nothing.stderr.contains("no active rotation run"),
        "{}",
        nothing.stderr
    );
}

#[test]
fn a_put_that_moves_current_abandons_the_run() {
    let installation = Installation::new();
    let _state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "ab/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "ab/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    admin.run(&["rotate", "ab/db", "--manual"]).ok();
    admin.run(&["rotation", "step", "ab/db"]).ok();
    admin.run(&["put", "ab/db", "--value", "by-hand"]).ok();
    let abandoned = wait_for_state(&admin, "ab/db", "abandoned");
    assert!(
        abandoned["run"]["end_reason"]
            .as_str()
            .unwrap()
            .contains("CURRENT moved")
    );
    assert_eq!(admin.run(&["get", "ab/db"]).ok().stdout, "by-hand\n");
    assert!(stages(&admin, "ab/db").get("PENDING").is_none());
}

#[test]
fn configuration_is_checked() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "cfg/db", "--value", "v"]).ok();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--rotator", "exec:nothing"],
            "no exec rotator \"nothing\"",
        ),
        (&["--rotator", "/bin/sh"], "is not available"),
        (
            &["--rotator", "password", "--schedule", "every day"],
            "is not a schedule",
        ),
        (
            &["--rotator", "password", "--schedule", "cron(0 10 * * * *)"],
            "must be ?",
        ),
        (
            &[
                "--rotator",
                "password",
                "--approve",
                "set",
                "--approvals",
                "0",
            ],
            "at least 1 approval",
        ),
        (
            &[
                "--rotator",
                "password",
                "--approve",
                "set",
                "--approvals",
                "1",
                "--approver-role",
                "ghost",
            ],
            "not defined",
        ),
        (
            &["--rotator", "password", "--window", "2h"],
            "a window needs a schedule",
        ),
        (
            &["--rotator", "password", "--length", "0"],
            "password length 0",
        ),
    ];
    for (args, message) in cases {
        let mut full = vec!["rotation", "configure", "cfg/db"];
        full.extend_from_slice(args);
        let refused = admin.run(&full);
        assert_eq!(refused.code, 1, "{args:?}");
        assert!(
            refused.stderr.contains(message) && refused.stderr.contains("(INVALID_ARGUMENT)"),
            "{args:?}: {}",
            refused.stderr
        );
    }
    let unconfigured = admin.run(&["rotate", "cfg/db"]);
    assert!(
        unconfigured.stderr.contains("no rotation configuration"),
        "{}",
        unconfigured.stderr
    );
}

#[test]
fn an_approval_counts_only_while_its_approver_may_still_approve() {
    let installation = Installation::new();
    let _state = fixture(&installation);
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let bob = server.rekey(&bob);
    admin.run(&["create", "recheck/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "recheck/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "create",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "recheck/db", "--manual"]).ok();
    bob.run(&["approve", "recheck/db"]).ok();
    let shown = show(&admin, "recheck/db");
    assert_eq!(shown["run"]["state"], "waiting_for_operator", "{shown}");

    // Bob loses the approver role before the step runs: his approval no
    // longer counts, and the step waits again.
    let policy = admin.run(&["policy", "get"]).ok().stdout;
    let without = policy.replace(
        "principal = \"bob\"\nroles = [\"approver\"]",
        "principal = \"bob\"\nroles = [\"reader\"]",
    );
    assert_ne!(without, policy, "{policy}");
    let path = installation.dir().join("no-bob.toml");
    std::fs::write(&path, without).unwrap();
    admin.run(&["policy", "apply", path.to_str().unwrap()]).ok();
    let refused = admin.run(&["rotation", "step", "recheck/db"]);
    assert!(
        refused.stderr.contains("awaits approval (0 of 1)"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        show(&admin, "recheck/db")["run"]["steps"][0]["state"],
        "awaiting_approval"
    );
}
