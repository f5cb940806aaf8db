//! The SQLite backend. Writers run one at a time in a shared `BEGIN
//! IMMEDIATE` transaction, each in a savepoint, committed in groups
//! (`store::batch`), so no writer works on a stale snapshot and a burst of
//! writes costs one fsync; reads run in parallel (WAL), the hot ones on
//! reader threads (`readers`). Standalone audit events join the open write
//! batch, or commit on a connection of their own while none is open
//! (`events`). Split by subject: master keys, secrets (metadata, tags,
//! deletion), versions and stages, and listings.

mod archive;
mod audit;
mod certificates;
mod checkpoint;
mod columns;
mod events;
mod keys;
mod leases;
mod list;
mod policies;
mod readers;
mod rotation;
mod script;
mod secrets;
mod threads;
mod versions;

pub use audit::AuditQuery;
pub use certificates::CertificateRecord;
pub use policies::PolicyVersion;
pub use secrets::MAX_TAGS;
use versions::insert_version;

use super::rows::{
    VERSION_COLUMNS, is_unique_violation, master_key_row, secret_row, stored, version_row,
};

use super::batch::{Boxed, Dialect, Place, Writer};
use super::chain::AuditChain;
use super::group_commit::GroupCommit;
use super::migrate::{Schema, create_sqlite, migrate, require_current_sqlite};
use super::read_cache::{Found, ReadCache, Selector, Stale};
use super::{Gate, ValueRead};
use crate::audit::AuditKey;
use crate::error::{Error, Result};
use crate::stages::StageMap;
use rekey_shared::{SecretName, Stage, VersionId};
use script::Script;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Executor, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    writer: Writer<Sqlite>,
    chain: Arc<AuditChain>,
    /// Events that are not part of a change, committed in groups.
    standalone_events: GroupCommit,
    store_metrics: Arc<super::StoreMetrics>,
    /// The write-ahead log's checkpoints (`checkpoint`): the task that
    /// runs one each second, and the emptying after an erasure.
    checkpoints: checkpoint::Checkpoints,
    checkpointing: tokio::task::JoinHandle<()>,
    /// The read of a value, on connections of its own (`readers`).
    readers: readers::Readers,
    /// What reads of values found, while no commit has changed it
    /// (`store::read_cache`).
    reads: Arc<ReadCache>,
    /// Standalone events' commits while no write batch is open (`events`).
    events: Arc<events::EventWriter>,
    /// The database file, every symbolic link resolved.
    path: std::path::PathBuf,
    /// Held while a store that migrates (a server) has the file open
    /// (`hold_serving_lock`); let go at close.
    serving: std::sync::Mutex<Option<std::fs::File>>,
}

/// Refuses a second server on the database file at `path`: each keeps
/// reads of values in memory (`read_cache`) that only its own commits make
/// stale, so a second one writing to the file would leave the first
/// answering values replaced meanwhile. (One server per SQLite file was
/// already the rule: leases found at start are taken for a dead
/// process's.) An exclusive `flock` on a file beside the database, held
/// for the store's life; the kernel lets go of it when the process ends,
/// however it ends. A lock file of its own, not the database file: closing
/// any descriptor of the database would drop SQLite's own locks on it.
/// It sits beside the file the path resolves to (`resolved`), so that a
/// second name for the file (a symbolic link) finds the same lock; `path`
/// is the name the server was given.
fn hold_serving_lock(path: &std::path::Path, resolved: &std::path::Path) -> Result<std::fs::File> {
    let mut lock_path = resolved.as_os_str().to_owned();
    lock_path.push(".rekeyd-lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| {
            Error::internal(
                &format!("opening the lock file {}", lock_path.display()),
                error,
            )
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            Error::FailedPrecondition(format!(
                "another rekeyd is serving the database {} (it holds {}); one SQLite file has \
                 one server: stop the other first, or use PostgreSQL for several replicas",
                path.display(),
                lock_path.display()
            ))
        },
    )?;
    Ok(file)
}

/// `path` with every symbolic link resolved, as SQLite resolves the name of
/// a database for its own files; a file not created yet has its directory
/// resolved.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved;
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    match (std::fs::canonicalize(directory), path.file_name()) {
        (Ok(directory), Some(name)) => directory.join(name),
        _ => path.to_owned(),
    }
}

