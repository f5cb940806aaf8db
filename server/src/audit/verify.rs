//! Verifying the chain: a pure walk over stored events in sequence order,
//! fed page by page, that names the first event that was altered, removed
//! or inserted, and a tail cut off behind a known checkpoint; and
//! [`verify_store`], which feeds it a whole store's log, from the archive
//! anchor on when older events were archived.

use super::{AuditAnchor, AuditKey, GENESIS, StoredEvent};
use crate::store::{AuditQuery, Store};

/// What is wrong with the log; the first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Events `first..=last` are missing from the sequence.
    Removed { first: i64, last: i64 },
    /// Event `seq` was changed: its MAC does not match, but the next event
    /// still chains to the MAC it carries.
    Altered { seq: i64 },
    /// Event `seq` does not verify and nothing after it chains to it: it
    /// was inserted, or altered together with its MAC.
    AlteredOrInserted { seq: i64 },
    /// The log ends at `last`, but a checkpoint says event `checkpoint` was
    /// written.
    Truncated { last: i64, checkpoint: i64 },
    /// Event `seq` exists but is not the event of the checkpoint.
    CheckpointMismatch { seq: i64 },
    /// The archive anchor (events up to `seq` archived) does not carry the
    /// audit key's MAC: it was written or moved without the root key.
    AnchorForged { seq: i64 },
    /// Event `seq` is in the database although the anchor says that
    /// events up to `anchor` were archived: it was inserted.
    BeforeAnchor { seq: i64, anchor: i64 },
}

impl Finding {
    /// The first event the finding is about.
    pub fn first_bad_seq(&self) -> i64 {
        match self {
            Self::Removed { first, .. } => *first,
            Self::Altered { seq }
            | Self::AlteredOrInserted { seq }
            | Self::CheckpointMismatch { seq }
            | Self::AnchorForged { seq }
            | Self::BeforeAnchor { seq, .. } => *seq,
            Self::Truncated { last, .. } => last + 1,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Removed { first, last } if first == last => {
                write!(f, "event {first} was removed")
            }
            Self::Removed { first, last } => write!(f, "events {first} to {last} were removed"),
            Self::Altered { seq } => write!(f, "event {seq} was altered"),
            Self::AlteredOrInserted { seq } => {
                write!(f, "event {seq} does not verify: it was altered or inserted")
            }
            Self::Truncated { last, checkpoint } => write!(
                f,
                "the log ends at event {last}, but event {checkpoint} was written: \
                 the events after {last} were removed"
            ),
            Self::CheckpointMismatch { seq } => {
                write!(f, "event {seq} is not the event the checkpoint recorded")
            }
            Self::AnchorForged { seq } => write!(
                f,
                "the archive anchor (events up to {seq} archived) does not verify: \
                 it was changed without the root key"
            ),
            Self::BeforeAnchor { seq, anchor } => write!(
                f,
                "event {seq} is in the database, but events up to {anchor} were archived: \
                 it was inserted"
            ),
        }
    }
}

/// The walk's state, fed with events in sequence order.
#[derive(Debug)]
pub struct Verification<'a> {
    key: &'a AuditKey,
    checkpoint: Option<(i64, Vec<u8>)>,
    expected_seq: i64,
    previous: Vec<u8>,
    /// An event that did not verify, waiting for the next one to tell
    /// whether it was altered or inserted.
    suspect: Option<StoredEvent>,
    pub events: u64,
    pub finding: Option<Finding>,
}

/// Starts a verification. `checkpoint`: a sequence number and head MAC
/// that the server logged, or that the caller holds.
pub fn verify(key: &AuditKey, checkpoint: Option<(i64, Vec<u8>)>) -> Verification<'_> {
    verify_from(key, checkpoint, None)
}

/// Starts a verification after event `start` (its sequence number and
/// MAC, trusted: an archive anchor that verified), or at the first event
/// when `start` is `None`. A checkpoint before `start` cannot be checked
/// here (its event is archived); one at `start` must match it.
pub fn verify_from(
    key: &AuditKey,
    checkpoint: Option<(i64, Vec<u8>)>,
    start: Option<(i64, Vec<u8>)>,
) -> Verification<'_> {
    let (start_seq, previous) = start.unwrap_or((0, GENESIS.to_vec()));
    let finding = match &checkpoint {
        Some((seq, mac)) if *seq == start_seq && start_seq > 0 && *mac != previous => {
            Some(Finding::CheckpointMismatch { seq: *seq })
        }
        _ => None,
    };
    Verification {
        key,
        checkpoint,
        expected_seq: start_seq + 1,
        previous,
        suspect: None,
        events: 0,
        finding,
    }
}

