//! The audit chain in the database: appending inside a write transaction
//! (so a change and its event commit together), recording a read's event
//! on its own, and reading events back for queries and verification.

use super::super::rows::event_row;
use super::{Store, Tx};
use crate::audit::{AuditEvent, GENESIS, StoredEvent, hex};
use crate::error::Result;
use crate::store::sqlite::AuditQuery;

/// Log a checkpoint every this many events.
const CHECKPOINT_EVERY: i64 = 100;

impl Store {
    /// Appends `event` to the chain inside `tx`. The caller commits; the
    /// head is remembered once it has.
    pub(super) async fn append_audit(
        &self,
        tx: &mut Tx,
        event: &AuditEvent,
    ) -> Result<(i64, Vec<u8>)> {
        let last: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut **tx)
                .await?;
        let (seq, previous) = match last {
            Some((seq, mac)) => (seq + 1, mac),
            None => (1, GENESIS.to_vec()),
        };
        let mac = self.audit_key.mac(seq, &previous, event);
        sqlx::query(
            "INSERT INTO audit_events
               (seq, time, principal, peer, action, resource, decision, outcome, request_id, detail, mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(seq)
        .bind(event.time)
        .bind(&event.principal)
        .bind(&event.peer)
        .bind(&event.action)
        .bind(&event.resource)
        .bind(&event.decision)
        .bind(&event.outcome)
        .bind(&event.request_id)
        .bind(&event.detail)
        .bind(&mac)
        .execute(&mut **tx)
        .await?;
        Ok((seq, mac))
    }

    /// Remembers the head after a commit, and logs a checkpoint now and then.
    pub(super) fn audit_committed(&self, head: (i64, Vec<u8>)) {
        if head.0 % CHECKPOINT_EVERY == 0 {
            tracing::info!(seq = head.0, mac = %hex(&head.1), "audit checkpoint");
        }
        if let Ok(mut current) = self.audit_head.lock()
            && current.as_ref().is_none_or(|(seq, _)| *seq < head.0)
        {
            *current = Some(head);
        }
    }

    /// Commits `tx` with `event` appended: the change and its event are
    /// durable together or not at all.
    pub(super) async fn commit_audited(&self, mut tx: Tx, event: &AuditEvent) -> Result<()> {
        let head = self.append_audit(&mut tx, event).await?;
        tx.commit().await?;
        self.audit_committed(head);
        Ok(())
    }

    /// Records an event on its own (a read, a refusal, a failure), durable
    /// when this returns.
    pub async fn record(&self, event: &AuditEvent) -> Result<()> {
        let (_guard, tx) = self.write().await?;
        self.commit_audited(tx, event).await
    }

    /// The newest event this process wrote.
    pub fn audit_head(&self) -> Option<(i64, Vec<u8>)> {
        self.audit_head.lock().ok().and_then(|head| head.clone())
    }

    /// Logs the current head as a checkpoint.
    pub fn log_audit_checkpoint(&self) {
        if let Some((seq, mac)) = self.audit_head() {
            tracing::info!(seq, mac = %hex(&mac), "audit checkpoint");
        }
    }

    /// Events in sequence order, after `after_seq`, filtered.
    pub async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, time, principal, peer, action, resource, decision, outcome, request_id, detail, mac
             FROM audit_events
             WHERE seq > $1
               AND ($2 IS NULL OR time >= $2)
               AND ($3 IS NULL OR principal = $3)
               AND ($4 IS NULL OR substr(resource, 1, length($4)) = $4)
             ORDER BY seq LIMIT $5",
        )
        .bind(query.after_seq)
        .bind(query.since)
        .bind(&query.principal)
        .bind(&query.resource)
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(event_row).collect())
    }
}

impl Store {
    /// The key the chain is verified with.
    pub fn audit_key(&self) -> &crate::audit::AuditKey {
        &self.audit_key
    }
}
