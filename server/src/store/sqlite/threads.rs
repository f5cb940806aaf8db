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

/// The most jobs a thread takes at once: those after the first wait for
/// the ones before them, even while another thread is idle.
const MAX_TAKEN: usize = 8;

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
        // Closing waits for the jobs queued, not for this caller.
        drop(queue);
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
        // Whatever a job before left open is ended first, so every job
        // here starts its statements after it was queued.
        if !connection.is_autocommit() && !run_cached(connection, "ROLLBACK") {
            tracing::error!("a database thread could not end a transaction; its jobs fail");
            taken.clear();
            continue;
        }
        for job in taken.drain(..) {
            // SQLite may have ended the read transaction itself (after an
            // I/O error): the rest start a new one.
            if jobs == Jobs::InOneSnapshot
                && connection.is_autocommit()
                && !run_cached(connection, "BEGIN")
            {
                // Dropped unrun: its caller is told the thread failed.
                continue;
            }
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(connection)));
        }
        if !connection.is_autocommit() {
            // Ends the read transaction, or one a job that panicked left
            // open (checked again before the next jobs).
            run_cached(connection, "ROLLBACK");
        }
    }
}

/// Runs a statement without arguments, kept prepared; whether it ran.
fn run_cached(connection: &Connection, sql: &str) -> bool {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Jobs taken at once share a snapshot but not their failures: one
    /// that panics fails its own caller, the others are answered, and a
    /// job queued after a write sees it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_job_that_panics_fails_only_its_own_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        let threads = Threads::start(
            "test-reader",
            vec![Connection::open(&path).unwrap()],
            Jobs::InOneSnapshot,
        )
        .unwrap();
        let read = |panics: bool| {
            threads.run(move |connection| {
                let x: i64 = connection.query_row("SELECT x FROM t", [], |row| row.get(0))?;
                assert!(!panics, "a decoder met a column it did not expect");
                Ok(x)
            })
        };
        // Polled together, so their jobs queue together.
        let (first, panicked, third, fourth) =
            tokio::join!(read(false), read(true), read(false), read(false));
        let failed = panicked.unwrap_err().to_string();
        assert!(failed.contains("a database thread failed"), "{failed}");
        for answer in [first, third, fourth] {
            assert_eq!(answer.unwrap(), 1);
        }

        writer.execute("UPDATE t SET x = 2", []).unwrap();
        assert_eq!(read(false).await.unwrap(), 2);
        threads.close().await;
    }
}
