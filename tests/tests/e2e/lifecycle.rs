//! Deletion and its undoing, through the CLI: a scheduled deletion blocks
//! reads and the name, restore brings the secret back, force frees the name
//! at once, and the purge job erases every ciphertext when the window ends.

use rekey_tests::{DEADLINE, Installation, Server, contains_bytes};
use sqlx::{Connection, Row, SqliteConnection};
use std::time::Instant;

#[test]
fn delete_restore_and_force_delete() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    let first_id = rekey
        .run(&["create", "life/db", "--value", "v1", "--output", "json"])
        .ok()
        .json()["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let deleted = rekey
        .run(&[
            "delete",
            "life/db",
            "--recovery-days",
            "7",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let date = deleted["deletion_date"].as_str().unwrap().to_owned();
    let read = rekey.run(&["get", "life/db"]);
    assert_eq!(read.code, 1);
    assert!(
        read.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        read.stderr
    );
    assert!(
        read.stderr
            .contains(&format!("scheduled for deletion on {date}")),
        "{}",
        read.stderr
    );
    let described = rekey
        .run(&["describe", "life/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["deletion_date"], date.as_str());
    let listed = rekey.run(&["list", "--output", "json"]).ok().json();
    assert_eq!(listed, serde_json::json!([]));
    let listed = rekey
        .run(&["list", "--include-deleted", "--output", "json"])
        .ok()
        .json();
    assert_eq!(listed[0]["name"], "life/db");

    let again = rekey.run(&["create", "life/db", "--value", "other"]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("is scheduled for deletion on"),
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        again.stderr
    );
    let put = rekey.run(&["put", "life/db", "--value", "v2"]);
    assert_eq!(put.code, 1);
    let twice = rekey.run(&["delete", "life/db"]);
    assert!(
        twice.stderr.contains("already scheduled for deletion"),
        "{}",
        twice.stderr
    );

    rekey.run(&["restore", "life/db"]).ok();
    assert_eq!(rekey.run(&["get", "life/db"]).ok().stdout, "v1\n");
    let not_deleted = rekey.run(&["restore", "life/db"]);
    assert_eq!(not_deleted.code, 1);
    assert!(
        not_deleted.stderr.contains("is not scheduled for deletion")
            && not_deleted.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        not_deleted.stderr
    );

    rekey.run(&["delete", "life/db", "--force"]).ok();
    let gone = rekey.run(&["describe", "life/db"]);
    assert!(gone.stderr.contains("(NOT_FOUND)"), "{}", gone.stderr);
    let reborn = rekey
        .run(&["create", "life/db", "--value", "v3", "--output", "json"])
        .ok()
        .json();
    assert_ne!(reborn["secret_id"].as_str().unwrap(), first_id);
    assert_eq!(rekey.run(&["get", "life/db"]).ok().stdout, "v3\n");
    let versions = rekey
        .run(&["versions", "life/db", "--all", "--output", "json"])
        .ok()
        .json();
    assert_eq!(versions.as_array().unwrap().len(), 1);

    // A secret already scheduled may still be forced out.
    rekey.run(&["delete", "life/db"]).ok();
    rekey.run(&["delete", "life/db", "--force"]).ok();
    rekey.run(&["create", "life/db"]).ok();
}

#[tokio::test]
async fn the_purge_job_erases_every_ciphertext_when_the_window_ends() {
    let installation = Installation::new();
    let server = Server::start(installation.dir(), &[("REKEY_PURGE_INTERVAL_SECONDS", "1")]);
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "purge/me", "--value", "first"]).ok();
    rekey.run(&["put", "purge/me", "--value", "second"]).ok();
    rekey.run(&["create", "purge/keep", "--value", "kept"]).ok();
    rekey
        .run(&["delete", "purge/me", "--recovery-days", "7"])
        .ok();

    let url = format!("sqlite://{}", installation.database().display());
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT v.ciphertext FROM versions v JOIN secrets s ON s.id = v.secret_id WHERE s.name = ?",
    )
    .bind("purge/me")
    .fetch_all(&mut db)
    .await
    .unwrap();
    let ciphertexts: Vec<Vec<u8>> = rows.iter().map(|row| row.get("ciphertext")).collect();
    assert_eq!(ciphertexts.len(), 2);
    // The window ends: move the deletion date into the past.
    sqlx::query("UPDATE secrets SET deletion_date = 1000 WHERE name = ?")
        .bind("purge/me")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    let deadline = Instant::now() + DEADLINE;
    loop {
        let described = rekey.run(&["describe", "purge/me"]);
        if described.stderr.contains("(NOT_FOUND)") {
            break;
        }
        assert!(Instant::now() < deadline, "the secret was never purged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Logged after its commit, which the read above may have seen first.
    rekey_tests::eventually("the purge to be logged", || {
        server
            .log_text()
            .contains("purged a deleted secret")
            .then_some(())
    });
    // The write-ahead log is emptied after the erasure without waiting for
    // readers: while one is under way (this loop's own reads), it is owed
    // and done again within a second.
    let file_bytes = || {
        let mut bytes = std::fs::read(installation.database()).unwrap();
        bytes.extend(
            std::fs::read(format!("{}-wal", installation.database().display())).unwrap_or_default(),
        );
        bytes
    };
    let on_disk = || {
        let bytes = file_bytes();
        ciphertexts
            .iter()
            .any(|ciphertext| contains_bytes(&bytes, &ciphertext[12..]))
    };
    let deadline = Instant::now() + DEADLINE;
    while on_disk() {
        assert!(
            Instant::now() < deadline,
            "a purged ciphertext is still on disk"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The control: a live secret's ciphertext is found the same way.
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    let kept: Vec<u8> = sqlx::query_scalar(
        "SELECT v.ciphertext FROM versions v JOIN secrets s ON s.id = v.secret_id WHERE s.name = ?",
    )
    .bind("purge/keep")
    .fetch_one(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    assert!(contains_bytes(&file_bytes(), &kept[12..]));
    assert_eq!(rekey.run(&["get", "purge/keep"]).ok().stdout, "kept\n");
}
