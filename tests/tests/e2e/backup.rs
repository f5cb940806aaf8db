//! `rekeyd backup` while the server serves and writes, `rekeyd restore`
//! into a new directory, and the restored installation serving every value
//! to the old identities with a verifying audit chain; and the refusals:
//! an existing file, a non-empty directory, another root key, a file that
//! is not a backup, a PostgreSQL installation, a database at an older
//! schema version than the binary's (only the server migrates).

use rekey_tests::databases::StorageDatabase;
use rekey_tests::{Installation, Server, contains_bytes, rekeyd, restore, text};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const PLANTED: &str = "backup-planted-value-7d1f0c";

fn fails_with(output: std::process::Output, message: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(message), "expected {message:?} in {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_serving_restores_every_value_and_the_chain() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let reader = installation.issue("app", &["reader"]);
    let output = rekeyd(installation.dir(), &["keys", "create", "other"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let mut expected = BTreeMap::new();
    for index in 0..12 {
        let name = format!("b/{index:02}");
        let key = if index % 3 == 0 { "other" } else { "default" };
        admin
            .run(&["create", &name, "--key", key, "--value", "first"])
            .ok();
        let value = if index == 5 {
            PLANTED.to_owned()
        } else {
            format!("{name}-second")
        };
        admin.run(&["put", &name, "--value", &value]).ok();
        expected.insert(name, value);
    }
    admin.run(&["create", "b/busy", "--value", "busy-0"]).ok();
    admin.run(&["delete", "b/00", "--recovery-days", "7"]).ok();

    // Writes go on while the backup is taken: it copies one moment.
    let busy = Arc::new(AtomicBool::new(true));
    let writer = {
        let (busy, admin) = (busy.clone(), admin.clone());
        std::thread::spawn(move || {
            let mut written = 0;
            while busy.load(Ordering::Relaxed) {
                written += 1;
                admin
                    .run(&["put", "b/busy", "--value", &format!("busy-{written}")])
                    .ok();
            }
            written
        })
    };
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("backup-of-test.db");
    let backed_up = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    busy.store(false, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(backed_up.status.success(), "{}", text(&backed_up.stderr));
    let said = text(&backed_up.stdout);
    assert!(said.contains("13 secrets"), "{said}");

    // Values and private keys are not readable in the file.
    let bytes = std::fs::read(&file).unwrap();
    assert!(!contains_bytes(&bytes, PLANTED.as_bytes()));
    assert!(!contains_bytes(&bytes, b"PRIVATE KEY"));
    fails_with(
        rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]),
        "exists; choose another file",
    );
    // The backup is an event of the installation it copied (after the copy).
    let log = admin.run(&["audit", "--limit", "1000"]).ok().stdout;
    assert_eq!(log.matches("backup:Create").count(), 1, "{log}");
    drop(server);

    let restored_dir = tempfile::tempdir().unwrap();
    let target = restored_dir.path().join("restored");
    let root_key = installation.dir().join("root.key");
    let output = restore(&target, &file, &root_key);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(said.contains("every value opens"), "{said}");

    // The old identities work against the restored installation.
    let restored = Server::start(&target, &[]);
    let admin = restored.rekey(&installation.admin());
    let app = restored.rekey(&reader);
    for (name, value) in &expected {
        if name == "b/00" {
            continue;
        }
        let got = app.run(&["get", name]).ok().stdout;
        assert_eq!(got.trim_end(), value, "{name}");
        let versions = admin
            .run(&["versions", name, "--all", "--output", "json"])
            .ok()
            .json();
        assert_eq!(
            versions.as_array().map(Vec::len),
            Some(2),
            "{name}: {versions}"
        );
    }
    // Scheduled for deletion in the backup, so still restorable from it.
    admin.run(&["restore", "b/00"]).ok();
    assert_eq!(
        app.run(&["get", "b/00"]).ok().stdout.trim_end(),
        "b/00-second"
    );
    let busy_value = app.run(&["get", "b/busy"]).ok().stdout;
    let busy_number: u32 = busy_value
        .trim_end()
        .strip_prefix("busy-")
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("b/busy holds {busy_value:?}"));
    assert!(busy_number <= written, "{busy_number} > {written}");

    let verified = admin.run(&["audit", "verify"]).ok().stdout;
    assert!(verified.contains("verifies"), "{verified}");
    let log = admin.run(&["audit", "--limit", "1000"]).ok().stdout;
    assert!(log.contains("backup:Restore"), "{log}");
    assert!(!restored.log_text().contains(PLANTED));
}

