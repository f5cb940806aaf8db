//! The postgres rotator against a throwaway PostgreSQL with SCRAM
//! authentication, which refuses wrong passwords.

use super::{login, put_json, show, value, without_ssl};
use rekey_tests::databases::ThrowawayPostgres;
use rekey_tests::password_catcher::PasswordCatcher;
use rekey_tests::{Installation, eventually};
use serde_json::{Value, json};

#[test]
fn postgres_single_user_rotation() {
    let Some(pg) = ThrowawayPostgres::start() else {
        return;
    };
    pg.sql("CREATE ROLE app_single LOGIN PASSWORD 'first-password'; CREATE TABLE orders (id int); GRANT SELECT ON orders TO app_single;");
    assert!(pg.logs_in("app_single", "first-password"));
    assert!(
        !pg.logs_in("app_single", "wrong-password"),
        "the server must refuse a wrong password"
    );

    let installation = Installation::new();
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    put_json(
        &admin,
        "create",
        "db/pg",
        &json!({
            "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
            "username": "app_single", "password": "first-password", "dbname": "postgres", "ssl": false,
        }),
    );
    admin
        .run(&["rotation", "configure", "db/pg", "--rotator", "postgres"])
        .ok();
    let run = admin
        .run(&["rotate", "db/pg", "--output", "json"])
        .ok()
        .json();
    assert_eq!(run["state"], "succeeded", "{run}");

    let (user, new_password) = login(&value(&admin, "db/pg", "CURRENT"));
    let (_, old_password) = login(&value(&admin, "db/pg", "PREVIOUS"));
    assert_eq!(user, "app_single");
    assert_eq!(old_password, "first-password");
    assert!(pg.can(&user, &new_password, "SELECT * FROM orders"));
    assert!(
        !pg.logs_in(&user, &old_password),
        "the old password must stop working"
    );
    // Sent as a SCRAM verifier: the plaintext never reached the server's log.
    let log = pg.log();
    assert!(
        log.contains("ALTER ROLE CURRENT_USER PASSWORD 'SCRAM-SHA-256$"),
        "{log}"
    );
    assert!(
        !log.contains(&new_password),
        "the server log holds the password"
    );

    // Again: CURRENT logs in, PREVIOUS is the one before.
    admin.run(&["rotate", "db/pg"]).ok();
    let (_, third) = login(&value(&admin, "db/pg", "CURRENT"));
    assert!(pg.logs_in(&user, &third));
    assert!(!pg.logs_in(&user, &new_password));
    assert_eq!(login(&value(&admin, "db/pg", "PREVIOUS")).1, new_password);
    // rekeyd's own log, the lines it wrote at shutdown too.
    let log = server.stop_for_log();
    assert!(!log.contains(&new_password) && !log.contains(&third));
}

