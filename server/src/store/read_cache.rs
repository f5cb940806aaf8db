//! Reads of values answered from memory (SQLite only). A read of a value
//! keeps what the store found for it (the secret's record, and the
//! version's with its stages, its value still sealed under its data key),
//! so that the next read of the same name and stage (or version id) needs
//! no statement on a reader thread. Nothing here is plaintext, and nothing
//! here decides: every answer is still authorized per request, by the gate
//! and the handler, and opened per request under the key the record names.
//!
//! Why: SQLite drops a connection's whole page cache whenever another
//! connection has committed, and every read's audit event is a commit, so
//! on the readers each read walked its B-trees from pages read again; the
//! two statements cost more server time than the rest of a read together
//! (see the README's benchmark).
//!
//! When an entry may be served: every commit of the write batch moves the
//! cache's generation twice, as it begins and once it is done, before any
//! writer is answered. An entry carries the generation read before the
//! read that made it began, and is served only while that is still the
//! generation. So no answer from here is older than a write acknowledged
//! before the request came, nor older than what a read on the database
//! may already have returned (between the two moves, reads go to the
//! database). The standalone audit events' commits leave it alone: no
//! read of a value reads events. Changes other processes make to the file
//! (`rekeyd keys`) reach a running server through `sync`, which moves the
//! generation when the master keys changed, before the keyring forgets
//! them. PostgreSQL has no such cache: a commit on one replica would not
//! move another's generation.
//!
//! Memory is bounded by an estimate of each entry's size; past the bound
//! the entries made first go first. An entry a commit made stale stays
//! until a read of its value replaces it, or it is evicted.

use super::{SecretRecord, StoreMetrics, VersionRecord};
use rekey_shared::Stage;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The bound on the entries' estimated size, in bytes: tens of thousands
/// of passwords, or about 500 values of the largest size.
pub(super) const CAPACITY: usize = 32 << 20;

/// What an entry costs beyond its strings: the records, the map's and the
/// queue's slots.
const ENTRY_OVERHEAD: usize = 320;

/// Which value of a secret a read asked for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Selector<'a> {
    Version(&'a str),
    Stage(&'a str),
}

/// The generation read before a read began: what an entry made from that
/// read's result carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket(u64);

/// A read's result, as kept.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub secret: SecretRecord,
    pub version: VersionRecord,
    pub stages: Vec<Stage>,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    found: Found,
    size: usize,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// The keys in the order they first came, for eviction.
    order: VecDeque<String>,
    bytes: usize,
}

