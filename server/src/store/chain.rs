//! What both backends share of the audit chain in memory: the key that
//! chains events and the newest event this process committed (a
//! checkpoint that a cut-off tail cannot hide from), with the checkpoints
//! logged now and then. The SQL that appends events stays per dialect.

use crate::audit::{AuditEvent, AuditKey, hex};
use crate::error::{Error, Result};

/// Log a checkpoint every this many events.
const CHECKPOINT_EVERY: i64 = 100;

/// The newest event of the chain, as the transaction running it sees it
/// (the same SQL in both dialects).
pub(super) const HEAD_SQL: &str = "SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1";

/// [`HEAD_SQL`] with, in the same statement (no round trip more under the
/// writers' lock), what [`AuditChain::confirm`] needs should the head be
/// past the newest event this process knows (bound as `?1`; -1 for none):
/// that event's MAC, and the archive anchor's sequence number and MAC.
pub(super) const HEAD_AND_KNOWN_SQL: &str = "SELECT e.seq, e.mac, \
     (SELECT k.mac FROM audit_events k WHERE k.seq = ?1), \
     (SELECT a.seq FROM audit_anchor a), (SELECT a.mac FROM audit_anchor a) \
     FROM audit_events e ORDER BY e.seq DESC LIMIT 1";

/// [`HEAD_AND_KNOWN_SQL`] as PostgreSQL numbers its parameter.
pub(super) const HEAD_AND_KNOWN_SQL_PG: &str = "SELECT e.seq, e.mac, \
     (SELECT k.mac FROM audit_events k WHERE k.seq = $1), \
     (SELECT a.seq FROM audit_anchor a), (SELECT a.mac FROM audit_anchor a) \
     FROM audit_events e ORDER BY e.seq DESC LIMIT 1";

/// What [`HEAD_AND_KNOWN_SQL`] reads beside the head.
pub(super) type KnownRow = (Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);

/// A row of [`HEAD_AND_KNOWN_SQL`].
pub(super) type HeadAndKnown = (i64, Vec<u8>, Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);

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

    /// The newest event the database held when it was opened (or, holding
    /// none, the archive anchor's): what this process's appends must build
    /// on, as on what it commits itself.
    pub(super) fn starts_at(&self, head: Option<(i64, Vec<u8>)>) {
        if let (Some(head), Ok(mut current)) = (head, self.head.lock())
            && current.as_ref().is_none_or(|(seq, _)| *seq < head.0)
        {
            *current = Some(head);
        }
    }

    /// The sequence number to bind to [`HEAD_AND_KNOWN_SQL`]: the newest
    /// event this process knows of, -1 for none.
    pub(super) fn known_seq(&self) -> i64 {
        self.head().map_or(-1, |(seq, _)| seq)
    }

    /// The head [`HEAD_AND_KNOWN_SQL`] read (bound with `known`), once the
    /// event this process knows of is confirmed when the head is past it:
    /// others appended since, and had the events after it been cut off
    /// and written again by another replica, the head alone would not
    /// show it.
    pub(super) fn head_read(
        &self,
        known: i64,
        row: Option<HeadAndKnown>,
    ) -> Result<Option<(i64, Vec<u8>)>> {
        let Some((seq, mac, known_mac, anchor_seq, anchor_mac)) = row else {
            return Ok(None);
        };
        if known >= 0 && seq > known {
            self.confirm(known, (known_mac, anchor_seq, anchor_mac))?;
        }
        Ok(Some((seq, mac)))
    }

    /// Checks event `seq`, which this process knows, against what was
    /// read of it: the same MAC, or archived (the anchor at or past it,
    /// with its MAC where it is that event); refused (fail-closed)
    /// otherwise.
    fn confirm(&self, seq: i64, read: KnownRow) -> Result<()> {
        let Some((known, known_mac)) = self.head().filter(|(known, _)| *known == seq) else {
            return Ok(());
        };
        let still_there = match read {
            (Some(mac), _, _) => mac == known_mac,
            (None, Some(anchor), Some(mac)) if anchor == known => mac == known_mac,
            (None, Some(anchor), _) => anchor > known,
            (None, None, _) => false,
        };
        if still_there {
            return Ok(());
        }
        Err(Error::AuditUnwritable {
            detail: format!(
                "audit event {known}, which this server wrote, is no longer in the database as it \
                 was, though events after it are: the log was cut there and written again (or the \
                 database was restored to another point); nothing is appended, and no request \
                 answered, until the log is restored, or this server is restarted, which accepts the \
                 log as it stands (then check it: rekey audit verify --checkpoint {known}:MAC, the \
                 MAC as the log's audit checkpoint lines give it)"
            ),
            for_now: false,
        })
    }

    /// The MACs of `events` appended after event `last` (its sequence
    /// number and MAC, as the transaction reads the table; `None` for an
    /// empty chain), in order, each with its sequence number. Refused
    /// (fail-closed) when `last` is behind the newest event this process
    /// knows of, or is another event of that number: events were removed
    /// from the tail, and appending would reuse their numbers, making a
    /// chain that verifies without them.
    pub(super) fn link<'a>(
        &self,
        last: Option<(i64, Vec<u8>)>,
        events: impl IntoIterator<Item = &'a AuditEvent>,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        if let Some((known, known_mac)) = self.head() {
            let builds_on_it = match &last {
                Some((seq, _)) if *seq > known => true,
                Some((seq, mac)) => *seq == known && *mac == known_mac,
                None => false,
            };
            if !builds_on_it {
                return Err(Error::AuditUnwritable {
                    detail: format!(
                        "the audit log in the database ends {}, behind event {known}, which this \
                         server knows was written: events were removed or changed (or the database \
                         was restored to an earlier point, a failover to a standby that lagged); \
                         nothing is appended, and no request answered, until the log is restored, \
                         or this server is restarted, which accepts the log as it stands (then \
                         check it: rekey audit verify --checkpoint {known}:MAC, the MAC as the \
                         log's audit checkpoint lines give it)",
                        match &last {
                            Some((seq, _)) => format!("at event {seq}"),
                            None => "with no event".to_owned(),
                        }
                    ),
                    for_now: false,
                });
            }
        }
        let (mut seq, mut previous) = last.unwrap_or((0, crate::audit::GENESIS.to_vec()));
        Ok(events
            .into_iter()
            .map(|event| {
                seq += 1;
                previous = self.key.mac(seq, &previous, event);
                (seq, previous.clone())
            })
            .collect())
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