/// Whoever may write a secret's value (the operator role, which may not
/// read it) may point it anywhere and start a rotation. A single user's
/// older passwords are then not sent there: here a listener that asks for
/// passwords in the clear hears the one the writer put, never the
/// database's real one (PREVIOUS once the writer's value is CURRENT).
#[test]
fn postgres_older_passwords_go_only_where_their_values_sent_them() {
    let Some(pg) = ThrowawayPostgres::start() else {
        return;
    };
    pg.sql("CREATE ROLE app_moved LOGIN PASSWORD 'real-password';");
    let catcher = PasswordCatcher::start();
    let installation = Installation::new();
    installation.no_retries();
    let olga = installation.issue("olga", &["operator"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let operator = server.rekey(&olga);
    let at = |port: u16, password: &str| {
        json!({
            "engine": "postgres", "host": "127.0.0.1", "port": port,
            "username": "app_moved", "password": password, "dbname": "postgres", "ssl": false,
        })
    };
    put_json(&admin, "create", "db/moved", &at(pg.port, "real-password"));
    put_json(
        &operator,
        "put",
        "db/moved",
        &at(catcher.port, "writer-knows"),
    );
    operator
        .run(&["rotation", "configure", "db/moved", "--rotator", "postgres"])
        .ok();
    let run = operator
        .run(&["rotate", "db/moved", "--output", "json"])
        .json();
    assert_eq!(run["state"], "needs_attention", "{run}");
    let caught = catcher.caught();
    assert!(
        caught.iter().any(|password| password == "writer-knows"),
        "the listener heard no password: it proves nothing ({} caught)",
        caught.len()
    );
    assert!(
        !caught.iter().any(|password| password == "real-password"),
        "the database's password went to the writer's listener"
    );
    assert!(pg.logs_in("app_moved", "real-password"));
}

/// A put during a run abandons it, and the revert puts CURRENT back into
/// the database. A CURRENT written since by an operator (who may write
/// values but not read them) is not installed: the revert would log in
/// with the run's new password and set the writer's, which they know. The
/// database gets back the password it had before the run, and the run
/// needs attention. So does a put before the run: the revert puts back
/// the value setSecret found the target taking, not CURRENT.
#[test]
fn postgres_a_revert_installs_no_password_a_writer_chose() {
    let Some(pg) = ThrowawayPostgres::start() else {
        return;
    };
    pg.sql("CREATE ROLE app_abandon LOGIN PASSWORD 'before-run';");
    let installation = Installation::new();
    installation.no_retries();
    let olga = installation.issue("olga", &["operator"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let operator = server.rekey(&olga);
    let app = |password: &str| {
        json!({
            "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
            "username": "app_abandon", "password": password, "dbname": "postgres", "ssl": false,
        })
    };
    put_json(&admin, "create", "db/abandon", &app("before-run"));
    admin
        .run(&[
            "rotation",
            "configure",
            "db/abandon",
            "--rotator",
            "postgres",
            "--approve",
            "test",
        ])
        .ok();
    admin.run(&["rotate", "db/abandon", "--no-wait"]).ok();
    eventually("the test gate", || {
        (show(&admin, "db/abandon")["run"]["state"] == "awaiting_approval").then_some(())
    });
    let (_, pending) = login(&value(&admin, "db/abandon", "PENDING"));
    assert!(pg.logs_in("app_abandon", &pending), "setSecret ran");
    put_json(&operator, "put", "db/abandon", &app("writer-chose"));
    let ended = eventually("the run to end", || {
        let shown = show(&admin, "db/abandon");
        (shown["run"]["active"] == false).then_some(shown)
    });
    assert_eq!(ended["run"]["state"], "needs_attention", "{ended}");
    assert!(
        !pg.logs_in("app_abandon", "writer-chose"),
        "the writer's password was installed"
    );
    assert!(pg.logs_in("app_abandon", "before-run"), "{ended}");
    assert!(!pg.logs_in("app_abandon", &pending));
    // A writer's value the database already takes is kept as it is.
    pg.sql("ALTER ROLE app_abandon PASSWORD 'known-to-both';");
    put_json(&admin, "put", "db/abandon", &app("known-to-both"));
    admin.run(&["rotate", "db/abandon", "--no-wait"]).ok();
    eventually("the test gate", || {
        (show(&admin, "db/abandon")["run"]["state"] == "awaiting_approval").then_some(())
    });
    pg.sql("ALTER ROLE app_abandon PASSWORD 'changed-by-hand';");
    put_json(&operator, "put", "db/abandon", &app("changed-by-hand"));
    let ended = eventually("the run to end", || {
        let shown = show(&admin, "db/abandon");
        (shown["run"]["active"] == false).then_some(shown)
    });
    assert_ne!(ended["run"]["state"], "needs_attention", "{ended}");
    assert!(pg.logs_in("app_abandon", "changed-by-hand"));

    // Put before the run: setSecret logs in with PREVIOUS (the database's
    // real password) and changes it; a cancel then puts back what the
    // target took, PREVIOUS's, not the writer's CURRENT.
    put_json(&operator, "put", "db/abandon", &app("writer-before"));
    operator.run(&["rotate", "db/abandon", "--manual"]).ok();
    operator.run(&["rotation", "step", "db/abandon"]).ok();
    operator.run(&["rotation", "step", "db/abandon"]).ok();
    let (_, pending) = login(&value(&admin, "db/abandon", "PENDING"));
    assert!(pg.logs_in("app_abandon", &pending), "setSecret ran");
    operator.run(&["rotation", "cancel", "db/abandon"]).ok();
    let ended = eventually("the run to end", || {
        let shown = show(&admin, "db/abandon");
        (shown["run"]["active"] == false).then_some(shown)
    });
    assert_eq!(ended["run"]["state"], "needs_attention", "{ended}");
    assert!(
        !pg.logs_in("app_abandon", "writer-before"),
        "the writer's password was installed"
    );
    assert!(pg.logs_in("app_abandon", "changed-by-hand"), "{ended}");
}

#[test]
fn postgres_alternating_users() {
    let Some(pg) = ThrowawayPostgres::start() else {
        return;
    };
    pg.sql("CREATE ROLE app_alt LOGIN PASSWORD 'alt-first'; CREATE TABLE ledger (id int); GRANT SELECT ON ledger TO app_alt;");
    let installation = Installation::new();
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    put_json(
        &admin,
        "create",
        "db/pg-admin",
        &json!({
            "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
            "username": "postgres", "password": pg.superuser_password, "dbname": "postgres", "ssl": false,
        }),
    );
    put_json(
        &admin,
        "create",
        "db/pg-app",
        &json!({
            "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
            "username": "app_alt", "password": "alt-first", "dbname": "postgres", "ssl": false,
        }),
    );
    admin
        .run(&[
            "rotation",
            "configure",
            "db/pg-app",
            "--rotator",
            "postgres",
            "--strategy",
            "alternating",
            "--admin-secret",
            "db/pg-admin",
        ])
        .ok();

    let mut seen = vec![("app_alt".to_owned(), "alt-first".to_owned())];
    for round in 1..=3 {
        admin.run(&["rotate", "db/pg-app"]).ok();
        let current = login(&value(&admin, "db/pg-app", "CURRENT"));
        let previous = login(&value(&admin, "db/pg-app", "PREVIOUS"));
        assert_eq!(&previous, seen.last().unwrap(), "round {round}");
        assert_ne!(current.0, previous.0, "round {round}: the users alternate");
        // The newest and the previous credentials log in; the one before not.
        assert!(
            pg.can(&current.0, &current.1, "SELECT * FROM ledger"),
            "round {round}: the clone has the grants"
        );
        assert!(pg.logs_in(&previous.0, &previous.1), "round {round}");
        if seen.len() >= 2 {
            let before = &seen[seen.len() - 2];
            assert!(
                !pg.logs_in(&before.0, &before.1),
                "round {round}: {before:?} still logs in"
            );
        }
        seen.push(current);
    }
    assert!(seen.iter().any(|(user, _)| user == "app_alt_clone"));

    // A value written since, naming another user, does not point the
    // admin at it: the run fails at createSecret and the user keeps its
    // password. (The admin reset victim's password, and gave the writer
    // the new one.)
    pg.sql("CREATE ROLE victim LOGIN PASSWORD 'victim-pw';");
    put_json(
        &admin,
        "put",
        "db/pg-app",
        &json!({
            "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
            "username": "victim_clone", "password": "x", "dbname": "postgres", "ssl": false,
        }),
    );
    let steered = admin.run(&["rotate", "db/pg-app"]);
    assert_ne!(steered.code, 0, "{}", steered.stdout);
    let shown = show(&admin, "db/pg-app");
    assert_eq!(shown["run"]["state"], "failed", "{shown}");
    assert!(
        shown["run"]["end_reason"].as_str().unwrap().contains(
            "the value names database user victim_clone, but this rotation switches app_alt and app_alt_clone"
        ),
        "{shown}"
    );
    assert!(pg.logs_in("victim", "victim-pw"));
    // Configured again the same way (as for a new schedule), the pin stays:
    // refused, naming both users, rather than taking up the one written.
    let again = admin.run(&[
        "rotation",
        "configure",
        "db/pg-app",
        "--rotator",
        "postgres",
        "--strategy",
        "alternating",
        "--admin-secret",
        "db/pg-admin",
        "--schedule",
        "rate(30 days)",
    ]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains(
            "switches database user app_alt, but its CURRENT value names victim: configuring again keeps the user"
        ),
        "{}",
        again.stderr
    );
}

#[test]
fn postgres_revert_and_failures() {
    let Some(pg) = ThrowawayPostgres::start() else {
        return;
    };
    pg.sql("CREATE ROLE app_rev LOGIN PASSWORD 'rev-first'; CREATE ROLE weak_admin LOGIN PASSWORD 'weak-pass';");
    let installation = Installation::new();
    installation.no_retries();
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let bob = server.rekey(&bob);
    let app = |user: &str, password: &str, port: u16| {
        json!({
            "engine": "postgres", "host": "127.0.0.1", "port": port,
            "username": user, "password": password, "dbname": "postgres", "ssl": false,
        })
    };
    put_json(
        &admin,
        "create",
        "db/rev",
        &app("app_rev", "rev-first", pg.port),
    );

    // Rejected after setSecret: the database accepts CURRENT again.
    admin
        .run(&[
            "rotation",
            "configure",
            "db/rev",
            "--rotator",
            "postgres",
            "--approve",
            "test",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "db/rev", "--no-wait"]).ok();
    eventually("the test gate", || {
        (show(&admin, "db/rev")["run"]["state"] == "awaiting_approval").then_some(())
    });
    let (_, pending) = login(&value(&admin, "db/rev", "PENDING"));
    assert!(
        pg.logs_in("app_rev", &pending),
        "setSecret installed the pending password"
    );
    bob.run(&["reject", "db/rev", "--comment", "not now"]).ok();
    eventually("the revert", || {
        (show(&admin, "db/rev")["run"]["state"] == "rejected").then_some(())
    });
    assert!(pg.logs_in("app_rev", "rev-first"), "CURRENT works again");
    assert!(!pg.logs_in("app_rev", &pending));

    // Failures, each in a manual run that stops at the failed step.
    let cases: Vec<(&str, Value, Option<Value>, &str)> = vec![
        (
            "wrong admin password",
            app("app_rev", "rev-first", pg.port),
            Some(app("postgres", "not-the-password", pg.port)),
            "authentication failed for user postgres",
        ),
        (
            "unreachable host",
            app("app_rev", "rev-first", 1),
            None,
            "cannot connect to 127.0.0.1:1",
        ),
        (
            "no right to create roles",
            app("app_rev", "rev-first", pg.port),
            Some(app("weak_admin", "weak-pass", pg.port)),
            "permission denied to create role",
        ),
        // This cluster speaks no TLS: a value that does not say "ssl":
        // false is sent to no database without verified TLS.
        (
            "no verified tls",
            without_ssl(app("app_rev", "rev-first", pg.port)),
            None,
            "only a value with \"ssl\": false is sent to a database without verified TLS",
        ),
    ];
    for (what, target, admin_secret, cause) in cases {
        let name = format!("db/fail-{}", what.replace(' ', "-"));
        put_json(&admin, "create", &name, &target);
        let mut args = vec!["rotation", "configure", &name, "--rotator", "postgres"];
        let admin_name = format!("{name}-admin");
        if let Some(admin_value) = &admin_secret {
            put_json(&admin, "create", &admin_name, admin_value);
            args.extend(["--strategy", "alternating", "--admin-secret", &admin_name]);
        }
        admin.run(&args).ok();
        admin.run(&["rotate", &name, "--manual"]).ok();
        admin.run(&["rotation", "step", &name]).ok();
        admin.run(&["rotation", "step", &name]).ok();
        let shown = show(&admin, &name);
        assert_eq!(shown["run"]["state"], "step_failed", "{what}: {shown}");
        let error = shown["run"]["steps"][1]["error"].as_str().unwrap();
        assert!(error.contains(cause), "{what}: {error}");
        assert!(
            !error.contains("rev-first") && !error.contains("not-the-password"),
            "{what}: {error}"
        );
        assert_eq!(
            value(&admin, &name, "CURRENT"),
            target,
            "{what}: CURRENT untouched"
        );
        let text = admin.run(&["rotation", "show", &name]).ok().stdout;
        assert!(text.contains(cause), "{text}");
        admin.run(&["rotation", "cancel", &name]).ok();
    }
    assert!(pg.logs_in("app_rev", "rev-first"));
}

/// With `"ssl": true` the rotator verifies the database's certificate: one
/// from a CA it does not know is refused before any password is sent (the
/// step fails and says where to name the CA); with the CA in
/// `rotation.database_ca_file`, the rotation goes through, over TLS (the
/// cluster takes TCP connections over TLS only).
#[test]
fn postgres_ssl_verifies_the_database_certificate() {
    let Some(pg) = ThrowawayPostgres::start_with_tls() else {
        return;
    };
    pg.sql("CREATE ROLE app_tls LOGIN PASSWORD 'tls-first'");
    let installation = Installation::new();
    installation.no_retries();
    let credentials = json!({
        "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
        "username": "app_tls", "password": "tls-first", "dbname": "postgres", "ssl": true,
    });
    {
        let server = installation.serve();
        let admin = server.rekey(&installation.admin());
        put_json(&admin, "create", "db/tls", &credentials);
        admin
            .run(&["rotation", "configure", "db/tls", "--rotator", "postgres"])
            .ok();
        admin.run(&["rotate", "db/tls", "--manual"]).ok();
        admin.run(&["rotation", "step", "db/tls"]).ok();
        admin.run(&["rotation", "step", "db/tls"]).ok();
        let shown = show(&admin, "db/tls");
        assert_eq!(shown["run"]["state"], "step_failed", "{shown}");
        let error = shown["run"]["steps"][1]["error"].as_str().unwrap();
        assert!(
            error.contains("TLS with 127.0.0.1") && error.contains("rotation.database_ca_file"),
            "{error}"
        );
        admin.run(&["rotation", "cancel", "db/tls"]).ok();
        // Its revert cannot reach the database either: the run ends.
        eventually("the cancel", || {
            (show(&admin, "db/tls")["run"]["active"] == false).then_some(())
        });
    }
    assert!(pg.logs_in("app_tls", "tls-first"), "nothing changed");

    let set_ca_file = |file: &std::path::Path| {
        installation.edit_config(|table| {
            table
                .entry("rotation")
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap()
                .insert(
                    "database_ca_file".into(),
                    toml::Value::String(file.display().to_string()),
                );
        });
    };
    // A CA file that is not there: refused at start, named.
    set_ca_file(std::path::Path::new("no-such-ca.pem"));
    let refused = installation.refused_at_start();
    assert!(
        refused.contains("rotation.database_ca_file: cannot read")
            && refused.contains("no-such-ca.pem"),
        "{refused}"
    );
    set_ca_file(pg.ca_file.as_ref().unwrap());
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["rotate", "db/tls"]).ok();
    let (user, password) = login(&value(&admin, "db/tls", "CURRENT"));
    assert_eq!(user, "app_tls");
    assert_ne!(password, "tls-first");
    assert!(pg.logs_in("app_tls", &password));
    assert!(!pg.logs_in("app_tls", "tls-first"));
}

/// A step that waits on a lock (another session holds the role in an open
/// transaction) gives up after `rotation.database_timeout_seconds`, on the
/// database server too, and holds up no other rotation meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_step_held_by_a_lock_gives_up_and_holds_up_nothing_else() {
    let Some(pg) = ThrowawayPostgres::start() else {
        return;
    };
    pg.sql("CREATE ROLE app_locked LOGIN PASSWORD 'locked-first'");
    let installation = Installation::new();
    installation.no_retries();
    installation.edit_config(|table| {
        let rotation = table
            .entry("rotation")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        rotation
            .as_table_mut()
            .expect("[rotation] is a table")
            .insert("database_timeout_seconds".into(), 4.into());
    });
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    put_json(
        &admin,
        "create",
        "db/locked",
        &json!({
            "engine": "postgres", "host": "127.0.0.1", "port": pg.port,
            "username": "app_locked", "password": "locked-first", "dbname": "postgres", "ssl": false,
        }),
    );
    admin
        .run(&[
            "rotation",
            "configure",
            "db/locked",
            "--rotator",
            "postgres",
        ])
        .ok();
    admin.run(&["create", "other/due", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "other/due",
            "--rotator",
            "password",
            "--schedule",
            "rate(1 days)",
        ])
        .ok();

    let mut holder = pg.session();
    let mut input = holder.stdin.take().unwrap();
    std::io::Write::write_all(
        &mut input,
        b"BEGIN;\nALTER ROLE app_locked VALID UNTIL 'infinity';\n",
    )
    .unwrap();
    assert!(rekey_tests::wait_for_line(holder.stdout.take().unwrap(), "ALTER ROLE").is_some());
    admin.run(&["rotate", "db/locked", "--no-wait"]).ok();
    eventually("setSecret waiting on the lock", || {
        (pg.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == "1")
            .then_some(())
    });

    // The other secret's schedule comes due while that step waits.
    installation
        .execute_sql(
            "UPDATE rotation_configs SET next_rotation_at = 1000 WHERE secret_id =
             (SELECT id FROM secrets WHERE name = 'other/due')",
        )
        .await;
    eventually("the scheduled run of other/due to succeed", || {
        (show(&admin, "other/due")["run"]["state"] == "succeeded").then_some(())
    });
    assert_eq!(show(&admin, "db/locked")["run"]["state"], "running");

    let failed = eventually("db/locked's run to fail", || {
        let shown = show(&admin, "db/locked");
        (shown["run"]["state"] == "failed").then_some(shown)
    });
    assert!(
        failed["run"]["end_reason"]
            .as_str()
            .unwrap()
            .contains("gave up waiting to change its own password at the step's time limit"),
        "{failed}"
    );
    // Nothing waits on the server once the step gave up: its statement
    // cannot commit when the lock goes.
    assert_eq!(
        pg.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"),
        "0"
    );
    drop(input);
    holder.wait().unwrap();
    let (_, current) = login(&value(&admin, "db/locked", "CURRENT"));
    assert_eq!(current, "locked-first");
    assert!(pg.logs_in("app_locked", "locked-first"));
}