impl Verification<'_> {
    /// The sequence number the next event must have.
    pub fn next_seq(&self) -> i64 {
        self.expected_seq
    }

    /// Feeds the next event; returns false once a problem is found.
    pub fn push(&mut self, stored: StoredEvent) -> bool {
        if self.finding.is_some() {
            return false;
        }
        if self.suspect.is_none() && stored.seq < self.expected_seq {
            // Only a start after an anchor leaves room behind the walk.
            self.finding = Some(Finding::BeforeAnchor {
                seq: stored.seq,
                anchor: self.expected_seq - 1,
            });
            return false;
        }
        if let Some(suspect) = self.suspect.take() {
            let finding = if self
                .key
                .verifies(stored.seq, &suspect.mac, &stored.event, &stored.mac)
            {
                Finding::Altered { seq: suspect.seq }
            } else {
                Finding::AlteredOrInserted { seq: suspect.seq }
            };
            self.finding = Some(finding);
            return false;
        }
        if stored.seq != self.expected_seq {
            self.finding = Some(Finding::Removed {
                first: self.expected_seq,
                last: stored.seq - 1,
            });
            return false;
        }
        self.events += 1;
        self.expected_seq = stored.seq + 1;
        if !self
            .key
            .verifies(stored.seq, &self.previous, &stored.event, &stored.mac)
        {
            self.suspect = Some(stored);
            return true;
        }
        if let Some((seq, mac)) = &self.checkpoint
            && *seq == stored.seq
            && *mac != stored.mac
        {
            self.finding = Some(Finding::CheckpointMismatch { seq: *seq });
            return false;
        }
        self.previous = stored.mac;
        true
    }

    /// Ends the walk: the verdict, and the head (last sequence and MAC).
    pub fn finish(mut self) -> (Option<Finding>, i64, Vec<u8>) {
        if self.finding.is_none()
            && let Some(suspect) = self.suspect.take()
        {
            self.finding = Some(Finding::AlteredOrInserted { seq: suspect.seq });
        }
        let last = self.expected_seq - 1;
        if self.finding.is_none()
            && let Some((checkpoint, _)) = &self.checkpoint
            && last < *checkpoint
        {
            self.finding = Some(Finding::Truncated {
                last,
                checkpoint: *checkpoint,
            });
        }
        (self.finding, last, self.previous)
    }
}

/// The verdict on a whole log.
#[derive(Debug)]
pub struct Verdict {
    /// The first event verified: 1, or the one after the archive anchor.
    pub first_seq: i64,
    pub events: u64,
    pub finding: Option<Finding>,
    pub head_seq: i64,
    pub head_mac: Vec<u8>,
}

/// Events read per query while walking a store's log.
const PAGE: u32 = 1000;

/// The most walks of one verification. A walk is made again only when an
/// archive round removed events it expected; rounds run back to back only
/// until the old events are gone, so a verification seldom takes two.
const WALKS: usize = 100;

/// Walks every event of `store` in sequence order, under the store's audit
/// key, held against `checkpoint` when one is given. When older events
/// were archived, the walk starts after the anchor, once the anchor
/// verified.
///
/// The anchor and the pages of events are read one after another, not in
/// one snapshot, so an archive round that commits before the walk has read
/// past the events it archives (its removal and the anchor's move are one
/// transaction) leaves a gap the walk, going by the anchor it read,
/// reports as `Removed`. When the anchor has meanwhile moved over that
/// whole gap, the round explains it, and the log is walked again from the
/// moved anchor. Any other finding stands as it is found. A log archived
/// throughout every walk is `FAILED_PRECONDITION`, not a finding; so is a
/// checkpoint of an event archived before a walk (it can no longer be
/// checked, and a walk from the anchor would pass it by).
pub async fn verify_store(
    store: &Store,
    checkpoint: Option<(i64, Vec<u8>)>,
) -> crate::error::Result<Verdict> {
    verify_store_as(store, checkpoint, true).await
}

