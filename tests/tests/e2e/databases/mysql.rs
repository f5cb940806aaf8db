//! The mysql rotator against the local MariaDB, with users made for each
//! test.

use super::{login, put_json, show, value};
use rekey_tests::databases::TestMysql;
use rekey_tests::{Installation, eventually};
use serde_json::json;

#[test]
fn mysql_single_user_rotation() {
    let Some(mysql) = TestMysql::connect() else {
        return;
    };
    let (user, password) = mysql.create_user("SELECT ON test.*");
    assert!(mysql.logs_in(&user, &password));
    assert!(
        !mysql.logs_in(&user, "wrong-password"),
        "the server must refuse a wrong password"
    );
    let installation = Installation::new();
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    put_json(
        &admin,
        "create",
        "db/my",
        &json!({
            "engine": "mysql", "host": mysql.host, "port": mysql.port,
            "username": user, "password": password, "dbname": "test", "ssl": false,
        }),
    );
    admin
        .run(&["rotation", "configure", "db/my", "--rotator", "mysql"])
        .ok();
    admin.run(&["rotate", "db/my"]).ok();
    let (_, new_password) = login(&value(&admin, "db/my", "CURRENT"));
    assert_eq!(login(&value(&admin, "db/my", "PREVIOUS")).1, password);
    assert!(mysql.logs_in(&user, &new_password));
    assert!(
        !mysql.logs_in(&user, &password),
        "the old password must stop working"
    );
    let log = server.stop_for_log();
    assert!(
        !log.contains(&new_password) && !log.contains("SET PASSWORD"),
        "the statement reached rekey's log"
    );
}

#[test]
fn mysql_alternating_users_and_revert() {
    let Some(mysql) = TestMysql::connect() else {
        return;
    };
    let (admin_user, admin_password) = mysql.create_user("");
    mysql.sql(&format!(
        "GRANT ALL PRIVILEGES ON *.* TO '{admin_user}'@'%' WITH GRANT OPTION"
    ));
    let (user, password) = mysql.create_user("");
    mysql.adopt(&format!("{user}_clone"));
    // A table only this user may read: the clone must inherit the grant.
    let table = format!("test.{user}_t");
    mysql.sql(&format!("CREATE TABLE IF NOT EXISTS {table} (id INT)"));
    mysql.sql(&format!("GRANT SELECT ON {table} TO '{user}'@'%'"));
    let (stranger, stranger_password) = mysql.create_user("");
    let query = format!("SELECT COUNT(*) FROM {table}");
    assert!(mysql.can(&user, &password, &query));
    assert!(
        !mysql.can(&stranger, &stranger_password, &query),
        "the grant check must be able to fail"
    );
    let installation = Installation::new();
    installation.no_retries();
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let bob = server.rekey(&bob);
    let credentials = |user: &str, password: &str| {
        json!({
            "engine": "mysql", "host": mysql.host, "port": mysql.port,
            "username": user, "password": password, "dbname": "test", "ssl": false,
        })
    };
    put_json(
        &admin,
        "create",
        "db/my-admin",
        &credentials(&admin_user, &admin_password),
    );
    put_json(
        &admin,
        "create",
        "db/my-app",
        &credentials(&user, &password),
    );
    admin
        .run(&[
            "rotation",
            "configure",
            "db/my-app",
            "--rotator",
            "mysql",
            "--strategy",
            "alternating",
            "--admin-secret",
            "db/my-admin",
        ])
        .ok();
    let mut seen = vec![(user.clone(), password.clone())];
    for round in 1..=3 {
        admin.run(&["rotate", "db/my-app"]).ok();
        let current = login(&value(&admin, "db/my-app", "CURRENT"));
        let previous = login(&value(&admin, "db/my-app", "PREVIOUS"));
        assert_eq!(&previous, seen.last().unwrap(), "round {round}");
        assert_ne!(current.0, previous.0);
        assert!(
            mysql.can(&current.0, &current.1, &query),
            "round {round}: the clone has the grants"
        );
        assert!(mysql.logs_in(&previous.0, &previous.1), "round {round}");
        if seen.len() >= 2 {
            let before = &seen[seen.len() - 2];
            assert!(
                !mysql.logs_in(&before.0, &before.1),
                "round {round}: {before:?} still logs in"
            );
        }
        seen.push(current);
    }

    // Rejected after setSecret: MariaDB accepts CURRENT again.
    admin
        .run(&[
            "rotation",
            "configure",
            "db/my-app",
            "--rotator",
            "mysql",
            "--strategy",
            "alternating",
            "--admin-secret",
            "db/my-admin",
            "--approve",
            "test",
            "--approvals",
            "1",
        ])
        .ok();
    let current = login(&value(&admin, "db/my-app", "CURRENT"));
    let previous = login(&value(&admin, "db/my-app", "PREVIOUS"));
    admin.run(&["rotate", "db/my-app", "--no-wait"]).ok();
    eventually("the test gate", || {
        (show(&admin, "db/my-app")["run"]["state"] == "awaiting_approval").then_some(())
    });
    let pending = login(&value(&admin, "db/my-app", "PENDING"));
    assert!(mysql.logs_in(&pending.0, &pending.1));
    assert!(
        !mysql.logs_in(&previous.0, &previous.1),
        "the pending user's old password is replaced"
    );
    bob.run(&["reject", "db/my-app", "--comment", "no"]).ok();
    eventually("the revert", || {
        (show(&admin, "db/my-app")["run"]["state"] == "rejected").then_some(())
    });
    assert!(mysql.logs_in(&current.0, &current.1), "CURRENT works");
    // The revert installs CURRENT's credentials, which are the other user's;
    // the pending user keeps the password setSecret gave it (the previous
    // one is gone), which the next run replaces.
    assert_ne!(pending.0, current.0);
    assert!(
        mysql.logs_in(&pending.0, &pending.1),
        "the pending user's password after the revert"
    );
    mysql.sql(&format!("DROP TABLE IF EXISTS {table}"));
}

