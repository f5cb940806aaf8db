//! The root key from a passphrase instead of `root.key`: Argon2id (RFC 9106,
//! 64 MiB, 3 passes) over the passphrase and a random salt gives the 32-byte
//! root key, so nothing on disk opens the installation by itself.
//!
//! The salt, the cost parameters and a check value (an HKDF output of the
//! derived key, which tells a wrong passphrase apart at start without
//! revealing the key) are in `rekeyd.toml` under `[root_passphrase]`; none of
//! them is secret. The passphrase is read once per process, in this order:
//! the file descriptor of `--passphrase-fd` (`REKEY_ROOT_PASSPHRASE_FD`),
//! the file of `--passphrase-file` (`REKEY_ROOT_PASSPHRASE_FILE`, mode 0600,
//! e.g. a systemd credential), the `REKEY_ROOT_PASSPHRASE` variable, or a
//! prompt on the terminal without echo. It lives in zeroizing memory and is
//! never logged. A descriptor stays open (closing one by number takes
//! `unsafe`), so child processes inherit it: one other than standard input
//! must be a pipe, which is empty once read, not a file.

use crate::audit::hex;
use crate::crypto::{Key, RootKey};
use crate::keyring::decode_hex;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// The variable a passphrase may come from.
pub const PASSPHRASE_VARIABLE: &str = "REKEY_ROOT_PASSPHRASE";

/// What `rekeyd init --passphrase` accepts as a new passphrase.
const MIN_LENGTH: usize = 12;

/// Argon2id's parameters, stored in `rekeyd.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassphraseSettings {
    /// 16 random bytes, hexadecimal.
    pub salt: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Tells a wrong passphrase at start (hexadecimal; not secret).
    pub check: String,
}

