//! Versions and their stages: adding a version (with its stage moves and the
//! purge of old deprecated versions, in one transaction), moving a stage,
//! reading and listing versions.

use super::super::rows::{stage_list, version_refusal};
use super::script::Script;
use super::{
    Store, Tx, VERSION_COLUMNS, is_unique_violation, read_stage_map, stage_changes, stored, touch,
    touch_in, version_row, write_stage_map,
};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::stages::{self, StageMap};
use crate::store::{NewVersion, PutOutcome, SecretRecord, VersionRecord, VersionSummary};
use rekey_shared::{Stage, VersionId};
use sqlx::Row;

/// Deprecated versions older than this may be purged...
const DEPRECATED_MIN_AGE_MILLIS: i64 = 86_400_000;
/// ...once this many newer versions exist.
const VERSIONS_KEPT: i64 = 100;

impl Store {
    pub async fn version(
        &self,
        secret_id: &str,
        version_id: &VersionId,
    ) -> Result<Option<VersionRecord>> {
        self.readers
            .version(secret_id.to_owned(), version_id.as_str().to_owned())
            .await
    }

    /// Every version with its sealed value, oldest first.
    pub async fn all_versions(&self, secret_id: &str) -> Result<Vec<VersionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.secret_id = ? ORDER BY v.seq"
        ))
        .bind(secret_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_row).collect()
    }

    pub async fn version_at_stage(
        &self,
        secret_id: &str,
        stage: &Stage,
    ) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS}
             FROM version_stages s
             JOIN versions v ON v.secret_id = s.secret_id AND v.version_id = s.version_id
             WHERE s.secret_id = ? AND s.stage = ?"
        ))
        .bind(secret_id)
        .bind(stage.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_row).transpose()
    }

    /// The version `version_id`, or without one the version at `stage`,
    /// with the stages it carries (sorted): what a read answers, in one
    /// statement.
    pub async fn version_with_stages(
        &self,
        secret_id: &str,
        version_id: Option<&VersionId>,
        stage: &Stage,
    ) -> Result<Option<(VersionRecord, Vec<Stage>)>> {
        let row = sqlx::query(version_with_stages_sql())
            .bind(secret_id)
            .bind(version_id.map(VersionId::as_str))
            .bind(stage.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((version_row(&row)?, stage_list(row.get("stages"))?)))
            .transpose()
    }

    pub async fn stage_map(&self, secret_id: &str) -> Result<StageMap> {
        let mut connection = self.pool.acquire().await?;
        read_stage_map(&mut connection, secret_id).await
    }

    /// Adds a version and moves stages as [`stages::for_new_version`] says,
    /// then purges deprecated versions beyond the newest hundred that are
    /// more than a day old: all in one transaction.
    pub async fn put_version(
        &self,
        secret_id: &str,
        version: &NewVersion,
        requested: &[Stage],
        event: &AuditEvent,
    ) -> Result<PutOutcome> {
        let mut tx = self.write().await?;
        tx.changes_secret(secret_id);
        self.add_version(tx, secret_id, version, requested, event)
            .await
    }

    /// Adds `version` in `tx` (which has said that it changes this secret)
    /// and commits it with `event`; a version that exists already changes
    /// nothing.
    pub(super) async fn add_version(
        &self,
        mut tx: Tx<'_>,
        secret_id: &str,
        version: &NewVersion,
        requested: &[Stage],
        event: &AuditEvent,
    ) -> Result<PutOutcome> {
        // Three round trips in the write batch: the savepoint, the insert
        // with the stages read back, and the rest with the audit event
        // (and, for a batch's first writer, the read of the chain's head).
        let before = match insert_version(&mut tx, secret_id, version).await {
            Err(Error::AlreadyExists(_)) => return Ok(PutOutcome::VersionExists),
            other => other?,
        };
        let mut map = before.clone();
        stages::for_new_version(&mut map, &version.version_id, requested)?;
        keep_pending_of_run(&mut tx, secret_id, &before, &map).await?;
        let mut script = Script::new();
        stage_changes(&mut script, secret_id, &before, &map);
        purge_deprecated(&mut script, secret_id, version.created_at);
        touch_in(&mut script, secret_id, version.created_at);
        // The purge is the script's only statement that returns rows.
        let purged = self.commit_audited_script(tx, script, event).await?;
        if !purged.is_empty() {
            tracing::info!(
                secret_id,
                purged = purged.len(),
                "purged deprecated versions"
            );
        }
        Ok(PutOutcome::Added(stages::stages_of(
            &map,
            &version.version_id,
        )))
    }

    /// Moves `stage` to `to` (or removes it when `to` is `None`). With
    /// `from`, the stage must be on that version now.
    pub async fn move_stage(
        &self,
        secret: &SecretRecord,
        stage: &Stage,
        to: Option<&VersionId>,
        from: Option<&VersionId>,
        now: i64,
        event: &AuditEvent,
    ) -> Result<()> {
        let (secret_id, secret_name) = (secret.id.as_str(), &secret.name);
        let mut tx = self.write().await?;
        tx.changes_secret(secret_id);
        let mut map = read_stage_map(&mut tx, secret_id).await?;
        let before = map.clone();
        if let Some(from) = from {
            let on = map.get(stage);
            if on != Some(from) {
                let where_now =
                    on.map_or("on no version".to_owned(), |v| format!("on version {v}"));
                return Err(Error::FailedPrecondition(format!(
                    "stage {stage} of {secret_name} is {where_now}, not on {from}"
                )));
            }
        }
        match to {
            Some(version) => {
                let exists: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM versions WHERE secret_id = ? AND version_id = ?",
                )
                .bind(secret_id)
                .bind(version.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(Error::NotFound(format!(
                        "secret {secret_name} has no version {version}"
                    )));
                }
                stages::attach(&mut map, stage, version);
                stages::check_limit(stages::client_labels(&before), &map, version)?;
            }
            None => stages::remove(&mut map, stage)?,
        }
        keep_pending_of_run(&mut tx, secret_id, &before, &map).await?;
        write_stage_map(&mut tx, secret_id, &before, &map).await?;
        touch(&mut tx, secret_id, now).await?;
        self.commit_audited(tx, event).await
    }

    /// Versions newest first; only those with stages unless
    /// `include_deprecated`. `before_seq` continues a previous page.
    pub async fn list_versions(
        &self,
        secret_id: &str,
        include_deprecated: bool,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VersionSummary>> {
        // One snapshot for the stages and the rows: a put between the two
        // would show its version without its stages.
        let mut connection = self.pool.begin().await?;
        let map = read_stage_map(&mut connection, secret_id).await?;
        let rows = sqlx::query(
            "SELECT version_id, seq, created_at, created_by, accessed_day, key_name FROM versions v
             WHERE secret_id = ?1 AND seq < ?2
               AND (?3 OR EXISTS (SELECT 1 FROM version_stages s
                                  WHERE s.secret_id = v.secret_id AND s.version_id = v.version_id))
             ORDER BY seq DESC LIMIT ?4",
        )
        .bind(secret_id)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(include_deprecated)
        .bind(limit)
        .fetch_all(&mut *connection)
        .await?;
        rows.iter()
            .map(|row| {
                let version_id = stored(VersionId::parse(row.get("version_id")), "version id")?;
                Ok(VersionSummary {
                    stages: stages::stages_of(&map, &version_id),
                    version_id,
                    seq: row.get("seq"),
                    created_at: row.get("created_at"),
                    created_by: row.get("created_by"),
                    accessed_day: row.get("accessed_day"),
                    key_name: row.get("key_name"),
                })
            })
            .collect()
    }

    /// Records that a version was read today. Day resolution: at most one
    /// write a day per secret and version.
    pub async fn record_access(
        &self,
        secret_id: &str,
        version_id: &VersionId,
        day: i64,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_secret(secret_id);
        sqlx::query(
            "UPDATE secrets SET accessed_day = ?1
             WHERE id = ?2 AND (accessed_day IS NULL OR accessed_day < ?1)",
        )
        .bind(day)
        .bind(secret_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE versions SET accessed_day = ?1
             WHERE secret_id = ?2 AND version_id = ?3 AND (accessed_day IS NULL OR accessed_day < ?1)",
        )
        .bind(day)
        .bind(secret_id)
        .bind(version_id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// The version `?2` of secret `?1`, or the one carrying stage `?3` when
/// `?2` is NULL, with its stages (comma-separated): the read of a value.
pub(super) fn version_with_stages_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {VERSION_COLUMNS},
                    (SELECT group_concat(x.stage, ',') FROM version_stages x
                      WHERE x.secret_id = v.secret_id AND x.version_id = v.version_id) AS stages
             FROM versions v
             WHERE v.secret_id = ?1
               AND v.version_id = COALESCE(?2,
                   (SELECT s.version_id FROM version_stages s WHERE s.secret_id = ?1 AND s.stage = ?3))"
        )
    });
    &SQL
}

