//! The audit chain in the database: appending inside a write transaction
//! (so a change and its event commit together), recording a read's event
//! on its own, and reading events back for queries and verification.

use super::super::chain::{AuditChain, HEAD_AND_KNOWN_SQL, INSERT_EVENTS};
use super::super::rows::event_row;
use super::script::Script;
use super::{Store, Tx};
use crate::audit::{AuditEvent, StoredEvent};
use crate::error::Result;
use sqlx::sqlite::SqliteRow;
use std::borrow::Cow;

/// What an audit query selects.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub after_seq: i64,
    pub since: Option<i64>,
    pub principal: Option<String>,
    /// A resource prefix.
    pub resource: Option<String>,
    pub limit: u32,
}

/// Events per INSERT statement: 11 parameters each, far below the
/// database's limit on parameters per statement. A group commit of a few
/// hundred reads' events costs one round trip, not one each.
const EVENTS_PER_INSERT: usize = 500;

/// The newest event of the chain, as this transaction sees it, once the
/// event `chain` knows of is confirmed to be there still.
async fn chain_head(tx: &mut Tx<'_>, chain: &AuditChain) -> Result<Option<(i64, Vec<u8>)>> {
    // The batch's own last event was confirmed when its first was linked.
    if let Some(last) = tx.last_event() {
        return Ok(Some(last));
    }
    let known = chain.known_seq();
    let row = sqlx::query_as(HEAD_AND_KNOWN_SQL)
        .bind(known)
        .fetch_optional(&mut **tx)
        .await?;
    chain.head_read(known, row)
}

/// Commits `tx` with `events` appended: the change and its events are
/// durable together or not at all.
pub(super) async fn commit_with(
    tx: Tx<'_>,
    chain: &AuditChain,
    events: &[AuditEvent],
) -> Result<()> {
    commit_script(tx, chain, Script::new(), events)
        .await
        .map(drop)
}

/// Runs `script` with `events` appended to it (one INSERT per
/// [`EVENTS_PER_INSERT`]), in one round trip, then commits `tx`: the
/// change, its last statements and its events are durable together or not
/// at all. Returns the script's rows.
pub(super) async fn commit_script<'q>(
    mut tx: Tx<'_>,
    chain: &AuditChain,
    mut script: Script<'q>,
    events: &'q [AuditEvent],
) -> Result<Vec<SqliteRow>> {
    let events: Vec<Cow<'q, AuditEvent>> = events.iter().map(AuditEvent::storable).collect();
    let links = chain.link(
        chain_head(&mut tx, chain).await?,
        events.iter().map(AsRef::as_ref),
    )?;
    let rows: Vec<_> = events.iter().zip(&links).collect();
    for chunk in rows.chunks(EVENTS_PER_INSERT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        script.statement(&format!("{INSERT_EVENTS} VALUES {values}"));
        for (event, (seq, mac)) in chunk {
            script
                .bind(*seq)
                .bind(event.time)
                .bind(text(event, |event| &event.principal))
                .bind(text(event, |event| &event.peer))
                .bind(text(event, |event| &event.action))
                .bind(text(event, |event| &event.resource))
                .bind(text(event, |event| &event.decision))
                .bind(text(event, |event| &event.outcome))
                .bind(text(event, |event| &event.request_id))
                .bind(text(event, |event| &event.detail))
                .bind(mac.clone());
        }
    }
    let returned = script.run(&mut tx).await?;
    if let Some(head) = links.last() {
        tx.appended(head.clone());
    }
    tx.commit().await?;
    chain.committed(&links);
    Ok(returned)
}

/// One text of a stored event, borrowed for as long as the events given
/// to [`commit_script`] when it was not changed to be stored.
fn text<'q>(event: &Cow<'q, AuditEvent>, field: fn(&AuditEvent) -> &String) -> Cow<'q, str> {
    match event {
        Cow::Borrowed(event) => Cow::Borrowed(field(event)),
        Cow::Owned(event) => Cow::Owned(field(event).clone()),
    }
}

impl Store {
    /// Commits `tx` with `event` appended: the change and its event are
    /// durable together or not at all.
    pub(super) async fn commit_audited(&self, tx: Tx<'_>, event: &AuditEvent) -> Result<()> {
        commit_with(tx, &self.chain, std::slice::from_ref(event)).await
    }

    /// Commits `tx` after running `script` with `event` appended to it, in
    /// one round trip; the script's rows.
    pub(super) async fn commit_audited_script<'q>(
        &self,
        tx: Tx<'_>,
        script: Script<'q>,
        event: &'q AuditEvent,
    ) -> Result<Vec<SqliteRow>> {
        commit_script(tx, &self.chain, script, std::slice::from_ref(event)).await
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
             WHERE seq > ?1
               AND (?2 IS NULL OR time >= ?2)
               AND (?3 IS NULL OR principal = ?3)
               AND (?4 IS NULL OR substr(resource, 1, length(?4)) = ?4)
             ORDER BY seq LIMIT ?5",
        )
        .bind(query.after_seq)
        .bind(query.since)
        .bind(&query.principal)
        .bind(&query.resource)
        .bind(query.limit)
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
