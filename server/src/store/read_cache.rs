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
//! When an entry may be served: while a commit of the write batch is
//! under way, what it changes is neither served nor kept (reads of it go
//! to the database), and once the commit is done, before any writer is
//! answered, it is made stale. Making stale takes a new tick of the
//! cache's clock; an entry carries the tick read before the read that made
//! it began, and is served only while nothing it depends on was made
//! stale at a later tick. So no answer from here is older than a write
//! acknowledged before the request came, nor older than what a read on
//! the database may already have returned. What a commit changes is what
//! its writers said ([`Stale`]): the secrets they name, when every writer
//! named its secret, and otherwise everything; a writer that says nothing
//! changes everything. The standalone audit events' commits change
//! nothing here: no read of a value reads events. Changes other processes
//! make to the file (`rekeyd keys`) reach a running server through
//! `sync`, which makes everything stale when the master keys changed,
//! before the keyring forgets them. PostgreSQL has no such cache: a commit
//! on one replica would not reach another's memory.
//!
//! Memory is bounded by an estimate of each entry's size; past the bound
//! the entries made first go first. Entries made stale are let go at
//! once, so that an erased secret's sealed values do not stay in memory.

use super::{SecretRecord, StoreMetrics, VersionRecord};
use rekey_shared::Stage;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The default bound on the entries' estimated size, in bytes: tens of
/// thousands of passwords, or about 500 values of the largest size
/// (`read_cache_mib` in the configuration sets another).
pub(super) const CAPACITY: usize = 32 << 20;

/// What an entry costs beyond its strings: the records, the map's and the
/// queue's slots.
const ENTRY_OVERHEAD: usize = 320;

/// The most secrets made stale one by one that are remembered; past it,
/// everything is made stale instead (and they are forgotten).
const MAX_STALE_SECRETS: usize = 65_536;

/// What a commit changes among what reads of values read: everything,
/// unless each of its writers said which secret it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stale {
    Everything,
    /// Rows of these secrets (by id) only, besides what no read of a value
    /// reads; none: nothing such a read reads.
    Secrets(Vec<String>),
}

impl Stale {
    pub(super) fn nothing() -> Self {
        Stale::Secrets(Vec::new())
    }

    /// What two writers' changes together change.
    pub(super) fn add(&mut self, other: Stale) {
        match (&mut *self, other) {
            (Stale::Secrets(ids), Stale::Secrets(more)) => {
                for id in more {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            (_, _) => *self = Stale::Everything,
        }
    }
}

/// Which value of a secret a read asked for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Selector<'a> {
    Version(&'a str),
    Stage(&'a str),
}

/// The clock's tick read before a read began: what an entry made from
/// that read's result carries.
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
    /// The tick read before the read that made it began.
    tick: u64,
    /// When it came, in the order of insertions (see `Entries::order`).
    number: u64,
    found: Found,
    size: usize,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// The keys of each secret's entries, by the secret's id.
    by_secret: HashMap<String, Vec<String>>,
    /// Keys with the number of the insertion that made their entry, oldest
    /// first, for eviction; a pair whose entry has gone or been replaced
    /// is skipped, and such pairs are swept out once they are half.
    order: VecDeque<(u64, String)>,
    insertions: u64,
    bytes: usize,
    /// The tick at which everything was last made stale.
    everything_stale: u64,
    /// The tick at which each secret (by id) was last made stale, when
    /// later than `everything_stale`.
    secrets_stale: HashMap<String, u64>,
    /// Commits under way that change everything, and those that change
    /// these secrets (how many of each).
    committing_everything: usize,
    committing: HashMap<String, usize>,
}

impl Entries {
    /// Whether what a read that began at `tick` found for the secret with
    /// id `secret_id` still holds.
    fn holds(&self, tick: u64, secret_id: &str) -> bool {
        self.committing_everything == 0
            && !self.committing.contains_key(secret_id)
            && self.everything_stale <= tick
            && self
                .secrets_stale
                .get(secret_id)
                .is_none_or(|stale| *stale <= tick)
    }

    /// Makes what `stale` names stale at `tick`, and lets go of the
    /// entries it made stale (the values of an erased secret must not
    /// stay in memory until evicted).
    fn make_stale(&mut self, stale: &Stale, tick: u64) {
        match stale {
            Stale::Secrets(ids) if self.secrets_stale.len() + ids.len() <= MAX_STALE_SECRETS => {
                for id in ids {
                    self.secrets_stale.insert(id.clone(), tick);
                    for key in self.by_secret.remove(id).unwrap_or_default() {
                        if let Some(entry) = self.map.remove(&key) {
                            self.bytes -= entry.size;
                        }
                    }
                }
                self.sweep();
            }
            _ => {
                self.everything_stale = tick;
                self.secrets_stale.clear();
                self.map.clear();
                self.by_secret.clear();
                self.order.clear();
                self.bytes = 0;
            }
        }
    }

    fn insert(&mut self, key: String, entry: Entry) {
        self.bytes += entry.size;
        self.order.push_back((entry.number, key.clone()));
        let id = entry.found.secret.id.clone();
        match self.map.insert(key.clone(), entry) {
            Some(replaced) => {
                self.bytes -= replaced.size;
                if replaced.found.secret.id != id {
                    self.forget_key(&replaced.found.secret.id, &key);
                    self.by_secret.entry(id).or_default().push(key);
                }
            }
            None => self.by_secret.entry(id).or_default().push(key),
        }
    }

    /// Evicts the oldest entries until they fit in `capacity` bytes.
    fn evict_to(&mut self, capacity: usize) {
        while self.bytes > capacity {
            let Some((number, key)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&key)
                .is_some_and(|entry| entry.number == number)
                && let Some(evicted) = self.map.remove(&key)
            {
                self.bytes -= evicted.size;
                self.forget_key(&evicted.found.secret.id, &key);
            }
        }
        self.sweep();
    }

    fn forget_key(&mut self, secret_id: &str, key: &str) {
        if let Some(keys) = self.by_secret.get_mut(secret_id) {
            keys.retain(|kept| kept != key);
            if keys.is_empty() {
                self.by_secret.remove(secret_id);
            }
        }
    }

    /// Drops the eviction order's pairs whose entries have gone, once they
    /// are more than half of it (each sweep is paid for by as many
    /// insertions).
    fn sweep(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(number, key)| map.get(key).is_some_and(|entry| entry.number == *number));
        }
    }
}

