//! Master keys: rotate, rewrap, retire and restart, with every value still
//! readable; a running server sees another process's key changes, and
//! drops the reads it kept in memory when a version it knew is retired.

use rekey_tests::{DEADLINE, Installation, eventually, metric, rekeyd, text};
use sqlx::{Connection, SqliteConnection};
use std::time::{Duration, Instant};

async fn key_versions(installation: &Installation) -> Vec<(String, i64)> {
    let url = format!("sqlite://{}", installation.database().display());
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query_as("SELECT version_id, key_version FROM versions ORDER BY version_id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    rows
}

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_rewrap_retire_restart_and_every_value_reads() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let mut expected = Vec::new();
    for index in 0..4 {
        let name = format!("k/{index}");
        admin
            .run(&["create", &name, "--value", &format!("{name}-old")])
            .ok();
        admin
            .run(&["put", &name, "--value", &format!("{name}-new")])
            .ok();
        expected.push(name);
    }

    ok(rekeyd(installation.dir(), &["keys", "rotate", "default"]));
    // The running server wraps new data keys under version 2 within seconds.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let put = admin.run(&["put", "k/probe", "--value", "p"]).code;
        if put != 0 {
            admin.run(&["create", "k/probe", "--value", "p"]).ok();
        }
        let versions = key_versions(&installation).await;
        if versions.iter().any(|(_, version)| *version == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the server never used version 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let refused = rekeyd(installation.dir(), &["keys", "retire", "default", "1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("still wrapped under default version 1"),
        "{}",
        text(&refused.stderr)
    );
    let newest = rekeyd(installation.dir(), &["keys", "retire", "default", "2"]);
    assert!(
        text(&newest.stderr).contains("is the newest"),
        "{}",
        text(&newest.stderr)
    );

    // The server keeps these reads in memory, each data key still wrapped
    // under version 1 (the second read of each; the first records the
    // day's access, a write).
    let hits = || metric(&server, "rekey_read_cache_total{result=\"hit\"}");
    let misses = || metric(&server, "rekey_read_cache_total{result=\"miss\"}");
    let before = hits();
    for _ in 0..3 {
        for name in &expected {
            admin.run(&["get", name]).ok();
        }
    }
    assert_eq!(
        hits(),
        before + 4.0,
        "the third read of each came from memory"
    );

    let rewrapped = rekeyd(installation.dir(), &["keys", "rewrap", "default"]);
    assert!(rewrapped.status.success(), "{}", text(&rewrapped.stderr));
    assert!(
        text(&rewrapped.stderr).contains("(100%)"),
        "{}",
        text(&rewrapped.stderr)
    );
    assert!(
        key_versions(&installation)
            .await
            .iter()
            .all(|(_, version)| *version == 2)
    );
    // Run again: nothing left, nothing broken (resumable).
    ok(rekeyd(installation.dir(), &["keys", "rewrap"]));
    ok(rekeyd(
        installation.dir(),
        &["keys", "retire", "default", "1"],
    ));
    let listed = ok(rekeyd(installation.dir(), &["keys", "list"]));
    assert!(
        !listed
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["default", "1"])
    );

    // Within a second the server forgets version 1, and what it kept in
    // memory first: every read answers, and then comes from the database.
    let missed = misses();
    eventually("the server to drop the reads it kept", || {
        for name in &expected {
            assert_eq!(
                admin.run(&["get", name]).ok().stdout,
                format!("{name}-new\n")
            );
        }
        (misses() >= missed + 4.0).then_some(())
    });
    drop(admin);
    assert!(server.stop().success());
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    for name in &expected {
        assert_eq!(
            admin.run(&["get", name]).ok().stdout,
            format!("{name}-new\n")
        );
        assert_eq!(
            admin.run(&["get", name, "--stage", "PREVIOUS"]).ok().stdout,
            format!("{name}-old\n")
        );
    }
    admin.run(&["audit", "verify"]).ok();
}

#[test]
fn moving_a_secret_needs_keys_use_on_both_keys() {
    let installation = Installation::new();
    ok(rekeyd(installation.dir(), &["keys", "create", "payments"]));
    let operator = installation.issue("op", &["operator"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "m/x", "--value", "v"]).ok();
    let policy = admin.run(&["policy", "get"]).ok().stdout;
    // The operator may use the default key only.
    let limited = policy.replace(
        "actions = [\"keys:Use\"]\nresources = [\"key:*\"]",
        "actions = [\"keys:Use\"]\nresources = [\"key:default\"]",
    );
    assert_ne!(limited, policy, "{policy}");
    admin.apply_policy(&limited).ok();

    let operator = server.rekey(&operator);
    let refused = operator.run(&["update", "m/x", "--key", "payments"]);
    assert!(
        refused
            .stderr
            .contains("op may not keys:Use on key:payments"),
        "{}",
        refused.stderr
    );
    let described = admin
        .run(&["describe", "m/x", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["key_name"], "default");
    admin.run(&["update", "m/x", "--key", "payments"]).ok();
    assert_eq!(admin.run(&["get", "m/x"]).ok().stdout, "v\n");
}
