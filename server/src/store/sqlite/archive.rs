//! Audit retention in the database: the archive anchor, and removing the
//! events that were archived to a file, in one transaction that moves the
//! anchor and appends the `audit:Archive` event. The file is written (and
//! synced) by `crate::retention` before this runs.

use super::super::anchor::{AnchorRow, anchor_of, check_archivable, gap};
use super::Store;
use crate::audit::{AuditAnchor, AuditEvent};
use crate::error::Result;

impl Store {
    /// The archive anchor, when events were archived.
    pub async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        let row: Option<AnchorRow> =
            sqlx::query_as("SELECT seq, mac, anchor_mac FROM audit_anchor WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(anchor_of(row))
    }

    /// Removes the events after `from` (the anchor as read before the
    /// archive file was written; `None`: nothing archived yet) through
    /// `to`, moves the anchor to `to` and appends `event`, all in one
    /// transaction. `Ok(false)`, with nothing changed, when the anchor is
    /// no longer `from` (another process archived meanwhile).
    pub async fn archive_audit_events(
        &self,
        from: Option<&AuditAnchor>,
        to: &AuditAnchor,
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        let current: Option<AnchorRow> =
            sqlx::query_as("SELECT seq, mac, anchor_mac FROM audit_anchor WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        if anchor_of(current).as_ref() != from {
            return Ok(false);
        }
        let last: Option<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT mac, (SELECT MAX(seq) FROM audit_events) FROM audit_events WHERE seq = ?",
        )
        .bind(to.seq)
        .fetch_optional(&mut *tx)
        .await?;
        let from_seq = from.map_or(0, |anchor| anchor.seq);
        check_archivable(last, from_seq, to)?;
        let removed = sqlx::query("DELETE FROM audit_events WHERE seq > ? AND seq <= ?")
            .bind(from_seq)
            .bind(to.seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed != (to.seq - from_seq) as u64 {
            return Err(gap(from_seq, to.seq, removed));
        }
        sqlx::query(
            "INSERT INTO audit_anchor (id, seq, mac, anchor_mac) VALUES (1, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE
             SET seq = excluded.seq, mac = excluded.mac, anchor_mac = excluded.anchor_mac",
        )
        .bind(to.seq)
        .bind(&to.mac)
        .bind(&to.anchor_mac)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, event).await?;
        Ok(true)
    }
}
