//! Envelope encryption: AES-256-GCM from the `aes-gcm` crate, keys from the
//! OS random generator, nothing home-made.
//!
//! Three layers: the root key (a file, never in the database) wraps master
//! keys; a master-key version wraps each version's data key; the data key
//! seals one value. Every sealing binds associated data that names what it
//! protects (secret id, version id, key name and version), so a ciphertext
//! copied to another row, or a data key to another version, fails to open.
//! Key material lives in `Zeroizing` buffers and has no `Debug`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::TryRngCore;
use rekey_shared::{KeyName, SecretValue, VersionId};
use zeroize::Zeroizing;

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// A 256-bit key held in zeroizing memory.
pub struct Key(Zeroizing<[u8; KEY_BYTES]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// A sealed value or key failed to open: wrong key, or changed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("integrity check failed")]
pub struct IntegrityError;

/// Fills `bytes` from the operating system's random generator.
pub fn random_bytes(bytes: &mut [u8]) {
    #[allow(clippy::expect_used)] // nothing sensible can go on without randomness
    rand::rngs::OsRng
        .try_fill_bytes(bytes)
        .expect("the operating system's random generator failed");
}

impl Key {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(key.as_mut());
        Self(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IntegrityError> {
        let array: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| IntegrityError)?;
        Ok(Self(Zeroizing::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// `nonce || ciphertext || tag`, under a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        let mut nonce = [0u8; NONCE_BYTES];
        random_bytes(&mut nonce);
        #[allow(clippy::expect_used)] // only fails for inputs beyond 64 GiB
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of a bounded input");
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, IntegrityError> {
        if sealed.len() < NONCE_BYTES {
            return Err(IntegrityError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| IntegrityError)
    }
}

/// Associated data: a domain label and length-prefixed parts, so that no two
/// different lists of parts encode alike.
fn associated_data(domain: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::new();
    for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// Which master-key version wraps a data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub name: KeyName,
    pub version: u32,
}

/// A master-key version with its material.
#[derive(Debug)]
pub struct MasterKey {
    pub reference: KeyRef,
    key: Key,
}

impl MasterKey {
    pub fn new(reference: KeyRef, key: Key) -> Self {
        Self { reference, key }
    }

    fn wrap_aad(&self, secret_id: &str, version_id: &VersionId) -> Vec<u8> {
        associated_data(
            "rekey/data-key/v1",
            &[
                secret_id.as_bytes(),
                version_id.as_str().as_bytes(),
                self.reference.name.as_str().as_bytes(),
                &self.reference.version.to_be_bytes(),
            ],
        )
    }
}

/// The root key: wraps master keys, lives in `root.key`, never in the
/// database.
#[derive(Debug)]
pub struct RootKey(Key);

impl RootKey {
    pub fn new(key: Key) -> Self {
        Self(key)
    }

    fn master_aad(reference: &KeyRef) -> Vec<u8> {
        associated_data(
            "rekey/master-key/v1",
            &[
                reference.name.as_str().as_bytes(),
                &reference.version.to_be_bytes(),
            ],
        )
    }

    /// A key for another purpose (see [`RootKey::derive_subkey`]).
    pub fn derive_key(&self, purpose: &[u8]) -> Key {
        Key(self.derive_subkey(purpose))
    }

    /// A key for another purpose, derived with HKDF-SHA256; the root key
    /// itself is only ever used to wrap master keys.
    pub fn derive_subkey(&self, purpose: &[u8]) -> Zeroizing<[u8; KEY_BYTES]> {
        let mut derived = Zeroizing::new([0u8; KEY_BYTES]);
        #[allow(clippy::expect_used)] // 32 bytes is far below HKDF's limit
        hkdf::Hkdf::<sha2::Sha256>::new(None, self.0.as_bytes())
            .expand(purpose, derived.as_mut())
            .expect("HKDF output length");
        derived
    }

    pub fn wrap_master_key(&self, master: &MasterKey) -> Vec<u8> {
        self.0
            .seal(master.key.as_bytes(), &Self::master_aad(&master.reference))
    }

    pub fn unwrap_master_key(
        &self,
        reference: KeyRef,
        wrapped: &[u8],
    ) -> Result<MasterKey, IntegrityError> {
        let material = self.0.open(wrapped, &Self::master_aad(&reference))?;
        Ok(MasterKey::new(reference, Key::from_bytes(&material)?))
    }
}

/// A value as it is stored: never plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub is_binary: bool,
    /// The value under the data key.
    pub ciphertext: Vec<u8>,
    /// The data key under the master key.
    pub wrapped_data_key: Vec<u8>,
    pub key: KeyRef,
}

fn value_aad(secret_id: &str, version_id: &VersionId, is_binary: bool) -> Vec<u8> {
    associated_data(
        "rekey/value/v1",
        &[
            secret_id.as_bytes(),
            version_id.as_str().as_bytes(),
            &[u8::from(is_binary)],
        ],
    )
}

/// Seals `value` for one version under a fresh data key.
pub fn seal_value(
    master: &MasterKey,
    secret_id: &str,
    version_id: &VersionId,
    value: &SecretValue,
) -> SealedValue {
    let data_key = Key::generate();
    let is_binary = value.is_binary();
    SealedValue {
        is_binary,
        ciphertext: data_key.seal(
            value.as_bytes(),
            &value_aad(secret_id, version_id, is_binary),
        ),
        wrapped_data_key: master
            .key
            .seal(data_key.as_bytes(), &master.wrap_aad(secret_id, version_id)),
        key: master.reference.clone(),
    }
}

/// The same value's data key wrapped under another master key: the value's
/// ciphertext does not change.
pub fn rewrap_data_key(
    from: &MasterKey,
    to: &MasterKey,
    secret_id: &str,
    version_id: &VersionId,
    sealed: &SealedValue,
) -> Result<SealedValue, IntegrityError> {
    if from.reference != sealed.key {
        return Err(IntegrityError);
    }
    let data_key = from.key.open(
        &sealed.wrapped_data_key,
        &from.wrap_aad(secret_id, version_id),
    )?;
    Ok(SealedValue {
        wrapped_data_key: to.key.seal(&data_key, &to.wrap_aad(secret_id, version_id)),
        key: to.reference.clone(),
        ..sealed.clone()
    })
}

/// Opens a sealed value of one version. `master` must be the version named
/// in `sealed.key`.
pub fn open_value(
    master: &MasterKey,
    secret_id: &str,
    version_id: &VersionId,
    sealed: &SealedValue,
) -> Result<SecretValue, IntegrityError> {
    if master.reference != sealed.key {
        return Err(IntegrityError);
    }
    let data_key = Key::from_bytes(&master.key.open(
        &sealed.wrapped_data_key,
        &master.wrap_aad(secret_id, version_id),
    )?)?;
    let plaintext = data_key.open(
        &sealed.ciphertext,
        &value_aad(secret_id, version_id, sealed.is_binary),
    )?;
    if sealed.is_binary {
        Ok(SecretValue::binary(plaintext.to_vec()))
    } else {
        let text = String::from_utf8(plaintext.to_vec()).map_err(|error| {
            // Do not let the bytes of the rejected value linger.
            drop(Zeroizing::new(error.into_bytes()));
            IntegrityError
        })?;
        Ok(SecretValue::text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cipher's key schedule is wiped when dropped (aes-gcm's own
    /// zeroize feature leaves it: its first round keys are the key). GHASH's
    /// key is wiped by its Drop with the features the manifest turns on; it
    /// has no marker trait to check here.
    #[test]
    fn the_key_schedule_is_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<aes::Aes256>();
    }

    fn master(name: &str, version: u32) -> MasterKey {
        MasterKey::new(
            KeyRef {
                name: KeyName::parse(name).unwrap(),
                version,
            },
            Key::generate(),
        )
    }

    fn version(n: u8) -> VersionId {
        VersionId::parse(&format!("{n:0>32}")).unwrap()
    }

    #[test]
    fn values_round_trip_and_hold_no_plaintext() {
        let key = master("default", 1);
        let value = SecretValue::text("correct horse battery staple");
        let sealed = seal_value(&key, "s-abc123", &version(1), &value);
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"correct"));
        let opened = open_value(&key, "s-abc123", &version(1), &sealed).unwrap();
        assert!(opened.same_as(&value));
        let binary = SecretValue::binary(vec![0, 159, 146, 150]);
        let sealed = seal_value(&key, "s-abc123", &version(2), &binary);
        assert!(
            open_value(&key, "s-abc123", &version(2), &sealed)
                .unwrap()
                .same_as(&binary)
        );
    }

    #[test]
    fn moved_or_changed_ciphertexts_fail() {
        let key = master("default", 1);
        let sealed = seal_value(&key, "s-abc123", &version(1), &SecretValue::text("v"));
        // Another version, another secret, another kind, a flipped byte.
        assert_eq!(
            open_value(&key, "s-abc123", &version(2), &sealed),
            Err(IntegrityError)
        );
        assert_eq!(
            open_value(&key, "s-other1", &version(1), &sealed),
            Err(IntegrityError)
        );
        let mut kind = sealed.clone();
        kind.is_binary = true;
        assert_eq!(
            open_value(&key, "s-abc123", &version(1), &kind),
            Err(IntegrityError)
        );
        for index in [0, 13, sealed.ciphertext.len() - 1] {
            let mut flipped = sealed.clone();
            flipped.ciphertext[index] ^= 1;
            assert_eq!(
                open_value(&key, "s-abc123", &version(1), &flipped),
                Err(IntegrityError)
            );
        }
        let mut wrapped = sealed.clone();
        wrapped.wrapped_data_key[20] ^= 0x80;
        assert_eq!(
            open_value(&key, "s-abc123", &version(1), &wrapped),
            Err(IntegrityError)
        );
        // The wrong master key, or the right name with another version.
        assert!(open_value(&master("default", 1), "s-abc123", &version(1), &sealed).is_err());
        assert!(open_value(&master("default", 2), "s-abc123", &version(1), &sealed).is_err());
    }

    #[test]
    fn rewrapped_values_open_under_the_new_key_only() {
        let (old, new) = (master("default", 1), master("payments", 1));
        let value = SecretValue::text("moving");
        let sealed = seal_value(&old, "s-abc123", &version(1), &value);
        let moved = rewrap_data_key(&old, &new, "s-abc123", &version(1), &sealed).unwrap();
        assert_eq!(moved.ciphertext, sealed.ciphertext);
        assert!(
            open_value(&new, "s-abc123", &version(1), &moved)
                .unwrap()
                .same_as(&value)
        );
        assert!(open_value(&old, "s-abc123", &version(1), &moved).is_err());
        assert!(rewrap_data_key(&new, &old, "s-abc123", &version(1), &sealed).is_err());
    }

    #[test]
    fn master_keys_are_bound_to_name_and_version() {
        let root = RootKey::new(Key::generate());
        let key = master("payments", 3);
        let wrapped = root.wrap_master_key(&key);
        let reference = key.reference.clone();
        let unwrapped = root.unwrap_master_key(reference.clone(), &wrapped).unwrap();
        assert_eq!(unwrapped.key.as_bytes(), key.key.as_bytes());
        let renamed = KeyRef {
            name: KeyName::parse("other").unwrap(),
            ..reference.clone()
        };
        assert!(root.unwrap_master_key(renamed, &wrapped).is_err());
        let bumped = KeyRef {
            version: 4,
            ..reference
        };
        assert!(root.unwrap_master_key(bumped, &wrapped).is_err());
        assert!(format!("{key:?}").contains("<redacted>"));
    }
}
