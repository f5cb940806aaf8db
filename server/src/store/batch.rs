//! Group commit of writes, for both backends. Writers still run one at a
//! time, each seeing the changes of those before it, but they share one
//! database transaction: each works inside a savepoint of its own (so a
//! writer that fails or goes away takes back only its own changes), then
//! waits, and one committer task commits everything done meanwhile and
//! answers every waiter. A write is reported only once its transaction is
//! durable, exactly as before; what changes is that a hundred concurrent
//! writes cost one fsync instead of a hundred.
//!
//! Batches form by themselves: the committer asks for the writers' lock
//! after being woken, so it commits after the writers already queued and
//! before those that come later. A writer alone in its batch opens the
//! transaction and needs no savepoint.
//!
//! A writer whose request goes away, at any await, leaves the batch as if
//! it had never come: its savepoint is returned to before the next writer
//! starts, and its commit, once asked for, needs no statement of its own.
//!
//! A backend supplies how to begin its write transaction (SQLite's `BEGIN
//! IMMEDIATE`, PostgreSQL's advisory lock) and how to run a statement
//! without arguments; the savepoint statements are the same in both.

use super::StoreMetrics;
use super::read_cache::{ReadCache, Stale};
use crate::error::{Error, Result};
use sqlx::{Database, Pool, Transaction};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use tokio::sync::{Mutex, MutexGuard, Notify, oneshot};

/// The most writers one transaction takes. PostgreSQL keeps the ids of at
/// most 64 subtransactions per transaction in shared memory; beyond that
/// every session's snapshots slow down. It also bounds a batch's latency.
const MAX_WRITERS: usize = 64;

pub(super) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What differs between the backends.
pub(super) struct Dialect<DB: Database> {
    /// Opens a write transaction.
    pub begin: for<'a> fn(&'a Pool<DB>) -> Boxed<'a, sqlx::Result<Transaction<'static, DB>>>,
    /// Runs one statement without arguments.
    pub execute: for<'a> fn(&'a mut DB::Connection, &'a str) -> Boxed<'a, sqlx::Result<()>>,
}

/// Each writer's savepoint has a name of its own, so that returning to it
/// can never undo another writer's changes, and a savepoint that does not
/// exist fails the whole batch instead. Savepoints are never released:
/// the commit keeps them all, and returning to one stays possible (and
/// harmless to repeat) until the next writer starts.
fn savepoint(number: u64) -> String {
    format!("SAVEPOINT rekey_write_{number}")
}
fn rollback_to(number: u64) -> String {
    format!("ROLLBACK TO SAVEPOINT rekey_write_{number}")
}

/// The writers' side: opens a writer's place in the current batch.
pub(super) struct Writer<DB: Database> {
    shared: Arc<Shared<DB>>,
}

impl<DB: Database> Clone for Writer<DB> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Writer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

struct Shared<DB: Database> {
    pool: Pool<DB>,
    dialect: Dialect<DB>,
    batch: Mutex<Batch<DB>>,
    /// Wakes the committer; it holds this, not `Shared`, between batches.
    wake: Arc<Notify>,
    /// Where each commit's number of writers is counted.
    sizes: Arc<StoreMetrics>,
    /// Made stale as each commit begins and once it is done, before its
    /// writers are answered (SQLite's; PostgreSQL has none).
    reads: Option<Arc<ReadCache>>,
}

impl<DB: Database> Drop for Shared<DB> {
    fn drop(&mut self) {
        // The committer wakes, finds the store gone and ends.
        self.wake.notify_one();
    }
}