/// The write-ahead log of the database at `path` (resolved: SQLite keeps
/// it beside the file a symbolic link names, not beside the link).
fn wal_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    log.into()
}

impl Drop for Store {
    fn drop(&mut self) {
        self.checkpointing.abort();
    }
}

type Tx<'a> = super::batch::Tx<'a, Sqlite>;

/// What every connection that writes sets, the pool's and the events
/// connection's (`events`): durable at each commit, foreign keys checked,
/// erased pages zeroed, checkpoints left to `checkpoint`, the
/// write-ahead log, which keeps its size when it starts over (commits then
/// write over its blocks), cut back to 64 MiB after a burst grew it more,
/// and temporary storage in memory. The last is for the write batch: its
/// writers' savepoints keep the pages each changed, to return to, in a
/// journal that SQLite otherwise moves into a temporary file once it
/// passes 64 KiB, which a batch of writers always does. A system call per
/// page then, and on disk, beyond `secure_delete`'s reach, copies of
/// pages that held values being erased. The journal lasts one batch (at
/// most 64 writers); the pool's other temporary structures stay small (its
/// sorts are of a page, under a LIMIT, or of a small table such as the
/// certificates; listings run on the readers).
const WRITER_PRAGMAS: [(&str, &str); 6] = [
    ("synchronous", "FULL"),
    ("foreign_keys", "ON"),
    ("secure_delete", "ON"),
    ("wal_autocheckpoint", "0"),
    ("journal_size_limit", "67108864"),
    ("temp_store", "MEMORY"),
];

/// How long any connection waits for a lock another holds (a writer, a
/// checkpoint, a recovery).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Threads reading values (`readers`). Each runs the reads it took at
/// once one after another, so one waiting on the disk holds up those few,
/// not every read; fewer threads take more reads per wake-up, which is
/// what a read costs most here (see the README's benchmark).
const READERS: usize = 2;

/// The file of the embedded database at `url` (`sqlite://FILE`), if it is
/// one.
pub fn database_file(url: &str) -> Option<std::path::PathBuf> {
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty()).then(|| file.to_owned())
}

