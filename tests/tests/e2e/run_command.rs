//! `rekey run`: a command started with secret values in its environment,
//! its exit code passed through, no value printed; a secret that cannot be
//! read stops it before the command starts.

use rekey_tests::{Installation, Rekey, Server, eventually};

#[test]
fn run_puts_values_in_the_environment_and_passes_the_exit_code() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey
        .run(&[
            "create",
            "run/db",
            "--value",
            r#"{"username":"app","password":"pw-81f3","port":5432}"#,
        ])
        .ok();
    rekey
        .run(&["create", "run/token", "--value", "tok-29aa"])
        .ok();

    let check = r#"test "$DB_PASSWORD" = pw-81f3 && test "$TOKEN" = tok-29aa && test "$PORT" = 5432 && exit 7"#;
    let ran = rekey.run(&[
        "run",
        "--env",
        "DB_PASSWORD=run/db#password",
        "--env",
        "TOKEN=run/token",
        "--env",
        "PORT=run/db#port",
        "--",
        "sh",
        "-c",
        check,
    ]);
    assert_eq!(ran.code, 7, "{}", ran.stderr);
    for value in ["pw-81f3", "tok-29aa"] {
        assert!(!ran.stdout.contains(value) && !ran.stderr.contains(value));
    }
    // The command's own output and code are its own.
    let echoed = rekey.run(&[
        "run",
        "--env",
        "T=run/token",
        "--",
        "sh",
        "-c",
        "echo hi; exit 0",
    ]);
    assert_eq!((echoed.code, echoed.stdout.as_str()), (0, "hi\n"));

    // Nothing starts when a value cannot be had.
    let marker = installation.dir().join("started");
    let touch = format!("touch {}", marker.display());
    for (spec, says) in [
        ("X=run/missing", "run/missing"),
        ("X=run/db#nothing", "has no field \"nothing\""),
        ("X=run/token#field", "is not JSON"),
    ] {
        let refused = rekey.run(&["run", "--env", spec, "--", "sh", "-c", &touch]);
        assert_eq!(refused.code, 1, "{spec}: {}", refused.stderr);
        assert!(refused.stderr.contains(says), "{spec}: {}", refused.stderr);
        assert!(!marker.exists(), "{spec} started the command");
    }
    // Usage errors exit 2.
    for args in [
        &["run", "--env", "1X=run/token", "--", "true"][..],
        &["run", "--env", "novalue", "--", "true"],
        &["run", "--env", "X=run/token"],
    ] {
        assert_eq!(rekey.run(args).code, 2, "{args:?}");
    }
}

