//! The audit log through the store, on both backends: thousands of events
//! recorded at once, events and changes interleaved from two stores, and
//! retention (archive rounds, the anchor, verifying
//! the files and the table as one chain, verifying while rounds run).

use super::*;

/// Thousands of events recorded at once (reads' events) are group
/// committed in batches larger than one INSERT statement takes: every one is
/// there, once, in one chain. Returns how many write batches committed.
async fn many_standalone_events_suite(url: &str, root: &RootKey) -> u64 {
    let store = Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    let recorded: Vec<_> = (0..3_000)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut event = event("GetSecretValue");
                event.request_id = format!("request-{index}");
                store.record(&event).await.unwrap();
            })
        })
        .collect();
    for task in recorded {
        task.await.unwrap();
    }
    assert_eq!(
        assert_chain_verifies(&store, &AuditKey::derive(root)).await,
        3_000
    );
    let mut seen = std::collections::HashSet::new();
    for stored in all_events(&store).await {
        assert!(seen.insert(stored.event.request_id), "recorded twice");
    }
    assert_eq!(seen.len(), 3_000);
    let batches = store.store_metrics().writers.count();
    store.close().await;
    batches
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_many_standalone_events() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rekey.db").display());
    let batches = many_standalone_events_suite(&url, &RootKey::new(Key::generate())).await;
    // With no write batch open, SQLite commits them on the events
    // connection (`store::sqlite::events`), never as writers of a batch.
    assert_eq!(batches, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_many_standalone_events() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let batches = many_standalone_events_suite(&database.url, &RootKey::new(Key::generate())).await;
    assert!(batches > 0, "PostgreSQL commits them as writers of a batch");
}