#[test]
fn restore_refuses_and_leaves_nothing_behind() {
    let installation = Installation::new();
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("refusals-backup.db");
    let output = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let root_key = installation.dir().join("root.key");
    let scratch = tempfile::tempdir().unwrap();

    // Another installation's root key: nothing is written.
    let other = Installation::new();
    let target = scratch.path().join("wrong-key");
    fails_with(
        restore(&target, &file, &other.dir().join("root.key")),
        "the backup was made by an installation with another root key",
    );
    assert!(!target.exists());

    // Not into an installation, nor any non-empty directory.
    fails_with(restore(other.dir(), &file, &root_key), "is not empty");
    assert!(other.dir().join("rekeyd.toml").exists());

    // A file that is not a backup (an installation's own database).
    let target = scratch.path().join("not-a-backup");
    fails_with(
        restore(&target, &installation.database(), &root_key),
        "is not a rekeyd backup",
    );
    assert!(!target.exists());
}

/// A restore that fails after it began writing (a value that does not
/// open, in a backup of an installation whose database was damaged before
/// the backup, so the backup's MACs cover the damage and only the proof
/// finds it) leaves nothing behind, the database's lock file included,
/// and a second try into the same place is not refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_that_fails_its_proof_leaves_nothing() {
    let installation = Installation::new();
    {
        let server = installation.serve();
        server
            .rekey(&installation.admin())
            .run(&["create", "p/x", "--value", "v"])
            .ok();
    }
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", installation.database().display()))
            .await
            .unwrap();
    sqlx::query(
        "UPDATE versions SET ciphertext = zeroblob(length(ciphertext))
         WHERE rowid = (SELECT MIN(rowid) FROM versions)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("damaged-backup.db");
    let output = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("restored");
    let root_key = installation.dir().join("root.key");
    fails_with(restore(&target, &file, &root_key), "nothing was left in");
    assert!(
        !target.exists(),
        "left behind: {:?}",
        std::fs::read_dir(&target)
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    fails_with(restore(&target, &file, &root_key), "nothing was left in");
}

/// A restored installation archives audit events into its own directory,
/// not into the original's (an absolute `archive_dir` in the backup); and
/// its configuration is the original's file, not the environment of the
/// shell that took the backup.
#[test]
fn a_restore_archives_into_its_own_directory() {
    let installation = Installation::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let original_archive = elsewhere.path().join("original-archive");
    installation.edit_config(|table| {
        let audit = table
            .entry("audit")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        audit.as_table_mut().expect("[audit] is a table").insert(
            "archive_dir".into(),
            original_archive.display().to_string().into(),
        );
    });
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("archive-backup.db");
    let output = std::process::Command::new(rekey_tests::binary("rekeyd"))
        .arg("--dir")
        .arg(installation.dir())
        .args(["backup", file.to_str().unwrap()])
        .env("REKEY_METRICS_LISTEN", "0.0.0.0:9464")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("restored");
    let restored = restore(&target, &file, &installation.dir().join("root.key"));
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let config: toml::Table = std::fs::read_to_string(target.join("rekeyd.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        config["audit"]["archive_dir"].as_str(),
        Some("audit-archive")
    );
    assert_eq!(
        config["metrics"]["listen"].as_str(),
        Some("127.0.0.1:9464"),
        "{config}"
    );
}

/// The schema version an installation's database says it is at.
async fn schema_version(database: &Path) -> i64 {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// A newer binary's `rekeyd backup` beside an older server must not
/// migrate the database under it (the older server would then refuse to
/// start): it refuses, writes nothing and changes nothing, until the
/// server has been started with this binary.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_leaves_an_older_schema_to_the_server() {
    let installation = Installation::new();
    let newest = schema_version(&installation.database()).await;
    {
        // As a database the previous release made: its last migration unmade
        // in the record (the migration itself can be made again).
        let url = format!("sqlite://{}", installation.database().display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM schema_migrations WHERE version = ?")
            .bind(newest)
            .execute(&mut db)
            .await
            .unwrap();
    }
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("older-schema-backup.db");
    fails_with(
        rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]),
        &format!(
            "the database schema is at version {}, older than this rekeyd's (version {newest}); \
             only the server migrates it",
            newest - 1
        ),
    );
    assert!(!file.exists());
    assert_eq!(schema_version(&installation.database()).await, newest - 1);

    // The server migrates as it starts; then the command runs.
    assert!(installation.serve().stop().success());
    assert_eq!(schema_version(&installation.database()).await, newest);
    let output = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn a_postgres_installation_is_told_to_use_pg_dump() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let installation = Installation::on_postgres(&database);
    let file = installation.dir().join("pg-backup.db");
    fails_with(
        rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]),
        "back it up with pg_dump",
    );
    assert!(!file.exists());
}

