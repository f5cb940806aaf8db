//! The `rekeyd` binary's own promises: init never overwrites, a readable
//! root key is refused, the default configuration prints. (These tests also
//! make `cargo test` build `rekeyd` for the end-to-end suite in `tests/`.)

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn rekeyd(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rekeyd"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        // Tests run side by side: none may take the default metrics port.
        .env("REKEY_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap()
}

#[test]
fn init_refuses_to_overwrite_an_installation() {
    let dir = tempfile::tempdir().unwrap();
    assert!(rekeyd(dir.path(), &["init"]).status.success());
    let root_key = std::fs::read(dir.path().join("root.key")).unwrap();
    let again = rekeyd(dir.path(), &["init"]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.path().join("root.key")).unwrap(),
        root_key
    );
}

#[test]
fn key_files_are_private_and_a_readable_root_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    assert!(rekeyd(dir.path(), &["init"]).status.success());
    for private in ["root.key", "ca.key", "server.key", "admin.pem", "rekey.db"] {
        let mode = std::fs::metadata(dir.path().join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{private} has mode {mode:o}");
    }
    let root_key = dir.path().join("root.key");
    std::fs::set_permissions(&root_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = rekeyd(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn keys_create_and_list() {
    let dir = tempfile::tempdir().unwrap();
    assert!(rekeyd(dir.path(), &["init"]).status.success());
    assert!(
        rekeyd(dir.path(), &["keys", "create", "payments"])
            .status
            .success()
    );
    let duplicate = rekeyd(dir.path(), &["keys", "create", "payments"]);
    assert_eq!(duplicate.status.code(), Some(1));
    let listed = String::from_utf8(rekeyd(dir.path(), &["keys", "list"]).stdout).unwrap();
    assert!(
        listed.contains("default") && listed.contains("payments"),
        "{listed}"
    );
    let bad = rekeyd(dir.path(), &["keys", "create", "no/slash"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn the_default_configuration_prints() {
    let dir = tempfile::tempdir().unwrap();
    let output = rekeyd(dir.path(), &["print-default-config"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:8443\""), "{text}");
    assert!(
        text.contains("database_url = \"sqlite://rekey.db\""),
        "{text}"
    );
}

#[test]
fn a_database_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(rekeyd(dir.path(), &["init"]).status.success());
    let url = format!("sqlite://{}", dir.path().join("rekey.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)")
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
    });
    let refused = rekeyd(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("schema is at version 999, newer than this rekeyd knows"),
        "{stderr}"
    );
}

/// `init` makes the installation its flags and file say, whatever
/// `REKEY_DATABASE_URL` or `REKEY_ROOT_KEY_FILE` an operator's shell still
/// holds, and leaves the mode of a directory that was there alone.
#[test]
fn init_takes_no_database_or_root_key_from_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let wanted = dir.path().join("wanted.db");
    let elsewhere = dir.path().join("elsewhere.db");
    let output = Command::new(env!("CARGO_BIN_EXE_rekeyd"))
        .arg("--dir")
        .arg(dir.path())
        .args(["init", "--database-url"])
        .arg(format!("sqlite://{}", wanted.display()))
        .env(
            "REKEY_DATABASE_URL",
            format!("sqlite://{}", elsewhere.display()),
        )
        .env("REKEY_ROOT_KEY_FILE", dir.path().join("other.key"))
        .env("REKEY_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(wanted.exists());
    assert!(!elsewhere.exists(), "init wrote the environment's database");
    assert!(dir.path().join("root.key").exists());
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o750, "the directory's mode changed");
}

/// An init that fails part way (its database cannot be reached) leaves
/// nothing behind, so that the next init is not refused as overwriting.
#[test]
fn a_failed_init_leaves_nothing_and_the_next_one_works() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new");
    let failed = rekeyd(
        &dir,
        &["init", "--database-url", "mysql://root@127.0.0.1/none"],
    );
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        !dir.exists(),
        "left behind: {:?}",
        std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let again = rekeyd(&dir, &["init"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// `init` pointed at a database that already has a schema (here another
/// installation's, one release older) refuses it and changes nothing
/// there: it does not migrate it first.
#[test]
fn init_leaves_a_database_with_a_schema_alone() {
    let first = tempfile::tempdir().unwrap();
    assert!(rekeyd(first.path(), &["init"]).status.success());
    let database = first.path().join("rekey.db");
    let schema = |database: &std::path::Path| -> i64 {
        rusqlite::Connection::open(database)
            .unwrap()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
                row.get(0)
            })
            .unwrap()
    };
    let newest = schema(&database);
    rusqlite::Connection::open(&database)
        .unwrap()
        .execute("DELETE FROM schema_migrations WHERE version = ?1", [newest])
        .unwrap();

    let second = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", database.display());
    let refused = rekeyd(second.path(), &["init", "--database-url", &url]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "already holds a rekey schema (version {})",
            newest - 1
        )),
        "{stderr}"
    );
    assert_eq!(schema(&database), newest - 1, "init migrated the database");
}
