//! Master keys: created here (wrapped by the root key and stored), unwrapped
//! on first use and kept in memory, zeroized when dropped.
//!
//! The newest version of a key wraps new data keys; any stored version can
//! unwrap. A key missing from memory is looked up in the database, so a key
//! that `rekeyd keys create` added while the server runs is found at once.

use crate::audit::AuditEvent;
use crate::crypto::{Key, KeyRef, MasterKey, RootKey};
use crate::error::{Error, Result};
use crate::store::{Rewrapped, Store, WrappedMasterKey};
use rekey_shared::KeyName;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Keyring {
    root: RootKey,
    /// Every unwrapped version, by name.
    keys: RwLock<HashMap<String, Vec<Arc<MasterKey>>>>,
    /// Counts what was forgotten: a load that read the database before a
    /// forget does not put back what it read (versions older than the
    /// change that made it forget).
    forgotten: AtomicU64,
}

/// The version numbers of a key's versions, in order.
fn numbers(versions: &[Arc<MasterKey>]) -> Vec<u32> {
    versions.iter().map(|key| key.reference.version).collect()
}

impl Keyring {
    /// A key for another purpose, derived from the root key.
    pub fn derive_key(&self, purpose: &[u8]) -> crate::crypto::Key {
        self.root.derive_key(purpose)
    }

    pub fn new(root: RootKey) -> Self {
        Self {
            root,
            keys: RwLock::new(HashMap::new()),
            forgotten: AtomicU64::new(0),
        }
    }

    /// Adds a new version of `name` (version 1 for a new key) and returns
    /// it; `event`'s detail is followed by the version's number. A version
    /// another rotation added meanwhile (here or on another replica) is
    /// not a failure: the next number is taken, ten times at most.
    pub async fn create_version(
        &self,
        store: &Store,
        name: &KeyName,
        event: &AuditEvent,
    ) -> Result<u32> {
        const TRIES: usize = 10;
        let mut tried = 0;
        loop {
            tried += 1;
            if tried > 1 {
                // The writes that took the number are durable before the
                // versions are read again.
                store.barrier().await?;
            }
            let versions = store.master_key_versions(name.as_str()).await?;
            let version = versions.last().map_or(1, |newest| newest.version + 1);
            let master = MasterKey::new(
                KeyRef {
                    name: name.clone(),
                    version,
                },
                Key::generate(),
            );
            let event = AuditEvent {
                detail: match event.detail.as_str() {
                    "" => format!("version {version}"),
                    detail => format!("{detail}: version {version}"),
                },
                ..event.clone()
            };
            let inserted = store
                .insert_master_key(
                    &WrappedMasterKey {
                        name: name.as_str().to_owned(),
                        version,
                        wrapped_material: self.root.wrap_master_key(&master),
                        created_at: rekey_shared::time::now_millis(),
                    },
                    &event,
                )
                .await;
            match inserted {
                Err(Error::AlreadyExists(_)) if version > 1 && tried < TRIES => continue,
                inserted => inserted?,
            }
            self.forget(name);
            return Ok(version);
        }
    }

    /// The root key, for the other keys derived from it.
    pub fn root(&self) -> &RootKey {
        &self.root
    }

    fn forget(&self, name: &KeyName) {
        if let Ok(mut keys) = self.keys.write() {
            self.forgotten.fetch_add(1, Ordering::AcqRel);
            keys.remove(name.as_str());
        }
    }

    /// Whether any cached key's stored versions differ from what is in
    /// memory (see [`Self::forget_changed`]).
    pub fn differs(&self, stored: &HashMap<String, Vec<u32>>) -> bool {
        self.keys.read().is_ok_and(|keys| {
            keys.iter()
                .any(|(name, versions)| stored.get(name) != Some(&numbers(versions)))
        })
    }

