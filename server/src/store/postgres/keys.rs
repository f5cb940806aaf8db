//! Master keys, as the root key wrapped them.

use super::super::rows::stored_count;
use super::{Store, Tx, VERSION_COLUMNS, is_unique_violation, master_key_row, version_row};
use crate::audit::AuditEvent;
use crate::crypto::KeyRef;
use crate::error::{Error, Result};
use crate::store::WrappedMasterKey;
use crate::store::{Rewrapped, VersionRecord};
use sqlx::Row;

impl Store {
    pub async fn insert_master_key(
        &self,
        key: &WrappedMasterKey,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO master_keys (name, version, wrapped_material, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.name)
        .bind(i64::from(key.version))
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
            Ok(_) => self.commit_audited(tx, event).await,
        }
    }

    pub async fn master_key_versions(&self, name: &str) -> Result<Vec<WrappedMasterKey>> {
        let rows = sqlx::query(
            "SELECT name, version, wrapped_material, created_at FROM master_keys
             WHERE name = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(master_key_row).collect()
    }

    pub async fn list_master_keys(&self) -> Result<Vec<WrappedMasterKey>> {
        let rows = sqlx::query(
            "SELECT name, version, wrapped_material, created_at FROM master_keys ORDER BY name COLLATE \"C\", version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(master_key_row).collect()
    }
}

impl Store {
    /// Each key's version numbers, oldest first: cheap enough to poll.
    pub async fn master_key_index(&self) -> Result<std::collections::HashMap<String, Vec<u32>>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, version FROM master_keys ORDER BY name COLLATE \"C\", version",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut index: std::collections::HashMap<String, Vec<u32>> = Default::default();
        for (name, version) in rows {
            index.entry(name).or_default().push(stored_count(version));
        }
        Ok(index)
    }

    /// How many data keys a master-key version still wraps.
    pub async fn data_keys_using(&self, name: &str, version: u32) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM versions WHERE key_name = $1 AND key_version = $2",
        )
        .bind(name)
        .bind(i64::from(version))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Removes a master-key version that wraps no data key and is not the
    /// newest (new data keys are wrapped under the newest).
    pub async fn retire_master_key(
        &self,
        name: &str,
        version: u32,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM master_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        let Some(newest) = newest else {
            return Err(Error::NotFound(format!("master key {name} does not exist")));
        };
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM master_keys WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(i64::from(version))
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(Error::NotFound(format!(
                "master key {name} has no version {version}"
            )));
        }
        if i64::from(version) == newest {
            return Err(Error::FailedPrecondition(format!(
                "version {version} is the newest of master key {name}; rotate the key first"
            )));
        }
        let using: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM versions WHERE key_name = $1 AND key_version = $2",
        )
        .bind(name)
        .bind(i64::from(version))
        .fetch_one(&mut *tx)
        .await?;
        if using > 0 {
            return Err(Error::FailedPrecondition(format!(
                "{using} data key(s) are still wrapped under {name} version {version}; \
                 run `rekeyd keys rewrap {name}` first"
            )));
        }
        sqlx::query("DELETE FROM master_keys WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(i64::from(version))
            .execute(&mut *tx)
            .await?;
        self.commit_audited(tx, event).await
    }

    /// Up to `limit` versions whose data key is wrapped under an older
    /// version of its key than `newest` says, for re-wrapping.
    pub async fn versions_to_rewrap(
        &self,
        key_name: &str,
        newest: u32,
        limit: u32,
    ) -> Result<Vec<(String, VersionRecord)>> {
        let rows = sqlx::query(&format!(
            "SELECT v.secret_id, {VERSION_COLUMNS} FROM versions v
             WHERE v.key_name = $1 AND v.key_version < $2 LIMIT $3"
        ))
        .bind(key_name)
        .bind(i64::from(newest))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.get("secret_id"), version_row(row)?)))
            .collect()
    }

    /// Versions still wrapped under an older version of `key_name`.
    pub async fn count_to_rewrap(&self, key_name: &str, newest: u32) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM versions WHERE key_name = $1 AND key_version < $2",
        )
        .bind(key_name)
        .bind(i64::from(newest))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Stores re-wrapped data keys, each only if its row still holds the
    /// key it was read with; returns how many were written.
    pub async fn store_rewrapped(
        &self,
        batch: &[(String, Rewrapped)],
        event: &AuditEvent,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        for (_, rewrapped) in batch {
            require_key_version(&mut tx, &rewrapped.to).await?;
        }
        let mut written = 0;
        for (secret_id, rewrapped) in batch {
            written += sqlx::query(
                "UPDATE versions SET wrapped_data_key = $1, key_name = $2, key_version = $3
                 WHERE secret_id = $4 AND version_id = $5 AND key_name = $6 AND key_version = $7",
            )
            .bind(&rewrapped.wrapped_data_key)
            .bind(rewrapped.to.name.as_str())
            .bind(i64::from(rewrapped.to.version))
            .bind(secret_id)
            .bind(rewrapped.version_id.as_str())
            .bind(rewrapped.from.name.as_str())
            .bind(i64::from(rewrapped.from.version))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        self.commit_audited(tx, event).await?;
        Ok(written)
    }
}

/// Refuses to wrap a data key under a master-key version that is gone:
/// one retired since the caller wrapped it would leave the value
/// unreadable for good. Writers are serialized, so a retirement cannot
/// come between this and the write.
pub(super) async fn require_key_version(tx: &mut Tx<'_>, key: &KeyRef) -> Result<()> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1::BIGINT FROM master_keys WHERE name = $1 AND version = $2")
            .bind(key.name.as_str())
            .bind(i64::from(key.version))
            .fetch_optional(&mut **tx)
            .await?;
    match exists {
        Some(_) => Ok(()),
        None => Err(Error::FailedPrecondition(format!(
            "master key {} version {} was retired meanwhile; try again",
            key.name, key.version
        ))),
    }
}
