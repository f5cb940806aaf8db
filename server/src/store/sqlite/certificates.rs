//! The registry of client certificates issued here, and revocations.

use super::Store;
use crate::audit::AuditEvent;
use crate::error::Result;
use crate::store::rows::{RevokeTarget, plan_revocation};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub serial: String,
    /// Its issuer's DER name in hex; empty for a serial revoked of any
    /// issuer (and rows from before issuers were kept).
    pub issuer: String,
    pub principal: String,
    pub issued_at: Option<i64>,
    pub not_after: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Store {
    pub async fn record_certificate(
        &self,
        record: &CertificateRecord,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        sqlx::query(
            "INSERT INTO certificates (serial, issuer, principal, issued_at, not_after) VALUES (?, ?, ?, ?, ?)",
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
             ORDER BY principal, issued_at",
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
        tx.changes_no_value();
        let serial = crate::principal::serial_hex(target.text());
        // A name: its certificates, whoever issued them. A serial: the
        // row of that issuer (`""`: the row for any issuer), recorded if
        // there is none; revoked with every row of that serial when no
        // issuer is named.
        let named = matches!(target, RevokeTarget::Named(_));
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT serial, principal, revoked_at IS NOT NULL FROM certificates
             WHERE (? AND (principal = ? OR serial = ?)) OR (NOT ? AND serial = ? AND issuer = ?)",
        )
        .bind(named)
        .bind(target.text())
        .bind(&serial)
        .bind(named)
        .bind(&serial)
        .bind(issuer)
        .fetch_all(&mut *tx)
        .await?;
        let plan = plan_revocation(target, &serial, &rows)?;
        if plan.record {
            sqlx::query("INSERT INTO certificates (serial, issuer, principal) VALUES (?, ?, ?)")
                .bind(&serial)
                .bind(issuer)
                .bind(plan.record_as)
                .execute(&mut *tx)
                .await?;
        }
        for serial in &plan.revoke {
            sqlx::query(
                "UPDATE certificates SET revoked_at = ?, revoked_by = ?
                 WHERE serial = ? AND (? = '' OR issuer = ?)",
            )
            .bind(now)
            .bind(&event.principal)
            .bind(serial)
            .bind(issuer)
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
