//! Audit retention: with `[audit] retention_days`, a serving rekeyd moves
//! old events into JSON-lines archive files; `rekey audit verify` verifies
//! the database from the anchor on and says so, `rekeyd audit
//! verify-archive` verifies the whole chain through the files, and both
//! name what was tampered with: an archived line, a missing file, an
//! anchor moved without the root key. Backup and restore keep working.
//!
//! Events become old the only way the MAC allows: with the server stopped,
//! the test rewrites their time and seals the chain again with the
//! installation's root key, as only its holder can.

use rekey_server::audit::{AuditEvent, AuditKey, GENESIS};
use rekey_tests::{Installation, Rekey, Server, eventually, rekeyd, text};
use sqlx::{Connection, Row, SqliteConnection};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

async fn database(installation: &Installation) -> SqliteConnection {
    let url = format!("sqlite://{}", installation.database().display());
    SqliteConnection::connect(&url).await.unwrap()
}

async fn scalar(installation: &Installation, sql: &str) -> i64 {
    let mut db = database(installation).await;
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap();
    db.close().await.unwrap();
    value
}

/// Makes the events after the anchor through `through` two days old and
/// seals every event after the anchor again with the root key. The server
/// must be stopped.
async fn age_through(installation: &Installation, through: i64) {
    let loaded = rekey_server::config::load(installation.dir(), None).unwrap();
    let key = AuditKey::derive(&rekey_server::installation::root_key(&loaded).unwrap());
    let mut db = database(installation).await;
    let mut tx = db.begin().await.unwrap();
    let anchor: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, mac FROM audit_anchor")
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    let (after, mut previous) = anchor.unwrap_or((0, GENESIS.to_vec()));
    let rows = sqlx::query(
        "SELECT seq, time, principal, peer, action, resource, decision, outcome, request_id, detail
         FROM audit_events WHERE seq > ? ORDER BY seq",
    )
    .bind(after)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let two_days_ago = rekey_shared::time::now_millis() - 2 * 86_400_000;
    for row in rows {
        let seq: i64 = row.get("seq");
        let event = AuditEvent {
            time: if seq <= through {
                two_days_ago + seq
            } else {
                row.get("time")
            },
            principal: row.get("principal"),
            peer: row.get("peer"),
            action: row.get("action"),
            resource: row.get("resource"),
            decision: row.get("decision"),
            outcome: row.get("outcome"),
            request_id: row.get("request_id"),
            detail: row.get("detail"),
        };
        let mac = key.mac(seq, &previous, &event);
        sqlx::query("UPDATE audit_events SET time = ?, mac = ? WHERE seq = ?")
            .bind(event.time)
            .bind(&mac)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .unwrap();
        previous = mac;
    }
    tx.commit().await.unwrap();
    db.close().await.unwrap();
}

fn archive_dir(installation: &Installation) -> PathBuf {
    installation.dir().join("audit-archive")
}

fn archive_file(installation: &Installation, first: i64, last: i64) -> PathBuf {
    archive_dir(installation).join(format!("audit-{first:012}-{last:012}.jsonl"))
}

/// Waits until the events through `last` have left the database.
fn archived_through(admin: &Rekey, last: i64) -> serde_json::Value {
    eventually(&format!("events up to {last} archived"), || {
        let verdict = admin
            .run(&["audit", "verify", "--output", "json"])
            .ok()
            .json();
        (verdict["first_seq"] == last + 1).then_some(verdict)
    })
}

fn verify_archive(installation: &Installation) -> std::process::Output {
    rekeyd(installation.dir(), &["audit", "verify-archive"])
}

