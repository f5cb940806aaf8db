//! Policy versions: the newest is in force.

use super::Store;
use crate::audit::AuditEvent;
use crate::error::Result;

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: i64,
    pub document: String,
    pub created_at: i64,
    pub created_by: String,
}

impl Store {
    /// The policy in force, if any was ever applied.
    pub async fn current_policy(&self) -> Result<Option<PolicyVersion>> {
        let row: Option<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT version, document, created_at, created_by FROM policies
             ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(policy_version))
    }

    /// The version in force: cheap enough to poll.
    pub async fn policy_version(&self) -> Result<i64> {
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM policies")
            .fetch_one(&self.pool)
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// Stores a new version, audited in the same transaction. `based_on`
    /// is the version the change was made from: if another change landed
    /// meanwhile, nothing is written and `Ok(None)` says so.
    pub async fn insert_policy(
        &self,
        document: &str,
        created_by: &str,
        based_on: i64,
        now: i64,
        event: &AuditEvent,
    ) -> Result<Option<i64>> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM policies")
            .fetch_one(&mut *tx)
            .await?;
        if current.unwrap_or(0) != based_on {
            return Ok(None);
        }
        let version = based_on + 1;
        sqlx::query(
            "INSERT INTO policies (version, document, created_at, created_by) VALUES (?, ?, ?, ?)",
        )
        .bind(version)
        .bind(document)
        .bind(now)
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, event).await?;
        Ok(Some(version))
    }

    /// Every version, newest first, without documents' text trimmed.
    pub async fn policy_history(&self) -> Result<Vec<PolicyVersion>> {
        let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT version, document, created_at, created_by FROM policies ORDER BY version DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(policy_version).collect())
    }
}

fn policy_version(
    (version, document, created_at, created_by): (i64, String, i64, String),
) -> PolicyVersion {
    PolicyVersion {
        version,
        document,
        created_at,
        created_by,
    }
}