impl Store {
    /// Opens the database at `url` and brings its schema up to date
    /// (`Schema::Migrate`, creating the file if needed) or refuses one not
    /// at this binary's version (`Schema::Current`, which neither creates
    /// nor changes anything). `audit_key` chains the audit events it appends;
    /// at most `read_cache_bytes` of reads are kept in memory (`read_cache`).
    pub async fn open(
        url: &str,
        audit_key: AuditKey,
        schema: Schema,
        read_cache_bytes: usize,
    ) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| Error::InvalidArgument(format!("database URL {url:?}: {error}")))?
            .create_if_missing(schema != Schema::Current)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT);
        let options = WRITER_PRAGMAS
            .iter()
            .fold(options, |options, (name, value)| {
                options.pragma(*name, *value)
            });
        let file = options.get_filename().to_owned();
        let in_memory = file.as_os_str().is_empty()
            || file.to_string_lossy().starts_with("file:sqlx-in-memory")
            || url.contains(":memory:")
            || url.contains("mode=memory");
        if in_memory {
            return Err(Error::InvalidArgument(format!(
                "database URL {url:?}: an in-memory database cannot be shared by the \
                 server's connections; name a file"
            )));
        }
        if let Some(option) = unshared_option(url) {
            return Err(Error::InvalidArgument(format!(
                "database URL {url:?}: option {option} is not supported; the server's own \
                 connections open the file read-write with SQLite's default locking, as \
                 the pool's must"
            )));
        }
        // Before anything touches the file: a second server migrates
        // nothing either.
        let path = resolved(&file);
        let serving = match schema {
            Schema::Migrate | Schema::New => Some(hold_serving_lock(&file, &path)?),
            Schema::Current => None,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // An embedded database's connections cannot go away; testing
            // each before use would cost a round trip per statement.
            .test_before_acquire(false)
            // But one that SQLite took out of its transaction by itself (an
            // I/O error, a full disk) comes back with sqlx still counting
            // the transaction, and every later begin on it would fail: such
            // a connection is closed, not used. (sqlx's ping on release has
            // run the rollback it queued, so the count is current here.)
            .before_acquire(|connection, _| {
                Box::pin(async move {
                    use sqlx::TransactionManager;
                    Ok(
                        <Sqlite as sqlx::Database>::TransactionManager::get_transaction_depth(
                            connection,
                        ) == 0,
                    )
                })
            })
            .connect_with(options)
            .await
            .map_err(|error| Error::internal(&format!("opening database {url}"), error))?;
        match schema {
            Schema::Migrate => migrate(&pool).await?,
            Schema::Current => require_current_sqlite(&pool).await?,
            Schema::New => create_sqlite(&pool).await?,
        }
        let readers = readers::Readers::open(&file, READERS)?;
        let chain = Arc::new(AuditChain::new(audit_key));
        let events = Arc::new(events::EventWriter::open(&file, chain.clone())?);
        // Nothing below fails: the tasks started here end with the pool.
        let store_metrics = Arc::new(super::StoreMetrics::default());
        let reads = Arc::new(ReadCache::new(read_cache_bytes));
        let writer = Writer::start(
            pool.clone(),
            DIALECT,
            store_metrics.clone(),
            Some(reads.clone()),
        );
        let checkpoints =
            checkpoint::Checkpoints::new(pool.clone(), writer.clone(), store_metrics.clone());
        let checkpointing = tokio::spawn(checkpoints.clone().run_every_second());
        let standalone_events = GroupCommit::start(store_metrics.clone(), {
            let (writer, chain, events) = (writer.clone(), chain.clone(), events.clone());
            move |batch| {
                let (writer, chain, events) = (writer.clone(), chain.clone(), events.clone());
                async move {
                    match writer.join_or_lock().await? {
                        Place::Batch(mut tx) => {
                            tx.changes_no_value();
                            audit::commit_with(tx, &chain, &batch).await
                        }
                        Place::Alone(_writers_wait) => events.append(batch).await,
                    }
                }
            }
        });
        let store = Self {
            pool,
            writer,
            chain,
            standalone_events,
            store_metrics,
            checkpoints,
            checkpointing,
            readers,
            reads,
            events,
            path,
            serving: std::sync::Mutex::new(serving),
        };
        // Appends build on what the database holds now: a tail cut off
        // while this process runs is found at its next append.
        match store.chain_head_at_open().await {
            Ok(head) => store.chain.starts_at(head),
            Err(error) => {
                store.close().await;
                return Err(error);
            }
        }
        Ok(store)
    }

    /// The newest event in the database, or the archive anchor's when it
    /// holds none.
    async fn chain_head_at_open(&self) -> Result<Option<(i64, Vec<u8>)>> {
        let head: Option<(i64, Vec<u8>)> = sqlx::query_as(super::chain::HEAD_SQL)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match head {
            Some(head) => Some(head),
            None => self
                .audit_anchor()
                .await?
                .map(|anchor| (anchor.seq, anchor.mac)),
        })
    }

    pub fn store_metrics(&self) -> &super::StoreMetrics {
        &self.store_metrics
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.events.close().await;
        // The pool's close does not wait for a connection still held (it
        // closes once given back): no checkpoint may hold one meanwhile.
        let _no_checkpoint = self.checkpoints.hold().await;
        // sqlx 0.8's close can end with a connection that was being given
        // back meanwhile (a write batch's, just committed) left idle and
        // open: it waits for that connection to land, but looks for idle
        // connections to close only before. Another pass closes it.
        self.pool.close().await;
        while self.pool.size() > 0 {
            self.pool.close().await;
        }
        // The last connection to close moves the write-ahead log into the
        // database file and removes it, but two closing at once (a pool
        // connection given back as the pool closed) can each see the other
        // open and leave it. One more, closed alone, does it then.
        let (path, log) = (self.path.clone(), wal_path(&self.path));
        let last = tokio::task::spawn_blocking(move || {
            if log.exists() {
                // It takes a read to open the log (and find it to move).
                let closed = rusqlite::Connection::open(&path).and_then(|connection| {
                    connection.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
                    connection.close().map_err(|(_, error)| error)
                });
                if let Err(error) = closed {
                    tracing::warn!(%error, "the write-ahead log could not be moved in at close");
                }
            }
        });
        let _ = last.await;
        self.serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// The secret `name` and, if `gate` lets the read go on, the version
    /// of it a read of a value asks for: from memory when no commit has
    /// begun since the same read was made (`read_cache`), otherwise one
    /// hand-off to a reader.
    pub async fn read_value(
        &self,
        name: &SecretName,
        version_id: Option<&VersionId>,
        stage: &Stage,
        gate: Gate,
    ) -> Result<ValueRead> {
        let selector = match version_id {
            Some(version_id) => Selector::Version(version_id.as_str()),
            None => Selector::Stage(stage.as_str()),
        };
        // A closed store answers nothing from memory either.
        if !self.pool.is_closed()
            && let Some(found) = self.reads.get(name.as_str(), selector, &self.store_metrics)
        {
            if !gate(&found.secret) {
                return Ok(ValueRead::Stopped(found.secret));
            }
            return Ok(ValueRead::Read(
                found.secret,
                Some((found.version, found.stages)),
            ));
        }
        // Taken before the reader's snapshot begins.
        let ticket = self.reads.ticket();
        let read = self
            .readers
            .read_value(
                name.as_str(),
                version_id.map(VersionId::as_str),
                stage.as_str(),
                gate,
            )
            .await?;
        if let ValueRead::Read(secret, Some((version, stages))) = &read
            && !self.reads.keeps_nothing()
        {
            let found = Found {
                secret: secret.clone(),
                version: version.clone(),
                stages: stages.clone(),
            };
            self.reads.insert(ticket, name.as_str(), selector, found);
        }
        Ok(read)
    }

    /// Makes every read kept in memory stale: for changes another process
    /// made to the file (`sync`).
    pub fn forget_cached_reads(&self) {
        self.reads.make_stale(&Stale::Everything);
    }

    /// Makes the reads of one secret kept in memory stale.
    pub fn forget_cached_reads_of(&self, secret_id: &str) {
        self.reads
            .make_stale(&Stale::Secrets(vec![secret_id.to_owned()]));
    }

    /// `VACUUM INTO`: one read transaction copied page by page into a new,
    /// compacted file, while writers go on (WAL).
    pub async fn snapshot_into(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("{} is not a UTF-8 path", path.display()))
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(path)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A place in the current write batch (`batch`): writers one at a
    /// time, committed in groups.
    async fn write(&self) -> Result<Tx<'_>> {
        self.writer.begin().await
    }

    /// Returns once every write begun before it is durable (or taken
    /// back): a write of the same client request token in another request
    /// may share a batch not yet committed, which reads on other
    /// connections cannot see until it is.
    pub async fn barrier(&self) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        tx.commit().await
    }

    /// Moves everything in the write-ahead log into the database file and
    /// empties the log, so that erased rows linger in neither (with
    /// `secure_delete`, freed pages are zeroed). If a reader holds part of
    /// the log, it is not waited for: the server warns, and a later
    /// checkpoint empties the log once it can.
    pub async fn checkpoint(&self) -> Result<()> {
        if self.checkpoints.empty().await? {
            tracing::warn!(
                "a reader (a backup, say) holds part of the write-ahead log: erased pages stay \
                 in it until it can be emptied, which is tried again every second"
            );
        }
        Ok(())
    }

    async fn tags(&self, secret_id: &str) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT key, value FROM secret_tags WHERE secret_id = ? ORDER BY key")
                .bind(secret_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get("key"), row.get("value")))
            .collect())
    }
}

