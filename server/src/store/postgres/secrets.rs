//! Secrets: creation, metadata, tags, deletion and erasure.

use super::{SECRET_COLUMNS, Store, Tx, insert_version, secret_row, touch, write_stage_map};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::stages::{self, StageMap};
use crate::store::sqlite::MAX_TAGS;
use crate::store::{
    Deletion, NewSecret, NewVersion, PutOutcome, Rewrapped, SecretRecord, SecretUpdate,
};
use rekey_shared::SecretName;
use rekey_shared::time::format_millis as format_date;

impl Store {
    /// Creates a secret, with its first version (which gets CURRENT) when
    /// one is given. A name held by a secret scheduled for deletion is not
    /// free until that secret is restored and deleted, or purged.
    pub async fn create_secret(
        &self,
        secret: &NewSecret,
        first: Option<&NewVersion>,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        // ON CONFLICT, not a unique violation: a failed statement aborts a
        // PostgreSQL transaction, and the check below could not run.
        let inserted = sqlx::query(
            "INSERT INTO secrets (id, name, description, key_name, created_at, changed_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&secret.id)
        .bind(secret.name.as_str())
        .bind(&secret.description)
        .bind(secret.key_name.as_str())
        .bind(secret.created_at)
        .bind(secret.created_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let deletion: Option<i64> =
                sqlx::query_scalar("SELECT deletion_date FROM secrets WHERE name = $1")
                    .bind(secret.name.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            return Err(match deletion {
                Some(date) => Error::FailedPrecondition(format!(
                    "secret {} is scheduled for deletion on {}; its name is free once it is \
                     purged, or restore it (rekey restore) and delete it with --force",
                    secret.name,
                    format_date(date)
                )),
                None => Error::AlreadyExists(format!("secret {} already exists", secret.name)),
            });
        }
        insert_tags(&mut tx, &secret.id, &secret.tags).await?;
        if let Some(version) = first {
            insert_version(&mut tx, &secret.id, version).await?;
            let mut map = StageMap::new();
            stages::for_new_version(&mut map, &version.version_id, &[])?;
            write_stage_map(&mut tx, &secret.id, &StageMap::new(), &map).await?;
        }
        self.commit_audited(tx, event).await
    }

    pub async fn secret(&self, name: &SecretName) -> Result<Option<SecretRecord>> {
        let Some(mut secret) = self.secret_without_tags(name).await? else {
            return Ok(None);
        };
        secret.tags = self.tags(&secret.id).await?;
        Ok(Some(secret))
    }

    /// The secret named `name` with its tags left empty: for reading
    /// values, which never shows them (one statement fewer per read).
    pub async fn secret_without_tags(&self, name: &SecretName) -> Result<Option<SecretRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE name = $1"
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(secret_row).transpose()
    }

    /// Changes the description, moves the secret to another master key
    /// with every version's data key re-wrapped, and adds a version, each
    /// when asked, in one transaction: all or nothing. `None` when no
    /// version was given; [`PutOutcome::VersionExists`] changed nothing.
    pub async fn update_secret(
        &self,
        secret_id: &str,
        update: &SecretUpdate<'_>,
        event: &AuditEvent,
    ) -> Result<Option<PutOutcome>> {
        let mut tx = self.write().await?;
        if let Some(description) = update.description {
            sqlx::query("UPDATE secrets SET description = $1 WHERE id = $2")
                .bind(description)
                .bind(secret_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((key_name, rewrapped)) = update.new_key {
            for moved in rewrapped {
                super::keys::require_key_version(&mut tx, &moved.to).await?;
            }
            sqlx::query("UPDATE secrets SET key_name = $1 WHERE id = $2")
                .bind(key_name.as_str())
                .bind(secret_id)
                .execute(&mut *tx)
                .await?;
            for Rewrapped {
                version_id,
                wrapped_data_key: wrapped,
                from: old,
                to: new,
            } in rewrapped
            {
                let updated = sqlx::query(
                    "UPDATE versions SET wrapped_data_key = $1, key_name = $2, key_version = $3
                     WHERE secret_id = $4 AND version_id = $5 AND key_name = $6 AND key_version = $7",
                )
                .bind(wrapped)
                .bind(new.name.as_str())
                .bind(i64::from(new.version))
                .bind(secret_id)
                .bind(version_id.as_str())
                .bind(old.name.as_str())
                .bind(i64::from(old.version))
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(changed_meanwhile());
                }
            }
            let left: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM versions WHERE secret_id = $1 AND key_name <> $2",
            )
            .bind(secret_id)
            .bind(key_name.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if left != 0 {
                return Err(changed_meanwhile());
            }
        }
        match update.version {
            Some(version) => self
                .add_version(tx, secret_id, version, &[], event)
                .await
                .map(Some),
            None => {
                touch(&mut tx, secret_id, update.now).await?;
                self.commit_audited(tx, event).await?;
                Ok(None)
            }
        }
    }

    /// Adds or replaces tags, keeping the total within [`MAX_TAGS`].
    pub async fn tag_secret(
        &self,
        secret_id: &str,
        tags: &[(String, String)],
        now: i64,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        insert_tags(&mut tx, secret_id, tags).await?;
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM secret_tags WHERE secret_id = $1")
                .bind(secret_id)
                .fetch_one(&mut *tx)
                .await?;
        if count as usize > MAX_TAGS {
            return Err(Error::InvalidArgument(format!(
                "the secret would carry {count} tags; at most {MAX_TAGS} are allowed"
            )));
        }
        touch(&mut tx, secret_id, now).await?;
        self.commit_audited(tx, event).await
    }

    pub async fn untag_secret(
        &self,
        secret_id: &str,
        keys: &[String],
        now: i64,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        for key in keys {
            sqlx::query("DELETE FROM secret_tags WHERE secret_id = $1 AND key = $2")
                .bind(secret_id)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        touch(&mut tx, secret_id, now).await?;
        self.commit_audited(tx, event).await
    }

    /// Schedules the deletion of a live secret, or erases a secret (live or
    /// scheduled) at once.
    pub async fn delete_secret(
        &self,
        secret: &SecretRecord,
        deletion: Deletion,
        event: &AuditEvent,
    ) -> Result<()> {
        match deletion {
            Deletion::Now => {
                self.erase(secret, event).await?;
                // The erasure is committed and audited: the log's emptying
                // failing now is not the request's failure (it is owed, and
                // tried again every second).
                if let Err(error) = self.checkpoint().await {
                    tracing::warn!(%error, "emptying the write-ahead log after an erasure failed; tried again");
                }
                Ok(())
            }
            Deletion::At(date) => {
                let mut tx = self.write().await?;
                refuse_while_rotating(&mut tx, secret).await?;
                let updated = sqlx::query(
                    "UPDATE secrets SET deletion_date = $1 WHERE id = $2 AND deletion_date IS NULL",
                )
                .bind(date)
                .bind(&secret.id)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(Error::FailedPrecondition(format!(
                        "secret {} is already scheduled for deletion; use --force to delete it now",
                        secret.name
                    )));
                }
                self.commit_audited(tx, event).await
            }
        }
    }

    pub async fn restore_secret(
        &self,
        secret: &SecretRecord,
        now: i64,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE secrets SET deletion_date = NULL, changed_at = $1
             WHERE id = $2 AND deletion_date IS NOT NULL",
        )
        .bind(now)
        .bind(&secret.id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::FailedPrecondition(format!(
                "secret {} is not scheduled for deletion; there is nothing to restore",
                secret.name
            )));
        }
        self.commit_audited(tx, event).await
    }