#[derive(Debug)]
pub(super) struct ReadCache {
    generation: AtomicU64,
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ReadCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            generation: AtomicU64::new(0),
            capacity,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Makes every entry stale: called as a commit of changes begins and
    /// again once it is done, and when another process changed what an
    /// entry may hold.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// To take before a read on the database begins (before its job is
    /// queued), for [`ReadCache::insert`] of its result.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// What an earlier read found for `name` and `selector`, if no commit
    /// has begun since that read began.
    pub(super) fn get(
        &self,
        name: &str,
        selector: Selector<'_>,
        metrics: &StoreMetrics,
    ) -> Option<Found> {
        let key = key(name, selector);
        let found = {
            let entries = self.lock();
            entries
                .map
                .get(&key)
                .filter(|entry| entry.generation == self.generation.load(Ordering::SeqCst))
                .map(|entry| entry.found.clone())
        };
        let counter = match found {
            Some(_) => &metrics.read_cache_hits,
            None => &metrics.read_cache_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps what a read that began with `ticket` found, unless a commit
    /// has begun since (it may not be what the database holds now).
    pub(super) fn insert(&self, ticket: Ticket, name: &str, selector: Selector<'_>, found: Found) {
        let size = ENTRY_OVERHEAD + found_size(&found);
        if size > self.capacity {
            return;
        }
        let key = key(name, selector);
        let mut entries = self.lock();
        if ticket != self.ticket() {
            return;
        }
        let entry = Entry {
            generation: ticket.0,
            found,
            size,
        };
        match entries.map.insert(key.clone(), entry) {
            Some(replaced) => entries.bytes -= replaced.size,
            None => entries.order.push_back(key),
        }
        entries.bytes += size;
        while entries.bytes > self.capacity {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            if let Some(evicted) = entries.map.remove(&oldest) {
                entries.bytes -= evicted.size;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every change to the entries is complete before the lock is let
        // go, so a panic elsewhere cannot leave them half made.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One string for a name and a selector: a name cannot hold a newline.
fn key(name: &str, selector: Selector<'_>) -> String {
    match selector {
        Selector::Version(version_id) => format!("{name}\nv{version_id}"),
        Selector::Stage(stage) => format!("{name}\ns{stage}"),
    }
}

fn found_size(found: &Found) -> usize {
    let Found {
        secret,
        version,
        stages,
    } = found;
    let tags: usize = secret.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    secret.id.len()
        + secret.name.as_str().len()
        + secret.description.len()
        + secret.key_name.as_str().len()
        + tags
        + version.version_id.as_str().len()
        + version.created_by.len()
        + version.sealed.ciphertext.len()
        + version.sealed.wrapped_data_key.len()
        + version.sealed.key.name.as_str().len()
        + stages
            .iter()
            .map(|stage| stage.as_str().len() + 24)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crypto::{KeyRef, SealedValue};
    use rekey_shared::{KeyName, SecretName, VersionId};

    fn found(name: &str, value_size: usize) -> Found {
        Found {
            secret: SecretRecord {
                id: format!("{name}-AbCdEf"),
                name: SecretName::parse(name).unwrap(),
                description: String::new(),
                key_name: KeyName::default_key(),
                tags: Vec::new(),
                created_at: 1,
                changed_at: 1,
                accessed_day: None,
                deletion_date: None,
            },
            version: VersionRecord {
                version_id: VersionId::random(),
                created_at: 1,
                created_by: "admin".to_owned(),
                accessed_day: None,
                sealed: SealedValue {
                    is_binary: false,
                    ciphertext: vec![0; value_size],
                    wrapped_data_key: vec![0; 60],
                    key: KeyRef {
                        name: KeyName::default_key(),
                        version: 1,
                    },
                },
            },
            stages: vec![Stage::current()],
        }
    }

    const CURRENT: Selector<'static> = Selector::Stage("CURRENT");

    #[test]
    fn an_entry_is_served_until_a_commit_begins() {
        let (cache, metrics) = (ReadCache::new(CAPACITY), StoreMetrics::default());
        let ticket = cache.ticket();
        cache.insert(ticket, "app/db", CURRENT, found("app/db", 16));
        assert!(cache.get("app/db", CURRENT, &metrics).is_some());
        assert!(
            cache
                .get("app/db", Selector::Stage("PREVIOUS"), &metrics)
                .is_none()
        );
        assert!(cache.get("app/other", CURRENT, &metrics).is_none());

        cache.invalidate();
        assert!(cache.get("app/db", CURRENT, &metrics).is_none());
        assert_eq!(metrics.read_cache_hits.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.read_cache_misses.load(Ordering::Relaxed), 3);

        // A read that began after the commit fills it again.
        let ticket = cache.ticket();
        cache.insert(ticket, "app/db", CURRENT, found("app/db", 16));
        assert!(cache.get("app/db", CURRENT, &metrics).is_some());
    }

    /// A read that began before a commit may have found what the commit
    /// changed: what it found is not kept.
    #[test]
    fn what_a_read_from_before_a_commit_found_is_not_kept() {
        let (cache, metrics) = (ReadCache::new(CAPACITY), StoreMetrics::default());
        let ticket = cache.ticket();
        cache.invalidate();
        cache.insert(ticket, "app/db", CURRENT, found("app/db", 16));
        assert!(cache.get("app/db", CURRENT, &metrics).is_none());
        // Nor once a later read's entry has come and gone stale.
        let later = cache.ticket();
        cache.insert(later, "app/db", CURRENT, found("app/db", 16));
        cache.invalidate();
        cache.insert(later, "app/db", CURRENT, found("app/db", 16));
        assert!(cache.get("app/db", CURRENT, &metrics).is_none());
    }

    #[test]
    fn the_entries_made_first_go_first_past_the_bound() {
        let metrics = StoreMetrics::default();
        let one = ENTRY_OVERHEAD + found_size(&found("app/n0", 1000));
        let cache = ReadCache::new(3 * one);
        for index in 0..5 {
            let name = format!("app/n{index}");
            cache.insert(cache.ticket(), &name, CURRENT, found(&name, 1000));
        }
        let kept: Vec<bool> = (0..5)
            .map(|index| {
                cache
                    .get(&format!("app/n{index}"), CURRENT, &metrics)
                    .is_some()
            })
            .collect();
        assert_eq!(kept, [false, false, true, true, true]);
        // Replacing an entry does not count it twice.
        cache.insert(cache.ticket(), "app/n4", CURRENT, found("app/n4", 1000));
        assert!(cache.get("app/n2", CURRENT, &metrics).is_some());
        assert_eq!(cache.lock().bytes, 3 * one);
        // An entry larger than the bound is not kept at all.
        cache.insert(
            cache.ticket(),
            "app/big",
            CURRENT,
            found("app/big", 4 * one),
        );
        assert!(cache.get("app/big", CURRENT, &metrics).is_none());
        assert!(cache.get("app/n2", CURRENT, &metrics).is_some());
    }
}
