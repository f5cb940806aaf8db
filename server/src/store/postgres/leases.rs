//! Leases and claims that let several replicas share rotation work: a run
//! is driven by the holder of its secret's lease, and a due schedule is
//! started by the one replica whose claim moved it on (the row locked with
//! `FOR UPDATE SKIP LOCKED`, so a replica claiming at the same moment skips
//! it rather than waits). Leases are coordination only, not audited; a
//! schedule moved on without a run commits with its event.

use super::Store;
use crate::audit::AuditEvent;
use crate::error::Result;

impl Store {
    /// Claims (or renews) the lease on `secret_id` for `owner`, a claim's
    /// own token `PROCESS/CLAIM`, for `until - now` milliseconds: taken
    /// when it lapsed, or when a claim of the same process holds it (that
    /// process's drives of one secret take turns under its lock); false
    /// when another owner holds an unexpired one. A claim's release removes
    /// only its own token, so a release that comes late cannot free the
    /// next claim's lease. Times are the database's clock, not the
    /// replica's: a replica whose clock ran seconds ahead took live leases
    /// (and drove a step against the target beside their holder).
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
        let claimed = sqlx::query(
            "INSERT INTO rotation_leases (secret_id, owner, expires_at)
             VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $3)
             ON CONFLICT (secret_id) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
             WHERE left(rotation_leases.owner, length($4)) = $4
                OR rotation_leases.expires_at < EXCLUDED.expires_at - $3",
        )
        .bind(secret_id)
        .bind(owner)
        .bind(until.saturating_sub(now))
        .bind(&process)
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Gives the lease up, if `owner` still holds it.
    pub async fn release_lease(&self, secret_id: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM rotation_leases WHERE secret_id = $1 AND owner = $2")
            .bind(secret_id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Several replicas share this database: a lease found at start may be
    /// another replica's, live. Nothing to clear.
    pub async fn clear_leases(&self) -> Result<()> {
        Ok(())
    }

    /// Moves a due schedule on from `due_at` to `next`; true for the one
    /// replica whose claim did, which then starts the run.
    pub async fn claim_due(
        &self,
        secret_id: &str,
        due_at: i64,
        next: Option<i64>,
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let claimed = sqlx::query(
            "UPDATE rotation_configs SET next_rotation_at = $1
             WHERE secret_id = (SELECT secret_id FROM rotation_configs
                                WHERE secret_id = $2 AND next_rotation_at = $3
                                FOR UPDATE SKIP LOCKED)",
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
