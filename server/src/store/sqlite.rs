//! The SQLite backend. Writes take a process-wide lock and `BEGIN
//! IMMEDIATE`, so two writers never race on a stale snapshot; reads run on
//! the pool in parallel (WAL).

use super::migrate::migrate;
use super::{
    NewSecret, NewVersion, PutOutcome, SecretQuery, SecretRecord, VersionRecord, VersionSummary,
    WrappedMasterKey,
};
use crate::crypto::{KeyRef, SealedValue};
use crate::error::{Error, Result};
use crate::stages::{self, StageMap};
use rekey_shared::{KeyName, SecretName, Stage, VersionId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    write_lock: Mutex<()>,
}

type Tx = Transaction<'static, Sqlite>;

/// A row read where a stored string must parse; a failure means the
/// database was edited by hand.
fn stored<T>(parsed: std::result::Result<T, rekey_shared::NameError>, what: &str) -> Result<T> {
    parsed.map_err(|error| Error::internal(&format!("stored {what} is malformed"), error))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its
    /// schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| Error::InvalidArgument(format!("database URL {url:?}: {error}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|error| Error::internal(&format!("opening database {url}"), error))?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            write_lock: Mutex::new(()),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, Tx)> {
        let guard = self.write_lock.lock().await;
        let transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok((guard, transaction))
    }

    // ---- master keys -------------------------------------------------

    pub async fn insert_master_key(&self, key: &WrappedMasterKey) -> Result<()> {
        let (_guard, mut tx) = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO master_keys (name, version, wrapped_material, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.name)
        .bind(key.version)
        .bind(&key.wrapped_material)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(error) if is_unique_violation(&error) => Err(Error::AlreadyExists(format!(
                "master key {} version {} already exists",
                key.name, key.version
            ))),
            Err(error) => Err(error.into()),
            Ok(_) => Ok(tx.commit().await?),
        }
    }

    pub async fn master_key_versions(&self, name: &str) -> Result<Vec<WrappedMasterKey>> {
        let rows = sqlx::query(
            "SELECT name, version, wrapped_material, created_at FROM master_keys
             WHERE name = ? ORDER BY version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(master_key_row).collect()
    }

    pub async fn list_master_keys(&self) -> Result<Vec<WrappedMasterKey>> {
        let rows = sqlx::query(
            "SELECT name, version, wrapped_material, created_at FROM master_keys ORDER BY name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(master_key_row).collect()
    }

    // ---- secrets -----------------------------------------------------

    /// Creates a secret, with its first version (which gets CURRENT) when
    /// one is given.
    pub async fn create_secret(
        &self,
        secret: &NewSecret,
        first: Option<&NewVersion>,
    ) -> Result<()> {
        let (_guard, mut tx) = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO secrets (id, name, description, key_name, created_at, changed_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&secret.id)
        .bind(secret.name.as_str())
        .bind(&secret.description)
        .bind(secret.key_name.as_str())
        .bind(secret.created_at)
        .bind(secret.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(error) if is_unique_violation(&error) => {
                return Err(Error::AlreadyExists(format!(
                    "secret {} already exists",
                    secret.name
                )));
            }
            other => {
                other?;
            }
        }
        for (key, value) in &secret.tags {
            sqlx::query("INSERT INTO secret_tags (secret_id, key, value) VALUES (?, ?, ?)")
                .bind(&secret.id)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(version) = first {
            insert_version(&mut tx, &secret.id, version).await?;
            let mut map = StageMap::new();
            stages::for_new_version(&mut map, &version.version_id, &[])?;
            write_stage_map(&mut tx, &secret.id, &map).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn secret(&self, name: &SecretName) -> Result<Option<SecretRecord>> {
        let row = sqlx::query(
            "SELECT id, name, description, key_name, created_at, changed_at, accessed_day, deletion_date
             FROM secrets WHERE name = ?",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut secret = secret_row(&row)?;
        secret.tags = self.tags(&secret.id).await?;
        Ok(Some(secret))
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

    /// A page of secrets ordered by name.
    pub async fn list_secrets(&self, query: &SecretQuery) -> Result<Vec<SecretRecord>> {
        let mut sql = String::from(
            "SELECT id, name, description, key_name, created_at, changed_at, accessed_day, deletion_date
             FROM secrets WHERE deletion_date IS NULL",
        );
        if !query.name_prefixes.is_empty() {
            let any: Vec<&str> = query
                .name_prefixes
                .iter()
                .map(|_| "substr(name, 1, length(?)) = ?")
                .collect();
            sql.push_str(&format!(" AND ({})", any.join(" OR ")));
        }
        for _ in &query.excluded_name_prefixes {
            sql.push_str(" AND substr(name, 1, length(?)) <> ?");
        }
        if query.after_name.is_some() {
            sql.push_str(" AND name > ?");
        }
        sql.push_str(" ORDER BY name LIMIT ?");
        let mut statement = sqlx::query(&sql);
        for prefix in query
            .name_prefixes
            .iter()
            .chain(&query.excluded_name_prefixes)
        {
            statement = statement.bind(prefix).bind(prefix);
        }
        if let Some(after) = &query.after_name {
            statement = statement.bind(after);
        }
        let rows = statement.bind(query.limit).fetch_all(&self.pool).await?;
        let mut secrets = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut secret = secret_row(row)?;
            secret.tags = self.tags(&secret.id).await?;
            secrets.push(secret);
        }
        Ok(secrets)
    }

    // ---- versions and stages -----------------------------------------

    pub async fn version(
        &self,
        secret_id: &str,
        version_id: &VersionId,
    ) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(
            "SELECT version_id, created_at, created_by, accessed_day, is_binary, ciphertext,
                    wrapped_data_key, key_name, key_version
             FROM versions WHERE secret_id = ? AND version_id = ?",
        )
        .bind(secret_id)
        .bind(version_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_row).transpose()
    }

    pub async fn version_at_stage(
        &self,
        secret_id: &str,
        stage: &Stage,
    ) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(
            "SELECT v.version_id, v.created_at, v.created_by, v.accessed_day, v.is_binary, v.ciphertext,
                    v.wrapped_data_key, v.key_name, v.key_version
             FROM version_stages s
             JOIN versions v ON v.secret_id = s.secret_id AND v.version_id = s.version_id
             WHERE s.secret_id = ? AND s.stage = ?",
        )
        .bind(secret_id)
        .bind(stage.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_row).transpose()
    }

    pub async fn stage_map(&self, secret_id: &str) -> Result<StageMap> {
        let mut connection = self.pool.acquire().await?;
        read_stage_map(&mut connection, secret_id).await
    }

    /// Adds a version and moves stages as [`stages::for_new_version`] says,
    /// in one transaction.
    pub async fn put_version(
        &self,
        secret_id: &str,
        version: &NewVersion,
        requested: &[Stage],
    ) -> Result<PutOutcome> {
        let (_guard, mut tx) = self.write().await?;
        match insert_version(&mut tx, secret_id, version).await {
            Err(Error::AlreadyExists(_)) => return Ok(PutOutcome::VersionExists),
            other => other?,
        }
        let mut map = read_stage_map(&mut tx, secret_id).await?;
        stages::for_new_version(&mut map, &version.version_id, requested)?;
        write_stage_map(&mut tx, secret_id, &map).await?;
        touch(&mut tx, secret_id, version.created_at).await?;
        tx.commit().await?;
        Ok(PutOutcome::Added(stages::stages_of(
            &map,
            &version.version_id,
        )))
    }

    /// Moves `stage` to `to` (or removes it when `to` is `None`). With
    /// `from`, the stage must be on that version now.
    pub async fn move_stage(
        &self,
        secret_id: &str,
        secret_name: &SecretName,
        stage: &Stage,
        to: Option<&VersionId>,
        from: Option<&VersionId>,
        now: i64,
    ) -> Result<()> {
        let (_guard, mut tx) = self.write().await?;
        let mut map = read_stage_map(&mut tx, secret_id).await?;
        if let Some(from) = from {
            match map.get(stage) {
                Some(on) if on == from => {}
                Some(on) => {
                    return Err(Error::FailedPrecondition(format!(
                        "stage {stage} of {secret_name} is on version {on}, not on {from}"
                    )));
                }
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "stage {stage} of {secret_name} is on no version, not on {from}"
                    )));
                }
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
                stages::check_limit(&map, version)?;
            }
            None => stages::remove(&mut map, stage)?,
        }
        write_stage_map(&mut tx, secret_id, &map).await?;
        touch(&mut tx, secret_id, now).await?;
        tx.commit().await?;
        Ok(())
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
        let mut connection = self.pool.acquire().await?;
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
        sqlx::query("UPDATE secrets SET accessed_day = ?1 WHERE id = ?2 AND (accessed_day IS NULL OR accessed_day < ?1)")
            .bind(day)
            .bind(secret_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "UPDATE versions SET accessed_day = ?1
             WHERE secret_id = ?2 AND version_id = ?3 AND (accessed_day IS NULL OR accessed_day < ?1)",
        )
        .bind(day)
        .bind(secret_id)
        .bind(version_id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

async fn insert_version(tx: &mut Tx, secret_id: &str, version: &NewVersion) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO versions (secret_id, version_id, seq, created_at, created_by, is_binary,
                               ciphertext, wrapped_data_key, key_name, key_version)
         VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE secret_id = ?1),
                 ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(secret_id)
    .bind(version.version_id.as_str())
    .bind(version.created_at)
    .bind(&version.created_by)
    .bind(version.sealed.is_binary)
    .bind(&version.sealed.ciphertext)
    .bind(&version.sealed.wrapped_data_key)
    .bind(version.sealed.key.name.as_str())
    .bind(version.sealed.key.version)
    .execute(&mut **tx)
    .await;
    match inserted {
        Err(error) if is_unique_violation(&error) => Err(Error::AlreadyExists(format!(
            "version {} already exists",
            version.version_id
        ))),
        Err(error) => Err(error.into()),
        Ok(_) => Ok(()),
    }
}