/// As [`verify_store`], against the newest event this server wrote: once
/// another replica archived past it (this one idle meanwhile), it is passed
/// over rather than refused, the caller having named no checkpoint.
pub async fn verify_store_against_own(
    store: &Store,
    own: Option<(i64, Vec<u8>)>,
) -> crate::error::Result<Verdict> {
    verify_store_as(store, own, false).await
}

async fn verify_store_as(
    store: &Store,
    mut checkpoint: Option<(i64, Vec<u8>)>,
    refuse_archived: bool,
) -> crate::error::Result<Verdict> {
    let mut anchor = store.audit_anchor().await?;
    for _ in 0..WALKS {
        // (An anchor that does not verify is a finding of the walk, not a
        // reason to refuse the checkpoint.)
        if let (Some((seq, _)), Some(anchor)) = (&checkpoint, &anchor)
            && *seq < anchor.seq
            && store.audit_key().anchor_verifies(anchor)
        {
            if !refuse_archived {
                checkpoint = None;
                continue;
            }
            return Err(crate::error::Error::FailedPrecondition(format!(
                "checkpoint {seq} is of an archived event (the database's log starts after event \
                 {}); it can no longer be checked here",
                anchor.seq
            )));
        }
        let verdict = walk(store, checkpoint.clone(), anchor.clone()).await?;
        let Some(Finding::Removed { last, .. }) = verdict.finding else {
            return Ok(verdict);
        };
        let now = store.audit_anchor().await?;
        if now == anchor || now.as_ref().is_none_or(|moved| moved.seq < last) {
            return Ok(verdict);
        }
        anchor = now;
    }
    Err(crate::error::Error::FailedPrecondition(format!(
        "no walk of the audit log finished under one archive anchor: the server archived \
         throughout {WALKS} walks; verify it again once archiving has caught up"
    )))
}