/// Reads' events and changes at once, through two stores on one database
/// (a server and an admin command beside it, or two replicas): whichever
/// way each store commits its events (in a write batch of its own, or
/// apart while none is open), both append to one chain, each event once.
async fn events_and_changes_interleaved_suite(url: &str, root: &RootKey) {
    let first = Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    // The way a command other than the server opens it (one SQLite file
    // has one server).
    let second = Arc::new(
        Store::open_current(url, AuditKey::derive(root))
            .await
            .unwrap(),
    );
    add_default_key(&first).await;
    let mut tasks = Vec::new();
    for index in 0..300 {
        let store = [&first, &second][index % 2].clone();
        tasks.push(tokio::spawn(async move {
            if index % 3 == 0 {
                create(&store, &format!("app/secret-{index}"), &[]).await;
            } else {
                let mut event = event("GetSecretValue");
                event.request_id = format!("request-{index}");
                store.record(&event).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The key's event, 100 creations, 200 reads.
    assert_eq!(
        assert_chain_verifies(&first, &AuditKey::derive(root)).await,
        301
    );
    let reads: std::collections::HashSet<_> = all_events(&second)
        .await
        .into_iter()
        .filter(|stored| stored.event.action == "GetSecretValue")
        .map(|stored| stored.event.request_id)
        .collect();
    assert_eq!(reads.len(), 200);
    first.close().await;
    second.close().await;
}

on_both_backends!(
    events_and_changes_interleaved_suite => sqlite_events_and_changes_interleaved,
    postgres_events_and_changes_interleaved
);

/// The same on a PostgreSQL database whose transactions default to
/// repeatable read, after two stores migrated it at once: a writer's (or
/// a migrator's) snapshot must not predate the lock that serializes them
/// (it would read a stale head of the chain, or migrations not applied).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_events_and_changes_interleaved_under_repeatable_read() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    database.sql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = %L', \
         current_database(), 'repeatable read'); END $$",
    );
    let root = RootKey::new(Key::generate());
    // Two replicas starting at once migrate the new database once.
    let (first, second) = tokio::join!(
        Store::open(&database.url, AuditKey::derive(&root)),
        Store::open(&database.url, AuditKey::derive(&root)),
    );
    first.unwrap().close().await;
    second.unwrap().close().await;
    events_and_changes_interleaved_suite(&database.url, &root).await;
}

/// Audit retention through the store: old events leave the table in
/// rounds (at most `limit` each, never the newest, only from the anchor on
/// without a younger one in between), the anchor moves with an
/// `audit:Archive` event in the same transaction, the chain verifies from
/// the anchor, through a reopened store too, and the archive files and
/// the table verify as one chain.
async fn retention_suite(url: &str, root: &RootKey) {
    use rekey_server::retention::{archive_round, verify_archive};
    let archive = tempfile::tempdir().unwrap();
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    let now = rekey_shared::time::now_millis();
    let cutoff = now - 86_400_000;
    for index in 0..5 {
        let old = AuditEvent {
            time: cutoff - 1000 + index,
            ..event("Old")
        };
        store.record(&old).await.unwrap();
    }
    let mut rounds = Vec::new();
    while let Some(archived) = archive_round(&store, archive.path(), cutoff, 2)
        .await
        .unwrap()
    {
        rounds.push((archived.first, archived.last));
        assert!(archived.file.exists());
    }
    assert_eq!(rounds, [(1, 2), (3, 4), (5, 5)]);
    let anchor = store.audit_anchor().await.unwrap().unwrap();
    assert_eq!(anchor.seq, 5);
    let left = store
        .audit_events(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let left: Vec<(i64, &str)> = left
        .iter()
        .map(|stored| (stored.seq, stored.event.detail.as_str()))
        .collect();
    assert_eq!(
        left,
        [
            (
                6,
                "events 1 to 2 archived to audit-000000000001-000000000002.jsonl"
            ),
            (
                7,
                "events 3 to 4 archived to audit-000000000003-000000000004.jsonl"
            ),
            (
                8,
                "events 5 to 5 archived to audit-000000000005-000000000005.jsonl"
            ),
        ]
    );
    // Old events behind a young one wait for it.
    store
        .record(&AuditEvent {
            time: cutoff - 1,
            ..event("Old")
        })
        .await
        .unwrap();
    assert_eq!(
        archive_round(&store, archive.path(), cutoff, 2)
            .await
            .unwrap(),
        None
    );

    // A round that read the anchor before another process moved it
    // changes nothing.
    let stale = store
        .archive_audit_events(
            None,
            &AuditKey::derive(root).anchor(6, &[0; 32]),
            &event("audit:Archive"),
        )
        .await
        .unwrap();
    assert!(!stale);
    assert_eq!(store.audit_anchor().await.unwrap().unwrap(), anchor);

    let verdict = rekey_server::audit::verify_store(&store, store.audit_head())
        .await
        .unwrap();
    assert_eq!(verdict.finding, None);
    assert_eq!(
        (verdict.first_seq, verdict.events, verdict.head_seq),
        (6, 4, 9)
    );
    store.record(&event("AfterArchive")).await.unwrap();
    store.close().await;

    // Reopened, appends chain on from the newest event in the table.
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    store.record(&event("Reopened")).await.unwrap();
    let verdict = rekey_server::audit::verify_store(&store, None)
        .await
        .unwrap();
    assert_eq!(verdict.finding, None);
    assert_eq!((verdict.first_seq, verdict.head_seq), (6, 11));
    let report = verify_archive(&store, archive.path(), None).await.unwrap();
    assert_eq!(
        report.to_string(),
        "the audit log verifies from event 1 to 11: 5 in 3 archive files, 6 in the database"
    );
    // Held against a checkpoint: the head as the store wrote it passes, a
    // wrong MAC or an event past the end (a tail cut off) does not.
    let head = store.audit_head().unwrap();
    verify_archive(&store, archive.path(), Some(head.clone()))
        .await
        .unwrap();
    for wrong in [(head.0, vec![0; 32]), (head.0 + 5, head.1.clone())] {
        let refused = verify_archive(&store, archive.path(), Some(wrong.clone())).await;
        assert!(refused.is_err(), "{wrong:?}");
    }
    // Under another root key neither the anchor nor the chain verifies.
    store.close().await;
    let other = Store::open(url, AuditKey::derive(&RootKey::new(Key::generate())))
        .await
        .unwrap();
    let verdict = rekey_server::audit::verify_store(&other, None)
        .await
        .unwrap();
    assert_eq!(
        verdict.finding,
        Some(rekey_server::audit::Finding::AnchorForged { seq: 5 })
    );
    other.close().await;
}

on_both_backends!(retention_suite => sqlite_audit_retention, postgres_audit_retention);

/// A store on `url` whose log starts with `count` events from before the
/// cutoff it answers (a day ago), oldest first, and a directory for their
/// archive files.
async fn old_log(url: &str, root: &RootKey, count: i64) -> (Arc<Store>, tempfile::TempDir, i64) {
    let store = Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    let cutoff = rekey_shared::time::now_millis() - 86_400_000;
    for index in 0..count {
        let old = AuditEvent {
            time: cutoff - 1000 + index,
            ..event("Old")
        };
        store.record(&old).await.unwrap();
    }
    (store, tempfile::tempdir().unwrap(), cutoff)
}

/// Archives everything from before `cutoff`, one event per round, back to
/// back; answers how many rounds ran.
fn archive_all(
    store: &Arc<Store>,
    dir: &std::path::Path,
    cutoff: i64,
) -> tokio::task::JoinHandle<i64> {
    let (store, dir) = (store.clone(), dir.to_owned());
    tokio::spawn(async move {
        let mut rounds = 0;
        while rekey_server::retention::archive_round(&store, &dir, cutoff, 1)
            .await
            .unwrap()
            .is_some()
        {
            rounds += 1;
        }
        rounds
    })
}

/// A verification while archive rounds run: a round that commits between
/// the walk's read of the anchor and its read of the events removes events
/// the walk expected. The walk starts again from the moved anchor, so no
/// verification, of the table or of the files with it, reports a removal
/// that was an archive.
async fn verifying_while_archiving_suite(url: &str, root: &RootKey) {
    use rekey_server::retention::verify_archive;
    const OLD: i64 = 150;
    let (store, archive, cutoff) = old_log(url, root, OLD).await;
    let archiving = archive_all(&store, archive.path(), cutoff);
    let mut verified = 0;
    while !archiving.is_finished() {
        let verdict = rekey_server::audit::verify_store(&store, None)
            .await
            .unwrap();
        assert_eq!(verdict.finding, None, "verification {verified}");
        // The files with the table, as `rekeyd audit verify-archive`: a
        // walk of the files takes long enough that back-to-back rounds
        // keep moving the anchor under it, which it says, rather than
        // report the events that moved into a file as removed.
        if let Err(error) = verify_archive(&store, archive.path(), None).await {
            assert!(
                error.to_string().contains("the server archived throughout"),
                "verification {verified} of the archive: {error}"
            );
        }
        verified += 1;
    }
    // Each round appends its audit:Archive event, so even the newest old
    // event goes.
    assert_eq!(archiving.await.unwrap(), OLD);
    assert!(verified > 2, "only {verified} verifications ran");
    let verdict = rekey_server::audit::verify_store(&store, None)
        .await
        .unwrap();
    assert_eq!((verdict.finding, verdict.first_seq), (None, OLD + 1));
    store.close().await;
}

/// Runs `sql` on the database at `url`, as someone with access to it but
/// not to the root key.
pub(super) async fn tamper(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
    }
}

/// While rounds run, a real finding still stands: an altered event that
/// is too young to be archived is reported by every verification, however
/// many removals by rounds it walked past again.
async fn a_finding_stands_while_archiving_suite(url: &str, root: &RootKey) {
    const OLD: i64 = 60;
    let (store, archive, cutoff) = old_log(url, root, OLD).await;
    store.record(&event("Young")).await.unwrap();
    store.record(&event("Younger")).await.unwrap();
    let altered = OLD + 1;
    tamper(
        url,
        &format!("UPDATE audit_events SET detail = 'nothing happened' WHERE seq = {altered}"),
    )
    .await;
    let archiving = archive_all(&store, archive.path(), cutoff);
    let mut verified = 0;
    while !archiving.is_finished() {
        let verdict = rekey_server::audit::verify_store(&store, None)
            .await
            .unwrap();
        assert_eq!(
            verdict.finding,
            Some(rekey_server::audit::Finding::Altered { seq: altered }),
            "verification {verified}"
        );
        verified += 1;
    }
    assert_eq!(archiving.await.unwrap(), OLD);
    assert!(verified > 2, "only {verified} verifications ran");
    store.close().await;
}

/// A caller's checkpoint is checked by every verification or refused, also
/// while archive rounds move the anchor past it: a walk from the moved
/// anchor passed it by, and a wrong one went unreported.
async fn a_checkpoint_is_not_passed_by_while_archiving_suite(url: &str, root: &RootKey) {
    const OLD: i64 = 60;
    let (store, archive, cutoff) = old_log(url, root, OLD).await;
    let wrong = Some((OLD / 2, vec![0; 32]));
    let archiving = archive_all(&store, archive.path(), cutoff);
    let (mut checked, mut refused) = (0, 0);
    while !archiving.is_finished() {
        match rekey_server::audit::verify_store(&store, wrong.clone()).await {
            Ok(verdict) => {
                assert_eq!(
                    verdict.finding,
                    Some(rekey_server::audit::Finding::CheckpointMismatch { seq: OLD / 2 }),
                    "verification {checked}"
                );
                checked += 1;
            }
            Err(Error::FailedPrecondition(message)) => {
                assert!(message.contains("is of an archived event"), "{message}");
                refused += 1;
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    archiving.await.unwrap();
    assert!(matches!(
        rekey_server::audit::verify_store(&store, wrong.clone()).await,
        Err(Error::FailedPrecondition(_))
    ));
    // The server's own newest event, archived by another replica while it
    // was idle, is passed over: the caller named no checkpoint.
    let verdict = rekey_server::audit::verify_store_against_own(&store, wrong)
        .await
        .unwrap();
    assert_eq!(verdict.finding, None);
    assert!(
        checked + refused > 2,
        "only {checked} + {refused} verifications ran"
    );
    store.close().await;
}

on_both_backends!(
    a_checkpoint_is_not_passed_by_while_archiving_suite =>
        sqlite_a_checkpoint_is_not_passed_by_while_archiving,
    postgres_a_checkpoint_is_not_passed_by_while_archiving
);

on_both_backends!(
    verifying_while_archiving_suite => sqlite_verifying_while_archiving,
    postgres_verifying_while_archiving
);

on_both_backends!(
    a_finding_stands_while_archiving_suite => sqlite_a_finding_stands_while_archiving,
    postgres_a_finding_stands_while_archiving
);

/// Events cut off the tail are not built over: the next append is refused
/// (fail-closed) rather than reuse their numbers, which would make a chain
/// that verifies without them; also by a store opened after the cut when
/// every event is gone.
async fn a_cut_tail_is_not_built_over_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    for _ in 0..10 {
        store.record(&event("Read")).await.unwrap();
    }
    tamper(url, "DELETE FROM audit_events WHERE seq > 8").await;
    let refused = store.record(&event("Read")).await.unwrap_err();
    assert!(
        matches!(&refused, Error::AuditUnwritable { detail, for_now: false } if detail.contains("behind event 10")),
        "{refused:?}"
    );
    assert_eq!(all_events(&store).await.len(), 8);
    store.close().await;

    // Opened after every event is gone: it builds on nothing it cannot see
    // either (the next open starts from what the table holds).
    let reopened = Store::open(url, AuditKey::derive(root)).await.unwrap();
    reopened.record(&event("Read")).await.unwrap();
    tamper(url, "DELETE FROM audit_events").await;
    assert!(matches!(
        reopened.record(&event("Read")).await,
        Err(Error::AuditUnwritable { for_now: false, .. })
    ));
    reopened.close().await;
}

on_both_backends!(
    a_cut_tail_is_not_built_over_suite => sqlite_a_cut_tail_is_not_built_over,
    postgres_a_cut_tail_is_not_built_over
);

/// An event numbered 0 or below, which no append makes, is found by
/// verification (walks began after 0 and never read it).
async fn an_event_numbered_below_one_is_found_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    for _ in 0..3 {
        store.record(&event("Read")).await.unwrap();
    }
    tamper(
        url,
        "INSERT INTO audit_events (seq, time, principal, peer, action, resource, decision, outcome, request_id, detail, mac)
         SELECT -1, time, principal, peer, 'forged', resource, decision, outcome, request_id, detail, mac
         FROM audit_events WHERE seq = 1",
    )
    .await;
    let verdict = rekeyd_verdict(&store).await;
    assert!(verdict.is_some(), "an event numbered -1 went unseen");
    let archive = tempfile::tempdir().unwrap();
    let walked = rekey_server::retention::verify_archive(&store, archive.path(), None).await;
    assert!(
        walked.is_err(),
        "rekeyd audit verify-archive missed an event numbered -1"
    );
    store.close().await;
}

async fn rekeyd_verdict(store: &Store) -> Option<rekey_server::audit::Finding> {
    rekey_server::audit::verify_store(store, None)
        .await
        .unwrap()
        .finding
}

on_both_backends!(
    an_event_numbered_below_one_is_found_suite => sqlite_an_event_numbered_below_one_is_found,
    postgres_an_event_numbered_below_one_is_found
);

/// Text that is not UTF-8, which SQLite keeps when the file is edited, is
/// an altered event to verification, not a panic of whoever reads it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_an_event_edited_to_bytes_that_are_not_text_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rekey.db").display());
    let store = Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
        .await
        .unwrap();
    for _ in 0..3 {
        store.record(&event("Read")).await.unwrap();
    }
    let seq = all_events(&store).await[1].seq;
    tamper(
        &url,
        &format!("UPDATE audit_events SET principal = CAST(X'FF' AS TEXT) WHERE seq = {seq}"),
    )
    .await;
    assert_eq!(
        rekeyd_verdict(&store).await,
        Some(rekey_server::audit::Finding::Altered { seq })
    );
    store.close().await;
}
