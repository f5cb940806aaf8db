//! Audit retention: with `[audit] retention_days` above 0, `serve` moves
//! events older than that out of the database into JSON-lines files in
//! `archive_dir` (`file`), at start and every `archive_interval_seconds`,
//! at most [`ROUND_EVENTS`] per round, round after round until none is
//! left. `verify` is `rekeyd audit verify-archive`: the chain from the
//! first event through the files into the database.
//!
//! A round reads the events after the archive anchor, keeps those older
//! than the cutoff (from the anchor on, without a hole; never the newest
//! event, which the next append chains to), checks that they chain from
//! the anchor, and writes and syncs their file. Only then does one write
//! transaction remove them, move the anchor (sealed with the audit key) and
//! append an `audit:Archive` event; that transaction first checks that the
//! anchor is still where the round found it. If it does not commit, the
//! file stays and so do the events: the next round writes them again, and
//! the verifier tolerates the overlap. The file is written outside the
//! transaction so that the writers (and every read waiting for its audit
//! event) do not wait for the disk.
//!
//! Each process archives into its own `archive_dir`: with several
//! PostgreSQL replicas, enable retention on one of them only, or the files
//! end up spread over several machines (the anchor check keeps the
//! database right either way).

pub mod file;
mod verify;

pub use verify::{ArchiveReport, verify_archive};

use crate::audit::{AuditEvent, GENESIS, StoredEvent};
use crate::config::AuditSettings;
use crate::error::{Error, Result};
use crate::store::{AuditQuery, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most events one round archives (one file, one transaction).
pub const ROUND_EVENTS: u32 = 10_000;

const DAY_MILLIS: i64 = 86_400_000;

/// What a round archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub first: i64,
    pub last: i64,
    pub file: PathBuf,
}

/// Archives old events at start and every `archive_interval_seconds`.
pub async fn run(state: Arc<crate::service::AppState>, dir: PathBuf, settings: AuditSettings) {
    let interval = std::time::Duration::from_secs(settings.archive_interval_seconds.max(1));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let cutoff =
            rekey_shared::time::now_millis() - i64::from(settings.retention_days) * DAY_MILLIS;
        loop {
            match archive_round(&state.store, &dir, cutoff, ROUND_EVENTS).await {
                Ok(Some(archived)) => tracing::info!(
                    first = archived.first,
                    last = archived.last,
                    file = %archived.file.display(),
                    principal = "system",
                    "archived audit events"
                ),
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "archiving audit events failed");
                    break;
                }
            }
        }
    }
}

/// One round: archives at most `limit` events older than `cutoff` (Unix
/// milliseconds) into a file in `dir`. `None` when there was nothing to
/// archive (or another process archived meanwhile).
pub async fn archive_round(
    store: &Store,
    dir: &Path,
    cutoff: i64,
    limit: u32,
) -> Result<Option<Archived>> {
    let key = store.audit_key();
    let anchor = store.audit_anchor().await?;
    if let Some(anchor) = &anchor
        && !key.anchor_verifies(anchor)
    {
        return Err(Error::Integrity(format!(
            "{}; nothing is archived until it is resolved",
            crate::audit::Finding::AnchorForged { seq: anchor.seq }
        )));
    }
    let (after_seq, previous) = anchor.as_ref().map_or((0, GENESIS.to_vec()), |anchor| {
        (anchor.seq, anchor.mac.clone())
    });
    let mut events = store
        .audit_events(&AuditQuery {
            after_seq,
            limit: limit.saturating_add(1),
            ..AuditQuery::default()
        })
        .await?;
    if events.len() > limit as usize {
        events.truncate(limit as usize);
    } else {
        // The newest event stays: the next append chains to it.
        events.pop();
    }
    let old = old_prefix(key, after_seq, previous, &events, cutoff)?;
    events.truncate(old);
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(None);
    };
    let (first, last) = (first.seq, last.clone());
    let file = {
        let owned = dir.to_owned();
        tokio::task::spawn_blocking(move || file::write(&owned, &events))
            .await
            .map_err(|error| Error::internal("writing an audit archive file", error))?
            .map_err(|error| {
                Error::internal(
                    &format!("writing an audit archive file in {}", dir.display()),
                    error,
                )
            })?
    };
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let event = AuditEvent::system(
        "audit:Archive",
        "*",
        &format!("events {first} to {} archived to {name}", last.seq),
    );
    let moved = key.anchor(last.seq, &last.mac);
    if !store
        .archive_audit_events(anchor.as_ref(), &moved, &event)
        .await?
    {
        tracing::warn!(
            file = %file.display(),
            "the audit archive anchor moved while this round wrote its file \
             (does another replica archive too?); nothing was removed"
        );
        return Ok(None);
    }
    Ok(Some(Archived {
        first,
        last: last.seq,
        file,
    }))
}

/// How many of `events` (read in order after event `after_seq`, whose MAC
/// is `previous`) are older than `cutoff` without a younger one among
/// them. Each of those must chain from the anchor: a round never archives
/// an event that does not verify.
fn old_prefix(
    key: &crate::audit::AuditKey,
    after_seq: i64,
    mut previous: Vec<u8>,
    events: &[StoredEvent],
    cutoff: i64,
) -> Result<usize> {
    for (index, (expected, stored)) in (after_seq + 1..).zip(events).enumerate() {
        if stored.event.time >= cutoff {
            return Ok(index);
        }
        if stored.seq != expected
            || !key.verifies(stored.seq, &previous, &stored.event, &stored.mac)
        {
            return Err(Error::Integrity(format!(
                "audit event {expected} does not verify, so nothing from there on is archived: \
                 run `rekey audit verify`"
            )));
        }
        previous.clone_from(&stored.mac);
    }
    Ok(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditKey;
    use crate::crypto::{Key, RootKey};

    fn chain(key: &AuditKey, times: &[i64]) -> Vec<StoredEvent> {
        let mut previous = GENESIS.to_vec();
        times
            .iter()
            .zip(1..)
            .map(|(time, seq)| {
                let event = AuditEvent {
                    time: *time,
                    ..AuditEvent::default()
                };
                let mac = key.mac(seq, &previous, &event);
                previous.clone_from(&mac);
                StoredEvent { seq, event, mac }
            })
            .collect()
    }

    #[test]
    fn only_a_verified_prefix_of_old_events_is_archived() {
        let key = AuditKey::derive(&RootKey::new(Key::generate()));
        let events = chain(&key, &[1, 2, 9, 3, 9]);
        let prefix = |events: &[StoredEvent]| old_prefix(&key, 0, GENESIS.to_vec(), events, 5);
        // A young event ends the prefix, even with old ones after it.
        assert_eq!(prefix(&events).unwrap(), 2);
        // After an anchor.
        let after = old_prefix(&key, 1, events[0].mac.clone(), &events[1..], 5).unwrap();
        assert_eq!(after, 1);
        let mut altered = events.clone();
        altered[1].event.principal = "mallory".into();
        assert!(prefix(&altered).is_err());
        // Altered, but young: not looked at here.
        let mut young = events.clone();
        young[2].event.principal = "mallory".into();
        assert_eq!(prefix(&young).unwrap(), 2);
        let mut gap = events.clone();
        gap.remove(0);
        assert!(prefix(&gap).is_err());
    }
}