/// A webhook's secret as `head -c 32 /dev/urandom` makes one: not text.
/// Its backup could not be restored ("not text").
const WEBHOOK_SECRET: &[u8] = b"\xff\x80a-webhook-secret-of-32-bytes-long\xfe";

#[tokio::test(flavor = "multi_thread")]
async fn webhook_and_database_ca_files_come_back_and_a_changed_description_is_refused() {
    let installation = Installation::new();
    let secret = installation.dir().join("hook.secret");
    std::fs::write(&secret, WEBHOOK_SECRET).unwrap();
    installation.edit_config(|table| {
        let notifications: toml::Table = format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        )
        .parse()
        .unwrap();
        table.insert("notifications".into(), toml::Value::Table(notifications));
        let rotation: toml::Table = "database_ca_file = \"db-ca.pem\"\n".parse().unwrap();
        table.insert("rotation".into(), toml::Value::Table(rotation));
    });
    // Any certificate will do: the server only checks that it is one.
    let ca = std::fs::read_to_string(installation.dir().join("ca.pem")).unwrap();
    std::fs::write(installation.dir().join("db-ca.pem"), &ca).unwrap();
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("with-webhook.db");
    let output = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let bytes = std::fs::read(&file).unwrap();
    assert!(!contains_bytes(
        &bytes,
        b"a-webhook-secret-of-32-bytes-long"
    ));
    let root_key = installation.dir().join("root.key");
    let scratch = tempfile::tempdir().unwrap();

    // The clear description edited: refused, nothing written.
    let edited = backups.path().join("edited.db");
    std::fs::copy(&file, &edited).unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", edited.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE backup_info SET value = '/somewhere/else' WHERE key = 'source'")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::Connection::close(db).await.unwrap();
    let target = scratch.path().join("edited");
    fails_with(
        restore(&target, &edited, &root_key),
        "was changed after it was written",
    );
    assert!(!target.exists());

    // The webhook's secret comes back beside the configuration, 0600, and
    // the restored installation starts with it.
    let target = scratch.path().join("restored");
    let output = restore(&target, &file, &root_key);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let restored_secret = target.join("webhook-0.secret");
    assert_eq!(std::fs::read(&restored_secret).unwrap(), WEBHOOK_SECRET);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&restored_secret)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(target.join("rekeyd.toml")).unwrap();
    assert!(
        config.contains("secret_file = \"webhook-0.secret\"")
            && config.contains("database_ca_file = \"database-ca.pem\""),
        "{config}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("database-ca.pem")).unwrap(),
        ca
    );
    let server = Server::start(&target, &[]);
    server.rekey(&installation.admin()).run(&["list"]).ok();
}

