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
            "INSERT INTO certificates (serial, issuer, principal, issued_at, not_after) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&record.serial)
        .bind(&record.issuer)
        .bind(&record.principal)
        .bind(record.issued_at)
        .bind(record.not_after)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, event).await
    }

    pub async fn certificates(&self) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(
            "SELECT serial, issuer, principal, issued_at, not_after, revoked_at FROM certificates
             ORDER BY principal COLLATE \"C\", issued_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| CertificateRecord {
                serial: row.get("serial"),
                issuer: row.get("issuer"),
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
        issuer: &str,
        now: i64,
        event: &AuditEvent,
    ) -> Result<Vec<String>> {
        let mut tx = self.write().await?;
        let serial = crate::principal::serial_hex(target.text());
        // A name: its certificates, whoever issued them. A serial: the
        // row of that issuer (`""`: the row for any issuer), recorded if
        // there is none; revoked with every row of that serial when no
        // issuer is named.
        let named = matches!(target, RevokeTarget::Named(_));
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT serial, principal, revoked_at IS NOT NULL FROM certificates
             WHERE ($1 AND (principal = $2 OR serial = $3)) OR (NOT $1 AND serial = $3 AND issuer = $4)",
        )
        .bind(named)
        .bind(target.text())
        .bind(&serial)
        .bind(issuer)
        .fetch_all(&mut *tx)
        .await?;
        let plan = plan_revocation(target, &serial, &rows)?;
        if plan.record {
            sqlx::query("INSERT INTO certificates (serial, issuer, principal) VALUES ($1, $2, $3)")
                .bind(&serial)
                .bind(issuer)
                .bind(plan.record_as)
                .execute(&mut *tx)
                .await?;
        }
        for serial in &plan.revoke {
            sqlx::query(
                "UPDATE certificates SET revoked_at = $1, revoked_by = $2
                 WHERE serial = $3 AND ($4 = '' OR issuer = $4)",
            )
            .bind(now)
            .bind(&event.principal)
            .bind(serial)
            .bind(issuer)
            .execute(&mut *tx)
            .await?;
        }
        self.commit_audited(tx, &plan.event(event)).await?;
        Ok(plan.revoke)
    }

    /// The revoked serials, each with its issuer (hex of its DER name; ``
    /// for any issuer) and the principal it was issued to (or recorded
    /// under: `rows::CA_CERTIFICATE` for a CA certificate's).
    pub async fn revoked_serials(&self) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT serial, issuer, principal FROM certificates WHERE revoked_at IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
