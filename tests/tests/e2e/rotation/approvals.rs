//! Approvals: steps that wait for an approver, who may approve and who may
//! not, and approvals that stop counting when their approver loses the
//! right.

use super::*;

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
    // Audited as a refusal, as the policy's are.
    let events = admin
        .run(&["audit", "--principal", "admin", "--output", "json"])
        .ok()
        .stdout;
    let approval = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .rfind(|event| event["action"] == "rotation:ApproveRotation")
        .expect("the approval's event");
    assert_eq!(
        (&approval["decision"], &approval["outcome"]),
        (
            &serde_json::json!("deny"),
            &serde_json::json!("PERMISSION_DENIED")
        ),
        "{approval}"
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
    admin.apply_policy(&without).ok();
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

/// A run's id is the client request token of the version it makes: a put
/// or an update that names it is refused, and the update changes nothing.
#[test]
fn a_run_token_is_refused_to_puts_and_updates() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&["create", "held/db", "--value", "v1", "--description", "old"])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "held/db",
            "--rotator",
            "password",
            "--approve",
            "create",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "held/db", "--no-wait"]).ok();
    let shown = wait_for_state(&admin, "held/db", "awaiting_approval");
    let token = shown["run"]["run_id"].as_str().unwrap().to_owned();

    let put = admin.run(&["put", "held/db", "--value", "v2", "--token", &token]);
    let update = admin.run(&[
        "update",
        "held/db",
        "--description",
        "new",
        "--value",
        "v2",
        "--token",
        &token,
    ]);
    for refused in [put, update] {
        assert!(
            refused.stderr.contains("reserved by a rotation run")
                && refused.stderr.contains("(ALREADY_EXISTS)"),
            "{}",
            refused.stderr
        );
    }
    let described = admin
        .run(&["describe", "held/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["description"], "old", "{described}");
    assert_eq!(admin.run(&["get", "held/db"]).ok().stdout, "v1\n");
}

/// An approval or a rejection that names the run its approver saw is
/// refused once another run took that one's place, and changes nothing.
#[test]
fn an_approval_of_a_run_that_ended_does_not_pass_to_the_next() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let bob = server.rekey(&bob);
    admin.run(&["create", "seen/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "seen/db",
            "--rotator",
            "password",
            "--approve",
            "set",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "seen/db", "--no-wait"]).ok();
    let first = wait_for_state(&admin, "seen/db", "awaiting_approval")["run"]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.run(&["rotation", "cancel", "seen/db"]).ok();
    admin.run(&["rotate", "seen/db", "--no-wait"]).ok();
    let second = wait_for_state(&admin, "seen/db", "awaiting_approval");
    assert_ne!(second["run"]["run_id"], first.as_str());

    for verb in ["approve", "reject"] {
        let refused = bob.run(&[verb, "seen/db", "--run", &first, "--comment", "seen"]);
        assert!(
            refused.stderr.contains("is no longer the active one")
                && refused.stderr.contains("(FAILED_PRECONDITION)"),
            "{}",
            refused.stderr
        );
    }
    let shown = show(&admin, "seen/db");
    assert_eq!(shown["run"]["state"], "awaiting_approval");
    assert_eq!(shown["run"]["approvals"], serde_json::json!([]));

    let second = second["run"]["run_id"].as_str().unwrap();
    bob.run(&["approve", "seen/db", "--run", second]).ok();
    wait_for_state(&admin, "seen/db", "succeeded");
}