/// An option of a database URL that the server's rusqlite connections
/// (`readers`, `events`) would not share with the pool: another VFS (whose
/// locking the writers' exclusion relies on), a file opened read-only or
/// as immutable.
fn unshared_option(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .find(|pair| {
            matches!(
                pair.split_once('=').unwrap_or((pair, "")),
                ("vfs" | "immutable", _) | ("mode", "ro")
            )
        })
        .map(str::to_owned)
}

/// How SQLite writes: `BEGIN IMMEDIATE` takes the database's write lock
/// at once, so a writer never works on a snapshot another has changed.
const DIALECT: Dialect<Sqlite> = Dialect {
    begin: begin_immediate,
    execute,
};

/// In a task of its own: sqlx's begin waits once more after `BEGIN
/// IMMEDIATE` has run, and a caller dropped there (a read whose client
/// went away while it recorded its access day) returned the connection to
/// the pool holding the write lock, every other writer then BUSY. Here the
/// task runs to its end, and a transaction no one takes is dropped, which
/// rolls it back.
fn begin_immediate(pool: &SqlitePool) -> Boxed<'_, sqlx::Result<Transaction<'static, Sqlite>>> {
    let pool = pool.clone();
    Box::pin(async move {
        tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
            .await
            .map_err(|_| sqlx::Error::WorkerCrashed)?
    })
}

