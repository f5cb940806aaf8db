//! Names with rules: secret names, stage labels, version ids and master-key
//! names. Each is a newtype that can only be built through `parse`, so a value
//! that reached a handler or the store has already been checked, and a name
//! cannot be passed where a version id is expected.
//!
//! The error messages are meant for the person who typed the value.

use std::fmt;

/// Why a name, stage, version id or key name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

/// A secret's name: 1-512 characters of `A-Za-z0-9/_+=.@-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

/// A stage label on a version, such as `CURRENT`: 1-256 characters of
/// `A-Za-z0-9_.-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stage(String);

/// A version id: the client request token that made the version, 32-64
/// characters of `A-Za-z0-9_-` (a UUID qualifies).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId(String);

/// The name of a master key: 1-64 characters of `A-Za-z0-9_.-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

pub const MAX_SECRET_NAME_CHARS: usize = 512;

/// The start of `text` as a message quotes it: at most 40 characters,
/// `…` and the whole length after them when there are more. An error
/// repeats what it refuses, and an unbounded text would make an unbounded
/// message (and audit event).
pub fn quoted_start(text: &str) -> String {
    const SHOWN: usize = 40;
    let start: String = text.chars().take(SHOWN).collect();
    if start.len() == text.len() {
        return format!("{text:?}");
    }
    format!("{start:?}… ({} characters)", text.chars().count())
}
pub const MAX_STAGE_CHARS: usize = 256;
pub const MAX_STAGES_PER_VERSION: usize = 20;
/// Labels across all versions of one secret: bounded, so that a secret's
/// description (every label with its version) stays far below a message's
/// 4 MiB, whoever lists it.
pub const MAX_STAGES_PER_SECRET: usize = 100;

fn check(
    what: &str,
    value: &str,
    lengths: std::ops::RangeInclusive<usize>,
    allowed: impl Fn(char) -> bool,
    allowed_text: &str,
) -> Result<(), NameError> {
    let length = value.chars().count();
    if length == 0 {
        return Err(NameError(format!("{what} is empty")));
    }
    if !lengths.contains(&length) {
        return Err(NameError(format!(
            "{what} is {length} characters long; it must be {}-{} characters",
            lengths.start(),
            lengths.end()
        )));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(NameError(format!(
            "{what} contains {bad:?}; only {allowed_text} are allowed"
        )));
    }
    Ok(())
}

impl SecretName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check(
            "secret name",
            value,
            1..=MAX_SECRET_NAME_CHARS,
            |c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c),
            "letters, digits and /_+=.@-",
        )?;
        Ok(Self(value.to_owned()))
    }
}

impl Stage {
    pub const CURRENT: &'static str = "CURRENT";
    pub const PENDING: &'static str = "PENDING";
    pub const PREVIOUS: &'static str = "PREVIOUS";

    pub fn parse(value: &str) -> Result<Self, NameError> {
        check(
            "stage",
            value,
            1..=MAX_STAGE_CHARS,
            |c| c.is_ascii_alphanumeric() || "_.-".contains(c),
            "letters, digits and _.-",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn current() -> Self {
        Self(Self::CURRENT.to_owned())
    }

    pub fn previous() -> Self {
        Self(Self::PREVIOUS.to_owned())
    }

    pub fn is_current(&self) -> bool {
        self.0 == Self::CURRENT
    }
}

impl VersionId {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check(
            "version id",
            value,
            32..=64,
            |c| c.is_ascii_alphanumeric() || "_-".contains(c),
            "letters, digits and _-",
        )?;
        Ok(Self(value.to_owned()))
    }

    /// A fresh random version id, for writes without a client request token.
    pub fn random() -> Self {
        Self(uuid_v4())
    }
}

impl KeyName {
    pub const DEFAULT: &'static str = "default";

    pub fn parse(value: &str) -> Result<Self, NameError> {
        check(
            "master key name",
            value,
            1..=64,
            |c| c.is_ascii_alphanumeric() || "_.-".contains(c),
            "letters, digits and _.-",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn default_key() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// A random (version 4) UUID from the OS random generator, formatted the
/// usual way. Kept here so that `rekey-shared` needs no UUID crate.
fn uuid_v4() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    getrandom_fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // 8-4-4-4-12 hex digits; every request makes one (its request id), so
    // it is written in one allocation.
    let mut text = String::with_capacity(36);
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

fn getrandom_fill(bytes: &mut [u8]) {
    use rand::TryRngCore;
    // The OS generator failing is not something a caller can recover from.
    #[allow(clippy::expect_used)]
    rand::rngs::OsRng
        .try_fill_bytes(bytes)
        .expect("the operating system's random generator failed");
}

macro_rules! string_newtype {
    ($($name:ident),*) => {$(
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

string_newtype!(SecretName, Stage, VersionId, KeyName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("prod/db/orders", Ok(())),
            ("a", Ok(())),
            ("user+x=y.z@host-1_2", Ok(())),
            ("", Err("secret name is empty")),
            ("has space", Err("contains ' '")),
            ("bad*char", Err("contains '*'")),
            ("é", Err("contains 'é'")),
        ];
        for (input, expected) in cases {
            match (SecretName::parse(input), expected) {
                (Ok(_), Ok(())) => {}
                (Err(error), Err(fragment)) => {
                    assert!(error.to_string().contains(fragment), "{input}: {error}")
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        let long = "a".repeat(513);
        let error = SecretName::parse(&long).unwrap_err().to_string();
        assert!(error.contains("513 characters"), "{error}");
        assert!(SecretName::parse(&"a".repeat(512)).is_ok());
    }

    #[test]
    fn version_ids() {
        assert!(VersionId::parse("short").is_err());
        assert!(VersionId::parse(&"x".repeat(65)).is_err());
        assert!(VersionId::parse("0123456789abcdef0123456789abcdef").is_ok());
        let random = VersionId::random();
        assert_eq!(random.as_str().len(), 36);
        assert!(VersionId::parse(random.as_str()).is_ok());
        assert_ne!(random, VersionId::random());
        // A UUID version 4: 8-4-4-4-12 lowercase hex, version 4, variant 10.
        let text = random.as_str().as_bytes();
        for (index, &char) in text.iter().enumerate() {
            match index {
                8 | 13 | 18 | 23 => assert_eq!(char, b'-'),
                14 => assert_eq!(char, b'4'),
                19 => assert!(b"89ab".contains(&char), "{random}"),
                _ => assert!(char.is_ascii_hexdigit() && !char.is_ascii_uppercase()),
            }
        }
    }

    #[test]
    fn stages_and_keys() {
        assert!(Stage::parse("CURRENT").unwrap().is_current());
        assert!(Stage::parse("my-label.1").is_ok());
        assert!(Stage::parse("no/slash").is_err());
        assert!(KeyName::parse("default").is_ok());
        assert!(KeyName::parse("a/b").is_err());
    }
}
