//! The PostgreSQL backend, for several replicas on one database: the same
//! behaviour as the SQLite backend, statement for statement, in PostgreSQL's
//! dialect. Every write transaction first takes one transaction-scoped
//! advisory lock, so writers are serialized across all replicas as SQLite
//! serializes them in one process: stage moves see a current map and the
//! audit chain stays one chain. Within a process, writers share that
//! transaction and commit in groups (`store::batch`).

mod archive;
mod audit;
mod certificates;
mod keys;
mod leases;
mod list;
mod notify;
pub use notify::is_heartbeat;
mod policies;
mod rotation;
mod secrets;
mod versions;

use versions::insert_version;

use super::rows::{
    SECRET_COLUMNS, VERSION_COLUMNS, is_unique_violation, master_key_row, secret_row, stored,
    version_row,
};

use super::SecretRecord;
use super::batch::{Boxed, Dialect, Writer};
use super::chain::AuditChain;
use super::group_commit::GroupCommit;
use super::list::{attach_tags, detail_statements, number_placeholders};
use super::migrate::{
    Schema, create_postgres, migrate_postgres as migrate, require_current_postgres,
};
use crate::audit::AuditKey;
use crate::error::{Error, Result};
use crate::stages::StageMap;
use rekey_shared::{Stage, VersionId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Executor, PgConnection, PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Store {
    pool: PgPool,
    writer: Writer<Postgres>,
    chain: Arc<AuditChain>,
    /// Events that are not part of a change, committed in groups.
    standalone_events: GroupCommit,
    store_metrics: Arc<super::StoreMetrics>,
}

type Tx<'a> = super::batch::Tx<'a, Postgres>;

impl Store {
    /// Connects to the database at `url` and brings its schema up to date
    /// (`Schema::Migrate`) or refuses one not at this binary's version
    /// (`Schema::Current`).
    pub async fn open(url: &str, audit_key: AuditKey, schema: Schema) -> Result<Self> {
        // The URL is not quoted back: it may hold the database password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| {
                Error::InvalidArgument(format!(
                    "the PostgreSQL database URL (database_url, REKEY_DATABASE_URL) does not \
                     parse: {error}"
                ))
            })?
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|error| Error::internal("opening the PostgreSQL database", error))?;
        match schema {
            Schema::Migrate => migrate(&pool).await?,
            Schema::Current => require_current_postgres(&pool).await?,
            Schema::New => create_postgres(&pool).await?,
        }
        let store_metrics = Arc::new(super::StoreMetrics::default());
        let writer = Writer::start(pool.clone(), DIALECT, store_metrics.clone(), None);
        let chain = Arc::new(AuditChain::new(audit_key));
        let standalone_events = GroupCommit::start(store_metrics.clone(), {
            let (writer, chain) = (writer.clone(), chain.clone());
            move |events| {
                let (writer, chain) = (writer.clone(), chain.clone());
                async move {
                    let tx = writer.begin().await?;
                    audit::commit_with(tx, &chain, &events).await
                }
            }
        });
        let store = Self {
            pool,
            writer,
            chain,
            standalone_events,
            store_metrics,
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
        self.pool.close().await;
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
        let tx = self.write().await?;
        tx.commit().await
    }

    /// SQLite rewrites freed pages; PostgreSQL leaves erased rows to
    /// VACUUM, which reclaims them (see the README on erasure).
    pub async fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    async fn tags(&self, secret_id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT key, value FROM secret_tags WHERE secret_id = $1 ORDER BY key COLLATE \"C\"",
        )
        .bind(secret_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get("key"), row.get("value")))
            .collect())
    }

    /// The secrets of `rows` with their tags, in one statement.
    async fn with_tags(&self, rows: &[PgRow]) -> Result<Vec<SecretRecord>> {
        let mut secrets = rows.iter().map(secret_row).collect::<Result<Vec<_>>>()?;
        if secrets.is_empty() {
            return Ok(secrets);
        }
        let [tags, _, _] = detail_statements(secrets.len());
        let ids: Vec<String> = secrets.iter().map(|secret| secret.id.clone()).collect();
        let tag_rows = fetch_for_ids(&self.pool, &number_placeholders(&tags), &ids).await?;
        attach_tags(&mut secrets, &tag_rows);
        Ok(secrets)
    }
}

/// How PostgreSQL writes: one writer at a time across every replica
/// (see the module doc), by a lock the transaction holds until it ends.
const DIALECT: Dialect<Postgres> = Dialect {
    begin: begin_locked,
    execute,
};

