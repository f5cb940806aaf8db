//! The hot read paths (a value; a page of a listing; what a write checks
//! before it joins the write batch: the secret, and the version a client
//! request token names; the rotation run a put that moves CURRENT looks
//! for), on synchronous connections of their own. sqlx runs every
//! statement on its connection's worker thread, a round trip between
//! threads per statement (and a ping of the connection when it goes back
//! to the pool); a read of a value is two statements with the caller's
//! decision between them, and a listing's page four. Here a few threads
//! (`threads`) each own a read-only SQLite connection with its statements
//! prepared once, and a whole read runs on one of them: one hand-off there
//! and one back. The statements are the pool's own, in one read
//! transaction (one snapshot), and rows decode through the same decoders
//! (`rows`, `columns`). Nothing here writes, and WAL lets these
//! connections read while others write.

use super::super::rows::{
    Columns, RUN_COLUMNS, RUN_REVISION, SECRET_COLUMNS, VERSION_COLUMNS, run_row, secret_row,
    stage_list, version_row,
};
use super::BUSY_TIMEOUT;
use super::threads::{Jobs, Threads};
use super::versions::version_with_stages_sql;
use crate::error::Result;
use crate::rotation::RunRecord;
use crate::store::{Gate, SecretRecord, ValueRead, VersionRecord};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::sync::LazyLock;

/// Each reader's page cache, in KiB (SQLite's negative `cache_size`).
const READER_CACHE_KIB: i64 = -8192;

#[derive(Debug)]
pub(super) struct Readers {
    threads: Threads,
}

impl Readers {
    /// `threads` connections to the database file at `path`, each on a
    /// thread of its own. The file must exist (the pool created it).
    pub(super) fn open(path: &Path, threads: usize) -> Result<Self> {
        let connections = (0..threads).map(|_| connect(path)).collect::<Result<_>>()?;
        Ok(Self {
            threads: Threads::start("rekey-reader", connections, Jobs::InOneSnapshot)?,
        })
    }

    /// Ends the threads once the reads already queued are done, and waits
    /// until their connections are closed.
    pub(super) async fn close(&self) {
        self.threads.close().await;
    }

    /// Runs `job` on one of the connections, in a read transaction (one
    /// snapshot) that the job must not end.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.threads.run(move |connection| job(connection)).await
    }

    /// The secret named `name`, without its tags (what a write checks
    /// before it joins the write batch).
    pub(super) async fn secret(&self, name: &str) -> Result<Option<SecretRecord>> {
        let name = name.to_owned();
        self.run(move |connection| secret_named(connection, &name))
            .await
    }

    /// Version `version_id` of the secret with id `secret_id`, without its
    /// stages (what a put checks its client request token against).
    pub(super) async fn version(
        &self,
        secret_id: String,
        version_id: String,
    ) -> Result<Option<VersionRecord>> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.secret_id = ?1 AND v.version_id = ?2"
            )
        });
        self.run(move |connection| {
            one_row(connection, &SQL, [&secret_id, &version_id], |row| {
                version_row(row)
            })
        })
        .await
    }

    /// The run of the secret with id `secret_id` that has not ended (what
    /// the engine asks after every put that moves CURRENT).
    pub(super) async fn active_run(&self, secret_id: String) -> Result<Option<RunRecord>> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {RUN_COLUMNS}, {RUN_REVISION} FROM rotation_runs WHERE secret_id = ?1 AND ended_at IS NULL"
            )
        });
        self.run(move |connection| one_row(connection, &SQL, [&secret_id], |row| run_row(row)))
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
            let Some(secret) = secret_named(connection, &name)? else {
                return Ok(ValueRead::NoSecret);
            };
            if !gate(&secret) {
                return Ok(ValueRead::Stopped(secret));
            }
            let version = connection
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
    one_row(connection, &SQL, [name], |row| secret_row(row))
}

/// The row `sql` finds with `params`, if any, decoded by `decode`.
fn one_row<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl FnOnce(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    connection
        .prepare_cached(sql)?
        .query_row(params, |row| Ok(decode(row)))
        .optional()?
        .transpose()
}

fn connect(path: &Path) -> Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // As the pool's: a checkpoint or a recovery may hold a lock briefly.
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // Room for the inner pages of the indexes a read walks, even in a
    // store of millions of secrets (SQLite's default is 2 MiB); a cache
    // holds only pages read, so a small store costs no more.
    connection.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
    // A listing's statements differ by page size; they must not push the
    // read of a value out of the cache (rusqlite keeps 16 by default).
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}
