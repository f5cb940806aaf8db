//! Leases and claims that let several processes share rotation work: a run
//! is driven by the holder of its secret's lease, and a due schedule is
//! started by the one process whose claim moved it on. Leases are
//! coordination only, not audited; a schedule moved on without a run
//! commits with its event. Each is a writer of the write batch like any
//! other, rather than a statement of its own that would wait for SQLite's
//! write lock.

use super::Store;
use crate::audit::AuditEvent;
use crate::error::Result;

impl Store {
    /// Takes or renews the lease on `secret_id`'s rotation work until
    /// `until`; false when another owner holds an unexpired one.
    /// Claims (or renews) the lease on `secret_id` for `owner`, a claim's
    /// own token `PROCESS/CLAIM`: taken when it lapsed, or when a claim of
    /// the same process holds it (that process's drives of one secret take
    /// turns under its lock). A claim's release removes only its own token,
    /// so a release that comes late cannot free the next claim's lease.
    pub async fn claim_lease(
        &self,
        secret_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let process = match owner.split_once('/') {
            Some((process, _)) => format!("{process}/"),
            None => owner.to_owned(),
        };
        let mut tx = self.write().await?;
        tx.changes_no_value();
        let claimed = sqlx::query(
            "INSERT INTO rotation_leases (secret_id, owner, expires_at) VALUES (?, ?, ?)
             ON CONFLICT (secret_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
             WHERE substr(rotation_leases.owner, 1, length(?)) = ? OR rotation_leases.expires_at < ?",
        )
        .bind(secret_id)
        .bind(owner)
        .bind(until)
        .bind(&process)
        .bind(&process)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Gives the lease up, if `owner` still holds it.
    pub async fn release_lease(&self, secret_id: &str, owner: &str) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        sqlx::query("DELETE FROM rotation_leases WHERE secret_id = ? AND owner = ?")
            .bind(secret_id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Drops every lease: one process serves an embedded database, so a
    /// lease found at start belongs to a process that is gone.
    pub async fn clear_leases(&self) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        sqlx::query("DELETE FROM rotation_leases")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Moves a due schedule on from `due_at` to `next`; true for the one
    /// caller whose claim did, who then starts the run.
    pub async fn claim_due(
        &self,
        secret_id: &str,
        due_at: i64,
        next: Option<i64>,
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        let claimed = sqlx::query(
            "UPDATE rotation_configs SET next_rotation_at = ?
             WHERE secret_id = ? AND next_rotation_at = ?",
        )
        .bind(next)
        .bind(secret_id)
        .bind(due_at)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() != 1 {
            return Ok(false);
        }
        self.commit_audited(tx, event).await?;
        Ok(true)
    }
}