struct Batch<DB: Database> {
    /// The open transaction; `None` between batches.
    transaction: Option<Transaction<'static, DB>>,
    /// A writer went away inside this savepoint: return to it before
    /// anything else (cleared only once done, so a return interrupted by
    /// a cancelled request is made again).
    abandoned: Option<u64>,
    /// The number of the next writer's savepoint.
    next_savepoint: u64,
    /// How many writers the open transaction has taken.
    writers: usize,
    /// Writers whose changes are in the transaction, waiting for its commit.
    waiting: Vec<oneshot::Sender<Result<()>>>,
    /// The newest audit event appended in the transaction (sequence number
    /// and MAC), so the next writer need not read it back; forgotten when
    /// a writer's changes are taken back.
    last_event: Option<(i64, Vec<u8>)>,
    /// What the writers whose changes the transaction keeps said they
    /// change.
    stale: Stale,
}

impl<DB: Database> Writer<DB> {
    /// A writer on `pool`, with its committer task running; its commits
    /// make `reads` stale.
    pub(super) fn start(
        pool: Pool<DB>,
        dialect: Dialect<DB>,
        sizes: Arc<StoreMetrics>,
        reads: Option<Arc<ReadCache>>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            pool,
            dialect,
            batch: Mutex::new(Batch {
                transaction: None,
                abandoned: None,
                next_savepoint: 0,
                writers: 0,
                waiting: Vec::new(),
                last_event: None,
                stale: Stale::nothing(),
            }),
            wake: wake.clone(),
            sizes,
            reads,
        });
        tokio::spawn(commit_loop(Arc::downgrade(&shared), wake));
        Self { shared }
    }

    /// A place in the current batch, one writer at a time: a savepoint in
    /// the open transaction, or a new transaction.
    pub(super) async fn begin(&self) -> Result<Tx<'_, DB>> {
        let mut batch = self.lock_with_room().await;
        if batch.transaction.is_some() {
            return self.join(batch).await;
        }
        let shared = &*self.shared;
        batch.transaction = Some((shared.dialect.begin)(&shared.pool).await?);
        batch.last_event = None;
        batch.stale = Stale::nothing();
        batch.writers = 1;
        Ok(Tx {
            batch,
            shared,
            savepoint: None,
            done: false,
            stale: Stale::Everything,
        })
    }

    /// A place in the open batch, or, when none is open, the writers' lock:
    /// for a writer that can commit on a connection of its own (SQLite's
    /// standalone audit events), so that no batch opens meanwhile. (A
    /// batch just rolled back may hold the database's lock a moment
    /// longer, while its rollback runs; that writer waits for it.)
    pub(super) async fn join_or_lock(&self) -> Result<Place<'_, DB>> {
        let batch = self.lock_with_room().await;
        if batch.transaction.is_some() {
            return Ok(Place::Batch(self.join(batch).await?));
        }
        Ok(Place::Alone(Alone { _batch: batch }))
    }

    /// The writers' lock while no batch is open (an open one is committed
    /// first, under the lock, so that writers coming meanwhile cannot keep
    /// opening the next): for work that must not run beside a commit, such
    /// as the checkpoint after which the write-ahead log can start over.
    pub(super) async fn lock_idle(&self) -> Alone<'_, DB> {
        let shared = &*self.shared;
        let mut batch = shared.batch.lock().await;
        if let Some((transaction, waiting, stale)) = take_open(shared, &mut batch).await {
            let (sizes, reads) = (shared.sizes.clone(), shared.reads.clone());
            // In a task of its own: the writers are answered even if this
            // caller goes away meanwhile (a writer that then comes waits
            // on the database's lock until the commit is done).
            let _ = tokio::spawn(async move {
                let result = commit(transaction, reads.as_deref(), stale).await;
                answer(&sizes, waiting, result);
            })
            .await;
        }
        Alone { _batch: batch }
    }

    /// The writers' lock, once the batch has room for one more writer.
    async fn lock_with_room(&self) -> MutexGuard<'_, Batch<DB>> {
        let shared = &*self.shared;
        let mut batch = shared.batch.lock().await;
        settle(shared, &mut batch).await;
        while batch.transaction.is_some() && batch.writers >= MAX_WRITERS {
            // Full: wait for its commit, then start the next one.
            let (committed, answer) = oneshot::channel();
            batch.waiting.push(committed);
            drop(batch);
            shared.wake.notify_one();
            let _ = answer.await;
            batch = shared.batch.lock().await;
            settle(shared, &mut batch).await;
        }
        batch
    }

    /// A savepoint of its own in the open transaction.
    async fn join<'a>(&'a self, mut batch: MutexGuard<'a, Batch<DB>>) -> Result<Tx<'a, DB>> {
        let shared = &*self.shared;
        batch.writers += 1;
        let number = batch.next_savepoint;
        batch.next_savepoint += 1;
        let statement = savepoint(number);
        #[allow(clippy::expect_used)] // the callers saw it open, under the lock we hold
        let transaction = batch
            .transaction
            .as_mut()
            .expect("an open write transaction");
        if let Err(error) = (shared.dialect.execute)(transaction, &statement).await {
            // The transaction may be unusable; returning to a savepoint
            // that is not there fails the batch, and the committer tells
            // those waiting.
            batch.abandoned = Some(number);
            shared.wake.notify_one();
            return Err(error.into());
        }
        Ok(Tx {
            batch,
            shared,
            savepoint: Some(number),
            done: false,
            stale: Stale::Everything,
        })
    }
}

