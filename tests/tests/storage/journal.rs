//! The write batch's savepoint journal stays in memory: SQLite would
//! otherwise move it into a temporary file (`etilqs_…`, unlinked at once)
//! as soon as a batch's writers had changed more than 64 KiB of pages,
//! with a system call per page and, on disk, copies of pages that
//! `secure_delete` never zeroes.

use super::*;

/// Whether this process has a file of SQLite's temporary storage open.
fn temporary_file_open() -> bool {
    std::fs::read_dir("/proc/self/fd").unwrap().any(|entry| {
        std::fs::read_link(entry.unwrap().path())
            .is_ok_and(|target| target.to_string_lossy().contains("etilqs_"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_batch_keeps_its_journal_in_memory() {
    const WRITERS: usize = 64;
    const EACH: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rekey.db").display());
    let store = Arc::new(
        Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
            .await
            .unwrap(),
    );
    add_default_key(&store).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for index in 0..EACH {
                    let name = format!("journal/w{writer}-{index}");
                    create(&store, &name, &[("team", "payments")]).await;
                }
            })
        })
        .collect();
    let mut looks = 0;
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        assert!(
            !temporary_file_open(),
            "a write batch opened a temporary file after {looks} looks"
        );
        looks += 1;
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // The writes did share batches, so savepoints were in use.
    let batches = store.store_metrics().writers.count();
    assert!(
        batches < (WRITERS * EACH) as u64,
        "{batches} batches for {} writes",
        WRITERS * EACH
    );
    store.close().await;
}