/// A setSecret that failed after creating the clone (the admin could not
/// pass on the user's grant) leaves a clone that logs in with fewer grants;
/// its retry, once the admin may, gives the clone the grants and the
/// rotation finishes (before, the retry found the clone logging in and
/// copied nothing, and testSecret could not reach the database).
#[test]
fn mysql_a_clone_left_without_its_grants_gets_them_on_retry() {
    let Some(mysql) = TestMysql::connect() else {
        return;
    };
    let (admin_user, admin_password) = mysql.create_user("CREATE USER ON *.*");
    mysql.sql(&format!("GRANT SELECT ON mysql.* TO '{admin_user}'@'%'"));
    mysql.sql(&format!("GRANT SELECT ON test.* TO '{admin_user}'@'%'"));
    let (user, password) = mysql.create_user("");
    mysql.adopt(&format!("{user}_clone"));
    let table = format!("test.{user}_t");
    mysql.sql(&format!("CREATE TABLE IF NOT EXISTS {table} (id INT)"));
    mysql.sql(&format!("GRANT SELECT ON {table} TO '{user}'@'%'"));
    let query = format!("SELECT COUNT(*) FROM {table}");
    let installation = Installation::new();
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let credentials = |user: &str, password: &str| {
        json!({
            "engine": "mysql", "host": mysql.host, "port": mysql.port,
            "username": user, "password": password, "dbname": "test", "ssl": false,
        })
    };
    put_json(
        &admin,
        "create",
        "db/grants-admin",
        &credentials(&admin_user, &admin_password),
    );
    put_json(
        &admin,
        "create",
        "db/grants",
        &credentials(&user, &password),
    );
    admin
        .run(&[
            "rotation",
            "configure",
            "db/grants",
            "--rotator",
            "mysql",
            "--strategy",
            "alternating",
            "--admin-secret",
            "db/grants-admin",
        ])
        .ok();
    admin.run(&["rotate", "db/grants", "--manual"]).ok();
    admin.run(&["rotation", "step", "db/grants"]).ok();
    admin.run(&["rotation", "step", "db/grants"]).ok();
    let shown = show(&admin, "db/grants");
    assert_eq!(shown["run"]["state"], "step_failed", "{shown}");
    let error = shown["run"]["steps"][1]["error"].as_str().unwrap();
    assert!(error.contains("permission denied to grant"), "{error}");
    let pending = login(&value(&admin, "db/grants", "PENDING"));
    assert!(
        !mysql.can(&pending.0, &pending.1, &query),
        "the clone was left without the grant"
    );

    mysql.sql(&format!(
        "GRANT ALL PRIVILEGES ON *.* TO '{admin_user}'@'%' WITH GRANT OPTION"
    ));
    admin.run(&["rotation", "retry", "db/grants"]).ok();
    for _ in 0..3 {
        if show(&admin, "db/grants")["run"]["state"] == "succeeded" {
            break;
        }
        admin.run(&["rotation", "step", "db/grants"]).ok();
    }
    let shown = show(&admin, "db/grants");
    assert_eq!(shown["run"]["state"], "succeeded", "{shown}");
    let current = login(&value(&admin, "db/grants", "CURRENT"));
    assert_eq!(current, pending);
    assert!(
        mysql.can(&current.0, &current.1, &query),
        "the clone has the grant"
    );
    mysql.sql(&format!("DROP TABLE IF EXISTS {table}"));
}