/// Where [`Writer::join_or_lock`] put a writer.
pub(super) enum Place<'a, DB: Database> {
    Batch(Tx<'a, DB>),
    Alone(Alone<'a, DB>),
}

/// The writers' lock, held while no batch is open: no writer of the batch
/// starts until it is dropped.
pub(super) struct Alone<'a, DB: Database> {
    _batch: MutexGuard<'a, Batch<DB>>,
}

/// Returns the batch to the savepoint of a writer that went away; when
/// even that fails, the whole batch is lost and its waiters are told so.
async fn settle<DB: Database>(shared: &Shared<DB>, batch: &mut Batch<DB>) {
    let Some(number) = batch.abandoned else {
        return;
    };
    batch.last_event = None;
    let Some(transaction) = batch.transaction.as_mut() else {
        batch.abandoned = None;
        return;
    };
    let returned = (shared.dialect.execute)(transaction, &rollback_to(number)).await;
    batch.abandoned = None;
    if let Err(error) = returned {
        tracing::error!(%error, "a write transaction could not be returned to a savepoint; its batch is rolled back");
        batch.transaction = None;
        // As the database's failure is to any writer: a connection lost (a
        // failover, say) is UNAVAILABLE to every waiter, as to the writer
        // that met it, so that they retry; INTERNAL otherwise.
        let failed = Error::from(error);
        for waiter in batch.waiting.drain(..) {
            let _ = waiter.send(Err(failed.clone()));
        }
    }
}

/// Commits whatever the writers left, each time one of them is done.
async fn commit_loop<DB: Database>(shared: Weak<Shared<DB>>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut batch = shared.batch.lock().await;
        let Some((transaction, waiting, stale)) = take_open(&shared, &mut batch).await else {
            continue;
        };
        let result = commit(transaction, shared.reads.as_deref(), stale).await;
        drop(batch);
        answer(&shared.sizes, waiting, result);
    }
}

/// Commits `transaction`, with what `stale` says of `reads` neither
/// served nor kept while the commit is under way, and stale once it is
/// done (before any writer is answered): no read answered from memory is
/// older than what the database may already show, nor than a write about
/// to be acknowledged. (A commit that fails is treated the same: it may
/// have happened.)
async fn commit<DB: Database>(
    transaction: Transaction<'static, DB>,
    reads: Option<&ReadCache>,
    stale: Stale,
) -> Result<()> {
    let _committing = reads.map(|reads| reads.committing(stale));
    transaction.commit().await.map_err(Error::from)
}

