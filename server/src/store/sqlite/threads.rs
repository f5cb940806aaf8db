//! Synchronous SQLite connections (rusqlite, on the same libsqlite3 as
//! sqlx), each owned by a thread of its own, taking jobs from one queue.
//! sqlx runs every statement on its connection's worker thread, a round
//! trip between threads per statement; a job here runs several statements,
//! with decisions between them, for one hand-off there and one back. The
//! readers (`readers`) and the writer of standalone audit events
//! (`events`) are built on it.

use crate::error::{Error, Result};
use rusqlite::Connection;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Jobs waiting for a thread; beyond this, a request waits to queue.
const QUEUE: usize = 1024;

#[derive(Debug)]
pub(super) struct Threads {
    /// Jobs for the threads; taken at close, which ends them.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Threads {
    /// One thread for each of `connections`, named `name-N`.
    pub(super) fn start(name: &str, connections: Vec<Connection>) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut handles = Vec::new();
        for (number, mut connection) in connections.into_iter().enumerate() {
            let receiver = receiver.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{number}"))
                .spawn(move || serve(&mut connection, &receiver))
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
        queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes jobs until the queue closes. A job that panics (a decoder finding
/// a column it does not expect) fails its own request only.
fn serve(connection: &mut Connection, receiver: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let mut receiver = receiver.lock().unwrap_or_else(PoisonError::into_inner);
            match receiver.blocking_recv() {
                Some(job) => job,
                None => return,
            }
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(connection)));
    }
}
