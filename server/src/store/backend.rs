//! The store the rest of rekeyd holds: one of the two backends, chosen by
//! the scheme of the database URL (`sqlite://…` embedded, `postgres://…`
//! for several replicas). Every method forwards to the backend as it is;
//! the backends differ in SQL dialect only, never in behaviour.

use super::list::PageDetails;
use super::migrate::Schema;
use super::sqlite::{AuditQuery, CertificateRecord, PolicyVersion};
use super::{
    Deletion, Gate, NewSecret, NewVersion, PutOutcome, Rewrapped, SecretQuery, SecretRecord,
    SecretUpdate, ValueRead, VersionRecord, VersionSummary, WrappedMasterKey, postgres, sqlite,
};
use crate::audit::{AuditAnchor, AuditEvent, AuditKey, StoredEvent};
use crate::error::{Error, Result};
use crate::rotation::{ApprovalRecord, ConfigRecord, HistoryRecord, RunRecord, ScheduleClaim};
use crate::stages::StageMap;
use rekey_shared::{SecretName, Stage, VersionId};
use std::collections::HashMap;

#[derive(Debug)]
pub enum Store {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

/// Forwards each listed async method to the backend in use.
macro_rules! forward {
    ($(pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*) => {
        impl Store {
            $(
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(store) => store.$name($($arg),*).await,
                        Store::Postgres(store) => store.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

impl Store {
    /// Opens the database at `url`, creating an embedded one if needed, and
    /// brings its schema up to date: what the server does when it starts.
    pub async fn open(url: &str, audit_key: AuditKey) -> Result<Self> {
        Self::open_as(url, audit_key, Schema::Migrate, super::read_cache::CAPACITY).await
    }

    /// As [`Store::open`], with at most `read_cache_bytes` of reads kept
    /// in memory (SQLite; 0 keeps none): the server's own configuration.
    pub async fn open_to_serve(
        url: &str,
        audit_key: AuditKey,
        read_cache_bytes: usize,
    ) -> Result<Self> {
        Self::open_as(url, audit_key, Schema::Migrate, read_cache_bytes).await
    }

    /// Makes a new installation's schema in the database at `url` (an
    /// embedded one is created), refusing a database that has any schema
    /// and changing nothing there: what `init` does.
    pub async fn create(url: &str, audit_key: AuditKey) -> Result<Self> {
        Self::open_as(url, audit_key, Schema::New, super::read_cache::CAPACITY).await
    }

    /// Opens the database at `url` only if its schema is this binary's,
    /// creating and changing nothing: what the other commands do, so that
    /// a newer binary's command cannot migrate the database of an older
    /// server that is serving it.
    pub async fn open_current(url: &str, audit_key: AuditKey) -> Result<Self> {
        Self::open_as(url, audit_key, Schema::Current, super::read_cache::CAPACITY).await
    }

    async fn open_as(
        url: &str,
        audit_key: AuditKey,
        schema: Schema,
        read_cache_bytes: usize,
    ) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(
                sqlite::Store::open(url, audit_key, schema, read_cache_bytes).await?,
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(
                postgres::Store::open(url, audit_key, schema).await?,
            ))
        } else {
            Err(Error::InvalidArgument(format!(
                "database URL {:?}: the scheme must be sqlite:// or postgres://",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }

    /// The newest audit event this process wrote.
    pub fn audit_head(&self) -> Option<(i64, Vec<u8>)> {
        match self {
            Store::Sqlite(store) => store.audit_head(),
            Store::Postgres(store) => store.audit_head(),
        }
    }

    /// Erases every secret whose recovery window ended by `now`, with all
    /// its versions, and returns their names; then empties SQLite's
    /// write-ahead log of them (see each backend's `checkpoint`).
    pub async fn purge_due(&self, now: i64) -> Result<Vec<String>> {
        let mut purged = Vec::new();
        for (id, name) in self.due_for_purge(now).await? {
            if self.purge(&id, &name, now).await? {
                purged.push(name);
            }
        }
        if !purged.is_empty() {
            self.checkpoint().await?;
        }
        Ok(purged)
    }

    /// Logs the current audit head as a checkpoint.
    pub fn log_audit_checkpoint(&self) {
        match self {
            Store::Sqlite(store) => store.log_audit_checkpoint(),
            Store::Postgres(store) => store.log_audit_checkpoint(),
        }
    }

    /// Whether several processes may serve this database at once.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Sends `payload` to the other replicas (nothing to do when the
    /// database is not shared).
    pub async fn notify(&self, payload: &str) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(store) => store.notify(payload).await,
        }
    }

    /// Sends a heartbeat to every replica's listener, this one's too
    /// (nothing to do when the database is not shared).
    pub async fn heartbeat(&self, payload: &str) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(store) => store.heartbeat(payload).await,
        }
    }

    /// What the other replicas send; `None` when the database is not shared.
    pub async fn listen(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(store) => store.listen().await.map(Some),
        }
    }

    /// Whether [`Store::snapshot_into`] works here: with the embedded
    /// database only; a shared PostgreSQL database is backed up with its
    /// own tools.
    pub fn can_snapshot(&self) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(_) => Err(Error::FailedPrecondition(
                "this installation's database is PostgreSQL: back it up with pg_dump \
                 (e.g. `pg_dump --format=custom`) and keep root.key apart from it; \
                 `rekeyd backup` copies the embedded SQLite database"
                    .to_owned(),
            )),
        }
    }

    /// Writes a consistent copy of the whole database, as of one moment,
    /// to the new file `path` while the database stays in use: SQLite's
    /// `VACUUM INTO`.
    pub async fn snapshot_into(&self, path: &std::path::Path) -> Result<()> {
        self.can_snapshot()?;
        match self {
            Store::Sqlite(store) => store.snapshot_into(path).await,
            Store::Postgres(_) => Ok(()),
        }
    }

    /// How full the batches of writes and audit events were, and how long
    /// upkeep held the writers.
    pub fn store_metrics(&self) -> &super::StoreMetrics {
        match self {
            Store::Sqlite(store) => store.store_metrics(),
            Store::Postgres(store) => store.store_metrics(),
        }
    }

    /// The secret `name` and, if `gate` lets the read go on, its version
    /// `version_id` (or the one carrying `stage`) with that version's
    /// stages. SQLite answers it from memory when no commit has begun
    /// since the same read (`read_cache`), or runs it whole on a reader
    /// thread; PostgreSQL as the two statements.
    pub async fn read_value(
        &self,
        name: &SecretName,
        version_id: Option<&VersionId>,
        stage: &Stage,
        gate: Gate,
    ) -> Result<ValueRead> {
        match self {
            Store::Sqlite(store) => store.read_value(name, version_id, stage, gate).await,
            Store::Postgres(store) => {
                let Some(secret) = store.secret_without_tags(name).await? else {
                    return Ok(ValueRead::NoSecret);
                };
                if !gate(&secret) {
                    return Ok(ValueRead::Stopped(secret));
                }
                let version = store
                    .version_with_stages(&secret.id, version_id, stage)
                    .await?;
                Ok(ValueRead::Read(secret, version))
            }
        }
    }

    /// Makes every read SQLite keeps in memory stale: another process
    /// changed what they may hold (`sync`). PostgreSQL keeps none.
    pub fn forget_cached_reads(&self) {
        if let Store::Sqlite(store) = self {
            store.forget_cached_reads();
        }
    }

    /// Makes the reads of the secret with id `secret_id` kept in memory
    /// stale: one of its values did not open.
    pub fn forget_cached_reads_of(&self, secret_id: &str) {
        if let Store::Sqlite(store) = self {
            store.forget_cached_reads_of(secret_id);
        }
    }

    pub fn audit_key(&self) -> &AuditKey {
        match self {
            Store::Sqlite(store) => store.audit_key(),
            Store::Postgres(store) => store.audit_key(),
        }
    }
}

forward! {
    pub async fn close(&self) -> ();
    pub async fn record(&self, event: &AuditEvent) -> Result<()>;
    pub async fn record_all(&self, events: &[AuditEvent]) -> Result<()>;
    pub async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<StoredEvent>>;
    pub async fn audit_anchor(&self) -> Result<Option<AuditAnchor>>;
    pub async fn archive_audit_events(&self, from: Option<&AuditAnchor>, to: &AuditAnchor, event: &AuditEvent) -> Result<bool>;
    pub async fn record_certificate(&self, record: &CertificateRecord, event: &AuditEvent) -> Result<()>;
    pub async fn certificates(&self) -> Result<Vec<CertificateRecord>>;
    pub async fn revoke(&self, target: super::RevokeTarget<'_>, issuer: &str, now: i64, event: &AuditEvent) -> Result<Vec<String>>;
    pub async fn revoked_serials(&self) -> Result<Vec<(String, String, String)>>;
    pub async fn insert_master_key(&self, key: &WrappedMasterKey, event: &AuditEvent) -> Result<()>;
    pub async fn master_key_versions(&self, name: &str) -> Result<Vec<WrappedMasterKey>>;
    pub async fn list_master_keys(&self) -> Result<Vec<WrappedMasterKey>>;
    pub async fn master_key_index(&self) -> Result<HashMap<String, Vec<u32>>>;
    pub async fn data_keys_using(&self, name: &str, version: u32) -> Result<i64>;
    pub async fn retire_master_key(&self, name: &str, version: u32, event: &AuditEvent) -> Result<()>;
    pub async fn versions_to_rewrap(&self, key_name: &str, newest: u32, limit: u32) -> Result<Vec<(String, VersionRecord)>>;
    pub async fn count_to_rewrap(&self, key_name: &str, newest: u32) -> Result<i64>;
    pub async fn store_rewrapped(&self, batch: &[(String, Rewrapped)], event: &AuditEvent) -> Result<u64>;
    pub async fn list_secrets(&self, query: &SecretQuery) -> Result<Vec<SecretRecord>>;
    pub async fn page_details(&self, ids: &[String]) -> Result<PageDetails>;
    pub async fn current_policy(&self) -> Result<Option<PolicyVersion>>;
    pub async fn policy_version(&self) -> Result<i64>;
    pub async fn insert_policy(&self, document: &str, created_by: &str, based_on: i64, now: i64, event: &AuditEvent) -> Result<Option<i64>>;
    pub async fn policy_history(&self) -> Result<Vec<PolicyVersion>>;
    pub async fn save_rotation_config(&self, config: &ConfigRecord, read: Option<&ConfigRecord>, frozen: bool, event: &AuditEvent) -> Result<()>;
    pub async fn rotation_config(&self, secret_id: &str) -> Result<Option<ConfigRecord>>;
    pub async fn due_rotations(&self, now: i64) -> Result<Vec<ConfigRecord>>;
    pub async fn insert_run(&self, run: &RunRecord, history: &[HistoryRecord], claim: Option<ScheduleClaim>, event: &AuditEvent) -> Result<bool>;
    pub async fn update_run(&self, run: &mut RunRecord, history: &[HistoryRecord], event: Option<&AuditEvent>) -> Result<()>;
    pub async fn finish_run(&self, run: &mut RunRecord, history: &[HistoryRecord], event: &AuditEvent) -> Result<bool>;
    pub async fn end_run(&self, run: &mut RunRecord, history: &[HistoryRecord], event: &AuditEvent) -> Result<()>;
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>>;
    pub async fn active_run(&self, secret_id: &str) -> Result<Option<RunRecord>>;
    pub async fn runs_of(&self, secret_id: &str, limit: u32) -> Result<Vec<RunRecord>>;
    pub async fn all_runs(&self, active_only: bool, limit: u32) -> Result<Vec<RunRecord>>;
    pub async fn rotation_run_counts(&self) -> Result<Vec<(String, Option<String>, i64)>>;
    pub async fn is_run_token(&self, token: &str) -> Result<bool>;
    pub async fn history(&self, run_id: &str) -> Result<Vec<HistoryRecord>>;
    pub async fn add_approval(&self, run_id: &str, approval: &ApprovalRecord, history: &[HistoryRecord], event: &AuditEvent) -> Result<bool>;
    pub async fn approvals(&self, run_id: &str) -> Result<Vec<ApprovalRecord>>;
    pub async fn secret_by_id(&self, secret_id: &str) -> Result<Option<SecretRecord>>;
    pub async fn create_secret(&self, secret: &NewSecret, first: Option<&NewVersion>, event: &AuditEvent) -> Result<()>;
    pub async fn secret(&self, name: &SecretName) -> Result<Option<SecretRecord>>;
    pub async fn secret_without_tags(&self, name: &SecretName) -> Result<Option<SecretRecord>>;
    pub async fn update_secret(&self, secret_id: &str, update: &SecretUpdate<'_>, event: &AuditEvent) -> Result<Option<PutOutcome>>;
    pub async fn tag_secret(&self, secret_id: &str, tags: &[(String, String)], now: i64, event: &AuditEvent) -> Result<()>;
    pub async fn untag_secret(&self, secret_id: &str, keys: &[String], now: i64, event: &AuditEvent) -> Result<()>;
    pub async fn delete_secret(&self, secret: &SecretRecord, deletion: Deletion, event: &AuditEvent) -> Result<()>;
    pub async fn restore_secret(&self, secret: &SecretRecord, now: i64, event: &AuditEvent) -> Result<()>;
    pub async fn due_for_purge(&self, now: i64) -> Result<Vec<(String, String)>>;
    pub async fn purge(&self, secret_id: &str, name: &str, now: i64) -> Result<bool>;
    pub async fn barrier(&self) -> Result<()>;
    pub async fn checkpoint(&self) -> Result<()>;
    pub async fn version(&self, secret_id: &str, version_id: &VersionId) -> Result<Option<VersionRecord>>;
    pub async fn all_versions(&self, secret_id: &str) -> Result<Vec<VersionRecord>>;
    pub async fn version_at_stage(&self, secret_id: &str, stage: &Stage) -> Result<Option<VersionRecord>>;
    pub async fn stage_map(&self, secret_id: &str) -> Result<StageMap>;
    pub async fn version_with_stages(&self, secret_id: &str, version_id: Option<&VersionId>, stage: &Stage) -> Result<Option<(VersionRecord, Vec<Stage>)>>;
    pub async fn move_stage(&self, secret: &SecretRecord, stage: &Stage, to: Option<&VersionId>, from: Option<&VersionId>, now: i64, event: &AuditEvent) -> Result<()>;
    pub async fn put_version(&self, secret_id: &str, version: &NewVersion, requested: &[Stage], event: &AuditEvent) -> Result<PutOutcome>;
    pub async fn list_versions(&self, secret_id: &str, include_deprecated: bool, before_seq: Option<i64>, limit: u32) -> Result<Vec<VersionSummary>>;
    pub async fn claim_lease(&self, secret_id: &str, owner: &str, now: i64, until: i64) -> Result<bool>;
    pub async fn release_lease(&self, secret_id: &str, owner: &str) -> Result<()>;
    pub async fn clear_leases(&self) -> Result<()>;
    pub async fn claim_due(&self, secret_id: &str, due_at: i64, next: Option<i64>, event: &AuditEvent) -> Result<bool>;
    pub async fn record_access(&self, secret_id: &str, version_id: &VersionId, day: i64) -> Result<()>;
}