/// `--watch`: a changed value restarts the command with it; a change that
/// leaves the value as it was does not; SIGTERM to `rekey run` stops the
/// command and passes its status on.
#[test]
fn run_watch_restarts_the_command_when_its_value_changes() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey
        .run(&["create", "watched/token", "--value", "tok-1"])
        .ok();
    let seen = installation.dir().join("seen");
    let script = format!(r#"echo "$T" >> '{}'; exec sleep 60"#, seen.display());
    let mut running = run_watched(&rekey, &script, std::process::Stdio::null());
    let lines = || std::fs::read_to_string(&seen).unwrap_or_default();
    eventually("the first start", || (lines() == "tok-1\n").then_some(()));

    rekey.run(&["tag", "watched/token", "team=a"]).ok();
    rekey
        .run(&["put", "watched/token", "--value", "tok-2"])
        .ok();
    eventually("one restart with the new value", || {
        (lines() == "tok-1\ntok-2\n").then_some(())
    });

    let pid = rustix::process::Pid::from_raw(running.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = eventually("rekey run to stop", || running.try_wait().unwrap());
    assert_eq!(status.code(), Some(128 + 15), "sleep ended by SIGTERM");
}

/// `rekey run --watch` does not start a command it could not restart: a
/// secret the caller may read but not watch is refused at the start
/// (PERMISSION_DENIED naming it). It got a stream that stayed silent for
/// that secret, and the command kept its value after every change.
#[test]
fn run_watch_refuses_a_secret_it_may_read_but_not_watch() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "app/token", "--value", "tok-1"]).ok();
    admin
        .apply_policy_for(
            "app",
            r#"
  { effect = "allow", actions = ["secrets:GetSecretValue"], resources = ["app/*"] },
  { effect = "allow", actions = ["secrets:Watch"], resources = ["other/*"] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:default"] },
"#,
        )
        .ok();
    let app = server.rekey(&installation.issue("app", &[]));
    let seen = installation.dir().join("seen");
    let script = format!(r#"echo "$T" >> '{}'"#, seen.display());
    // Without --watch it runs; with it, it is refused before the command.
    app.run(&["run", "--env", "T=app/token", "--", "sh", "-c", &script])
        .ok();
    let refused = app.run(&[
        "run",
        "--watch",
        "--env",
        "T=app/token",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("app may not secrets:Watch on app/token")
            && refused.stderr.contains("(PERMISSION_DENIED)"),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "tok-1\n");
}

/// A change whose values cannot be read at once (here: the reader over
/// its rate limit) is read again until they can, and the command is
/// started again with them. The read was tried once, and no other event
/// came for that change: the command kept the old value for good.
#[test]
fn run_watch_reads_a_change_again_until_it_can() {
    let installation = Installation::new();
    installation.edit_config(|table| {
        let limits: toml::Table = "requests_per_second = 1\nburst = 3\n".parse().unwrap();
        table.insert("rate_limit".into(), toml::Value::Table(limits));
    });
    let app = installation.issue("app", &["reader"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&["create", "watched/token", "--value", "tok-1"])
        .ok();
    let app = server.rekey(&app);
    let seen = installation.dir().join("seen");
    let said = installation.dir().join("said");
    let script = format!(r#"echo "$T" >> '{}'; exec sleep 60"#, seen.display());
    let mut running = run_watched(&app, &script, std::fs::File::create(&said).unwrap().into());
    let lines = || std::fs::read_to_string(&seen).unwrap_or_default();
    eventually("the first start", || (lines() == "tok-1\n").then_some(()));

    // The reader's bucket emptied, then the value changes.
    eventually("the reader to be over its limit", || {
        let read = app.run(&["get", "watched/token"]);
        read.stderr.contains("RESOURCE_EXHAUSTED").then_some(())
    });
    admin
        .run(&["put", "watched/token", "--value", "tok-2"])
        .ok();
    eventually("a restart with the new value", || {
        (lines() == "tok-1\ntok-2\n").then_some(())
    });
    let said = std::fs::read_to_string(&said).unwrap();
    assert!(said.contains("read again in 1s"), "{said}");
    let pid = rustix::process::Pid::from_raw(running.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    eventually("rekey run to stop", || running.try_wait().unwrap());
}

/// SIGINT and SIGHUP to `rekey run` go on to the command, which decides
/// what they mean (SIGINT cancels a query in psql, say): `rekey run` ends
/// when the command does, with its exit code. SIGINT was turned into a
/// SIGTERM that ended the command.
#[test]
fn signals_go_on_to_the_command_which_decides_what_they_mean() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey
        .run(&["create", "watched/token", "--value", "tok-1"])
        .ok();
    let (ready, interrupted) = (
        installation.dir().join("ready"),
        installation.dir().join("interrupted"),
    );
    let script = format!(
        r#"trap 'echo int >> "{}"' INT; trap 'exit 7' HUP; touch "{}"; while :; do sleep 0.1; done"#,
        interrupted.display(),
        ready.display()
    );
    let mut running = run_watched(&rekey, &script, std::process::Stdio::null());
    eventually("the command to start", || ready.exists().then_some(()));
    let pid = rustix::process::Pid::from_raw(running.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    eventually("the command to get SIGINT", || {
        interrupted.exists().then_some(())
    });
    assert!(
        running.try_wait().unwrap().is_none(),
        "rekey run ended on a SIGINT its command took"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let status = eventually("rekey run to end with its command", || {
        running.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(7));
}

/// `rekey run --watch` outlives a restart of the server (the command runs
/// on, and a change made after it is followed), and a value that can no
/// longer be read stops the command with it: it never leaves the command
/// running on its own.
#[test]
fn run_watch_follows_a_restarted_server_and_takes_its_command_down_with_it() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey
        .run(&["create", "watched/token", "--value", "tok-1"])
        .ok();
    let seen = installation.dir().join("seen");
    let script = format!(r#"echo "$T $$" >> '{}'; exec sleep 60"#, seen.display());
    let mut running = run_watched(&rekey, &script, std::process::Stdio::piped());
    let lines = || {
        std::fs::read_to_string(&seen)
            .unwrap_or_default()
            .lines()
            .map(|line| line.split_once(' ').unwrap())
            .map(|(value, pid)| (value.to_owned(), pid.parse::<i32>().unwrap()))
            .collect::<Vec<_>>()
    };
    eventually("the first start", || (lines().len() == 1).then_some(()));

    let address = server.url.trim_start_matches("https://").to_owned();
    assert!(server.stop().success());
    let server = Server::start_on(installation.dir(), &address, &[]);
    rekey
        .run(&["put", "watched/token", "--value", "tok-2"])
        .ok();
    let restarted = eventually("a restart with the value put after the server's", || {
        let lines = lines();
        (lines.len() == 2).then_some(lines)
    });
    assert_eq!(restarted[0].0, "tok-1");
    assert_eq!(restarted[1].0, "tok-2");
    assert!(running.try_wait().unwrap().is_none());

    server
        .rekey(&installation.admin())
        .run(&["delete", "watched/token", "--force"])
        .ok();
    let status = eventually("rekey run to stop", || running.try_wait().unwrap());
    assert_eq!(status.code(), Some(1));
    let command = std::path::PathBuf::from(format!("/proc/{}", restarted[1].1));
    assert!(!command.exists(), "the command outlived rekey run");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut running.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("(NOT_FOUND)"), "{stderr}");
}

/// `rekey run --watch` under a certificate that is then revoked stops the
/// command and exits 1 once the server ends its watch: the command does
/// not keep values its caller may no longer read.
#[test]
fn run_watch_stops_the_command_when_its_certificate_is_revoked() {
    let (installation, _server, mut running, pid) = watched_as_app();
    let revoked = rekey_tests::rekeyd(installation.dir(), &["cert", "revoke", "app"]);
    assert!(
        revoked.status.success(),
        "{}",
        rekey_tests::text(&revoked.stderr)
    );
    let stderr = stopped_with_its_command(&mut running, pid);
    assert!(
        stderr.contains("ended the watch of watched/token") && stderr.contains("(UNAUTHENTICATED)"),
        "{stderr}"
    );
}

/// The same when the revocation is met at a new connection's handshake
/// (the server restarted meanwhile): the refusal is told from a server that
/// does not answer, which `rekey run` waits for with the command running.
#[test]
fn run_watch_stops_the_command_when_a_restarted_server_refuses_its_certificate() {
    let (installation, server, mut running, pid) = watched_as_app();
    let address = server.url.trim_start_matches("https://").to_owned();
    assert!(server.stop().success());
    let revoked = rekey_tests::rekeyd(installation.dir(), &["cert", "revoke", "app"]);
    assert!(
        revoked.status.success(),
        "{}",
        rekey_tests::text(&revoked.stderr)
    );
    let _server = Server::start_on(installation.dir(), &address, &[]);
    let stderr = stopped_with_its_command(&mut running, pid);
    assert!(
        stderr.contains(
            "refused this client's certificate at the TLS handshake (CertificateRevoked)"
        ),
        "{stderr}"
    );
}

/// An installation serving `watched/token`, and `rekey run --watch` as
/// `app` (a reader) running a command that wrote its process id; the
/// command's process id.
fn watched_as_app() -> (Installation, rekey_tests::Server, std::process::Child, i32) {
    let installation = Installation::new();
    let app = installation.issue("app", &["reader"]);
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "watched/token", "--value", "tok-1"])
        .ok();
    let seen = installation.dir().join("seen");
    let script = format!(r#"echo "$$" >> '{}'; exec sleep 60"#, seen.display());
    let running = run_watched(&server.rekey(&app), &script, std::process::Stdio::piped());
    let pid = eventually("the command to start", || {
        std::fs::read_to_string(&seen)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    });
    (installation, server, running, pid)
}

/// Waits for `rekey run` to exit 1 having stopped its command `pid`; what
/// it said on standard error.
fn stopped_with_its_command(running: &mut std::process::Child, pid: i32) -> String {
    let status = eventually("rekey run to stop", || running.try_wait().unwrap());
    assert_eq!(status.code(), Some(1));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the command outlived rekey run"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut running.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

/// `rekey run --watch --env T=watched/token -- sh -c SCRIPT`, started.
fn run_watched(rekey: &Rekey, script: &str, stderr: std::process::Stdio) -> std::process::Child {
    rekey
        .command(&[
            "run",
            "--watch",
            "--env",
            "T=watched/token",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// `rekey run --watch` of many secrets watches them a hundred to a stream:
/// a stream apiece passed the connection's 200 calls at once, and the
/// command never started.
#[test]
fn run_watch_of_many_secrets_starts() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    let count = 210;
    for i in 0..count {
        rekey
            .run(&[
                "create",
                &format!("many/s{i:03}"),
                "--value",
                &format!("v{i}"),
            ])
            .ok();
    }
    let seen = installation.dir().join("seen");
    let script = format!(r#"echo "$V209" >> '{}'; exec sleep 60"#, seen.display());
    let mut args: Vec<String> = vec!["run".into(), "--watch".into()];
    for i in 0..count {
        args.extend(["--env".into(), format!("V{i}=many/s{i:03}")]);
    }
    args.extend(["--".into(), "sh".into(), "-c".into(), script]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = rekey
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = || std::fs::read_to_string(&seen).unwrap_or_default();
    eventually("the command to start", || {
        (lines() == "v209\n").then_some(())
    });
    rekey.run(&["put", "many/s209", "--value", "changed"]).ok();
    eventually("a restart with the new value", || {
        (lines() == "v209\nchanged\n").then_some(())
    });
    let pid = rustix::process::Pid::from_raw(running.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    eventually("rekey run to stop", || running.try_wait().unwrap());
}