/// Adds `version` and returns the secret's stages as they were before (no
/// stage can be on a version that did not exist): one round trip.
pub(super) async fn insert_version(
    tx: &mut Tx<'_>,
    secret_id: &str,
    version: &NewVersion,
) -> Result<StageMap> {
    // Writers are serialized, so the checks in this statement and a
    // retirement, a move to another key or a deletion cannot interleave: a
    // data key is never wrapped under a retired version (a server learns
    // of a new key version within a second of its creation), nor under
    // the key a secret was moved off while the value was being sealed.
    // No row inserted: `version_refusal` says why.
    let key = &version.sealed.key;
    let mut script = Script::new();
    script
        .statement(
            "INSERT INTO versions (secret_id, version_id, seq, created_at, created_by, is_binary,
                                   ciphertext, wrapped_data_key, key_name, key_version)
             SELECT ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE secret_id = ?),
                    ?, ?, ?, ?, ?, ?, ?
             WHERE EXISTS (SELECT 1 FROM master_keys WHERE name = ? AND version = ?)
               AND EXISTS (SELECT 1 FROM secrets
                           WHERE id = ? AND key_name = ? AND deletion_date IS NULL)",
        )
        .bind(secret_id)
        .bind(version.version_id.as_str())
        .bind(secret_id)
        .bind(version.created_at)
        .bind(&version.created_by)
        .bind(version.sealed.is_binary)
        .bind(&version.sealed.ciphertext)
        .bind(&version.sealed.wrapped_data_key)
        .bind(key.name.as_str())
        .bind(key.version)
        .bind(key.name.as_str())
        .bind(key.version)
        .bind(secret_id)
        .bind(key.name.as_str());
    // `changes()` is what the INSERT just added; every row carries it, and
    // the LEFT JOIN gives one row even when the secret has no stages.
    script
        .statement(
            "SELECT changes() AS inserted, s.stage, s.version_id
             FROM (SELECT 1) LEFT JOIN version_stages s ON s.secret_id = ?",
        )
        .bind(secret_id);
    let rows = match script.run(tx).await {
        Err(error) if is_unique_violation(&error) => {
            return Err(Error::AlreadyExists(format!(
                "version {} already exists",
                version.version_id
            )));
        }
        other => other?,
    };
    if rows
        .first()
        .is_none_or(|row| row.get::<i64, _>("inserted") == 0)
    {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM versions WHERE secret_id = ?1 AND version_id = ?2)
                        AS present,
                    (SELECT key_name FROM secrets WHERE id = ?1) AS key_name,
                    (SELECT count(*) FROM secrets WHERE id = ?1 AND deletion_date IS NOT NULL)
                        AS deleted",
        )
        .bind(secret_id)
        .bind(version.version_id.as_str())
        .fetch_one(&mut **tx)
        .await?;
        return Err(version_refusal(&row, key, &version.version_id));
    }
    let mut map = StageMap::new();
    for row in &rows {
        let (Some(stage), Some(version_id)) = (
            row.get::<Option<String>, _>("stage"),
            row.get::<Option<String>, _>("version_id"),
        ) else {
            continue;
        };
        map.insert(
            stored(Stage::parse(&stage), "stage")?,
            stored(VersionId::parse(&version_id), "version id")?,
        );
    }
    Ok(map)
}