/// A passphrase in zeroizing memory; no `Debug` of its contents.
pub struct Passphrase(Zeroizing<String>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl PassphraseSettings {
    /// Settings for a new installation, and the root key they give with
    /// `passphrase`.
    pub fn create(passphrase: &Passphrase) -> anyhow::Result<(Self, RootKey)> {
        anyhow::ensure!(
            passphrase.0.chars().count() >= MIN_LENGTH,
            "the passphrase must be at least {MIN_LENGTH} characters long"
        );
        let mut salt = [0u8; 16];
        crate::crypto::random_bytes(&mut salt);
        let mut settings = Self {
            salt: hex(&salt),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            check: String::new(),
        };
        let key = settings.stretch(passphrase)?;
        settings.check = check_of(&key);
        Ok((settings, key))
    }

    /// The root key `passphrase` gives, refused unless it matches the
    /// check value.
    pub fn derive(&self, passphrase: &Passphrase) -> anyhow::Result<RootKey> {
        let key = self.stretch(passphrase)?;
        anyhow::ensure!(
            check_of(&key) == self.check,
            "the passphrase does not open this installation"
        );
        Ok(key)
    }

    fn stretch(&self, passphrase: &Passphrase) -> anyhow::Result<RootKey> {
        // Bounds against a configuration (or a backup) that would make the
        // derivation take all memory or forever.
        anyhow::ensure!(
            self.memory_kib <= 4 * 1024 * 1024 && self.iterations <= 100 && self.parallelism <= 64,
            "root_passphrase parameters out of range: at most 4 GiB (memory_kib 4194304), \
             100 iterations and parallelism 64"
        );
        let salt = decode_hex(&self.salt).context("root_passphrase.salt is not hexadecimal")?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|error| anyhow::anyhow!("root_passphrase parameters: {error}"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut derived = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.0.as_bytes(), &salt, derived.as_mut())
            .map_err(|error| anyhow::anyhow!("deriving the root key: {error}"))?;
        let key = Key::from_bytes(derived.as_ref())
            .map_err(|_| anyhow::anyhow!("deriving the root key gave a key of the wrong length"))?;
        Ok(RootKey::new(key))
    }
}

fn check_of(key: &RootKey) -> String {
    hex(&key.derive_subkey(b"rekey/passphrase-check/v1")[..16])
}

/// Where this process gets its passphrase, asked at most once; clones share
/// the answer.
#[derive(Clone, Default)]
pub struct PassphraseSource {
    fd: Option<i32>,
    file: Option<std::path::PathBuf>,
    answer: Arc<Mutex<Option<Arc<Passphrase>>>>,
}

impl std::fmt::Debug for PassphraseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassphraseSource")
            .field("fd", &self.fd)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl PassphraseSource {
    /// Drops the answer kept for later asks (a serving process needs it
    /// once, to derive the root key).
    pub fn forget(&self) {
        if let Ok(mut answer) = self.answer.lock() {
            *answer = None;
        }
    }

    pub fn new(fd: Option<i32>, file: Option<std::path::PathBuf>) -> Self {
        Self {
            fd,
            file,
            answer: Arc::default(),
        }
    }

    /// The passphrase, from the first source that has one. `purpose` goes
    /// into the prompt; `confirm` asks twice on a terminal (a new one).
    pub fn get(&self, purpose: &str, confirm: bool) -> anyhow::Result<Arc<Passphrase>> {
        let mut answer = self
            .answer
            .lock()
            .map_err(|_| anyhow::anyhow!("the passphrase lock is poisoned"))?;
        if let Some(known) = answer.as_ref() {
            return Ok(known.clone());
        }
        let passphrase = Arc::new(self.read(purpose, confirm)?);
        anyhow::ensure!(!passphrase.0.is_empty(), "the passphrase is empty");
        *answer = Some(passphrase.clone());
        Ok(passphrase)
    }

    fn read(&self, purpose: &str, confirm: bool) -> anyhow::Result<Passphrase> {
        if let Some(fd) = self.fd {
            // A descriptor stays open here (closing one by number takes
            // `unsafe`) and every `exec:` rotator's program inherits it: a
            // pipe is empty once read, but a file it could read again from
            // the start. Standard input is the rotators' own pipe.
            let path = format!("/dev/fd/{fd}");
            if fd != 0 && std::fs::metadata(&path).is_ok_and(|meta| meta.is_file()) {
                anyhow::bail!(
                    "file descriptor {fd} is a file, which would stay open in rekeyd and be \
                     inherited by every exec: rotator's program: give the passphrase on a pipe \
                     (--passphrase-fd {fd} {fd}< <(cat FILE)) or standard input, or name the file \
                     with --passphrase-file FILE"
                );
            }
            // /dev/fd opens the descriptor without taking it over unsafely.
            let file = std::fs::File::open(format!("/dev/fd/{fd}"))
                .with_context(|| format!("reading the passphrase from file descriptor {fd}"))?;
            let mut text = read_bounded(file)
                .with_context(|| format!("reading the passphrase from file descriptor {fd}"))?;
            trim_line_end(&mut text);
            return Ok(Passphrase(text));
        }
        if let Some(file) = &self.file {
            let bytes = crate::pki::read_private(file, "passphrase file")?;
            let mut text = Zeroizing::new(
                std::str::from_utf8(&bytes)
                    .map_err(|_| {
                        anyhow::anyhow!("passphrase file {} is not UTF-8", file.display())
                    })?
                    .to_owned(),
            );
            trim_line_end(&mut text);
            return Ok(Passphrase(text));
        }
        if let Some(value) = std::env::var_os(PASSPHRASE_VARIABLE) {
            let text = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{PASSPHRASE_VARIABLE} is not valid UTF-8"))?;
            return Ok(Passphrase(Zeroizing::new(text)));
        }
        let first = prompt(&format!("{purpose}: ")).map_err(|error| {
            anyhow::anyhow!(
                "{error}; this installation's root key comes from a passphrase: give it on a \
                 terminal, with --passphrase-fd N or --passphrase-file FILE, or in \
                 {PASSPHRASE_VARIABLE}"
            )
        })?;
        if confirm {
            let again = prompt("the same passphrase again: ")?;
            anyhow::ensure!(first.0 == again.0, "the two passphrases differ");
        }
        Ok(first)
    }
}

fn trim_line_end(text: &mut Zeroizing<String>) {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
}

/// Asks on the controlling terminal with echo off, restoring it after.
fn prompt(question: &str) -> anyhow::Result<Passphrase> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| anyhow::anyhow!("there is no terminal to ask for the passphrase"))?;
    let saved = tcgetattr(&tty).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Flush, &quiet).context("turning echo off")?;
    let mut writer = &tty;
    let asked = writer
        .write_all(question.as_bytes())
        .and_then(|()| writer.flush());
    let read = asked
        .map_err(anyhow::Error::from)
        .and_then(|()| read_line_bounded(&tty));
    let restored = tcsetattr(&tty, OptionalActions::Flush, &saved);
    let line = read.context("reading the passphrase")?;
    restored.context("restoring the terminal's settings")?;
    Ok(Passphrase(line))
}

