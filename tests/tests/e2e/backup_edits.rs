//! A backup edited by someone without the root key is refused before
//! anything is written: a certificate un-revoked, a policy version added, a
//! trigger planted, a value's ciphertext changed, a sealed file taken out
//! or one of another backup put in its place; and a damaged one (a sealed
//! file that does not open) or a malformed one is told apart from one of
//! another installation. A backup of format 1 (before
//! the tables' MACs) restores only when asked to, and says what it could
//! not prove.

use rekey_tests::{Installation, rekeyd, restore, text};
use sqlx::Connection;
use std::path::{Path, PathBuf};

/// The sealed `name` of the backup `file`.
async fn sealed_file(file: &Path, name: &str) -> Vec<u8> {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let sealed = sqlx::query_scalar("SELECT sealed FROM backup_files WHERE name = ?")
        .bind(name)
        .fetch_one(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    sealed
}

/// An installation with a secret and a revoked certificate, and a backup
/// of it in `backups`.
fn backed_up(backups: &Path) -> (Installation, PathBuf) {
    let installation = Installation::new();
    {
        let server = installation.serve();
        server
            .rekey(&installation.admin())
            .run(&["create", "edits/x", "--value", "v"])
            .ok();
    }
    installation.issue("gone", &["reader"]);
    let output = rekeyd(installation.dir(), &["cert", "revoke", "gone"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let file = backups.join("backup.db");
    let output = rekeyd(installation.dir(), &["backup", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    (installation, file)
}

/// A copy of `file` named `name`, with `sql` run on it.
async fn edited(file: &Path, name: &str, sql: &str) -> PathBuf {
    let copy = file.with_file_name(format!("{name}.db"));
    std::fs::copy(file, &copy).unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
    db.close().await.unwrap();
    copy
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_backup_is_refused_before_anything_is_written() {
    let backups = tempfile::tempdir().unwrap();
    let (installation, file) = backed_up(backups.path());
    let root_key = installation.dir().join("root.key");
    let scratch = tempfile::tempdir().unwrap();

    let edits = [
        (
            "unrevoked",
            "UPDATE certificates SET revoked_at = NULL, revoked_by = NULL",
            "its table certificates was changed",
        ),
        (
            "policy-added",
            "INSERT INTO policies (version, document, created_at, created_by)
             SELECT version + 1, document || '\n# added', created_at, created_by
             FROM policies ORDER BY version DESC LIMIT 1",
            "its table policies was changed",
        ),
        (
            "trigger",
            "CREATE TRIGGER planted AFTER INSERT ON audit_events
             BEGIN UPDATE certificates SET revoked_at = NULL; END",
            "its schema (tables, indexes, triggers) was changed",
        ),
        (
            "ciphertext",
            "UPDATE versions SET ciphertext = zeroblob(length(ciphertext))",
            "its table versions was changed",
        ),
        (
            "file-removed",
            "DELETE FROM backup_files WHERE name = 'ca.key'",
            "lacks ca.key, which it was written with",
        ),
        // A bit flipped by a bad copy: the key is the backup's, so it is not
        // called another installation's.
        (
            "damaged",
            "UPDATE backup_files SET sealed = CAST(substr(sealed, 1, length(sealed) - 1)
               || CASE WHEN substr(sealed, -1) = x'00' THEN x'01' ELSE x'00' END AS BLOB)
             WHERE name = 'ca.pem'",
            "is damaged: this root key opens the backup, but not ca.pem in it",
        ),
        // A description that is not text: refused, not a panic.
        (
            "description-not-text",
            "UPDATE backup_info SET value = CAST(value AS BLOB) WHERE key = 'source'",
            "is not a rekeyd backup",
        ),
    ];
    // The configuration sealed in another backup of the same installation
    // (taken after a change), put in this one's place.
    installation.edit_config(|table| {
        table.insert("listen".into(), "127.0.0.1:7443".into());
    });
    let later = backups.path().join("later.db");
    let output = rekeyd(installation.dir(), &["backup", later.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let swapped_config = sealed_file(&later, "rekeyd.toml").await;
    let swap = format!(
        "UPDATE backup_files SET sealed = x'{}' WHERE name = 'rekeyd.toml'",
        swapped_config
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    );
    let edits: Vec<(&str, &str, &str)> = edits
        .into_iter()
        .chain([(
            "file-swapped",
            swap.as_str(),
            "its rekeyd.toml is not the one it was written with",
        )])
        .collect();
    for (name, sql, message) in edits {
        let copy = edited(&file, name, sql).await;
        let target = scratch.path().join(name);
        let output = restore(&target, &copy, &root_key);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name}: {}",
            text(&output.stdout)
        );
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(message),
            "{name}: expected {message:?} in {stderr}"
        );
        assert!(!target.exists(), "{name}: {} was written", target.display());
    }

    // The backup as written restores, and says it proved every table; also
    // into a path starting with // (which a file: URI would read as a host).
    let target = PathBuf::from(format!("/{}", scratch.path().join("as-written").display()));
    let output = restore(&target, &file, &root_key);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("every table is as it was backed up"),
        "{}",
        text(&output.stdout)
    );
}

/// A backup made before the tables' MACs (format 1: no `files` or `mac.*`
/// entries in its description) is refused unless the operator accepts it
/// unproven; then it restores, proving its values and its audit chain, and
/// says it could not prove the rest. Written here from a current one with
/// the root key, as only its holder could.
#[tokio::test(flavor = "multi_thread")]
async fn a_format_1_backup_restores_and_says_what_it_could_not_prove() {
    let backups = tempfile::tempdir().unwrap();
    let (installation, file) = backed_up(backups.path());
    let loaded = rekey_server::config::load(installation.dir(), None).unwrap();
    let root = rekey_server::installation::root_key(&loaded).unwrap();

    let old = file.with_file_name("format-1.db");
    std::fs::copy(&file, &old).unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", old.display()))
        .await
        .unwrap();
    sqlx::raw_sql(
        "DELETE FROM backup_info WHERE key = 'files' OR key LIKE 'mac.%';
         UPDATE backup_info SET value = '1' WHERE key = 'format';",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let mut lines: Vec<String> =
        sqlx::query_as::<_, (String, String)>("SELECT key, value FROM backup_info")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
    lines.sort();
    let sealed = root.derive_key(b"rekey/backup-files/v1").seal(
        lines.join("\n").as_bytes(),
        b"rekey/backup-file/v1\0backup_info",
    );
    sqlx::query("UPDATE backup_files SET sealed = ? WHERE name = 'backup_info'")
        .bind(sealed)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("restored");
    let root_key = installation.dir().join("root.key");
    let refused = restore(&target, &old, &root_key);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("--accept-unproven-tables"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!target.exists());
    let output = rekeyd(
        &target,
        &[
            "restore",
            old.to_str().unwrap(),
            "--root-key-file",
            root_key.to_str().unwrap(),
            "--accept-unproven-tables",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("every value opens and the audit log verifies")
            && stdout.contains("could not prove its other tables"),
        "{stdout}"
    );
}
