//! Synchronous SQLite connections (rusqlite, on the same libsqlite3 as
//! sqlx), each owned by a thread of its own, taking jobs from one queue.
//! sqlx runs every statement on its connection's worker thread, a round
//! trip between threads per statement; a job here runs several statements,
//! with decisions between them, for one hand-off there and one back. The
//! readers (`readers`) and the writer of standalone audit events
//! (`events`) are built on it.
//!
//! A thread that wakes takes every job queued (up to [`MAX_TAKEN`]), so a
//! burst of requests costs a few wake-ups, not one each. Readers run the
//! jobs they took in one read transaction ([`Jobs::InOneSnapshot`]): one
//! lock of the database and one check of the page cache for all of them.
//! Every job still starts after it was queued, so it sees every write
//! acknowledged before.

use crate::error::{Error, Result};
use rusqlite::Connection;
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Jobs waiting for a thread; beyond this, a request waits to queue.
const QUEUE: usize = 1024;

/// The most jobs a thread takes at once.
const MAX_TAKEN: usize = 16;

/// How a thread runs the jobs it took at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Jobs {
    /// Each as it is: a job opens its own transaction if it needs one.
    Apart,
    /// All in one read transaction; the jobs must not open their own.
    InOneSnapshot,
}

#[derive(Debug)]
pub(super) struct Threads {
    /// Jobs for the threads; taken at close, which ends them.
    queue: Mutex<Option<flume::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Threads {
    /// One thread for each of `connections`, named `name-N`.
    pub(super) fn start(name: &str, connections: Vec<Connection>, jobs: Jobs) -> Result<Self> {
        let (sender, receiver) = flume::bounded::<Job>(QUEUE);
        let mut handles = Vec::new();
        for (number, mut connection) in connections.into_iter().enumerate() {
            let receiver = receiver.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{number}"))
                .spawn(move || serve(&mut connection, &receiver, jobs))
                .map_err(|error| Error::internal("starting a database thread", error))?;
            handles.push(handle);
        }
        Ok(Self {
            queue: Mutex::new(Some(sender)),
            threads: Mutex::new(handles),
        })
    }

    /// Ends the threads once the jobs already queued are done, and waits
    /// until their connections are closed (so that the pool's last
    /// connection is the database's last, and SQLite checkpoints and
    /// removes its write-ahead log as it closes).
    pub(super) async fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                // A thread's job that panicked was caught; one that died
                // otherwise has nothing left to close.
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }

    /// Runs `job` on one of the connections. The job runs to its end even
    /// when the caller goes away meanwhile.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // The answer goes missing when the job panicked or the threads
        // were stopped.
        let stopped = || Error::Internal("a database thread failed or stopped".to_owned());
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            // The caller may have gone away; nobody needs the answer then.
            let _ = done.send(job(connection));
        });
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(stopped)?;
        queue.send_async(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes jobs until the queue closes and is empty. A job that panics (a
/// decoder finding a column it does not expect) fails its own request only.
fn serve(connection: &mut Connection, receiver: &flume::Receiver<Job>, jobs: Jobs) {
    let mut taken = Vec::with_capacity(MAX_TAKEN);
    while let Ok(job) = receiver.recv() {
        taken.push(job);
        taken.extend(receiver.try_iter().take(MAX_TAKEN - 1));
        let snapshot = jobs == Jobs::InOneSnapshot && run_cached(connection, "BEGIN");
        for job in taken.drain(..) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(connection)));
        }
        if snapshot || !connection.is_autocommit() {
            // Ends the read transaction, or one a job that panicked left
            // open.
            run_cached(connection, "ROLLBACK");
        }
    }
}

/// Runs a statement without arguments, kept prepared; whether it ran. A
/// failure here shows in the jobs' own statements.
fn run_cached(connection: &Connection, sql: &str) -> bool {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .is_ok()
}
