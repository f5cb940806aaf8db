//! The rotators' own tests: what each step does with its input, and the
//! exec rotator's program contract.

use super::*;

fn input<'a>(step: Step, current: Option<&'a SecretValue>) -> StepInput<'a> {
    StepInput {
        step,
        revert: false,
        secret_name: "app/db",
        secret_id: "app/db-abc123",
        token: "00000000-0000-4000-8000-000000000000",
        current,
        pending: None,
        previous: None,
        replacing: None,
    }
}

#[tokio::test]
async fn password_rotates_a_whole_value_or_one_json_field() {
    let plain = Rotator::Password(RotatorSettings::default());
    let new = plain
        .run(&input(Step::Create, None))
        .await
        .unwrap()
        .new_value
        .unwrap();
    assert_eq!(new.len(), 32);
    assert!(
        plain
            .run(&input(Step::Set, None))
            .await
            .unwrap()
            .new_value
            .is_none()
    );

    let field = Rotator::Password(RotatorSettings {
        json_field: "password".into(),
        ..RotatorSettings::default()
    });
    let current = SecretValue::text(r#"{"username":"orders","password":"old"}"#);
    let new = field
        .run(&input(Step::Create, Some(&current)))
        .await
        .unwrap()
        .new_value
        .unwrap();
    let SecretValue::Text(text) = new else {
        panic!("text")
    };
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["username"], "orders");
    assert_ne!(document["password"], "old");
    let not_json = SecretValue::text("plain");
    let error = field
        .run(&input(Step::Create, Some(&not_json)))
        .await
        .unwrap_err();
    assert!(
        error.0.contains("not JSON") && !error.0.contains("plain"),
        "{error}"
    );
    // A field the value lacks (mistyped, or a path) is not added beside the
    // password it should replace.
    for missing in ["pasword", "db.password"] {
        let misnamed = Rotator::Password(RotatorSettings {
            json_field: missing.into(),
            ..RotatorSettings::default()
        });
        let error = misnamed
            .run(&input(Step::Create, Some(&current)))
            .await
            .unwrap_err();
        assert!(
            error
                .0
                .starts_with(&format!("CURRENT has no field {missing:?}")),
            "{error}"
        );
    }
}

#[test]
fn redaction() {
    let value = SecretValue::text("hunter2");
    let text = redact("failed: hunter2 was refused\n", &[Some(&value)]);
    assert_eq!(text, "failed: <redacted> was refused");
    // The secret fields of a JSON value, at any depth; not the rest.
    let json = SecretValue::text(
        r#"{"username":"orders","password":"hunter2","key_version":1,
            "tls":{"client_key":"k3y-pem","port":5432}}"#,
    );
    let text = redact(
        "auth failed for orders with hunter2 (k3y-pem, 5432, status 1)",
        &[Some(&json)],
    );
    assert_eq!(
        text,
        "auth failed for orders with <redacted> (<redacted>, 5432, status 1)"
    );
    // A number under a secret field, and a secret that holds another.
    let numeric = SecretValue::text(r#"{"pin":"12","password":123456}"#);
    let outer = SecretValue::binary(b"123456789".to_vec());
    assert_eq!(
        redact("got 123456789 and 123456", &[Some(&numeric), Some(&outer)]),
        "got <redacted> and <redacted>"
    );
    // As a program that prints its JSON input writes them: escaped, and
    // a binary value in base64.
    let quoted = SecretValue::text(r#"pa"ss\wd"#);
    let binary = SecretValue::binary(vec![0xff, 0x00, 0x7f, 0x80, 0x01]);
    assert_eq!(
        redact(
            r#"input {"current":"pa\"ss\\wd","pending_base64":"/wB/gAE="}"#,
            &[Some(&quoted), Some(&binary)]
        ),
        r#"input {"current":"<redacted>","pending_base64":"<redacted>"}"#
    );
    let long = "x".repeat(5000);
    assert!(redact(&long, &[]).chars().count() <= MAX_LOG_CHARS + 2);
}

/// What a program prints as createSecret's new value is not in the
/// step's log, even when it also writes it to its standard error.
#[tokio::test]
async fn an_exec_rotator_never_logs_the_value_it_made() {
    let program = ExecRotator {
        command: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo 'made n3w-v4lue-0192'  >&2; echo n3w-v4lue-0192".into(),
        ],
        timeout_seconds: 10,
    };
    let current = SecretValue::text("old");
    let output = exec_step("t", &program, &input(Step::Create, Some(&current)))
        .await
        .unwrap();
    assert!(
        output
            .new_value
            .unwrap()
            .same_as(&SecretValue::text("n3w-v4lue-0192"))
    );
    assert_eq!(output.log, "made <redacted>");
}

/// A revert tells the program what the target may hold: the run's new
/// value (`replacing`) and PREVIOUS, beside CURRENT to put back.
#[tokio::test]
async fn a_revert_tells_the_program_what_the_target_may_hold() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("input.json");
    let program = ExecRotator {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), format!("cat > {}", seen.display())],
        timeout_seconds: 10,
    };
    let (current, previous, replacing) = (
        SecretValue::text("current-v"),
        SecretValue::text("previous-v"),
        SecretValue::binary(vec![0xff, 0x01]),
    );
    let input = StepInput {
        revert: true,
        pending: Some(&current),
        previous: Some(&previous),
        replacing: Some(&replacing),
        ..input(Step::Set, Some(&current))
    };
    exec_step("t", &program, &input).await.unwrap();
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(document["revert"], true);
    assert_eq!(document["current"], "current-v");
    assert_eq!(document["pending"], "current-v");
    assert_eq!(document["previous"], "previous-v");
    assert_eq!(document["replacing_base64"], "/wE=");
}

/// The pid a test program wrote to `file`, once it is there.
fn pid_in(file: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.trim().parse().unwrap()
}

/// Waits (polling, up to 10 s) until process `pid` is gone or a zombie.
fn ends(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command's closing parenthesis.
        let state = status.rsplit(')').next().unwrap_or("").trim_start();
        if status.is_empty() || state.starts_with('Z') {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a program started ends with its step: after a timeout, and
/// after a step that succeeded while something it started ran on.
#[tokio::test]
async fn an_exec_rotators_processes_end_with_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let program = |script: &str, timeout_seconds| ExecRotator {
        command: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            script.replace("PIDFILE", &pid_file.display().to_string()),
        ],
        timeout_seconds,
    };
    let hung = program(
        "sleep 100 >/dev/null 2>&1 & echo $! > PIDFILE; sleep 100",
        1,
    );
    let error = exec_step("t", &hung, &input(Step::Set, None))
        .await
        .unwrap_err();
    assert!(error.0.contains("within 1 seconds"), "{error}");
    assert!(
        ends(pid_in(&pid_file)),
        "the background process outlived the step"
    );

    std::fs::remove_file(&pid_file).unwrap();
    let finished = program("sleep 100 >/dev/null 2>&1 & echo $! > PIDFILE", 10);
    exec_step("t", &finished, &input(Step::Set, None))
        .await
        .unwrap();
    assert!(
        ends(pid_in(&pid_file)),
        "the background process outlived the step"
    );
}

#[test]
fn only_configured_programs_run() {
    let error = Rotator::from_config(
        "exec:ldap",
        &RotatorSettings::default(),
        &RotationSettings::default(),
    )
    .unwrap_err();
    assert!(error.0.contains("rotation.exec.ldap"), "{error}");
    assert!(
        Rotator::from_config(
            "/bin/sh",
            &RotatorSettings::default(),
            &RotationSettings::default()
        )
        .is_err()
    );
}
