//! The hot read paths (a value; a page of a listing), on synchronous
//! connections of their own. sqlx runs every statement on its connection's
//! worker thread, a round trip between threads per statement; a read of a
//! value is two statements with the caller's decision between them, and a
//! listing's page four. Here a few threads each own a read-only SQLite
//! connection (rusqlite, on the same libsqlite3 as sqlx) with its
//! statements prepared once, and a whole read runs on one of them: one
//! hand-off there and one back. The statements are the pool's own, in one
//! read transaction (one snapshot), and rows decode through the same
//! decoders (`rows`). Nothing here writes: the write batch stays the only
//! writer, and WAL lets these connections read while it writes.

use super::super::rows::{Columns, SECRET_COLUMNS, secret_row, stage_list, version_row};
use super::versions::version_with_stages_sql;
use crate::error::{Error, Result};
use crate::store::{Gate, SecretRecord, ValueRead};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&Connection) + Send>;

/// Each reader's page cache, in KiB (SQLite's negative `cache_size`).
const READER_CACHE_KIB: i64 = -8192;

/// Reads waiting for a reader; beyond this, a request waits to queue.
const QUEUE: usize = 1024;

#[derive(Debug)]
pub(super) struct Readers {
    /// Jobs for the threads; taken at close, which ends them.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Readers {
    /// `threads` connections to the database file at `path`, each on a
    /// thread of its own. The file must exist (the pool created it).
    pub(super) fn open(path: &Path, threads: usize) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut handles = Vec::new();
        for number in 0..threads {
            let connection = connect(path)?;
            let receiver = receiver.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rekey-reader-{number}"))
                .spawn(move || serve(&connection, &receiver))
                .map_err(|error| Error::internal("starting a reader thread", error))?;
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

    /// Runs `job` on one of the connections.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // The answer goes missing when the job panicked or the readers
        // were closed.
        let stopped = || Error::Internal("a database reader failed or stopped".to_owned());
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

    /// The secret named `name`, without its tags (what a write checks
    /// before it joins the write batch).
    pub(super) async fn secret(&self, name: &str) -> Result<Option<SecretRecord>> {
        let name = name.to_owned();
        self.run(move |connection| secret_named(connection, &name))
            .await
    }

    /// The secret named `name` and, if `gate` lets the read go on, its
    /// version `version_id` (or the one carrying `stage`) with that
    /// version's stages: one snapshot, one hand-off.
    pub(super) async fn read_value(
        &self,
        name: &str,
        version_id: Option<&str>,
        stage: &str,
        gate: Gate,
    ) -> Result<ValueRead> {
        let (name, version_id, stage) = (
            name.to_owned(),
            version_id.map(str::to_owned),
            stage.to_owned(),
        );
        self.run(move |connection| {
            let snapshot = connection.unchecked_transaction()?;
            let Some(secret) = secret_named(&snapshot, &name)? else {
                return Ok(ValueRead::NoSecret);
            };
            if !gate(&secret) {
                return Ok(ValueRead::Stopped(secret));
            }
            let version = snapshot
                .prepare_cached(version_with_stages_sql())?
                .query_row(rusqlite::params![&secret.id, &version_id, &stage], |row| {
                    Ok(version_row(row)
                        .and_then(|version| Ok((version, stage_list(row.maybe_text("stages"))?))))
                })
                .optional()?
                .transpose()?;
            Ok(ValueRead::Read(secret, version))
        })
        .await
    }
}

fn secret_named(connection: &Connection, name: &str) -> Result<Option<SecretRecord>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE name = ?1"));
    connection
        .prepare_cached(&SQL)?
        .query_row([name], |row| Ok(secret_row(row)))
        .optional()?
        .transpose()
}

/// A row read whole, for the decoders that take several rows at once
/// (a page's tags, stages and rotation settings).
#[derive(Debug)]
pub(super) struct OwnedRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

/// Every row of `sql` with `binds`, read whole.
pub(super) fn fetch_all(
    connection: &Connection,
    sql: &str,
    binds: impl rusqlite::Params,
) -> Result<Vec<OwnedRow>> {
    let mut statement = connection.prepare_cached(sql)?;
    let names: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.query(binds)?;
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..names.len())
            .map(|index| row.get::<_, Value>(index))
            .collect::<rusqlite::Result<_>>()?;
        all.push(OwnedRow {
            names: names.clone(),
            values,
        });
    }
    Ok(all)
}

impl OwnedRow {
    /// As [`column`]: a column the statement does not have, or of another
    /// type, is a programming error. Only the type is told, never a value.
    fn value(&self, column: &str) -> &Value {
        self.names
            .iter()
            .position(|name| name == column)
            .and_then(|index| self.values.get(index))
            .unwrap_or_else(|| panic!("no column {column}"))
    }
}

fn wrong_type(column: &str, value: &Value) -> ! {
    panic!("column {column} holds {}", value.data_type())
}

impl Columns for OwnedRow {
    fn text(&self, name: &str) -> String {
        match self.value(name) {
            Value::Text(text) => text.clone(),
            other => wrong_type(name, other),
        }
    }
    fn maybe_text(&self, name: &str) -> Option<String> {
        match self.value(name) {
            Value::Null => None,
            Value::Text(text) => Some(text.clone()),
            other => wrong_type(name, other),
        }
    }
    fn integer(&self, name: &str) -> i64 {
        match self.value(name) {
            Value::Integer(number) => *number,
            other => wrong_type(name, other),
        }
    }
    fn maybe_integer(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Value::Null => None,
            Value::Integer(number) => Some(*number),
            other => wrong_type(name, other),
        }
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        match self.value(name) {
            Value::Blob(bytes) => bytes.clone(),
            other => wrong_type(name, other),
        }
    }
    fn flag(&self, name: &str) -> bool {
        self.integer(name) != 0
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // As the pool's: a checkpoint or a recovery may hold a lock briefly.
    connection.busy_timeout(Duration::from_secs(10))?;
    // Room for the inner pages of the indexes a read walks, even in a
    // store of millions of secrets (SQLite's default is 2 MiB); a cache
    // holds only pages read, so a small store costs no more.
    connection.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
    Ok(connection)
}

/// Takes jobs until the queue closes. A job that panics (a decoder finding
/// a column it does not expect) fails its own read only.
fn serve(connection: &Connection, receiver: &Mutex<mpsc::Receiver<Job>>) {
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

/// A missing column, or one of another type, is a programming error (the
/// statements above name their columns), and panics as the pool's rows do.
fn column<T: rusqlite::types::FromSql>(row: &rusqlite::Row<'_>, column: &str) -> T {
    row.get(column)
        .unwrap_or_else(|error| panic!("column {column}: {error}"))
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> String {
        column(self, name)
    }
    fn maybe_text(&self, name: &str) -> Option<String> {
        column(self, name)
    }
    fn integer(&self, name: &str) -> i64 {
        column(self, name)
    }
    fn maybe_integer(&self, name: &str) -> Option<i64> {
        column(self, name)
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        column(self, name)
    }
    fn flag(&self, name: &str) -> bool {
        column(self, name)
    }
}