fn execute<'a>(connection: &'a mut SqliteConnection, sql: &'a str) -> Boxed<'a, sqlx::Result<()>> {
    Box::pin(async move { connection.execute(sql).await.map(drop) })
}

async fn read_stage_map(connection: &mut SqliteConnection, secret_id: &str) -> Result<StageMap> {
    let rows = sqlx::query("SELECT stage, version_id FROM version_stages WHERE secret_id = ?")
        .bind(secret_id)
        .fetch_all(&mut *connection)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                stored(Stage::parse(row.get("stage")), "stage")?,
                stored(VersionId::parse(row.get("version_id")), "version id")?,
            ))
        })
        .collect()
}

/// Writes the rows that differ between `before` (as read in this
/// transaction) and `after`: at most two statements, one for a put.
async fn write_stage_map(
    tx: &mut Tx<'_>,
    secret_id: &str,
    before: &StageMap,
    after: &StageMap,
) -> Result<()> {
    let mut script = Script::new();
    stage_changes(&mut script, secret_id, before, after);
    script.run(tx).await?;
    Ok(())
}

/// Appends to `script` the statements that write the rows differing
/// between `before` (as read in this transaction) and `after`.
fn stage_changes<'q>(
    script: &mut Script<'q>,
    secret_id: &'q str,
    before: &'q StageMap,
    after: &'q StageMap,
) {
    let (removed, moved) = crate::stages::changes(before, after);
    if !removed.is_empty() {
        let marks = vec!["?"; removed.len()].join(", ");
        script
            .statement(&format!(
                "DELETE FROM version_stages WHERE secret_id = ? AND stage IN ({marks})"
            ))
            .bind(secret_id);
        for stage in removed {
            script.bind(stage.as_str());
        }
    }
    if !moved.is_empty() {
        let rows = vec!["(?, ?, ?)"; moved.len()].join(", ");
        script.statement(&format!(
            "INSERT INTO version_stages (secret_id, stage, version_id) VALUES {rows}
             ON CONFLICT (secret_id, stage) DO UPDATE SET version_id = excluded.version_id"
        ));
        for (stage, version) in moved {
            script
                .bind(secret_id)
                .bind(stage.as_str())
                .bind(version.as_str());
        }
    }
}

/// Marks the secret changed: refused (FAILED_PRECONDITION, the write's
/// transaction taken back) for a secret scheduled for deletion since the
/// request looked, or erased meanwhile. (A put's own script marks it with
/// `touch_in`; its insert checks the deletion.)
async fn touch(tx: &mut Tx<'_>, secret_id: &str, now: i64) -> Result<()> {
    let touched =
        sqlx::query("UPDATE secrets SET changed_at = ? WHERE id = ? AND deletion_date IS NULL")
            .bind(now)
            .bind(secret_id)
            .execute(&mut **tx)
            .await?;
    if touched.rows_affected() != 1 {
        return Err(super::deleted_meanwhile());
    }
    Ok(())
}

/// Appends to `script` the statement that marks the secret changed.
fn touch_in<'q>(script: &mut Script<'q>, secret_id: &'q str, now: i64) {
    script
        .statement("UPDATE secrets SET changed_at = ? WHERE id = ?")
        .bind(now)
        .bind(secret_id);
}
