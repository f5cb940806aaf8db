//! Master keys, as the root key wrapped them.

use super::{Store, is_unique_violation, master_key_row};
use crate::error::{Error, Result};
use crate::store::WrappedMasterKey;

impl Store {
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
}
