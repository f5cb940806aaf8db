//! The caching client: GetSecretValue of CURRENT served from memory for a
//! time to live, with an entry dropped the moment the Watch stream says its
//! secret changed. While the stream is down, nothing is served from memory
//! (every read asks the server) and the stream is opened again, so a value
//! can be stale only for as long as a change event takes to arrive (and
//! until the stream first opens, a moment after [`CachingClient::new`],
//! reads go to the server too, and are not kept: the first read after
//! `new` is not, as a rule, unless [`CachingClient::ready`] waited for the
//! stream). Values past their time to live are wiped
//! when next asked for, and swept out as entries pile up. A read the
//! server could not answer because
//! its connection dropped fails with UNAVAILABLE, the code to retry on. Values
//! stay in zeroizing memory ([`SecretValue`]); the caller needs
//! `secrets:GetSecretValue` and `secrets:Watch` on what it reads.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use rekey_shared::cache::CachingClient;
//! use rekey_shared::identity::Identity;
//! use std::time::Duration;
//!
//! let identity = Identity::load("app.pem".as_ref())?;
//! let channel = rekey_shared::channel::connect("https://rekey.internal:8443", &identity).await?;
//! let cache = CachingClient::new(channel, Duration::from_secs(300));
//! cache.ready(Duration::from_secs(5)).await;
//! let password = cache.get("prod/db/orders").await?; // from the server
//! // Once the stream is open, a read is kept: the next is from memory,
//! // until the secret changes or its time to live ends.
//! let again = cache.get("prod/db/orders").await?;
//! assert!(password.same_as(&again));
//! # Ok(()) }
//! ```

