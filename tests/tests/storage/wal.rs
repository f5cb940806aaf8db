//! SQLite's write-ahead log under writes that never pause: the store's
//! checkpoint moves all of it and the log starts over from its beginning,
//! again and again, so that it does not grow without end and commits
//! write over blocks the file already has. An erasure's emptying of the
//! log waits for no reader.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The log's checkpoint sequence number (its header's bytes 12 to 15,
/// big-endian): SQLite adds one each time the log starts over.
fn restarts(wal: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut number = [0u8; 4];
    std::fs::File::open(wal)
        .ok()?
        .read_exact_at(&mut number, 12)
        .ok()?;
    Some(u32::from_be_bytes(number))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_starts_over_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekey.db");
    let url = format!("sqlite://{}", path.display());
    let store = Arc::new(
        Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
            .await
            .unwrap(),
    );
    add_default_key(&store).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Standalone events (their own connection) and changes (the write
    // batch), back to back: a commit is always under way, and with more
    // writers than a batch takes (64), some wait for the next batch while
    // one commits, ahead of the checkpoint.
    let writers: Vec<_> = (0..100)
        .map(|writer| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if writer % 25 != 0 {
                        create(&store, &format!("wal/w{writer}-{written}"), &[]).await;
                    } else {
                        store.record(&event("GetSecretValue")).await.unwrap();
                    }
                    written += 1;
                }
                written
            })
        })
        .collect();

    let wal = dir.path().join("rekey.db-wal");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(first) = restarts(&wal) {
            break first;
        }
        assert!(Instant::now() < deadline, "no write-ahead log appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The checkpoint runs once a second: three starts over in 30 s.
    while restarts(&wal).unwrap_or(first) < first + 3 {
        assert!(
            Instant::now() < deadline,
            "the write-ahead log started over {} times in 30 s of steady writes",
            restarts(&wal).unwrap_or(first) - first
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every start over followed a pause of the writers, which was counted.
    assert!(store.store_metrics().writer_pauses.count() >= 3);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        assert!(writer.await.unwrap() > 0, "every writer wrote");
    }
    store.close().await;
}

/// An erasure while a reader holds an older snapshot (a backup's `VACUUM
/// INTO`, say) neither waits for it nor stalls other writes: the emptying
/// of the log is left owed and done by a later checkpoint, once the reader
/// ends. (It waited for SQLite's busy timeout, 10 s, with the writers'
/// lock held.)
#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_beside_a_long_reader_stalls_nothing() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekey.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
        .await
        .unwrap();
    add_default_key(&store).await;
    create(&store, "erase/doomed", &[]).await;
    // A reader whose snapshot predates the erasure.
    let mut reader = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM secrets;")
        .execute(&mut reader)
        .await
        .unwrap();
    create(&store, "erase/other", &[]).await;

    let doomed = store
        .secret(&SecretName::parse("erase/doomed").unwrap())
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        store.delete_secret(&doomed, Deletion::Now, &event("DeleteSecret")),
    )
    .await
    .expect("the erasure waited for the reader")
    .unwrap();
    // Not emptied under the reader (which would have meant waiting for it).
    let wal = dir.path().join("rekey.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the log was emptied under the reader"
    );
    tokio::time::timeout(Duration::from_secs(5), create(&store, "erase/after", &[]))
        .await
        .expect("a write waited for the reader");
    let during = started.elapsed();

    // Once the reader ends, a checkpoint empties the log.
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    reader.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "the owed emptying was not done (erasure and write took {during:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
}