/// Alternating users on MariaDB: a user with accounts at two hosts gets its
/// clone at both, held to the account's options (a connection limit here)
/// without its credentials. Only the first host got a clone, and the
/// options were cut off with the credentials.
#[test]
fn mysql_a_clone_is_made_at_every_host_with_the_users_options() {
    let Some(mysql) = TestMysql::connect() else {
        return;
    };
    let (admin_user, admin_password) = mysql.create_user("");
    mysql.sql(&format!(
        "GRANT ALL PRIVILEGES ON *.* TO '{admin_user}'@'%' WITH GRANT OPTION"
    ));
    let (user, password) = mysql.create_user("SELECT ON test.*");
    mysql.sql(&format!(
        "CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'"
    ));
    mysql.sql(&format!("GRANT SELECT ON test.* TO '{user}'@'localhost'"));
    mysql.sql(&format!(
        "ALTER USER '{user}'@'%' WITH MAX_USER_CONNECTIONS 5"
    ));
    let clone = format!("{user}_clone");
    mysql.adopt(&clone);
    let installation = Installation::new();
    installation.no_retries();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let credentials = |user: &str, password: &str| {
        json!({
            "engine": "mysql", "host": mysql.host, "port": mysql.port,
            "username": user, "password": password, "dbname": "test", "ssl": false,
        })
    };
    put_json(
        &admin,
        "create",
        "db/hosts-admin",
        &credentials(&admin_user, &admin_password),
    );
    put_json(&admin, "create", "db/hosts", &credentials(&user, &password));
    admin
        .run(&[
            "rotation",
            "configure",
            "db/hosts",
            "--rotator",
            "mysql",
            "--strategy",
            "alternating",
            "--admin-secret",
            "db/hosts-admin",
        ])
        .ok();
    let rotated = admin.run(&["rotate", "db/hosts"]);
    assert_eq!(rotated.code, 0, "{}", show(&admin, "db/hosts"));
    let current = login(&value(&admin, "db/hosts", "CURRENT"));
    assert_eq!(current.0, clone);
    assert!(mysql.can(&current.0, &current.1, "SELECT 1"));
    assert_eq!(
        mysql.query(&format!(
            "SELECT CAST(Host AS CHAR) FROM mysql.user WHERE User = '{clone}' ORDER BY Host"
        )),
        ["%", "localhost"]
    );
    let grants = mysql.query(&format!("SHOW GRANTS FOR '{clone}'@'%'"));
    assert!(
        grants
            .iter()
            .any(|grant| grant.contains("WITH MAX_USER_CONNECTIONS 5")),
        "{grants:?}"
    );
    let own_hash = mysql.query(&format!(
        "SELECT CAST(authentication_string AS CHAR) FROM mysql.user WHERE User = '{user}' AND Host = '%'"
    ));
    let clone_hash = mysql.query(&format!(
        "SELECT CAST(authentication_string AS CHAR) FROM mysql.user WHERE User = '{clone}' AND Host = '%'"
    ));
    assert_ne!(own_hash, clone_hash, "the clone has the user's password");
}
