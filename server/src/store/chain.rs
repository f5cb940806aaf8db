//! What both backends share of the audit chain in memory: the key that
//! chains events and the newest event this process committed (a
//! checkpoint that a cut-off tail cannot hide from), with the checkpoints
//! logged now and then. The SQL that appends events stays per dialect.

use crate::audit::{AuditEvent, AuditKey, hex};

/// Log a checkpoint every this many events.
const CHECKPOINT_EVERY: i64 = 100;

/// The newest event of the chain, as the transaction running it sees it
/// (the same SQL in both dialects).
pub(super) const HEAD_SQL: &str = "SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1";

/// The start of an INSERT of events: the columns each event binds, in
/// order (then `VALUES` in the dialect's placeholders).
pub(super) const INSERT_EVENTS: &str = "INSERT INTO audit_events \
     (seq, time, principal, peer, action, resource, decision, outcome, request_id, detail, mac)";

#[derive(Debug)]
pub(super) struct AuditChain {
    key: AuditKey,
    head: std::sync::Mutex<Option<(i64, Vec<u8>)>>,
}

impl AuditChain {
    pub(super) fn new(key: AuditKey) -> Self {
        Self {
            key,
            head: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn key(&self) -> &AuditKey {
        &self.key
    }

    /// The MACs of `events` appended after event `last` (its sequence
    /// number and MAC; `None` for an empty chain), in order, each with its
    /// sequence number.
    pub(super) fn link<'a>(
        &self,
        last: Option<(i64, Vec<u8>)>,
        events: impl IntoIterator<Item = &'a AuditEvent>,
    ) -> Vec<(i64, Vec<u8>)> {
        let (mut seq, mut previous) = last.unwrap_or((0, crate::audit::GENESIS.to_vec()));
        events
            .into_iter()
            .map(|event| {
                seq += 1;
                previous = self.key.mac(seq, &previous, event);
                (seq, previous.clone())
            })
            .collect()
    }

    /// Remembers the last of `links` (as [`Self::link`] made them) once
    /// their transaction committed, and logs a checkpoint whenever the
    /// chain passed a multiple of [`CHECKPOINT_EVERY`] with them.
    pub(super) fn committed(&self, links: &[(i64, Vec<u8>)]) {
        let (Some((first, _)), Some(head)) = (links.first(), links.last()) else {
            return;
        };
        let head = head.clone();
        if head.0 / CHECKPOINT_EVERY > (first - 1) / CHECKPOINT_EVERY {
            tracing::info!(seq = head.0, mac = %hex(&head.1), "audit checkpoint");
        }
        if let Ok(mut current) = self.head.lock()
            && current.as_ref().is_none_or(|(seq, _)| *seq < head.0)
        {
            *current = Some(head);
        }
    }

    /// The newest event this process committed.
    pub(super) fn head(&self) -> Option<(i64, Vec<u8>)> {
        self.head.lock().ok().and_then(|head| head.clone())
    }

    /// Logs the current head as a checkpoint.
    pub(super) fn log_checkpoint(&self) {
        if let Some((seq, mac)) = self.head() {
            tracing::info!(seq, mac = %hex(&mac), "audit checkpoint");
        }
    }
}
