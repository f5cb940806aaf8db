//! The server's own failures during a run (a write refused by the
//! database, here by a trigger that stands for a full disk): they are not
//! the step's, so they spend none of its attempts, and a change an operator
//! made is answered as made even when driving the run on after it fails.
//! And the server stopping during a run: the step under way ends, and its
//! outcome is kept, before the server exits.

use super::*;

fn sql(installation: &Installation, statement: &str) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(installation.execute_sql(statement));
}

/// A trigger, standing for a full disk, refuses the audit event of a
/// run's pending version, so createSecret's write fails for the server's
/// own reasons; `DROP TRIGGER full_disk` ends it.
fn refuse_pending_versions(installation: &Installation) {
    sql(
        installation,
        "CREATE TRIGGER full_disk BEFORE INSERT ON audit_events
         WHEN NEW.action = 'secrets:PutSecretValue' AND NEW.detail LIKE 'run %: pending version'
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
    );
}

fn calls_of(state: &Path, step: &str) -> usize {
    std::fs::read_to_string(state.join("calls"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with(&format!("{step} revert=false")))
        .count()
}

/// With one attempt allowed, a createSecret whose pending version cannot
/// be written runs again, and the run succeeds once the database takes
/// writes again. It ended failed after the first.
#[test]
fn a_step_the_server_failed_is_not_one_of_its_attempts() {
    let installation = Installation::new();
    let state = fixture(&installation);
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "srv/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "srv/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    refuse_pending_versions(&installation);
    admin.run(&["rotate", "srv/db", "--no-wait"]).ok();
    eventually("createSecret to run again after the server failed", || {
        (calls_of(&state, "createSecret") >= 2).then_some(())
    });
    let shown = show(&admin, "srv/db");
    assert_eq!(shown["run"]["active"], true, "{shown}");
    sql(&installation, "DROP TRIGGER full_disk");
    wait_for_state(&admin, "srv/db", "succeeded");
    assert_eq!(
        admin.run(&["get", "srv/db"]).ok().stdout.trim_end(),
        target(&state)
    );
    admin.run(&["audit", "verify"]).ok();
}

/// A failure of the server's own that does not go away (the trigger
/// stays) is not retried for ever: after ten interruptions, each recorded
/// in the run's history and audited, the step counts as failed, and with
/// one attempt allowed the run ends failed, pointing to the server's log.
#[test]
fn a_server_failure_that_lasts_fails_the_step_in_the_end() {
    let installation = Installation::new();
    let state = fixture(&installation);
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "srv/lasting", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "srv/lasting",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    refuse_pending_versions(&installation);
    admin.run(&["rotate", "srv/lasting", "--no-wait"]).ok();
    let ended = wait_for_state(&admin, "srv/lasting", "failed");
    let interruptions = ended["run"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["event"] == "step_interrupted")
        .count();
    assert_eq!(interruptions, 10, "{ended}");
    assert!(
        ended["run"]["end_reason"]
            .as_str()
            .unwrap()
            .contains("the server log has the details"),
        "{ended}"
    );
    assert_eq!(calls_of(&state, "createSecret"), 11);
    let audited = admin
        .run(&["audit", "--resource", "srv/lasting", "--output", "json"])
        .ok()
        .stdout;
    assert_eq!(audited.matches("\"INTERRUPTED\"").count(), 10, "{audited}");
    sql(&installation, "DROP TRIGGER full_disk");
    assert_eq!(admin.run(&["get", "srv/lasting"]).ok().stdout, "v1\n");
}

/// An operator's step of a manual run is saved before the run is driven
/// on; when the drive then fails (its step's event cannot be written), the
/// operator is still told the step was taken, and the engine drives the
/// run on once it can. The operator was told it failed, and a second try
/// was refused: "does not wait for an operator now".
#[test]
fn a_saved_step_is_answered_as_saved_when_driving_on_fails() {
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
    admin.run(&["rotate", "man/db", "--manual"]).ok();
    wait_for_state(&admin, "man/db", "waiting_for_operator");
    sql(
        &installation,
        "CREATE TRIGGER full_disk BEFORE INSERT ON audit_events
         WHEN NEW.action = 'rotation:StepRotation' AND NEW.detail LIKE 'run %: createSecret done'
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
    );
    let stepped = admin.run(&["rotation", "step", "man/db"]);
    assert_eq!(stepped.code, 0, "{}", stepped.stderr);
    assert_eq!(calls_of(&state, "createSecret"), 1);
    sql(&installation, "DROP TRIGGER full_disk");
    let waiting = wait_for_state(&admin, "man/db", "waiting_for_operator");
    assert_eq!(waiting["run"]["steps"][0]["state"], "done", "{waiting}");
    assert_eq!(
        waiting["run"]["steps"][1]["state"], "waiting_for_operator",
        "{waiting}"
    );
    admin.run(&["audit", "verify"]).ok();
}

/// SIGTERM while setSecret runs: shutdown waits for the step (as for any
/// change under way), persists that it is done, and the next process goes
/// on from testSecret, setSecret having run once. The step's outcome was
/// lost when the store closed under it, and the rotator was killed.
#[test]
fn sigterm_lets_the_step_under_way_end_and_keeps_its_outcome() {
    let installation = Installation::new();
    let state = fixture(&installation);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "stop/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "stop/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    flag(&state, "block-setSecret");
    admin.run(&["rotate", "stop/db", "--no-wait"]).ok();
    eventually("the rotator to block in setSecret", || {
        state.join("blocked-setSecret").exists().then_some(())
    });
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    eventually("shutdown to wait for the step", || {
        server
            .log_text()
            .contains("waiting for changes still running")
            .then_some(())
    });
    std::fs::remove_file(state.join("block-setSecret")).unwrap();
    assert!(server.stop().success());

    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    wait_for_state(&admin, "stop/db", "succeeded");
    assert_eq!(calls_of(&state, "setSecret"), 1);
    assert_eq!(
        admin.run(&["get", "stop/db"]).ok().stdout.trim_end(),
        target(&state)
    );
}