fn fails_with(output: std::process::Output, message: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(message), "expected {message:?} in {stderr}");
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn old_events_are_archived_and_the_whole_chain_still_verifies() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    for index in 0..5 {
        admin.run(&["create", &format!("r/{index}")]).ok();
    }
    assert_eq!(server.stop().code(), Some(0));
    let head = scalar(&installation, "SELECT MAX(seq) FROM audit_events").await;
    let first_round = head - 2;
    age_through(&installation, first_round).await;
    installation.edit_config(|table| {
        let audit: toml::Table = "retention_days = 1".parse().unwrap();
        table.insert("audit".into(), toml::Value::Table(audit));
    });

    // Archived at start.
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let verdict = archived_through(&admin, first_round);
    assert_eq!(verdict["ok"], true);
    let file = archive_file(&installation, 1, first_round);
    let archived = lines(&file);
    let seqs: Vec<i64> = archived
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=first_round).collect::<Vec<_>>());
    let created = archived
        .iter()
        .find(|e| e["resource"] == "r/0")
        .expect("the create of r/0 is archived");
    assert_eq!(created["action"], "secrets:CreateSecret");
    assert_eq!(created["principal"], "admin");
    assert!(created["time"].as_str().unwrap().ends_with('Z'));
    assert!(created["time_ms"].is_i64());
    assert_eq!(created["mac"].as_str().unwrap().len(), 64);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        scalar(&installation, "SELECT MIN(seq) FROM audit_events").await,
        first_round + 1
    );

    let said = admin.run(&["audit", "verify"]).ok().stdout;
    assert!(
        said.contains(&format!(
            "the audit log verifies: events {} to",
            first_round + 1
        )) && said.contains(&format!("events up to {first_round} are archived")),
        "{said}"
    );
    let log = admin
        .run(&["audit", "--principal", "system", "--output", "json"])
        .ok()
        .stdout;
    let detail = format!(
        "events 1 to {first_round} archived to audit-{:012}-{first_round:012}.jsonl",
        1
    );
    assert!(
        log.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .any(|e| e["action"] == "audit:Archive" && e["detail"] == detail.as_str()),
        "{log}"
    );
    let output = verify_archive(&installation);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(
        said.starts_with("the audit log verifies from event 1 to ")
            && said.contains(&format!(": {first_round} in 1 archive file, ")),
        "{said}"
    );

    // A second round after a restart: a second file, and the chain head
    // comes back right from the table.
    assert_eq!(server.stop().code(), Some(0));
    let head = scalar(&installation, "SELECT MAX(seq) FROM audit_events").await;
    let second_round = head - 1;
    age_through(&installation, second_round).await;
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    archived_through(&admin, second_round);
    admin.run(&["create", "r/after-restart"]).ok();
    admin.run(&["audit", "verify"]).ok();
    assert_eq!(server.stop().code(), Some(0));
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["describe", "r/after-restart"]).ok();
    admin.run(&["audit", "verify"]).ok();
    let output = verify_archive(&installation);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(
        said.contains(&format!(": {second_round} in 2 archive files, ")),
        "{said}"
    );

    // A backup with an anchor restores and verifies (restore walks the
    // chain from the anchor).
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("backup.db");
    let output = rekeyd(installation.dir(), &["backup", backup.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let root_key = installation.dir().join("root.key");
    let target = backups.path().join("restored");
    let output = rekeyd(
        &target,
        &[
            "restore",
            backup.to_str().unwrap(),
            "--root-key-file",
            root_key.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let restored = Server::start(&target, &[]);
    let said = restored
        .rekey(&installation.admin())
        .run(&["audit", "verify"])
        .ok()
        .stdout;
    assert!(
        said.contains(&format!("events up to {second_round} are archived")),
        "{said}"
    );
    drop(restored);

    // An archived line edited.
    let second = archive_file(&installation, first_round + 1, second_round);
    let first = archive_file(&installation, 1, first_round);
    let original = std::fs::read_to_string(&first).unwrap();
    // Edited in place, as an editor would: the third line's principal.
    let principal = lines(&first)[2]["principal"].as_str().unwrap().to_owned();
    let edited: String = original
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let line = if index == 2 {
                line.replacen(
                    &format!("\"principal\":\"{principal}\""),
                    "\"principal\":\"mallory\"",
                    1,
                )
            } else {
                line.to_owned()
            };
            format!("{line}\n")
        })
        .collect();
    assert_ne!(edited, original);
    std::fs::write(&first, edited).unwrap();
    fails_with(
        verify_archive(&installation),
        &format!(
            "audit-{:012}-{first_round:012}.jsonl: event 3 was altered",
            1
        ),
    );
    // The readable time, which the chain does not cover, edited alone.
    let time = lines(&first)[1]["time"].as_str().unwrap().to_owned();
    let edited = original.replacen(&time, "1999-01-01T00:00:00Z", 1);
    std::fs::write(&first, edited).unwrap();
    fails_with(verify_archive(&installation), "a field was changed");
    std::fs::write(&first, &original).unwrap();
    assert!(verify_archive(&installation).status.success());

    // A file removed: a hole at the start, or a missing end.
    let moved = installation.dir().join("moved-away.jsonl");
    std::fs::rename(&first, &moved).unwrap();
    fails_with(
        verify_archive(&installation),
        &format!("events 1 to {first_round} were removed"),
    );
    std::fs::rename(&moved, &first).unwrap();
    std::fs::rename(&second, &moved).unwrap();
    fails_with(
        verify_archive(&installation),
        &format!(
            "the archive ends at event {first_round}, but the database says events up to {second_round} were archived"
        ),
    );
    std::fs::rename(&moved, &second).unwrap();
    assert!(verify_archive(&installation).status.success());

    // The anchor moved forward without the root key, to hide events.
    let mut db = database(&installation).await;
    sqlx::query("UPDATE audit_anchor SET seq = seq + 1")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let forged = admin.run(&["audit", "verify"]);
    assert_eq!(forged.code, 1);
    assert!(
        forged.stderr.contains(&format!(
            "the archive anchor (events up to {} archived) does not verify",
            second_round + 1
        )),
        "{}",
        forged.stderr
    );
    fails_with(verify_archive(&installation), "does not verify");
}

#[test]
fn a_bad_retention_setting_is_refused() {
    let installation = Installation::new();
    let output = std::process::Command::new(rekey_tests::binary("rekeyd"))
        .arg("--dir")
        .arg(installation.dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("REKEY_AUDIT_RETENTION_DAYS", "ninety")
        .env("REKEY_METRICS_LISTEN", "")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("REKEY_AUDIT_RETENTION_DAYS is \"ninety\""),
        "{}",
        text(&output.stderr)
    );
}

/// A round whose transaction fails leaves its file and the events: the
/// chain still verifies, the archive verifies with the database although
/// they overlap, and a later round archives the events after all.
#[tokio::test(flavor = "multi_thread")]
async fn a_round_that_does_not_commit_leaves_the_file_and_the_events() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    for index in 0..3 {
        admin.run(&["create", &format!("f/{index}")]).ok();
    }
    assert_eq!(server.stop().code(), Some(0));
    let head = scalar(&installation, "SELECT MAX(seq) FROM audit_events").await;
    let old = head - 1;
    age_through(&installation, old).await;
    installation.edit_config(|table| {
        let audit: toml::Table = "retention_days = 1\narchive_interval_seconds = 1"
            .parse()
            .unwrap();
        table.insert("audit".into(), toml::Value::Table(audit));
    });
    let mut db = database(&installation).await;
    sqlx::query(
        "CREATE TRIGGER keep_events BEFORE DELETE ON audit_events
         BEGIN SELECT RAISE(ABORT, 'the disk is read-only'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();

    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    eventually("a failed round", || {
        server
            .log_text()
            .contains("archiving audit events failed")
            .then_some(())
    });
    assert!(archive_file(&installation, 1, old).exists());
    assert_eq!(
        scalar(&installation, "SELECT MIN(seq) FROM audit_events").await,
        1
    );
    let verdict = admin
        .run(&["audit", "verify", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        (verdict["ok"].clone(), verdict["first_seq"].clone()),
        (true.into(), 1.into())
    );
    let output = verify_archive(&installation);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(
        said.contains(&format!(": {old} in 1 archive file, ")),
        "{said}"
    );

    let mut db = database(&installation).await;
    sqlx::query("DROP TRIGGER keep_events")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    archived_through(&admin, old);
    let output = verify_archive(&installation);
    assert!(output.status.success(), "{}", text(&output.stderr));
}
