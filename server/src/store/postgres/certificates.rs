//! The registry of client certificates issued here, and revocations.

use super::Store;
use crate::audit::AuditEvent;
use crate::error::Result;
use crate::store::rows::{RevokeTarget, plan_revocation};
use crate::store::sqlite::CertificateRecord;
use sqlx::Row;

impl Store {
    pub async fn record_certificate(
        &self,
        record: &CertificateRecord,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO certificates (serial, principal, issued_at, not_after) VALUES ($1, $2, $3, $4)",
        )
        .bind(&record.serial)
        .bind(&record.principal)
        .bind(record.issued_at)
        .bind(record.not_after)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, event).await
    }

    pub async fn certificates(&self) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(
            "SELECT serial, principal, issued_at, not_after, revoked_at FROM certificates
             ORDER BY principal COLLATE \"C\", issued_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| CertificateRecord {
                serial: row.get("serial"),
                principal: row.get("principal"),
                issued_at: row.get("issued_at"),
                not_after: row.get("not_after"),
                revoked_at: row.get("revoked_at"),
            })
            .collect())
    }

    /// Revokes every certificate of a principal, or one serial (recorded
    /// even when it was not issued here, for a bring-your-own CA). Returns
    /// the serials revoked.
    /// Revokes what `target` names (see [`RevokeTarget`]); the serials
    /// revoked.
    pub async fn revoke(
        &self,
        target: RevokeTarget<'_>,
        now: i64,
        event: &AuditEvent,
    ) -> Result<Vec<String>> {
        let mut tx = self.write().await?;
        let serial = crate::principal::serial_hex(target.text());
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT serial, principal, revoked_at IS NOT NULL FROM certificates WHERE principal = $1 OR serial = $2",
        )
        .bind(target.text())
        .bind(&serial)
        .fetch_all(&mut *tx)
        .await?;
        let plan = plan_revocation(target, &serial, &rows)?;
        if plan.record {
            sqlx::query("INSERT INTO certificates (serial, principal) VALUES ($1, $2)")
                .bind(&serial)
                .bind(plan.record_as)
                .execute(&mut *tx)
                .await?;
        }
        for serial in &plan.revoke {
            sqlx::query(
                "UPDATE certificates SET revoked_at = $1, revoked_by = $2 WHERE serial = $3",
            )
            .bind(now)
            .bind(&event.principal)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        }
        self.commit_audited(tx, &plan.event(event)).await?;
        Ok(plan.revoke)
    }

    /// The revoked serials, each with the principal it was issued to (or
    /// recorded under: `rows::CA_CERTIFICATE` for a CA certificate's).
    pub async fn revoked_serials(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT serial, principal FROM certificates WHERE revoked_at IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
