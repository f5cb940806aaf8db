//! Runs that do not finish: a run ending after setSecret reverts the
//! target, failing rotators leave CURRENT untouched and say why, a put
//! that moves CURRENT abandons the run, and a configuration is checked
//! before it is kept.

use super::*;

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
        .run(&["rotation", "configure", "rev/db", "--approve", "none"])
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
    // What the target may hold now keeps its PENDING label: the one value
    // that may work there is found by a stage.
    let pending = admin
        .run(&["get", "rev/db", "--stage", "PENDING"])
        .ok()
        .stdout;
    assert_eq!(pending.trim_end(), target(&state));
    // Once the target is mended, the next rotation runs as any other.
    std::fs::remove_file(state.join("fail-revert")).unwrap();
    std::fs::remove_file(state.join("fail-testSecret")).unwrap();
    admin.run(&["rotate", "rev/db"]).ok();
    let rotated = admin.run(&["get", "rev/db"]).ok().stdout;
    assert_eq!(rotated.trim_end(), target(&state));
    assert!(rotated.starts_with("rotated-"), "{rotated}");
}

/// Steps a manual run (at most its four steps) until one fails; the run,
/// as shown then.
fn step_until_it_fails(admin: &Rekey, name: &str) -> Value {
    let mut shown = show(admin, name);
    for _ in 0..4 {
        if shown["run"]["state"] != "waiting_for_operator" {
            break;
        }
        let stepped = admin.run(&["rotation", "step", name]);
        shown = show(admin, name);
        if shown["run"]["state"] == "waiting_for_operator" {
            assert_eq!(stepped.code, 0, "{}", stepped.stderr);
        }
    }
    assert_eq!(shown["run"]["state"], "step_failed", "{shown}");
    shown
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
        let shown = step_until_it_fails(&admin, "fail/db");
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
        admin.run(&["rotation", "retry", "fail/db"]);
        let again = show(&admin, "fail/db");
        assert_eq!(again["run"]["state"], "step_failed", "{steer}: {again}");
        let failed_again = again["run"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .unwrap();
        assert_eq!(failed_again["attempts"], 2, "{steer}: {again}");
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
    // The audit log says which step failed, not what the rotator said:
    // that is the run's history's, for whoever may describe it.
    let events = admin.run(&["audit", "--output", "json"]).ok().stdout;
    let failures: Vec<serde_json::Value> = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["action"] == "rotation:StepRotation" && event["outcome"] == "FAILED")
        .collect();
    assert_eq!(failures.len(), 6, "{failures:?}");
    for event in failures {
        let detail = event["detail"].as_str().unwrap();
        assert!(
            detail.ends_with("failed (the run's history has the error)")
                && cases.iter().all(|(_, _, cause)| !detail.contains(cause)),
            "{detail}"
        );
    }
}

