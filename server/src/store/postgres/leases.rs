//! Leases and claims that let several replicas share rotation work: a run
//! is driven by the holder of its secret's lease, and a due schedule is
//! started by the one replica whose claim moved it on (the row locked with
//! `FOR UPDATE SKIP LOCKED`, so a replica claiming at the same moment skips
//! it rather than waits). Coordination only: nothing here changes secret
//! data, so nothing here is audited.

use super::Store;
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
        let claimed = sqlx::query(
            "INSERT INTO rotation_leases (secret_id, owner, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (secret_id) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
             WHERE left(rotation_leases.owner, length($5)) = $5 OR rotation_leases.expires_at < $4",
        )
        .bind(secret_id)
        .bind(owner)
        .bind(until)
        .bind(now)
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
    pub async fn claim_due(&self, secret_id: &str, due_at: i64, next: Option<i64>) -> Result<bool> {
        let claimed = sqlx::query(
            "UPDATE rotation_configs SET next_rotation_at = $1
             WHERE secret_id = (SELECT secret_id FROM rotation_configs
                                WHERE secret_id = $2 AND next_rotation_at = $3
                                FOR UPDATE SKIP LOCKED)",
        )
        .bind(next)
        .bind(secret_id)
        .bind(due_at)
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }
}