async fn read_stage_map(
    connection: &mut sqlx::SqliteConnection,
    secret_id: &str,
) -> Result<StageMap> {
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

async fn write_stage_map(tx: &mut Tx, secret_id: &str, map: &StageMap) -> Result<()> {
    sqlx::query("DELETE FROM version_stages WHERE secret_id = ?")
        .bind(secret_id)
        .execute(&mut **tx)
        .await?;
    for (stage, version) in map {
        sqlx::query("INSERT INTO version_stages (secret_id, stage, version_id) VALUES (?, ?, ?)")
            .bind(secret_id)
            .bind(stage.as_str())
            .bind(version.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn touch(tx: &mut Tx, secret_id: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE secrets SET changed_at = ? WHERE id = ?")
        .bind(now)
        .bind(secret_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn secret_row(row: &sqlx::sqlite::SqliteRow) -> Result<SecretRecord> {
    Ok(SecretRecord {
        id: row.get("id"),
        name: stored(SecretName::parse(row.get("name")), "secret name")?,
        description: row.get("description"),
        key_name: stored(KeyName::parse(row.get("key_name")), "key name")?,
        tags: Vec::new(),
        created_at: row.get("created_at"),
        changed_at: row.get("changed_at"),
        accessed_day: row.get("accessed_day"),
        deletion_date: row.get("deletion_date"),
    })
}

fn version_row(row: &sqlx::sqlite::SqliteRow) -> Result<VersionRecord> {
    Ok(VersionRecord {
        version_id: stored(VersionId::parse(row.get("version_id")), "version id")?,
        created_at: row.get("created_at"),
        created_by: row.get("created_by"),
        accessed_day: row.get("accessed_day"),
        sealed: SealedValue {
            is_binary: row.get("is_binary"),
            ciphertext: row.get("ciphertext"),
            wrapped_data_key: row.get("wrapped_data_key"),
            key: KeyRef {
                name: stored(KeyName::parse(row.get("key_name")), "key name")?,
                version: row.get("key_version"),
            },
        },
    })
}

fn master_key_row(row: &sqlx::sqlite::SqliteRow) -> Result<WrappedMasterKey> {
    Ok(WrappedMasterKey {
        name: row.get("name"),
        version: row.get("version"),
        wrapped_material: row.get("wrapped_material"),
        created_at: row.get("created_at"),
    })
}