/// The file a backup is written into while it is made is one the backup
/// made itself, under a name no one could guess: an empty file planted in
/// the backup's directory under the name it used (`FILE.partial-PID`) took
/// the snapshot, with its planter's mode, and was published as the backup.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_never_written_into_a_planted_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let installation = Installation::new();
    let backups = tempfile::tempdir().unwrap();
    let out = backups.path().join("b.db");
    let planted = backups
        .path()
        .join(format!("b.db.partial-{}", std::process::id()));
    std::fs::write(&planted, b"").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loaded = rekey_server::config::load(installation.dir(), None).unwrap();
    rekey_server::backup::backup(&loaded, &out).await.unwrap();
    let written = std::fs::metadata(&out).unwrap();
    assert_eq!(written.permissions().mode() & 0o777, 0o600);
    assert_ne!(written.ino(), std::fs::metadata(&planted).unwrap().ino());
    assert_eq!(std::fs::metadata(&planted).unwrap().len(), 0);
}

/// A restore of a backup of 400 secrets into `target`, sent `signal` once
/// it has begun writing (proving the values takes a while after the files
/// are written); what it printed, or `None` if it was done by then.
async fn restore_interrupted_by(
    signal: rustix::process::Signal,
    target: &Path,
) -> Option<std::process::Output> {
    let installation = Installation::new();
    {
        let server = installation.serve();
        let client = server.client(&installation.admin()).await;
        // Enough values that proving them takes a while after the files
        // are written.
        let creates: Vec<_> = (0..400)
            .map(|index| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    client
                        .create_secret(rekey_shared::proto::CreateSecretRequest {
                            name: format!("many/{index}"),
                            secret_string: Some(format!("value-{index}")),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                })
            })
            .collect();
        for create in creates {
            create.await.unwrap();
        }
    }
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("many.db");
    let output = std::process::Command::new(rekey_tests::binary("rekeyd"))
        .arg("--dir")
        .arg(installation.dir())
        .args(["backup", file.to_str().unwrap()])
        .env("REKEY_METRICS_LISTEN", "0.0.0.0:9464")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let restoring = std::process::Command::new(rekey_tests::binary("rekeyd"))
        .arg("--dir")
        .arg(target)
        .args(["restore", file.to_str().unwrap(), "--root-key-file"])
        .arg(installation.dir().join("root.key"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !target.join("rekeyd.toml").exists() {
        assert!(std::time::Instant::now() < deadline, "nothing was written");
        std::thread::yield_now();
    }
    let pid = rustix::process::Pid::from_raw(restoring.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let output = tokio::task::block_in_place(|| restoring.wait_with_output()).unwrap();
    if output.status.success() {
        assert!(text(&output.stdout).contains("every value opens"));
        return None;
    }
    Some(output)
}

/// A restore interrupted (SIGINT) once it has begun writing ends as a
/// failure does, taking back what it wrote. It died with the installation
/// half written and its values never proven, which `rekeyd serve` would
/// have started on, and a second restore refused the directory as not
/// empty. (Should the signal come only once the restore is done, it is
/// done: whole.)
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_restore_leaves_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("restored");
    let Some(output) = restore_interrupted_by(rustix::process::Signal::INT, &target).await else {
        return;
    };
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("interrupted by a signal") && stderr.contains("nothing was left"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&target)
        .map(|entries| entries.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A restore killed where nothing can take back what it wrote (SIGKILL;
/// likewise a hang-up, a power cut) leaves its mark: no command opens the
/// half-written installation, and a second restore says what happened.
/// (Before, `serve` started on it, its values never proven.)
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_restore_leaves_an_installation_no_command_opens() {
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("restored");
    let Some(_) = restore_interrupted_by(rustix::process::Signal::KILL, &target).await else {
        return;
    };
    assert!(target.join("RESTORE-UNFINISHED").exists());
    let refused = rekey_tests::refused_at_start(&target);
    assert!(refused.contains("did not finish"), "{refused}");
    let backup = rekeyd(
        &target,
        &["backup", scratch.path().join("b.db").to_str().unwrap()],
    );
    assert!(
        text(&backup.stderr).contains("did not finish"),
        "{}",
        text(&backup.stderr)
    );
    let again = rekeyd(
        &target,
        &["restore", "any.db", "--root-key-file", "root.key"],
    );
    assert!(
        text(&again.stderr).contains("remove the directory and restore again"),
        "{}",
        text(&again.stderr)
    );
    // Nor does init make an installation over it.
    let before = std::fs::read_dir(&target).unwrap().count();
    let init = rekeyd(&target, &["init"]);
    assert!(
        text(&init.stderr).contains("did not finish"),
        "{}",
        text(&init.stderr)
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), before);
}

/// A restored installation rotates nothing until an operator says so: a
/// schedule that came due since the backup does not start, nor does a run
/// asked for, until `rotation.paused` is set to false and the server
/// restarted. (A drill on another host must not rotate production's
/// passwords, and after a loss the targets may hold passwords the backup
/// does not.)
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_installation_rotates_nothing_until_resumed() {
    let installation = Installation::new();
    // A custom rotator kept inside the installation: no backup holds it.
    installation.edit_config(|table| {
        let rotation: toml::Table = "[exec.ldap]\ncommand = \"rotators/ldap.sh\"\n"
            .parse()
            .unwrap();
        table.insert("rotation".into(), toml::Value::Table(rotation));
    });
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "r/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "r/db",
            "--rotator",
            "password",
            "--schedule",
            "rate(1 days)",
        ])
        .ok();
    drop(server);
    // The schedule came due while no server ran.
    installation
        .execute_sql("UPDATE rotation_configs SET next_rotation_at = 1000")
        .await;
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("due.db");
    let backed_up = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    assert!(backed_up.status.success(), "{}", text(&backed_up.stderr));

    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("restored");
    let output = restore(&target, &file, &installation.dir().join("root.key"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(said.contains("rotation is paused there"), "{said}");
    assert!(
        said.contains(&format!(
            "a backup holds no rotator programs: copy rotators/ldap.sh to {}",
            target.join("rotators/ldap.sh").display()
        )),
        "{said}"
    );
    let config_file = target.join("rekeyd.toml");
    let mut config: toml::Table = std::fs::read_to_string(&config_file)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["rotation"]["paused"].as_bool(), Some(true));

    let restored = Server::start(&target, &[]);
    // The engine says it is paused once it has started, and then does
    // nothing at all.
    rekey_tests::eventually("the engine to say it is paused", || {
        restored
            .log_text()
            .contains("rotation is paused")
            .then_some(())
    });
    assert!(
        restored
            .log_text()
            .contains("an exec rotator's program is not there"),
        "{}",
        restored.log_text()
    );
    let admin = restored.rekey(&installation.admin());
    let asked = admin.run(&["rotate", "r/db"]);
    assert!(
        asked.stderr.contains("rotation is paused on this server"),
        "{}",
        asked.stderr
    );
    let shown = admin
        .run(&["rotation", "show", "r/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(shown["run"], serde_json::Value::Null, "{shown}");
    let stepped = admin.run(&["rotation", "step", "r/db"]);
    assert!(
        stepped.stderr.contains("rotation is paused on this server"),
        "{}",
        stepped.stderr
    );
    drop(restored);

    config["rotation"]
        .as_table_mut()
        .unwrap()
        .insert("paused".into(), false.into());
    std::fs::write(&config_file, config.to_string()).unwrap();
    let resumed = Server::start(&target, &[]);
    let admin = resumed.rekey(&installation.admin());
    let shown = rekey_tests::eventually("the due rotation to run", || {
        let shown = admin
            .run(&["rotation", "show", "r/db", "--output", "json"])
            .ok()
            .json();
        (shown["run"]["state"] == "succeeded").then_some(shown)
    });
    assert_eq!(shown["run"]["scheduled"], true, "{shown}");
}