/// A commit under way (see [`ReadCache::committing`]).
#[derive(Debug)]
pub(super) struct Committing<'a> {
    cache: &'a ReadCache,
    stale: Stale,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        let mut entries = self.cache.lock();
        let tick = self.cache.tick();
        entries.make_stale(&self.stale, tick);
        match &self.stale {
            Stale::Everything => entries.committing_everything -= 1,
            Stale::Secrets(ids) => {
                for id in ids {
                    if let Some(count) = entries.committing.get_mut(id) {
                        *count -= 1;
                        if *count == 0 {
                            entries.committing.remove(id);
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct ReadCache {
    clock: AtomicU64,
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ReadCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            clock: AtomicU64::new(0),
            capacity,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Whether it keeps nothing (`read_cache_mib = 0`): then what a read
    /// found need not be copied for [`ReadCache::insert`].
    pub(super) fn keeps_nothing(&self) -> bool {
        self.capacity == 0
    }

    /// Makes what `stale` names stale now: another process changed what
    /// an entry may hold (everything), or a value kept did not open (its
    /// secret).
    pub(super) fn make_stale(&self, stale: &Stale) {
        let mut entries = self.lock();
        let tick = self.tick();
        entries.make_stale(stale, tick);
    }

    /// For a commit that changes what `stale` says: until the guard is
    /// dropped (once the commit is done), what it changes is neither
    /// served nor kept; then it is made stale.
    pub(super) fn committing(&self, stale: Stale) -> Committing<'_> {
        // Keeping nothing, it need not remember which secrets changed
        // (those it remembers would grow with every commit).
        let stale = if self.keeps_nothing() {
            Stale::Everything
        } else {
            stale
        };
        let mut entries = self.lock();
        let tick = self.tick();
        entries.make_stale(&stale, tick);
        match &stale {
            Stale::Everything => entries.committing_everything += 1,
            Stale::Secrets(ids) => {
                for id in ids {
                    *entries.committing.entry(id.clone()).or_default() += 1;
                }
            }
        }
        Committing { cache: self, stale }
    }

    /// A new tick, later than every ticket taken so far.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// To take before a read on the database begins (before its job is
    /// queued), for [`ReadCache::insert`] of its result.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.clock.load(Ordering::SeqCst))
    }

    /// What an earlier read found for `name` and `selector`, if nothing
    /// it depends on has been made stale since that read began.
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
                .filter(|entry| entries.holds(entry.tick, &entry.found.secret.id))
                .map(|entry| entry.found.clone())
        };
        let counter = match found {
            Some(_) => &metrics.read_cache_hits,
            None => &metrics.read_cache_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps what a read that began with `ticket` found, unless what it
    /// found has been made stale since (it may not be what the database
    /// holds now).
    pub(super) fn insert(&self, ticket: Ticket, name: &str, selector: Selector<'_>, found: Found) {
        let key = key(name, selector);
        let size = entry_size(&key, &found);
        if size > self.capacity {
            return;
        }
        let mut entries = self.lock();
        if !entries.holds(ticket.0, &found.secret.id) {
            return;
        }
        entries.insertions += 1;
        let entry = Entry {
            tick: ticket.0,
            number: entries.insertions,
            found,
            size,
        };
        entries.insert(key, entry);
        entries.evict_to(self.capacity);
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

/// What an entry under `key` holding `found` is taken to cost: the key
/// is kept three times (the map's, the queue's, its secret's list).
fn entry_size(key: &str, found: &Found) -> usize {
    ENTRY_OVERHEAD + found_size(found) + 3 * key.len()
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

    /// A cache that keeps nothing remembers nothing of the commits either:
    /// the secrets each commit changed piled up, up to 65,536 ids.
    #[test]
    fn a_cache_that_keeps_nothing_remembers_nothing() {
        let cache = ReadCache::new(0);
        for n in 0..1000 {
            drop(cache.committing(Stale::Secrets(vec![format!("secret-{n}")])));
        }
        assert!(cache.lock().secrets_stale.is_empty());
        assert!(cache.lock().committing.is_empty());
        cache.insert(cache.ticket(), "app/db", CURRENT, found("app/db", 16));
        assert!(cache.lock().map.is_empty());
    }

    /// An entry's size counts its key, kept three times.
    #[test]
    fn an_entrys_size_counts_its_key() {
        let cache = ReadCache::new(CAPACITY);
        let name = format!("app/{}", "n".repeat(400));
        let found = found(&name, 16);
        let bare = ENTRY_OVERHEAD + found_size(&found);
        cache.insert(cache.ticket(), &name, CURRENT, found);
        assert!(cache.lock().bytes > bare + 3 * name.len());
    }

    #[test]
    fn an_entry_is_served_until_what_it_holds_changes() {
        let (cache, metrics) = (ReadCache::new(CAPACITY), StoreMetrics::default());
        let ticket = cache.ticket();
        cache.insert(ticket, "app/db", CURRENT, found("app/db", 16));
        assert!(cache.get("app/db", CURRENT, &metrics).is_some());
        let previous = Selector::Stage("PREVIOUS");
        assert!(cache.get("app/db", previous, &metrics).is_none());
        assert!(cache.get("app/other", CURRENT, &metrics).is_none());

        cache.make_stale(&Stale::Everything);
        assert!(cache.get("app/db", CURRENT, &metrics).is_none());
        assert_eq!(metrics.read_cache_hits.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.read_cache_misses.load(Ordering::Relaxed), 3);

        // A read that began after it fills it again.
        cache.insert(cache.ticket(), "app/db", CURRENT, found("app/db", 16));
        assert!(cache.get("app/db", CURRENT, &metrics).is_some());
    }

    /// While a commit is under way, what it changes is neither served nor
    /// kept, even from a read that began after it did (that read may have
    /// found the database from before it); once done, what a read from
    /// before its end found is not kept.
    #[test]
    fn nothing_a_commit_changes_is_served_or_kept_until_it_is_done() {
        let (cache, metrics) = (ReadCache::new(CAPACITY), StoreMetrics::default());
        let (db, web) = (found("app/db", 16), found("app/web", 16));
        cache.insert(cache.ticket(), "app/db", CURRENT, db.clone());
        cache.insert(cache.ticket(), "app/web", CURRENT, web.clone());
        let before = cache.ticket();
        let committing = cache.committing(Stale::Secrets(vec![db.secret.id.clone()]));
        let during = cache.ticket();
        assert!(cache.get("app/db", CURRENT, &metrics).is_none());
        cache.insert(during, "app/db", CURRENT, db.clone());
        assert!(cache.get("app/db", CURRENT, &metrics).is_none());
        // Another secret is served and kept meanwhile.
        assert!(cache.get("app/web", CURRENT, &metrics).is_some());
        cache.insert(during, "app/web", CURRENT, web.clone());
        assert!(cache.get("app/web", CURRENT, &metrics).is_some());
        drop(committing);
        for ticket in [before, during] {
            cache.insert(ticket, "app/db", CURRENT, db.clone());
            assert!(cache.get("app/db", CURRENT, &metrics).is_none());
        }
        cache.insert(cache.ticket(), "app/db", CURRENT, db.clone());
        assert!(cache.get("app/db", CURRENT, &metrics).is_some());

        // A commit of everything: nothing served until it is done.
        let committing = cache.committing(Stale::Everything);
        assert!(cache.get("app/web", CURRENT, &metrics).is_none());
        cache.insert(cache.ticket(), "app/web", CURRENT, web.clone());
        drop(committing);
        assert!(cache.get("app/web", CURRENT, &metrics).is_none());
        assert!(cache.lock().committing.is_empty());
        assert_eq!(cache.lock().committing_everything, 0);
        // A commit of no value changes nothing here.
        cache.insert(cache.ticket(), "app/web", CURRENT, web.clone());
        drop(cache.committing(Stale::nothing()));
        assert!(cache.get("app/web", CURRENT, &metrics).is_some());
    }

    /// What is made stale is let go at once, and churn (a secret read,
    /// put, read again) leaves nothing behind in the eviction order.
    #[test]
    fn stale_entries_are_let_go() {
        let (cache, metrics) = (ReadCache::new(CAPACITY), StoreMetrics::default());
        let (db, web) = (found("app/db", 1000), found("app/web", 1000));
        let web_bytes = entry_size(&key("app/web", CURRENT), &web);
        cache.insert(cache.ticket(), "app/web", CURRENT, web.clone());
        for _ in 0..1000 {
            cache.insert(cache.ticket(), "app/db", CURRENT, db.clone());
            cache.insert(
                cache.ticket(),
                "app/db",
                Selector::Stage("PREVIOUS"),
                db.clone(),
            );
            drop(cache.committing(Stale::Secrets(vec![db.secret.id.clone()])));
        }
        {
            let entries = cache.lock();
            assert_eq!(entries.map.len(), 1);
            assert_eq!(entries.bytes, web_bytes);
            assert!(!entries.by_secret.contains_key(&db.secret.id));
            assert!(entries.order.len() <= 2 * entries.map.len() + 64 + 2);
        }
        assert!(cache.get("app/web", CURRENT, &metrics).is_some());
        cache.make_stale(&Stale::Secrets(vec![web.secret.id.clone()]));
        assert!(cache.get("app/web", CURRENT, &metrics).is_none());
        cache.insert(cache.ticket(), "app/web", CURRENT, web);
        cache.make_stale(&Stale::Everything);
        let entries = cache.lock();
        assert!(entries.map.is_empty() && entries.order.is_empty() && entries.by_secret.is_empty());
        assert_eq!(entries.bytes, 0);
    }

    #[test]
    fn too_many_secrets_made_stale_one_by_one_make_everything_stale() {
        let (cache, metrics) = (ReadCache::new(CAPACITY), StoreMetrics::default());
        cache.insert(cache.ticket(), "app/web", CURRENT, found("app/web", 16));
        drop(cache.committing(Stale::Secrets(vec!["1".into()])));
        assert!(cache.get("app/web", CURRENT, &metrics).is_some());
        let many: Vec<String> = (0..=MAX_STALE_SECRETS).map(|n| n.to_string()).collect();
        drop(cache.committing(Stale::Secrets(many)));
        assert!(cache.get("app/web", CURRENT, &metrics).is_none());
        assert!(cache.lock().secrets_stale.is_empty());
        assert!(cache.lock().committing.is_empty());
    }

    #[test]
    fn what_two_writers_change_together() {
        let mut stale = Stale::nothing();
        stale.add(Stale::Secrets(vec!["a".into()]));
        stale.add(Stale::Secrets(vec!["a".into(), "b".into()]));
        assert_eq!(stale, Stale::Secrets(vec!["a".into(), "b".into()]));
        stale.add(Stale::Everything);
        assert_eq!(stale, Stale::Everything);
        stale.add(Stale::nothing());
        assert_eq!(stale, Stale::Everything);
    }

    #[test]
    fn the_entries_made_first_go_first_past_the_bound() {
        let metrics = StoreMetrics::default();
        let one = entry_size(&key("app/n0", CURRENT), &found("app/n0", 1000));
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