/// An approval that names the step its approver saw waiting does not count
/// for a later gate of the same run: with setSecret and finishSecret gated,
/// one approver's approval moves the run on to finishSecret, and a second
/// approver's approval of setSecret (what they saw) is refused, not
/// counted for finishSecret.
#[test]
fn an_approval_of_one_step_does_not_count_for_the_next_gate() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["approver"]);
    let carol = installation.issue("carol", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let (bob, carol) = (server.rekey(&bob), server.rekey(&carol));
    admin.run(&["create", "gates/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "gates/db",
            "--rotator",
            "password",
            "--approve",
            "set,finish",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "gates/db", "--no-wait"]).ok();
    let seen = wait_for_state(&admin, "gates/db", "awaiting_approval");
    let run_id = seen["run"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(seen["run"]["current_step"], "setSecret", "{seen}");

    bob.run(&[
        "approve",
        "gates/db",
        "--run",
        &run_id,
        "--step",
        "setSecret",
    ])
    .ok();
    eventually("the run to wait at finishSecret", || {
        let shown = show(&admin, "gates/db");
        (shown["run"]["state"] == "awaiting_approval"
            && shown["run"]["current_step"] == "finishSecret")
            .then_some(())
    });
    let refused = carol.run(&["approve", "gates/db", "--run", &run_id, "--step", "set"]);
    assert!(
        refused
            .stderr
            .contains("now waits for an approval of finishSecret, not of setSecret")
            && refused.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        show(&admin, "gates/db")["run"]["state"],
        "awaiting_approval"
    );
    carol
        .run(&["approve", "gates/db", "--run", &run_id, "--step", "finish"])
        .ok();
    wait_for_state(&admin, "gates/db", "succeeded");
}

/// While a run waits for an approval, its gates cannot be configured away
/// (an operator may configure, not approve); its schedule can change.
#[test]
fn a_waiting_run_keeps_its_gates() {
    let installation = Installation::new();
    let alice = installation.issue("alice", &["operator"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let alice = server.rekey(&alice);
    admin.run(&["create", "kept/db", "--value", "v1"]).ok();
    let gated = [
        "rotation",
        "configure",
        "kept/db",
        "--rotator",
        "password",
        "--approve",
        "set",
        "--approvals",
        "1",
    ];
    admin.run(&gated).ok();
    admin.run(&["rotate", "kept/db", "--no-wait"]).ok();
    wait_for_state(&admin, "kept/db", "awaiting_approval");

    let ungated = alice.run(&["rotation", "configure", "kept/db", "--approve", "none"]);
    assert!(
        ungated
            .stderr
            .contains("approval gates cannot change until it ends")
            && ungated.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        ungated.stderr
    );
    let shown = show(&admin, "kept/db");
    assert_eq!(shown["run"]["state"], "awaiting_approval", "{shown}");
    assert_eq!(shown["config"]["approvals_required"], 1, "{shown}");

    alice
        .run(&[
            "rotation",
            "configure",
            "kept/db",
            "--schedule",
            "rate(7 days)",
        ])
        .ok();
    let config = &show(&admin, "kept/db")["config"];
    assert_eq!(config["schedule"], "rate(7 days)", "{config}");
    assert_eq!(config["approvals_required"], 1, "{config}");
}

/// `rotation configure` changes what its flags name and nothing else: a
/// new schedule keeps the gates, the JSON field and the password policy
/// (it dropped them all, so a schedule change opened the gates and had
/// the next rotation write a bare password over a JSON value); the gates
/// go only when asked to (`--approve none`); with no flags a disabled
/// configuration comes back as it was.
#[test]
fn configuring_changes_only_what_it_names() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&[
            "create",
            "part/db",
            "--value",
            r#"{"user":"app","password":"p0"}"#,
        ])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "part/db",
            "--rotator",
            "password",
            "--approve",
            "set,finish",
            "--approvals",
            "2",
            "--field",
            "password",
            "--length",
            "40",
            "--exclude-punctuation",
        ])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "part/db",
            "--schedule",
            "rate(7 days)",
            "--window",
            "2h",
            "--length",
            "48",
        ])
        .ok();
    let config = &show(&admin, "part/db")["config"];
    assert_eq!(config["schedule"], "rate(7 days)", "{config}");
    assert_eq!(config["window"], "2h", "{config}");
    assert_eq!(config["rotator"], "password", "{config}");
    assert_eq!(
        config["approval_steps"].as_array().unwrap().len(),
        2,
        "{config}"
    );
    assert_eq!(config["approvals_required"], 2, "{config}");
    assert_eq!(config["json_field"], "password", "{config}");
    assert_eq!(config["password_policy"]["length"], 48, "{config}");
    assert_eq!(
        config["password_policy"]["exclude_punctuation"], true,
        "{config}"
    );

    admin
        .run(&["rotation", "configure", "part/db", "--approve", "none"])
        .ok();
    admin
        .run(&["rotation", "configure", "part/db", "--disable"])
        .ok();
    assert_eq!(show(&admin, "part/db")["config"]["enabled"], false);
    admin.run(&["rotation", "configure", "part/db"]).ok();
    let config = &show(&admin, "part/db")["config"];
    assert_eq!(config["enabled"], true, "{config}");
    assert_eq!(
        config["approval_steps"].as_array().unwrap().len(),
        0,
        "{config}"
    );
    assert_eq!(config["approvals_required"], 0, "{config}");
    assert_eq!(config["schedule"], "rate(7 days)", "{config}");
    assert_eq!(config["json_field"], "password", "{config}");

    // The gates open and the JSON field is kept: the rotation runs through.
    admin.run(&["rotate", "part/db"]).ok();
    let value: serde_json::Value =
        serde_json::from_str(admin.run(&["get", "part/db"]).ok().stdout.trim()).unwrap();
    assert_eq!(value["user"], "app");
    assert_eq!(value["password"].as_str().unwrap().len(), 48);
}

/// The approvals inbox shows whole runs (history, errors, comments): only
/// those a caller may describe as well as approve.
#[test]
fn the_inbox_shows_only_runs_the_caller_may_describe() {
    let installation = Installation::new();
    fixture(&installation);
    let erin = installation.issue("erin", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let erin = server.rekey(&erin);
    let approve =
        r#"{ effect = "allow", actions = ["rotation:ApproveRotation"], resources = ["*"] }"#;
    let describe =
        r#"{ effect = "allow", actions = ["rotation:DescribeRotation"], resources = ["*"] }"#;
    admin.apply_policy_for("erin", approve).ok();
    admin.run(&["create", "inbox/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "inbox/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "set",
            "--approver-role",
            "under-test",
        ])
        .ok();
    admin.run(&["rotate", "inbox/db", "--no-wait"]).ok();
    wait_for_state(&admin, "inbox/db", "awaiting_approval");
    let inbox = erin.run(&["approvals", "--output", "json"]).ok().json();
    assert_eq!(inbox, serde_json::json!([]));
    // Her approval is taken; its answer shows the run without its history
    // and comments, which she may not describe.
    let approved = erin
        .run(&[
            "approve",
            "inbox/db",
            "--comment",
            "fine by me",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(approved["history"], serde_json::json!([]), "{approved}");
    assert!(!approved.to_string().contains("fine by me"), "{approved}");
    let described = admin
        .run(&["rotation", "show", "inbox/db", "--output", "json"])
        .ok()
        .json();
    assert!(described.to_string().contains("fine by me"), "{described}");
    admin.run(&["rotate", "inbox/db", "--no-wait"]).ok();
    wait_for_state(&admin, "inbox/db", "awaiting_approval");
    admin
        .apply_policy_for("erin", &format!("{approve}, {describe}"))
        .ok();
    let inbox = erin.run(&["approvals", "--output", "json"]).ok().json();
    assert_eq!(inbox[0]["name"], "inbox/db", "{inbox}");
}