use crate::SecretValue;
use crate::proto::secrets_client::SecretsClient;
use crate::proto::watch_client::WatchClient;
use crate::proto::{GetSecretValueRequest, WatchRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How long the follower waits before opening a lost stream again.
const RECONNECT: Duration = Duration::from_secs(1);

/// How long a refused Watch waits, at most, before it is asked again.
const REFUSED_AT_MOST: Duration = Duration::from_secs(300);

/// How many entries there may be before an insert sweeps out the expired;
/// after a sweep, twice as many as it left (each sweep is then paid for by
/// as many inserts as it looked at).
const SWEEP_AT: usize = 1024;

/// A Secrets client whose reads of CURRENT are cached; see the module doc.
#[derive(Debug)]
pub struct CachingClient {
    channel: Channel,
    secrets: SecretsClient<Channel>,
    ttl: Duration,
    shared: Arc<Shared>,
    follower: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<HashMap<String, Entry>>,
    /// Whether the Watch stream is open, so that entries can be trusted.
    following: AtomicBool,
    /// Moves on with every change event: a read that saw it move while it
    /// asked the server does not keep what it got.
    changes: AtomicU64,
    /// Told whenever the stream opens.
    opened: tokio::sync::Notify,
    /// The number of entries at which an insert sweeps next (0: SWEEP_AT).
    sweep_at: std::sync::atomic::AtomicUsize,
    /// Whether the caller may watch each name read (its events reach the
    /// stream), as the server answered a Watch naming it; forgotten with
    /// the entries when the stream is lost (another policy, say).
    watchable: Mutex<HashMap<String, bool>>,
}

#[derive(Debug)]
struct Entry {
    value: SecretValue,
    fetched: Instant,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts a change and drops what it makes stale, under the entries'
    /// lock: a read that looks at the count and keeps its value under the
    /// same lock either sees this change or is dropped by it.
    fn changed(&self, name: Option<&str>) {
        let mut entries = self.entries();
        self.changes.fetch_add(1, Ordering::SeqCst);
        match name {
            Some(name) => {
                entries.remove(name);
            }
            None => {
                entries.clear();
                self.watchable().clear();
            }
        }
    }

    fn watchable(&self) -> MutexGuard<'_, HashMap<String, bool>> {
        match self.watchable.lock() {
            Ok(watchable) => watchable,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl CachingClient {
    /// A client on `channel` that keeps values for at most `ttl`. It starts
    /// following the Watch stream at once (in a task of the current Tokio
    /// runtime) and stops when dropped.
    pub fn new(channel: Channel, ttl: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let follower = tokio::spawn(follow(channel.clone(), shared.clone()));
        Self {
            channel: channel.clone(),
            secrets: SecretsClient::new(channel),
            ttl,
            shared,
            follower,
        }
    }

    /// Waits, at most `within`, until the Watch stream is open, so that
    /// reads from then on are kept; whether it is. (A server that refuses
    /// the caller a Watch never opens it: every read then asks it.)
    pub async fn ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let opened = self.shared.opened.notified();
            if self.shared.following.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                return self.shared.following.load(Ordering::SeqCst);
            }
        }
    }

    /// The CURRENT value of `name`: from memory when it was read less than
    /// the time to live ago and has not changed since, else from the server.
    pub async fn get(&self, name: &str) -> Result<SecretValue, tonic::Status> {
        let shared = &self.shared;
        // The count before the stream's state: a stream lost in between
        // moves the count, so this read does not keep what it gets.
        let before = shared.changes.load(Ordering::SeqCst);
        let following = shared.following.load(Ordering::SeqCst);
        if following {
            let mut entries = shared.entries();
            match entries.get(name) {
                Some(entry) if entry.fetched.elapsed() < self.ttl => {
                    return Ok(entry.value.clone());
                }
                // Past its time to live: wiped now, not at the next change.
                Some(_) => {
                    entries.remove(name);
                }
                None => {}
            }
        }
        // Its time to live counts from before the server was asked.
        let asked = Instant::now();
        let response = self
            .secrets
            .clone()
            .get_secret_value(GetSecretValueRequest {
                name: name.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(crate::channel::dropped_call_is_unavailable)?
            .into_inner();
        let value = SecretValue::from_fields(response.secret_string, response.secret_binary)
            .map_err(|error| tonic::Status::internal(error.to_string()))?
            .ok_or_else(|| {
                tonic::Status::internal(format!("the server sent no value of {name}"))
            })?;
        // A name the caller may read but not watch would never be told
        // changed: it is not kept.
        if following && self.watchable(name).await {
            // Kept only if nothing changed since the read began, looked at
            // under the lock `changed` takes (see there).
            let mut entries = shared.entries();
            if shared.following.load(Ordering::SeqCst)
                && shared.changes.load(Ordering::SeqCst) == before
            {
                // Now and then, what has outlived its time to live goes, so
                // that names read once are not kept for ever.
                let sweep_at = shared.sweep_at.load(Ordering::Relaxed).max(SWEEP_AT);
                if entries.len() >= sweep_at {
                    let ttl = self.ttl;
                    entries.retain(|_, entry| entry.fetched.elapsed() < ttl);
                    shared
                        .sweep_at
                        .store((entries.len() * 2).max(SWEEP_AT), Ordering::Relaxed);
                }
                entries.insert(
                    name.to_owned(),
                    Entry {
                        value: value.clone(),
                        fetched: asked,
                    },
                );
            }
        }
        Ok(value)
    }
}

impl CachingClient {
    /// Whether the caller may watch `name`, as a Watch naming it answers
    /// (asked once per name while the stream is open; a server from before
    /// Watch named secrets answers yes). An answer that is neither (the
    /// server away) keeps nothing and is asked again at the next read.
    async fn watchable(&self, name: &str) -> bool {
        let shared = &self.shared;
        if let Some(known) = shared.watchable().get(name) {
            return *known;
        }
        let before = shared.changes.load(Ordering::SeqCst);
        let asked = WatchClient::new(self.channel.clone())
            .watch(WatchRequest {
                prefix: name.to_owned(),
                names: vec![name.to_owned()],
            })
            .await;
        let may = match asked {
            // The stream itself is not needed: dropped, it ends.
            Ok(_) => true,
            Err(status) if status.code() == tonic::Code::PermissionDenied => false,
            Err(_) => return false,
        };
        let mut known = shared.watchable();
        if shared.changes.load(Ordering::SeqCst) == before {
            known.insert(name.to_owned(), may);
        }
        may
    }
}

impl Drop for CachingClient {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Follows every change event the caller may see; drops what changed, and
/// everything whenever the stream is lost.
async fn follow(channel: Channel, shared: Arc<Shared>) {
    let mut pause = RECONNECT;
    loop {
        let opened = WatchClient::new(channel.clone())
            .watch(WatchRequest {
                prefix: String::new(),
                names: Vec::new(),
            })
            .await;
        // Refused (the policy lets this caller watch nothing, or its
        // certificate is no good): asked again less and less often, since
        // every refusal is an audit event.
        pause = match &opened {
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                (pause * 2).min(REFUSED_AT_MOST)
            }
            _ => RECONNECT,
        };
        if let Ok(stream) = opened {
            let mut stream = stream.into_inner();
            shared.following.store(true, Ordering::SeqCst);
            shared.opened.notify_waiters();
            while let Ok(Some(event)) = stream.message().await {
                shared.changed(Some(&event.name));
            }
            shared.following.store(false, Ordering::SeqCst);
            shared.changed(None);
        }
        tokio::time::sleep(pause).await;
    }
}