/// The open transaction, settled, the writers waiting for its commit and
/// what their changes make stale, taken out of the batch for the caller
/// (who holds the lock) to commit.
async fn take_open<DB: Database>(
    shared: &Shared<DB>,
    batch: &mut Batch<DB>,
) -> Option<(
    Transaction<'static, DB>,
    Vec<oneshot::Sender<Result<()>>>,
    Stale,
)> {
    settle(shared, batch).await;
    let transaction = batch.transaction.take()?;
    batch.last_event = None;
    let stale = std::mem::replace(&mut batch.stale, Stale::nothing());
    Some((transaction, std::mem::take(&mut batch.waiting), stale))
}

/// Tells the writers of a batch how its commit went, and counts it.
fn answer(sizes: &StoreMetrics, waiting: Vec<oneshot::Sender<Result<()>>>, result: Result<()>) {
    let count = waiting.len();
    match &result {
        Ok(()) => sizes.writers.observe(count as f64),
        Err(error) => tracing::error!(%error, writes = count, "a write batch did not commit"),
    }
    for waiter in waiting {
        // A writer that went away needs no answer.
        let _ = waiter.send(result.clone());
    }
}

/// One writer's place in a batch: the connection of the shared
/// transaction, held alone until [`Tx::commit`] or drop. Dropping it
/// without committing takes back this writer's changes only.
pub(super) struct Tx<'a, DB: Database> {
    batch: MutexGuard<'a, Batch<DB>>,
    shared: &'a Shared<DB>,
    /// This writer's savepoint, when others came before it.
    savepoint: Option<u64>,
    done: bool,
    /// What this writer's changes make stale, as it said.
    stale: Stale,
}

impl<DB: Database> std::fmt::Debug for Tx<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("savepoint", &self.savepoint)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Tx<'_, DB> {
    /// The newest audit event appended in this transaction, if this
    /// process appended one and it still stands.
    pub(super) fn last_event(&self) -> Option<(i64, Vec<u8>)> {
        self.batch.last_event.clone()
    }

    /// Remembers the newest audit event this writer appended.
    pub(super) fn appended(&mut self, head: (i64, Vec<u8>)) {
        self.batch.last_event = Some(head);
    }

    /// Says that this writer changes rows of the secret with id
    /// `secret_id` only (besides what no read of a value reads: its audit
    /// event, its rotation run): its commit then makes only that secret's
    /// reads kept in memory stale. A writer that says nothing makes them
    /// all stale.
    pub(super) fn changes_secret(&mut self, secret_id: &str) {
        self.stale = Stale::Secrets(vec![secret_id.to_owned()]);
    }

    /// Says that this writer changes nothing a read of a value reads (audit
    /// events, rotation leases).
    pub(super) fn changes_no_value(&mut self) {
        self.stale = Stale::nothing();
    }

    /// Keeps this writer's changes and waits until the batch holding them
    /// is durable.
    pub(super) async fn commit(mut self) -> Result<()> {
        let (done, answer) = oneshot::channel();
        self.batch.waiting.push(done);
        let stale = std::mem::replace(&mut self.stale, Stale::Everything);
        self.batch.stale.add(stale);
        self.done = true;
        drop(self);
        answer
            .await
            .map_err(|_| Error::Internal("the write committer stopped".to_owned()))?
    }
}

impl<DB: Database> Drop for Tx<'_, DB> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(number) = self.savepoint {
                self.batch.abandoned = Some(number);
            } else {
                // Alone in the transaction: dropping it rolls it back.
                self.batch.transaction = None;
            }
            self.batch.last_event = None;
        }
        self.shared.wake.notify_one();
    }
}

impl<DB: Database> Deref for Tx<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        #[allow(clippy::expect_used)]
        // begin opened it; only the committer takes it, under the lock we hold
        self.batch
            .transaction
            .as_deref()
            .expect("an open write transaction")
    }
}

impl<DB: Database> DerefMut for Tx<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        #[allow(clippy::expect_used)] // as above
        self.batch
            .transaction
            .as_deref_mut()
            .expect("an open write transaction")
    }
}