/// Appends to `script` the deletion of the versions that are deprecated
/// (no stage), more than a day old, and not among the newest
/// [`VERSIONS_KEPT`]; each one deleted returns a row.
fn purge_deprecated<'q>(script: &mut Script<'q>, secret_id: &'q str, now: i64) {
    script
        .statement(
            // By age first (the index says so): a secret with thousands of
            // versions from today costs this statement nothing.
            "DELETE FROM versions WHERE rowid IN (
               SELECT v.rowid FROM versions v INDEXED BY versions_by_age
               WHERE v.secret_id = ?
                 AND v.created_at < ?
                 AND v.seq <= (SELECT seq FROM versions WHERE secret_id = ?
                               ORDER BY seq DESC LIMIT 1 OFFSET ?)
                 AND NOT EXISTS (SELECT 1 FROM version_stages s
                                 WHERE s.secret_id = v.secret_id
                                   AND s.version_id = v.version_id))
             RETURNING version_id",
        )
        .bind(secret_id)
        .bind(now - DEPRECATED_MIN_AGE_MILLIS)
        .bind(secret_id)
        .bind(VERSIONS_KEPT);
}

/// Refuses a client's change that takes PENDING off the version an active
/// rotation run of the secret is making (its id is the run's): the run
/// moves it when it ends, and in `needs attention` it marks the value the
/// target may hold. Also one that makes that version CURRENT: it becomes
/// CURRENT when the run finishes, past its approvals, and a stage move
/// would have waved it through (the run abandoned, its value kept, the
/// target holding it). Looked up only when PENDING or CURRENT moves.
async fn keep_pending_of_run(
    tx: &mut Tx<'_>,
    secret_id: &str,
    before: &StageMap,
    after: &StageMap,
) -> Result<()> {
    let current = Stage::current();
    if let Some(to) = after.get(&current)
        && before.get(&current) != Some(to)
        && run_is_active(tx, secret_id, to.as_str()).await?
    {
        return Err(Error::FailedPrecondition(format!(
            "version {to} is the one a rotation run is making: it becomes CURRENT when the run \
             finishes, past its approvals (approve them, or cancel the run)"
        )));
    }
    let pending = Stage::parse(Stage::PENDING).map_err(Error::from)?;
    let Some(on) = before.get(&pending) else {
        return Ok(());
    };
    if after.get(&pending) == Some(on) {
        return Ok(());
    }
    if run_is_active(tx, secret_id, on.as_str()).await? {
        return Err(Error::FailedPrecondition(format!(
            "stage PENDING is on version {on}, which a rotation run is making: the run moves it \
             when it ends (cancel the run to take it away)"
        )));
    }
    Ok(())
}

/// Whether `run_id` is an active run of the secret.
async fn run_is_active(tx: &mut Tx<'_>, secret_id: &str, run_id: &str) -> Result<bool> {
    let running: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM rotation_runs WHERE secret_id = ? AND run_id = ? AND ended_at IS NULL",
    )
    .bind(secret_id)
    .bind(run_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(running.is_some())
}