/// One line of `reader` without its line end, a byte at a time into room
/// for the longest passphrase (a buffered reader, or a growing string,
/// would leave copies unwiped).
fn read_line_bounded(mut reader: impl std::io::Read) -> anyhow::Result<Zeroizing<String>> {
    // The longest passphrase, and its line end.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE_BYTES + 2));
    let mut byte = Zeroizing::new([0u8; 1]);
    loop {
        match reader.read(&mut byte[..]) {
            Ok(0) => break,
            Ok(_) => {}
            // A signal the process handles (SIGWINCH, say) is not the end.
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        }
        anyhow::ensure!(
            bytes.len() < MAX_PASSPHRASE_BYTES + 2,
            "the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes"
        );
        bytes.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    let mut line = match std::str::from_utf8(&bytes) {
        Ok(text) => Zeroizing::new(text.to_owned()),
        Err(_) => anyhow::bail!("the passphrase is not UTF-8"),
    };
    trim_line_end(&mut line);
    anyhow::ensure!(
        line.len() <= MAX_PASSPHRASE_BYTES,
        "the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes"
    );
    Ok(line)
}

/// The most bytes a passphrase read from a descriptor may have.
const MAX_PASSPHRASE_BYTES: usize = 4096;

/// All of `reader` as text, into a buffer allocated once (no copy of the
/// passphrase is left in memory a growing buffer gave back); refused when
/// longer than [`MAX_PASSPHRASE_BYTES`] or not UTF-8.
fn read_bounded(mut reader: impl std::io::Read) -> anyhow::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE_BYTES));
    let mut chunk = Zeroizing::new([0u8; 512]);
    loop {
        let read = reader.read(&mut chunk[..])?;
        if read == 0 {
            break;
        }
        anyhow::ensure!(
            bytes.len() + read <= MAX_PASSPHRASE_BYTES,
            "the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes"
        );
        bytes.extend_from_slice(&chunk[..read]);
    }
    let bytes = std::mem::take(&mut *bytes);
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(error) => {
            // Wiped, not dropped as it is.
            drop(Zeroizing::new(error.into_bytes()));
            anyhow::bail!("the passphrase is not UTF-8")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompted_line_ends_at_its_line_end_and_is_bounded() {
        let line = read_line_bounded(&b"open sesame\r\nnext line"[..]).unwrap();
        assert_eq!(line.as_str(), "open sesame");
        let mut longest = vec![b'x'; MAX_PASSPHRASE_BYTES];
        longest.extend_from_slice(b"\r\n");
        let line = read_line_bounded(&longest[..]).unwrap();
        assert_eq!(line.len(), MAX_PASSPHRASE_BYTES);
        assert_eq!(
            read_line_bounded(&b"no end"[..]).unwrap().as_str(),
            "no end"
        );
        let long = vec![b'x'; MAX_PASSPHRASE_BYTES + 1];
        assert!(read_line_bounded(&long[..]).is_err());
    }

    #[test]
    fn a_passphrase_is_read_whole_bounded_and_as_text() {
        let text = read_bounded(&b"correct horse battery staple\n"[..]).unwrap();
        assert_eq!(text.as_str(), "correct horse battery staple\n");
        let long = vec![b'x'; MAX_PASSPHRASE_BYTES + 1];
        assert!(read_bounded(&long[..]).is_err());
        assert!(read_bounded(&[0xff, 0xfe][..]).is_err());
    }

    fn phrase(text: &str) -> Passphrase {
        Passphrase(Zeroizing::new(text.to_owned()))
    }

    #[test]
    fn the_same_passphrase_gives_the_same_key_and_another_is_refused() {
        let (mut settings, key) =
            PassphraseSettings::create(&phrase("correct horse battery")).unwrap();
        // Cheap parameters keep the test quick; the logic is the same.
        settings.memory_kib = 64;
        settings.iterations = 1;
        let key = {
            let again = settings.stretch(&phrase("correct horse battery")).unwrap();
            settings.check = check_of(&again);
            drop(key);
            again
        };
        let derived = settings.derive(&phrase("correct horse battery")).unwrap();
        assert_eq!(
            derived.derive_subkey(b"t").as_ref(),
            key.derive_subkey(b"t").as_ref()
        );
        let error = settings
            .derive(&phrase("correct horse batterz"))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the passphrase does not open this installation"
        );
        assert!(PassphraseSettings::create(&phrase("short")).is_err());
        assert_eq!(
            format!("{:?}", phrase("visible?")),
            "Passphrase(<redacted>)"
        );
    }
}
