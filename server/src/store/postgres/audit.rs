//! The audit chain in the database: appending inside a write transaction
//! (so a change and its event commit together), recording a read's event
//! on its own, and reading events back for queries and verification.

use super::super::chain::{AuditChain, HEAD_AND_KNOWN_SQL_PG, INSERT_EVENTS};
use super::super::rows::event_row;
use super::{Store, Tx};
use crate::audit::{AuditEvent, StoredEvent};
use crate::error::Result;
use crate::store::sqlite::AuditQuery;

/// Events per INSERT statement: 11 parameters each, far below the
/// database's limit on parameters per statement.
const EVENTS_PER_INSERT: usize = 500;

/// Appends `events` to the chain inside `tx`; the caller commits, then
/// tells `chain` with what this returns: each event's sequence number and
/// MAC.
pub(super) async fn append(
    tx: &mut Tx<'_>,
    chain: &AuditChain,
    events: &[AuditEvent],
) -> Result<Vec<(i64, Vec<u8>)>> {
    // The batch's own last event was confirmed when its first was linked.
    let last: Option<(i64, Vec<u8>)> = match tx.last_event() {
        Some(last) => Some(last),
        None => {
            let known = chain.known_seq();
            let row = sqlx::query_as(HEAD_AND_KNOWN_SQL_PG)
                .bind(known)
                .fetch_optional(&mut **tx)
                .await?;
            chain.head_read(known, row)?
        }
    };
    let events: Vec<_> = events.iter().map(AuditEvent::storable).collect();
    let links = chain.link(last, events.iter().map(AsRef::as_ref))?;
    // One statement per chunk: a group commit of a few hundred reads'
    // events costs one round trip, not one each.
    let rows: Vec<_> = events.iter().zip(&links).collect();
    for chunk in rows.chunks(EVENTS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(INSERT_EVENTS);
        insert.push(" ");
        insert.push_values(chunk, |mut row, (event, (seq, mac))| {
            row.push_bind(*seq)
                .push_bind(event.time)
                .push_bind(&event.principal)
                .push_bind(&event.peer)
                .push_bind(&event.action)
                .push_bind(&event.resource)
                .push_bind(&event.decision)
                .push_bind(&event.outcome)
                .push_bind(&event.request_id)
                .push_bind(&event.detail)
                .push_bind(mac);
        });
        insert.build().execute(&mut **tx).await?;
    }
    if let Some(head) = links.last() {
        tx.appended(head.clone());
    }
    Ok(links)
}

/// Commits `tx` with `events` appended: the change and its events are
/// durable together or not at all.
pub(super) async fn commit_with(
    mut tx: Tx<'_>,
    chain: &AuditChain,
    events: &[AuditEvent],
) -> Result<()> {
    let links = append(&mut tx, chain, events).await?;
    tx.commit().await?;
    chain.committed(&links);
    Ok(())
}

impl Store {
    /// Commits `tx` with `event` appended: the change and its event are
    /// durable together or not at all.
    pub(super) async fn commit_audited(&self, tx: Tx<'_>, event: &AuditEvent) -> Result<()> {
        commit_with(tx, &self.chain, std::slice::from_ref(event)).await
    }

    /// Records an event on its own (a read, a refusal, a failure), durable
    /// when this returns; concurrent ones share a commit (`group_commit`).
    pub async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.standalone_events.record(event).await
    }

    /// Records `events` on their own, in their order, sharing commits;
    /// all durable when this returns.
    pub async fn record_all(&self, events: &[AuditEvent]) -> Result<()> {
        self.standalone_events.record_all(events).await
    }

    /// The newest event this process wrote.
    pub fn audit_head(&self) -> Option<(i64, Vec<u8>)> {
        self.chain.head()
    }

    /// Logs the current head as a checkpoint.
    pub fn log_audit_checkpoint(&self) {
        self.chain.log_checkpoint();
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
        self.chain.key()
    }
}
