//! Checkpoints of the write-ahead log: committed pages moved into the
//! database file once a second, outside any request (SQLite's automatic
//! checkpoint would run inside the commit that crossed 1,000 pages, and so
//! delay every request of that commit's batch), and on demand, emptying
//! the log, after an erasure.
//!
//! A checkpoint that runs beside the commits never catches up under steady
//! load: the log then grows without end, and every commit's fsync must
//! also record the file's new length, a third slower here than one over
//! blocks already written. One that holds the writers' lock moves the
//! whole log, so the next commit starts it over from its beginning, but
//! every write and every read's audit event waits for it, for the pages it
//! copies and for the database file's fsync. So each tick takes two
//! steps: first a checkpoint beside the commits, which copies most of the
//! log and syncs the file while they go on, then one with the writers
//! waiting, which copies only what they committed meanwhile.
//!
//! Two checkpoints never overlap: SQLite refuses the second at once, and
//! an emptying after an erasure must not be the one refused, so both
//! kinds take `running` first. Closing the store takes it too, so that no
//! checkpoint holds a connection of the pool as the pool closes.
//!
//! An emptying never waits for readers: one that holds an older snapshot
//! (a backup's `VACUUM INTO` from another process, for as long as the copy
//! lasts) keeps part of the log, and waiting for it with the writers'
//! lock held would stall every write and every read's audit event. The
//! emptying then stays owed, and each second's checkpoint tries it again
//! until the log is empty.

use super::super::StoreMetrics;
use super::super::batch::Writer;
use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

#[derive(Debug, Clone)]
pub(super) struct Checkpoints {
    pool: SqlitePool,
    writer: Writer<Sqlite>,
    running: Arc<Mutex<()>>,
    /// An erasure's emptying of the log is owed (readers kept part of it).
    owed: Arc<AtomicBool>,
    /// Where each pause of the writers is counted.
    metrics: Arc<StoreMetrics>,
}

impl Checkpoints {
    pub(super) fn new(
        pool: SqlitePool,
        writer: Writer<Sqlite>,
        metrics: Arc<StoreMetrics>,
    ) -> Self {
        Self {
            pool,
            writer,
            running: Arc::new(Mutex::new(())),
            owed: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// Checkpoints once a second until the pool closes.
    pub(super) async fn run_every_second(self) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let done = self.tick().await;
            if self.pool.is_closed() {
                return;
            }
            if let Err(error) = done {
                tracing::warn!(%error, "checkpointing the write-ahead log failed");
            }
        }
    }

    /// The log moved into the database file: most of it beside the
    /// commits, the rest with the writers waiting; emptied, if an erasure
    /// is owed that and no reader holds part of it.
    async fn tick(&self) -> sqlx::Result<()> {
        let _running = self.running.lock().await;
        let mut connection = self.pool.acquire().await?;
        // Busy (a reader's snapshot still needs part of the log) or not,
        // the second step finishes what this one could not.
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *connection)
            .await?;
        if self.owed.load(Ordering::Acquire) {
            if !self.emptied(&mut connection).await? {
                tracing::info!("the write-ahead log was emptied after an erasure");
            }
            return Ok(());
        }
        self.with_writers_waiting(&mut connection, "PASSIVE")
            .await
            .map(drop)
    }

    /// Moves the whole log into the database file and empties it, unless
    /// a reader holds part of it: then says so (true), and each second's
    /// checkpoint tries again until it is done.
    pub(super) async fn empty(&self) -> sqlx::Result<bool> {
        let _running = self.running.lock().await;
        self.owed.store(true, Ordering::Release);
        let mut connection = self.pool.acquire().await?;
        self.emptied(&mut connection).await
    }

    /// One try at emptying the log without waiting for readers (a busy
    /// timeout of 0 on `connection`, which is closed afterwards rather than
    /// go back to the pool so: also when the caller is dropped midway);
    /// clears what is owed when it is done. Says whether part of the log
    /// was left (busy).
    async fn emptied(&self, connection: &mut PoolConnection<Sqlite>) -> sqlx::Result<bool> {
        connection.close_on_drop();
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut **connection)
            .await?;
        let busy = self.with_writers_waiting(connection, "TRUNCATE").await?;
        if !busy {
            self.owed.store(false, Ordering::Release);
        }
        Ok(busy)
    }

    /// Waits for a checkpoint under way to end, and keeps the next from
    /// starting while the guard lives: for closing the pool, which does
    /// not wait for a connection a checkpoint holds to close.
    pub(super) async fn hold(&self) -> MutexGuard<'_, ()> {
        self.running.lock().await
    }

    /// SQLite's checkpoint in `mode` on `connection` (taken first, so that
    /// the writers wait only for the work) while holding the writers' lock
    /// (an open batch is committed first): no commit lands while it runs,
    /// so it moves the whole log. Says whether it left part of it (busy).
    async fn with_writers_waiting(
        &self,
        connection: &mut SqliteConnection,
        mode: &'static str,
    ) -> sqlx::Result<bool> {
        let no_commits = self.writer.lock_idle().await;
        let paused = Instant::now();
        let busy = sqlx::query_scalar::<_, i64>(&format!("PRAGMA wal_checkpoint({mode})"))
            .fetch_one(&mut *connection)
            .await;
        drop(no_commits);
        self.metrics
            .writer_pauses
            .observe(paused.elapsed().as_secs_f64());
        Ok(busy? != 0)
    }
}