#[test]
fn a_rotators_error_cannot_steer_the_operators_terminal() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "steer/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "steer/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    flag(&state, "fail-setSecret");
    flag(&state, "escape");

    // The run waits to retry; `rotate` says why on one line, escaped.
    let failed = admin.run(&["rotate", "steer/db"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert_eq!(failed.stderr.lines().count(), 1, "{:?}", failed.stderr);
    assert!(
        failed.stderr.contains("\\u{1b}]52;c;aGk=\\u{7}"),
        "{:?}",
        failed.stderr
    );
    for shown in [
        failed.stderr,
        admin.run(&["rotation", "show", "steer/db"]).ok().stdout,
        admin.run(&["rotation", "history", "steer/db"]).ok().stdout,
    ] {
        assert!(!shown.contains('\u{1b}'), "{shown:?}");
        assert!(!shown.contains('\r'), "{shown:?}");
    }
}

/// A NUL in a rotator's error is kept, escaped, on PostgreSQL, whose text
/// cannot hold one: the run's update failed, and the step ran again every
/// second without a failure ever being recorded.
#[test]
fn a_nul_in_a_rotators_error_is_recorded_on_postgres() {
    let Some(database) = rekey_tests::databases::StorageDatabase::create() else {
        return;
    };
    let installation = Installation::on_postgres(&database);
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "nul/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "nul/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    flag(&state, "fail-setSecret");
    flag(&state, "nul");
    admin.run(&["rotate", "nul/db", "--manual"]).ok();
    let shown = step_until_it_fails(&admin, "nul/db");
    let error = shown["run"]["steps"][1]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("before\\0after"), "{error}");
    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    assert_eq!(
        calls
            .lines()
            .filter(|line| line.starts_with("setSecret"))
            .count(),
        1,
        "{calls}"
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
            &["--schedule", "rate(7 days)"],
            "has no rotation configuration yet; give a rotator",
        ),
        (
            &["--rotator", "password", "--schedule", "every day"],
            "is not a schedule",
        ),
        (
            &["--rotator", "password", "--schedule", "cron(0 10 * * * *)"],
            "must be ?",
        ),
        (
            &["--rotator", "password", "--schedule", "cron(0 0 30 2 ? *)"],
            "never comes due",
        ),
        (
            &[
                "--rotator",
                "password",
                "--schedule",
                "cron(0 0 1 1 ? 2001)",
            ],
            "never comes due",
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
                "101",
            ],
            "more than the 100 a gate may need",
        ),
        // 12 lowercase letters: 56 bits, which a database password must
        // not be.
        (
            &[
                "--rotator",
                "postgres",
                "--length",
                "12",
                "--exclude-uppercase",
                "--exclude-numbers",
                "--exclude-punctuation",
            ],
            "must give at least 80 bits (its length times log2 of the characters it draws from); this one gives 56",
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

/// On one server, a cancel does not wait for the step the run's drive is
/// in (setSecret, blocked here): it answers at once, and once the step
/// ends, the run is reverted and ends cancelled, CURRENT untouched. It
/// waited for the whole step, and then found the run finished.
#[test]
fn a_cancel_does_not_wait_for_the_step_under_way() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "slow/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "slow/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    flag(&state, "block-setSecret");
    // A script waiting on the run learns that it did not succeed.
    let waiting = admin
        .command(&["rotate", "slow/db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the rotator to block in setSecret", || {
        state.join("blocked-setSecret").exists().then_some(())
    });
    let mut cancel = admin
        .command(&["rotation", "cancel", "slow/db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("the cancel to answer while the step is blocked", || {
        cancel.try_wait().unwrap()
    });
    assert!(status.success(), "the cancel failed");
    std::fs::remove_file(state.join("block-setSecret")).unwrap();
    let shown = eventually("the run to end", || {
        let shown = show(&admin, "slow/db");
        (shown["run"]["active"] == false).then_some(shown)
    });
    assert_eq!(shown["run"]["state"], "cancelled", "{shown}");
    let waited = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the rotation of slow/db was cancelled"),
        "{stderr}"
    );
    assert_eq!(admin.run(&["get", "slow/db"]).ok().stdout, "v1\n");
    assert_eq!(
        target(&state).trim_end(),
        "v1",
        "the revert put CURRENT back"
    );
    admin.run(&["audit", "verify"]).ok();
}

