//! The read of a value (`Store::read_value`), on both backends: the gate is
//! asked between the secret and its version and a "no" reads no version;
//! versions by id and by stage; and a read that starts after a put was
//! acknowledged sees it, while puts go on (SQLite reads on connections of
//! their own, and from memory while no commit has begun since the same
//! read), including reads of the secret being put.

use super::{add_default_key, create, event, new_version};
use rekey_server::audit::AuditKey;
use rekey_server::crypto::{Key, RootKey};
use rekey_server::store::{Gate, Store, ValueRead};
use rekey_shared::{SecretName, Stage, VersionId};
use rekey_tests::databases::StorageDatabase;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A gate that answers `answer` and counts how often it was asked.
fn gate(answer: bool, asked: &Arc<AtomicUsize>) -> Gate {
    let asked = asked.clone();
    Box::new(move |_| {
        asked.fetch_add(1, Ordering::SeqCst);
        answer
    })
}

async fn read_suite(url: &str, root: &RootKey) {
    let store = Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    add_default_key(&store).await;
    let id = create(&store, "reads/db", &[]).await;
    let name = SecretName::parse("reads/db").unwrap();
    let asked = Arc::new(AtomicUsize::new(0));

    let missing = SecretName::parse("reads/missing").unwrap();
    let read = store
        .read_value(&missing, None, &Stage::current(), gate(true, &asked))
        .await
        .unwrap();
    assert!(matches!(read, ValueRead::NoSecret), "{read:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 0, "no secret, no question");

    let read = store
        .read_value(&name, None, &Stage::current(), gate(false, &asked))
        .await
        .unwrap();
    let ValueRead::Stopped(secret) = read else {
        panic!("the gate said no: {read:?}");
    };
    assert_eq!(
        (secret.id.as_str(), asked.load(Ordering::SeqCst)),
        (id.as_str(), 1)
    );

    let second = new_version(2);
    store
        .put_version(&id, &second, &[Stage::current()], &event("Put"))
        .await
        .unwrap();
    let read = store
        .read_value(&name, None, &Stage::current(), gate(true, &asked))
        .await
        .unwrap();
    let ValueRead::Read(_, Some((version, stages))) = read else {
        panic!("CURRENT: {read:?}");
    };
    assert_eq!(version.version_id, second.version_id);
    assert_eq!(version.sealed.ciphertext, vec![2; 32]);
    assert_eq!(stages, [Stage::current()]);

    let previous = Stage::parse("PREVIOUS").unwrap();
    let read = store
        .read_value(&name, None, &previous, gate(true, &asked))
        .await
        .unwrap();
    let ValueRead::Read(_, Some((first, stages))) = read else {
        panic!("PREVIOUS: {read:?}");
    };
    assert_eq!(
        (first.sealed.ciphertext, stages),
        (vec![1; 32], vec![previous])
    );

    let by_id = store
        .read_value(
            &name,
            Some(&second.version_id),
            &Stage::current(),
            gate(true, &asked),
        )
        .await
        .unwrap();
    assert!(matches!(by_id, ValueRead::Read(_, Some(_))), "{by_id:?}");
    for (version_id, stage) in [
        (Some(VersionId::random()), Stage::current()),
        (None, Stage::parse("NOWHERE").unwrap()),
    ] {
        let read = store
            .read_value(&name, version_id.as_ref(), &stage, gate(true, &asked))
            .await
            .unwrap();
        assert!(matches!(read, ValueRead::Read(_, None)), "{read:?}");
    }

    // A read that starts after a put was acknowledged sees it as CURRENT,
    // while other puts commit beside it (each writer has its own secret).
    let mut writers = Vec::new();
    for w in 0..4u8 {
        let path = format!("reads/writer{w}");
        let id = create(&store, &path, &[]).await;
        let (store, name) = (store.clone(), SecretName::parse(&path).unwrap());
        writers.push(tokio::spawn(async move {
            for n in 0..25u8 {
                let version = new_version(n);
                store
                    .put_version(&id, &version, &[Stage::current()], &event("Put"))
                    .await
                    .unwrap();
                let asked = Arc::new(AtomicUsize::new(0));
                let read = store
                    .read_value(&name, None, &Stage::current(), gate(true, &asked))
                    .await
                    .unwrap();
                let ValueRead::Read(_, Some((seen, stages))) = read else {
                    panic!("CURRENT while writing: {read:?}");
                };
                assert_eq!(
                    seen.version_id, version.version_id,
                    "a read after an acknowledged put saw another CURRENT"
                );
                assert_eq!(stages, [Stage::current()]);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    store.close().await;
}

/// Reads of one secret while its value is put again and again: no read
/// answers a version older than the newest put acknowledged before the
/// read began, and no reader sees CURRENT go back. On SQLite most reads
/// are answered from memory (`read_cache`), made stale by each commit of
/// the secret; a read of a value just read, with no commit between or
/// only a put of another secret, is one of them.
async fn reads_beside_puts_suite(url: &str, root: &RootKey) {
    let store = Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    add_default_key(&store).await;
    let id = create(&store, "reads/raced", &[]).await;
    let name = SecretName::parse("reads/raced").unwrap();
    let read = {
        let (store, name) = (store.clone(), name.clone());
        move || {
            let (store, name) = (store.clone(), name.clone());
            async move {
                let asked = Arc::new(AtomicUsize::new(0));
                let read = store
                    .read_value(&name, None, &Stage::current(), gate(true, &asked))
                    .await
                    .unwrap();
                let ValueRead::Read(_, Some((version, _))) = read else {
                    panic!("CURRENT: {read:?}");
                };
                version.sealed.ciphertext[0]
            }
        }
    };
    // The newest value whose put was acknowledged (values count up from 1).
    let acknowledged = Arc::new(AtomicUsize::new(1));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (read, acknowledged) = (read.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut last_seen = 0;
                while acknowledged.load(Ordering::SeqCst) < 200 {
                    let floor = acknowledged.load(Ordering::SeqCst);
                    let seen = usize::from(read().await);
                    assert!(
                        seen >= floor,
                        "a read that began after value {floor} was acknowledged answered {seen}"
                    );
                    assert!(
                        seen >= last_seen,
                        "CURRENT went back from {last_seen} to {seen}"
                    );
                    last_seen = seen;
                    // A read from memory never waits: let the writer run.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for value in 2..=200u8 {
        store
            .put_version(&id, &new_version(value), &[Stage::current()], &event("Put"))
            .await
            .unwrap();
        acknowledged.store(usize::from(value), Ordering::SeqCst);
    }
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(read().await, 200);
    if url.starts_with("sqlite:") {
        let hits = || store.store_metrics().read_cache_hits.load(Ordering::SeqCst);
        let before = hits();
        assert_eq!(read().await, 200);
        assert_eq!(
            hits(),
            before + 1,
            "a value read again with no commit between"
        );
        // A put of another secret leaves this one's read in memory.
        let other = create(&store, "reads/other", &[]).await;
        assert_eq!(read().await, 200);
        store
            .put_version(&other, &new_version(7), &[Stage::current()], &event("Put"))
            .await
            .unwrap();
        let before = hits();
        assert_eq!(read().await, 200);
        assert_eq!(hits(), before + 1, "a value read again after another's put");
    }
    store.close().await;
}

on_both_backends!(reads_beside_puts_suite => sqlite_reads_beside_puts, postgres_reads_beside_puts);
on_both_backends!(read_suite => sqlite_reads, postgres_reads);

#[tokio::test]
async fn an_in_memory_sqlite_database_is_refused() {
    for url in ["sqlite::memory:", "sqlite://rekey.db?mode=memory"] {
        let error = Store::open(url, AuditKey::derive(&RootKey::new(Key::generate())))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("name a file"), "{url}: {error}");
    }
}

/// URL options the server's own connections would not share with the pool
/// (another VFS, a read-only or immutable file) are refused, not ignored.
#[tokio::test]
async fn sqlite_url_options_the_connections_cannot_share_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rekey.db");
    for option in ["vfs=unix-none", "mode=ro", "immutable=1"] {
        let url = format!("sqlite://{}?{option}", file.display());
        let error = Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("option {option} is not supported")),
            "{url}: {error}"
        );
    }
    assert!(!file.exists(), "nothing was created");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let store = Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
        .await
        .unwrap();
    store.close().await;
}

/// The readers' connections are closed with the store, so that the pool's
/// last connection is the database's last: SQLite then checkpoints and
/// removes the write-ahead log.
#[tokio::test(flavor = "multi_thread")]
async fn closing_the_store_closes_the_readers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rekey.db");
    let url = format!("sqlite://{}", file.display());
    let store = Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
        .await
        .unwrap();
    add_default_key(&store).await;
    create(&store, "reads/closing", &[]).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let name = SecretName::parse("reads/closing").unwrap();
    let read = store
        .read_value(&name, None, &Stage::current(), gate(true, &asked))
        .await
        .unwrap();
    assert!(matches!(read, ValueRead::Read(_, Some(_))), "{read:?}");
    let wal = dir.path().join("rekey.db-wal");
    assert!(wal.exists(), "the database is in WAL mode");
    store.close().await;
    assert!(!wal.exists(), "a connection outlived the store's close");
}