    /// The secrets (id, name) whose recovery window ended by `now`.
    pub async fn due_for_purge(&self, now: i64) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, name FROM secrets WHERE deletion_date IS NOT NULL AND deletion_date <= $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Erases a secret whose recovery window ended by `now`, audited;
    /// `false` (nothing erased, nothing recorded) when it is no longer due:
    /// restored since it was found due, or a rotation run of it is under
    /// way (the purge waits for its end).
    pub async fn purge(&self, secret_id: &str, name: &str, now: i64) -> Result<bool> {
        let mut tx = self.write().await?;
        // The cascade removes versions (and their ciphertexts), stages and tags.
        let erased = sqlx::query(
            "DELETE FROM secrets
             WHERE id = $1 AND deletion_date IS NOT NULL AND deletion_date <= $2
               AND NOT EXISTS (SELECT 1 FROM rotation_runs
                               WHERE secret_id = secrets.id AND ended_at IS NULL)",
        )
        .bind(secret_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if erased.rows_affected() == 0 {
            return Ok(false);
        }
        let event = AuditEvent::system(
            "secrets:PurgeSecret",
            name,
            "recovery window ended; secret and ciphertexts erased",
        );
        self.commit_audited(tx, &event).await?;
        Ok(true)
    }

    async fn erase(&self, secret: &SecretRecord, event: &AuditEvent) -> Result<()> {
        let mut tx = self.write().await?;
        refuse_while_rotating(&mut tx, secret).await?;
        // The cascade removes versions (and their ciphertexts), stages and tags.
        sqlx::query("DELETE FROM secrets WHERE id = $1")
            .bind(&secret.id)
            .execute(&mut *tx)
            .await?;
        self.commit_audited(tx, event).await
    }
}

fn changed_meanwhile() -> Error {
    Error::FailedPrecondition(
        "the secret's versions changed while moving it to the new key; try again".to_owned(),
    )
}

async fn insert_tags(tx: &mut Tx<'_>, secret_id: &str, tags: &[(String, String)]) -> Result<()> {
    for (key, value) in tags {
        sqlx::query(
            "INSERT INTO secret_tags (secret_id, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (secret_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(secret_id)
        .bind(key)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Refuses (FAILED_PRECONDITION) a deletion of `secret` while a rotation
/// run of it is under way (`run_under_way`).
async fn refuse_while_rotating(tx: &mut Tx<'_>, secret: &SecretRecord) -> Result<()> {
    let running: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM rotation_runs WHERE secret_id = $1 AND ended_at IS NULL")
            .bind(&secret.id)
            .fetch_optional(&mut **tx)
            .await?;
    match running {
        Some(_) => Err(super::super::run_under_way(&secret.name)),
        None => Ok(()),
    }
}