/// A secret whose rotation is under way (setSecret has changed the target)
/// is not deleted, now or later, until the run ends: erased with its run,
/// the value the target holds would have no copy left and no revert would
/// run. Cancelled, the run puts CURRENT back, and the deletion goes ahead.
#[test]
fn a_secret_is_not_deleted_while_its_rotation_is_under_way() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "del/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "del/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "test",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "del/db", "--no-wait"]).ok();
    wait_for_state(&admin, "del/db", "awaiting_approval");
    assert!(target(&state).starts_with("rotated-"), "setSecret ran");
    for how in [&["--force"][..], &["--recovery-days", "7"][..]] {
        let mut args = vec!["delete", "del/db"];
        args.extend_from_slice(how);
        let refused = admin.run(&args);
        assert_eq!(refused.code, 1, "{how:?}: {}", refused.stdout);
        assert!(
            refused
                .stderr
                .contains("a rotation of del/db is under way; cancel it first"),
            "{how:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(admin.run(&["get", "del/db"]).ok().stdout, "v1\n");
    admin.run(&["rotation", "cancel", "del/db"]).ok();
    wait_for_state(&admin, "del/db", "cancelled");
    assert_eq!(target(&state), "v1", "the revert put CURRENT back");
    admin.run(&["delete", "del/db", "--force"]).ok();
}

/// PENDING stays on the version a run is making until the run ends: a
/// client can neither move it (to another version, or off with --from) nor
/// put a new version labelled PENDING meanwhile. Moved, it was left on a
/// version that is not CURRENT when the run finished, and in needs
/// attention no longer marked the value the target may hold.
#[test]
fn pending_stays_on_the_runs_version_until_the_run_ends() {
    let installation = Installation::new();
    fixture(&installation);
    let olga = installation.issue("olga", &["operator"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let operator = server.rekey(&olga);
    admin.run(&["create", "pen/db", "--value", "v1"]).ok();
    let v1 = stages(&admin, "pen/db")["CURRENT"]
        .as_str()
        .unwrap()
        .to_owned();
    admin
        .run(&[
            "rotation",
            "configure",
            "pen/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "test",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "pen/db", "--no-wait"]).ok();
    let waiting = wait_for_state(&admin, "pen/db", "awaiting_approval");
    let run_version = waiting["run"]["version_id"].as_str().unwrap().to_owned();
    assert_eq!(stages(&admin, "pen/db")["PENDING"], run_version.as_str());
    let refusals = [
        vec!["stage", "pen/db", "PENDING", "--to", &v1],
        vec!["stage", "pen/db", "PENDING", "--from", &run_version],
        vec!["put", "pen/db", "--stage", "PENDING", "--value", "v2"],
    ];
    for args in refusals {
        let refused = admin.run(&args);
        assert_eq!(refused.code, 1, "{args:?}: {}", refused.stdout);
        assert!(
            refused.stderr.contains("which a rotation run is making"),
            "{args:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(stages(&admin, "pen/db")["PENDING"], run_version.as_str());
    // Nor is the run's version made CURRENT past its approval gate.
    let waved = admin.run(&["stage", "pen/db", "CURRENT", "--to", &run_version]);
    assert!(
        waved.code == 1
            && waved.stderr.contains(
                "is the one a rotation run is making: it becomes CURRENT when the run finishes"
            ),
        "{}",
        waved.stderr
    );
    assert_eq!(stages(&admin, "pen/db")["CURRENT"], v1.as_str());
    admin.run(&["rotation", "cancel", "pen/db"]).ok();
    wait_for_state(&admin, "pen/db", "cancelled");
    // The ended run's value becomes CURRENT only by whoever may approve
    // rotations of the secret: not by an operator's stage move.
    let waved = operator.run(&["stage", "pen/db", "CURRENT", "--to", &run_version]);
    assert!(
        waved.code == 1
            && waved
                .stderr
                .contains("olga may not rotation:ApproveRotation on pen/db"),
        "{}",
        waved.stderr
    );
    assert_eq!(stages(&admin, "pen/db")["CURRENT"], v1.as_str());
    // The run ended: PENDING is the client's again.
    admin
        .run(&["put", "pen/db", "--stage", "PENDING", "--value", "v2"])
        .ok();
}

/// A new value past the value limit is refused as a put of it is: here a
/// JSON value near 64 KiB whose password field gets 4,096 characters. The
/// run fails saying so and CURRENT stays.
#[test]
fn a_new_value_past_the_limit_fails_its_run() {
    let installation = Installation::new();
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let value = serde_json::json!({"password": "x", "pad": "p".repeat(64_000)}).to_string();
    admin
        .run_with_input(
            &["create", "big/json", "--value-file", "-"],
            value.as_bytes(),
        )
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "big/json",
            "--rotator",
            "password",
            "--field",
            "password",
            "--length",
            "4096",
        ])
        .ok();
    let run = admin
        .run(&["rotate", "big/json", "--output", "json"])
        .json();
    assert_eq!(run["state"], "failed", "{run}");
    assert!(
        run["end_reason"]
            .as_str()
            .unwrap()
            .contains("a value is at most 65536"),
        "{run}"
    );
    assert_eq!(
        admin.run(&["get", "big/json"]).ok().stdout.trim_end(),
        value
    );
    // The audit log says how the run ended, not why (a rotator's error, an
    // approver's comment): that is the history's.
    let events = admin.run(&["audit", "--output", "json"]).ok().stdout;
    let ended: Vec<&str> = events
        .lines()
        .filter(|line| line.contains("rotation:EndRotation"))
        .collect();
    assert_eq!(ended.len(), 1, "{events}");
    assert!(
        ended[0].contains("ended failed (the run's history has why)")
            && !ended[0].contains("at most 65536"),
        "{}",
        ended[0]
    );
}