    /// Drops every cached key whose stored versions differ from what is in
    /// memory (another process rotated or retired one); the next use
    /// reloads it. `stored`: each key's name and its version numbers.
    pub fn forget_changed(&self, stored: &HashMap<String, Vec<u32>>) {
        let Ok(mut keys) = self.keys.write() else {
            return;
        };
        let known = keys.len();
        keys.retain(|name, versions| stored.get(name) == Some(&numbers(versions)));
        if keys.len() != known {
            self.forgotten.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn cached(&self, name: &KeyName) -> Option<Vec<Arc<MasterKey>>> {
        self.keys.read().ok()?.get(name.as_str()).cloned()
    }

    async fn load(&self, store: &Store, name: &KeyName) -> Result<Vec<Arc<MasterKey>>> {
        let forgotten = self.forgotten.load(Ordering::Acquire);
        let mut versions = Vec::new();
        for wrapped in store.master_key_versions(name.as_str()).await? {
            let reference = KeyRef {
                name: name.clone(),
                version: wrapped.version,
            };
            let master = self
                .root
                .unwrap_master_key(reference, &wrapped.wrapped_material)
                .map_err(|_| {
                    Error::Integrity(format!(
                        "master key {name} version {} does not open with this root key",
                        wrapped.version
                    ))
                })?;
            versions.push(Arc::new(master));
        }
        if !versions.is_empty()
            && let Ok(mut keys) = self.keys.write()
            // Read before a forget: what it read may be older than what
            // made it forget.
            && self.forgotten.load(Ordering::Acquire) == forgotten
        {
            if keys
                .get(name.as_str())
                .is_some_and(|known| numbers(known) != numbers(&versions))
            {
                // Another process changed the key before `sync` noticed:
                // a read kept in memory may hold a data key wrapped under a
                // version that is gone now.
                store.forget_cached_reads();
            }
            keys.insert(name.as_str().to_owned(), versions.clone());
        }
        Ok(versions)
    }

    async fn versions(&self, store: &Store, name: &KeyName) -> Result<Vec<Arc<MasterKey>>> {
        match self.cached(name) {
            Some(versions) => Ok(versions),
            None => self.load(store, name).await,
        }
    }

    /// The newest version of `name` as the database holds it now, read
    /// past what this process keeps (another process or replica may have
    /// added one within the last second).
    pub async fn newest_stored(&self, store: &Store, name: &KeyName) -> Result<Arc<MasterKey>> {
        self.load(store, name)
            .await?
            .last()
            .cloned()
            .ok_or_else(|| missing_key(name))
    }

    /// The version that wraps new data keys under `name`.
    pub async fn for_encryption(&self, store: &Store, name: &KeyName) -> Result<Arc<MasterKey>> {
        self.versions(store, name)
            .await?
            .last()
            .cloned()
            .ok_or_else(|| missing_key(name))
    }

    /// The version named by a stored data key.
    pub async fn for_decryption(
        &self,
        store: &Store,
        reference: &KeyRef,
    ) -> Result<Arc<MasterKey>> {
        let find = |versions: &[Arc<MasterKey>]| {
            versions
                .iter()
                .find(|key| key.reference.version == reference.version)
                .cloned()
        };
        if let Some(found) = self.cached(&reference.name).as_deref().and_then(find) {
            return Ok(found);
        }
        find(&self.load(store, &reference.name).await?).ok_or_else(|| {
            Error::Integrity(format!(
                "master key {} version {} is missing",
                reference.name, reference.version
            ))
        })
    }

    /// Whether a key of this name exists.
    pub async fn exists(&self, store: &Store, name: &KeyName) -> Result<bool> {
        Ok(!self.versions(store, name).await?.is_empty())
    }

    /// Re-wraps every data key still under an older version of `to`'s key
    /// than `to`, `batch` at a time, each batch in a transaction of its own
    /// stored with `event` (whose detail says how many); `progress` hears
    /// each batch's count. The total. Safe beside other writers: each row
    /// is updated only if it still holds the key it was read with (a rewrap
    /// interrupted resumes where it stopped), and rows another writer
    /// changed meanwhile are read again. A batch that wrote none ends
    /// nothing: only a batch that finds no row does; five in a row that
    /// wrote none are ABORTED.
    pub async fn rewrap_all(
        &self,
        store: &Store,
        to: &MasterKey,
        batch: u32,
        event: &AuditEvent,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let (mut total, mut idle) = (0, 0);
        while let Some(done) = self.rewrap_some(store, to, batch, event).await? {
            if done == 0 {
                idle += 1;
                if idle == 5 {
                    return Err(Error::Aborted(format!(
                        "the data keys under master key {} kept changing during the rewrap; run it again",
                        to.reference.name
                    )));
                }
                continue;
            }
            idle = 0;
            total += done;
            progress(done);
        }
        Ok(total)
    }

    /// Re-wraps up to `batch` data keys still under an older version than
    /// `to`: how many were, of a batch found; `None` when none is left.
    async fn rewrap_some(
        &self,
        store: &Store,
        to: &MasterKey,
        batch: u32,
        event: &AuditEvent,
    ) -> Result<Option<u64>> {
        let name = &to.reference.name;
        let newest = to.reference.version;
        let versions = store
            .versions_to_rewrap(name.as_str(), newest, batch)
            .await?;
        if versions.is_empty() {
            return Ok(None);
        }
        let mut rewrapped = Vec::with_capacity(versions.len());
        for (secret_id, version) in versions {
            let from = self.for_decryption(store, &version.sealed.key).await?;
            let moved = crate::crypto::rewrap_data_key(
                &from,
                to,
                &secret_id,
                &version.version_id,
                &version.sealed,
            )
            .map_err(|_| {
                Error::Integrity(format!(
                    "the data key of version {} of secret {secret_id} failed its integrity check",
                    version.version_id
                ))
            })?;
            rewrapped.push((
                secret_id,
                Rewrapped {
                    version_id: version.version_id,
                    wrapped_data_key: moved.wrapped_data_key,
                    from: version.sealed.key,
                    to: moved.key,
                },
            ));
        }
        // Written with the rows, so before it is known how many of them
        // another write changed meanwhile (those are read again).
        let event = AuditEvent {
            detail: format!(
                "re-wrapping {} data keys found under older versions to version {newest}",
                rewrapped.len()
            ),
            ..event.clone()
        };
        store.store_rewrapped(&rewrapped, &event).await.map(Some)
    }
}

pub fn missing_key(name: &KeyName) -> Error {
    Error::NotFound(format!(
        "master key {name} does not exist; create it with `rekeyd keys create {name}`"
    ))
}

/// Reads `root.key` (64 hex characters), refusing a file that other users
/// can read.
pub fn read_root_key(path: &Path) -> anyhow::Result<RootKey> {
    use anyhow::Context;
    let raw = crate::pki::read_private(path, "root key")?;
    // Checked in place: a failed conversion must not carry a copy away.
    let text = zeroize::Zeroizing::new(
        std::str::from_utf8(&raw)
            .map_err(|_| anyhow::anyhow!("root key {} is not text", path.display()))?
            .to_owned(),
    );
    let bytes = zeroize::Zeroizing::new(decode_hex(text.trim()).with_context(|| {
        format!(
            "root key {} is not 64 hexadecimal characters",
            path.display()
        )
    })?);
    let key = Key::from_bytes(&bytes)
        .map_err(|_| anyhow::anyhow!("root key {} must hold 32 bytes", path.display()))?;
    Ok(RootKey::new(key))
}

/// The text of a new `root.key` file and the key it holds.
pub fn new_root_key() -> (zeroize::Zeroizing<String>, RootKey) {
    use std::fmt::Write;
    let key = Key::generate();
    // Written straight into zeroizing memory of its final size: no copy of
    // the key's hex is left behind in a freed or regrown buffer.
    let mut text = zeroize::Zeroizing::new(String::with_capacity(key.as_bytes().len() * 2 + 1));
    for byte in key.as_bytes() {
        let _ = write!(text, "{byte:02x}");
    }
    text.push('\n');
    (text, RootKey::new(key))
}

/// The bytes `text` spells in hexadecimal. The buffer is allocated once at
/// its final size, so that decoding a key leaves no partial copy of it in
/// memory a regrown buffer gave back (the caller wraps the result in
/// `Zeroizing`); on an error what was decoded is wiped.
pub(crate) fn decode_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(text.len().is_multiple_of(2), "odd length");
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(text.len() / 2));
    for i in (0..text.len()).step_by(2) {
        // `get`: a multi-byte character is an error, not a panic.
        let pair = text
            .get(i..i + 2)
            .ok_or_else(|| anyhow::anyhow!("not hexadecimal"))?;
        bytes.push(u8::from_str_radix(pair, 16)?);
    }
    Ok(std::mem::take(&mut *bytes))
}