/// A write transaction holding the writers' lock. Read committed whatever
/// the database's default: each statement then sees what the lock's last
/// holder committed (the chain's head, the stage map), where a snapshot
/// taken at the transaction's first statement, before the lock was had,
/// would not. Committed durably whatever the database's or role's
/// `synchronous_commit` (reads are answered only once their audit events
/// are durable); set per transaction, which a pooler in front of the
/// database passes on. The lock is waited for 10 s at most (then
/// UNAVAILABLE), as SQLite's busy timeout. A replica cut off mid-batch (its
/// host frozen, its network gone) held it until PostgreSQL found its
/// session dead, two hours with the default keepalives, and every replica's
/// writes and audited reads waited: PostgreSQL now ends a session that
/// holds it idle for 30 s (a batch is idle between its
/// statements for microseconds). One round trip for all five.
fn begin_locked(pool: &PgPool) -> Boxed<'_, sqlx::Result<Transaction<'static, Postgres>>> {
    Box::pin(async move {
        let mut transaction = pool.begin().await?;
        (&mut *transaction)
            .execute(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                 SET LOCAL synchronous_commit = on; \
                 SET LOCAL lock_timeout = '10s'; \
                 SET LOCAL idle_in_transaction_session_timeout = '30s'; \
                 SELECT pg_advisory_xact_lock(7001)",
            )
            .await?;
        Ok(transaction)
    })
}

fn execute<'a>(connection: &'a mut PgConnection, sql: &'a str) -> Boxed<'a, sqlx::Result<()>> {
    Box::pin(async move { connection.execute(sql).await.map(drop) })
}

/// Runs `sql` with `ids` bound in order.
async fn fetch_for_ids(pool: &PgPool, sql: &str, ids: &[String]) -> Result<Vec<PgRow>> {
    let mut statement = sqlx::query(sql);
    for id in ids {
        statement = statement.bind(id);
    }
    Ok(statement.fetch_all(pool).await?)
}

async fn read_stage_map(connection: &mut PgConnection, secret_id: &str) -> Result<StageMap> {
    let rows = sqlx::query("SELECT stage, version_id FROM version_stages WHERE secret_id = $1")
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
    let (removed, moved) = crate::stages::changes(before, after);
    if !removed.is_empty() {
        let removed: Vec<&str> = removed.iter().map(|stage| stage.as_str()).collect();
        sqlx::query("DELETE FROM version_stages WHERE secret_id = $1 AND stage = ANY($2)")
            .bind(secret_id)
            .bind(removed)
            .execute(&mut **tx)
            .await?;
    }
    if !moved.is_empty() {
        let stages: Vec<&str> = moved.iter().map(|(stage, _)| stage.as_str()).collect();
        let versions: Vec<&str> = moved.iter().map(|(_, version)| version.as_str()).collect();
        sqlx::query(
            "INSERT INTO version_stages (secret_id, stage, version_id)
             SELECT $1, stage, version_id FROM UNNEST($2::text[], $3::text[]) AS t (stage, version_id)
             ON CONFLICT (secret_id, stage) DO UPDATE SET version_id = excluded.version_id",
        )
        .bind(secret_id)
        .bind(stages)
        .bind(versions)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Marks the secret changed: refused (FAILED_PRECONDITION, the write's
/// transaction taken back) for a secret scheduled for deletion since the
/// request looked, or erased meanwhile.
async fn touch(tx: &mut Tx<'_>, secret_id: &str, now: i64) -> Result<()> {
    let touched =
        sqlx::query("UPDATE secrets SET changed_at = $1 WHERE id = $2 AND deletion_date IS NULL")
            .bind(now)
            .bind(secret_id)
            .execute(&mut **tx)
            .await?;
    if touched.rows_affected() != 1 {
        return Err(super::deleted_meanwhile());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writers' lock is held under the idle timeout: a holder cut off
    /// mid-batch lets it go within it. Against the server
    /// `REKEY_TEST_POSTGRES_URL` names (which `.ci/run` sets).
    #[tokio::test]
    async fn the_writers_lock_is_held_under_an_idle_timeout() {
        let Ok(url) = std::env::var("REKEY_TEST_POSTGRES_URL") else {
            eprintln!("skipped: REKEY_TEST_POSTGRES_URL is not set (.ci/run sets it)");
            return;
        };
        let pool = PgPool::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("REKEY_TEST_POSTGRES_URL is set but unusable: {error}"));
        let mut transaction = begin_locked(&pool).await.unwrap();
        let timeout: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(&mut *transaction)
            .await
            .unwrap();
        assert_eq!(timeout, "30s");
        transaction.rollback().await.unwrap();
        pool.close().await;
    }
}