/// One walk of `store`'s log, from `anchor` (as read before it).
async fn walk(
    store: &Store,
    checkpoint: Option<(i64, Vec<u8>)>,
    anchor: Option<AuditAnchor>,
) -> crate::error::Result<Verdict> {
    if let Some(anchor) = &anchor
        && !store.audit_key().anchor_verifies(anchor)
    {
        return Ok(Verdict {
            first_seq: anchor.seq + 1,
            events: 0,
            finding: Some(Finding::AnchorForged { seq: anchor.seq }),
            head_seq: 0,
            head_mac: Vec::new(),
        });
    }
    let start = anchor.map(|AuditAnchor { seq, mac, .. }| (seq, mac));
    let first_seq = start.as_ref().map_or(1, |(seq, _)| seq + 1);
    let anchored = start.as_ref().map(|(seq, _)| *seq);
    let mut verification = verify_from(store.audit_key(), checkpoint, start);
    // From the lowest number on: an event behind the anchor, or one numbered
    // 0 or below (which no append makes), is found too.
    let mut after_seq = i64::MIN;
    'walk: loop {
        let page = store
            .audit_events(&AuditQuery {
                after_seq,
                limit: PAGE,
                ..AuditQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        for event in page {
            if !verification.push(event) {
                break 'walk;
            }
        }
    }
    let events = verification.events;
    let (mut finding, head_seq, head_mac) = verification.finish();
    // Archiving always leaves events after the anchor (its own event, at
    // least): none there means they were removed.
    if let (None, Some(anchor), 0) = (&finding, anchored, events) {
        finding = Some(Finding::Truncated {
            last: anchor,
            checkpoint: anchor + 1,
        });
    }
    Ok(Verdict {
        first_seq,
        events,
        finding,
        head_seq,
        head_mac,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::AuditEvent;
    use super::*;
    use crate::crypto::{Key, RootKey};

    /// `count` events chained under `key`, from the genesis.
    pub(crate) fn chain(key: &AuditKey, count: i64) -> Vec<StoredEvent> {
        let mut previous = GENESIS.to_vec();
        (1..=count)
            .map(|seq| {
                let event = AuditEvent {
                    time: seq,
                    principal: format!("p{seq}"),
                    action: "secrets:GetSecretValue".into(),
                    ..AuditEvent::default()
                };
                let mac = key.mac(seq, &previous, &event);
                previous = mac.clone();
                StoredEvent { seq, event, mac }
            })
            .collect()
    }

    fn run(
        key: &AuditKey,
        events: Vec<StoredEvent>,
        checkpoint: Option<(i64, Vec<u8>)>,
    ) -> Option<Finding> {
        let mut verification = verify(key, checkpoint);
        for event in events {
            if !verification.push(event) {
                break;
            }
        }
        verification.finish().0
    }

    #[test]
    fn findings() {
        let key = AuditKey::derive(&RootKey::new(Key::generate()));
        let events = chain(&key, 6);
        let head = (6, events[5].mac.clone());
        assert_eq!(run(&key, events.clone(), Some(head.clone())), None);

        let mut altered = events.clone();
        altered[2].event.principal = "mallory".into();
        assert_eq!(run(&key, altered, None), Some(Finding::Altered { seq: 3 }));

        let mut removed = events.clone();
        removed.remove(3);
        assert_eq!(
            run(&key, removed, None),
            Some(Finding::Removed { first: 4, last: 4 })
        );

        let mut inserted = events.clone();
        let forged = StoredEvent {
            seq: 7,
            event: AuditEvent::default(),
            mac: vec![0; 32],
        };
        inserted.push(forged);
        assert_eq!(
            run(&key, inserted, None),
            Some(Finding::AlteredOrInserted { seq: 7 })
        );

        let truncated = events[..4].to_vec();
        assert_eq!(run(&key, truncated.clone(), None), None);
        assert_eq!(
            run(&key, truncated, Some(head)),
            Some(Finding::Truncated {
                last: 4,
                checkpoint: 6
            })
        );

        let other_key = AuditKey::derive(&RootKey::new(Key::generate()));
        assert_eq!(
            run(&other_key, events, None),
            Some(Finding::AlteredOrInserted { seq: 1 })
        );
    }

    fn run_from(
        key: &AuditKey,
        events: &[StoredEvent],
        checkpoint: Option<(i64, Vec<u8>)>,
        start: &StoredEvent,
    ) -> Option<Finding> {
        let mut verification = verify_from(key, checkpoint, Some((start.seq, start.mac.clone())));
        for event in events {
            if !verification.push(event.clone()) {
                break;
            }
        }
        verification.finish().0
    }

    #[test]
    fn a_walk_from_an_anchor() {
        let key = AuditKey::derive(&RootKey::new(Key::generate()));
        let events = chain(&key, 6);
        let anchor = &events[2];
        assert_eq!(run_from(&key, &events[3..], None, anchor), None);
        // The anchor's own event may still be the checkpoint.
        let at_anchor = Some((3, anchor.mac.clone()));
        assert_eq!(run_from(&key, &events[3..], at_anchor, anchor), None);
        assert_eq!(
            run_from(&key, &events[3..], Some((3, vec![1; 32])), anchor),
            Some(Finding::CheckpointMismatch { seq: 3 })
        );
        // A checkpoint behind the anchor is the archive's to check.
        assert_eq!(
            run_from(&key, &events[3..], Some((2, vec![1; 32])), anchor),
            None
        );
        assert_eq!(
            run_from(&key, &events[4..], None, anchor),
            Some(Finding::Removed { first: 4, last: 4 })
        );
        assert_eq!(
            run_from(&key, &events[2..], None, anchor),
            Some(Finding::BeforeAnchor { seq: 3, anchor: 3 })
        );
        assert_eq!(
            run_from(&key, &events[3..], None, &events[1]),
            Some(Finding::Removed { first: 3, last: 3 })
        );
    }

    #[test]
    fn anchors_verify_under_their_key_only() {
        let key = AuditKey::derive(&RootKey::new(Key::generate()));
        let anchor = key.anchor(1200, &[7; 32]);
        assert!(key.anchor_verifies(&anchor));
        let moved = AuditAnchor {
            seq: 1500,
            ..anchor.clone()
        };
        assert!(!key.anchor_verifies(&moved));
        let other_key = AuditKey::derive(&RootKey::new(Key::generate()));
        assert!(!other_key.anchor_verifies(&anchor));
        // Not an event's MAC: the inputs are apart.
        assert_ne!(anchor.anchor_mac, anchor.mac);
    }
}
