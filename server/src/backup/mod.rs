//! `rekeyd backup FILE`: an online, consistent copy of an installation in
//! one file, and (`restore`) a new installation made from it.
//!
//! The file is a SQLite database: the installation's database as of one
//! moment (`VACUUM INTO`, while the server goes on serving), plus two
//! tables of its own. `backup_info` says what it is (format, time, source);
//! `backup_files` holds the installation's other files (configuration, CA,
//! server certificate and key, CRLs), each sealed with AES-256-GCM under a
//! key derived from the root key. Values stay as they are stored, sealed
//! under master keys that the root key wraps; the root key itself is never
//! in the file. A backup is therefore useless without the root key, and
//! restoring one needs it. The description names the files and carries a
//! MAC of each table (`contents`), so restore proves the whole backup, not
//! only the values and the audit chain.

mod contents;
mod restore;

pub use restore::{Restored, restore};

use crate::audit::AuditEvent;
use crate::config::{self, Loaded};
use crate::crypto::{IntegrityError, Key, RootKey};
use crate::installation::{self, Opened};
use crate::pki::{CA_CERTIFICATE, CA_KEY};
use anyhow::Context;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The layout of the file; restore refuses formats it does not know.
/// Format 2 added the files' names and the tables' MACs to the
/// description; restore still reads format 1, whose tables it cannot prove.
const FORMAT: i64 = 2;
const FIRST_FORMAT: i64 = 1;

/// Names of the installation files inside a backup.
const CONFIG: &str = "rekeyd.toml";
const SERVER_CERTIFICATE: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
const DATABASE_CA: &str = "database-ca.pem";
/// The sealed copy of `backup_info`.
const INFO_FILE: &str = "backup_info";
/// The `backup_info` entry naming the installation files in the backup,
/// each with its MAC (`name:mac`), sorted and separated by commas.
const FILES_INFO: &str = "files";

/// `backup_info` as one text, its entries sorted, for comparing the sealed
/// copy with the clear one.
fn info_text<K: AsRef<str>, V: AsRef<str>>(info: &[(K, V)]) -> String {
    let mut lines: Vec<String> = info
        .iter()
        .map(|(key, value)| format!("{}={}", key.as_ref(), value.as_ref()))
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The `backup_info` entry with the passphrase parameters (TOML), when the
/// root key comes from a passphrase: restore needs them before it can open
/// anything sealed.
const PASSPHRASE_INFO: &str = "root_passphrase";

/// What a backup holds, or what a restore brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub secrets: i64,
    pub versions: i64,
    pub audit_events: i64,
    /// The sequence number of the newest audit event.
    pub audit_head: i64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} secrets, {} versions, {} audit events (through event {})",
            self.secrets, self.versions, self.audit_events, self.audit_head
        )
    }
}

/// Seals and opens the installation files of a backup, with a key derived
/// from the root key for this purpose only.
struct FileSealer(Key);

impl FileSealer {
    fn new(root: &RootKey) -> Self {
        let derived = root.derive_subkey(b"rekey/backup-files/v1");
        #[allow(clippy::expect_used)] // derive_subkey returns exactly one key's length
        Self(Key::from_bytes(derived.as_ref()).expect("a derived key is 32 bytes"))
    }

    fn aad(name: &str) -> Vec<u8> {
        [b"rekey/backup-file/v1\0".as_slice(), name.as_bytes()].concat()
    }

    fn seal(&self, name: &str, contents: &[u8]) -> Vec<u8> {
        self.0.seal(contents, &Self::aad(name))
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, IntegrityError> {
        self.0.open(sealed, &Self::aad(name))
    }
}

/// The installation files a backup carries: (name in the backup, path).
/// The CA key may be absent (a CA of the operator's own); the rest must be
/// there.
fn installation_files(loaded: &Loaded) -> Vec<(String, PathBuf, bool)> {
    let tls = &loaded.config.tls;
    let mut files = vec![
        (CA_CERTIFICATE.to_owned(), loaded.path(&tls.client_ca), true),
        (CA_KEY.to_owned(), loaded.dir.join(CA_KEY), false),
        (
            SERVER_CERTIFICATE.to_owned(),
            loaded.path(&tls.certificate),
            true,
        ),
        (SERVER_KEY.to_owned(), loaded.path(&tls.private_key), true),
    ];
    for (index, crl) in tls.crl_files.iter().enumerate() {
        files.push((crl_name(index), loaded.path(crl), true));
    }
    for (index, webhook) in loaded.config.notifications.webhooks.iter().enumerate() {
        files.push((
            webhook_secret_name(index),
            loaded.path(&webhook.secret_file),
            true,
        ));
        if let Some(ca_file) = &webhook.ca_file {
            files.push((webhook_ca_name(index), loaded.path(ca_file), true));
        }
    }
    if let Some(ca_file) = &loaded.config.rotation.database_ca_file {
        files.push((DATABASE_CA.to_owned(), loaded.path(ca_file), true));
    }
    files
}

fn crl_name(index: usize) -> String {
    format!("crl-{index}.pem")
}

fn webhook_secret_name(index: usize) -> String {
    format!("webhook-{index}.secret")
}

fn webhook_ca_name(index: usize) -> String {
    format!("webhook-{index}-ca.pem")
}

/// Writes a backup of the installation `loaded` describes to `out`, which
/// must not exist. The server may be running: the copy is of one moment,
/// and once the file is written, the backup is an audit event in the log.
pub async fn backup(loaded: &Loaded, out: &Path) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        !out.exists(),
        "{} exists; choose another file or remove it",
        out.display()
    );
    let mut files = Vec::new();
    for (name, path, required) in installation_files(loaded) {
        match std::fs::read(&path) {
            Ok(contents) => files.push((name, Zeroizing::new(contents))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        }
    }
    files.push((
        CONFIG.to_owned(),
        // As the file says: the environment's overrides are this shell's.
        Zeroizing::new(config::toml_of(&loaded.file_config).into_bytes()),
    ));

    let Opened { store, keyring } = installation::open(loaded).await?;
    let sealer = FileSealer::new(keyring.root());
    let contents_key = contents::ContentsKey::new(keyring.root());
    drop(keyring);
    let partial = partial_path(out)?;
    let mut created = false;
    // Ctrl-C or SIGTERM while the copy is written ends the backup as a
    // failure does, taking the partial copy away (its ciphertexts would
    // outlive the erasure of secrets purged later). Once it is published,
    // the backup goes on to its event.
    let interrupted = crate::signals::stop(false)?;
    let written = async {
        create_partial(&partial)?;
        created = true;
        store
            .can_snapshot()
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        store
            .snapshot_into(&partial)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let mut names: Vec<String> = files
            .iter()
            .map(|(name, contents)| format!("{name}:{}", contents_key.file_mac(name, contents)))
            .collect();
        names.sort_unstable();
        let snapshot = partial.clone();
        let macs =
            tokio::task::spawn_blocking(move || contents::macs(&snapshot, &contents_key)).await??;
        let source = std::fs::canonicalize(&loaded.dir).unwrap_or_else(|_| loaded.dir.clone());
        let mut info = vec![
            ("format".to_owned(), FORMAT.to_string()),
            (
                "created_at".to_owned(),
                rekey_shared::time::now_millis().to_string(),
            ),
            (
                "rekeyd_version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            ("source".to_owned(), source.display().to_string()),
            (FILES_INFO.to_owned(), names.join(",")),
        ];
        info.extend(macs);
        if let Some(settings) = &loaded.config.root_passphrase {
            info.push((PASSPHRASE_INFO.to_owned(), toml::to_string(settings)?));
        }
        // What backup_info says in the clear, sealed too: restore checks
        // that the two agree.
        let mut files = files;
        files.push((
            INFO_FILE.to_owned(),
            Zeroizing::new(info_text(&info).into_bytes()),
        ));
        finish_file(&partial, out, &sealer, &files, &info).await
    };
    let written = tokio::select! {
        written = written => written,
        () = interrupted => Err(anyhow::anyhow!("interrupted by a signal")),
    };
    let finished = async {
        let summary = written?;
        // The event follows the file: the log says a backup was written
        // only once it was (and the event is not in the backup). A backup
        // the log cannot say was written is not left behind.
        let recorded = store
            .record(&AuditEvent::local(
                "backup:Create",
                "*",
                &format!("backup written to {}", out.display()),
            ))
            .await;
        if let Err(error) = recorded {
            let _ = std::fs::remove_file(out);
            anyhow::bail!("the audit log cannot be written ({error}); the backup was removed");
        }
        Ok(summary)
    }
    .await;
    store.close().await;
    // Only a file this backup made is removed.
    if finished.is_err() && created {
        let _ = std::fs::remove_file(&partial);
    }
    finished
}

/// A name beside `out` for the file while it is being written, which no
/// one can guess ahead.
fn partial_path(out: &Path) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} is not a file name", out.display()))?;
    let mut partial = name.to_owned();
    partial.push(format!(".partial-{}", rekey_shared::VersionId::random()));
    Ok(out.with_file_name(partial))
}

/// Creates the empty file the snapshot goes into, readable by its owner
/// only; it must not exist. (SQLite writes a snapshot into an existing
/// empty file too: one someone else made beside `out`, in a shared
/// directory, would have been theirs, with their mode, and published as
/// the backup.)
fn create_partial(partial: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(partial)
        .map(drop)
        .with_context(|| format!("creating {}", partial.display()))
}

/// Adds the backup's own tables to the snapshot at `partial`, reads its
/// summary, and moves it to `out` (never over an existing file).
async fn finish_file(
    partial: &Path,
    out: &Path,
    sealer: &FileSealer,
    files: &[(String, Zeroizing<Vec<u8>>)],
    info: &[(String, String)],
) -> anyhow::Result<Summary> {
    let mut connection = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(partial)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full),
    )
    .await
    .with_context(|| format!("opening {}", partial.display()))?;
    let mut tx = connection.begin().await?;
    sqlx::query("CREATE TABLE backup_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE backup_files (name TEXT PRIMARY KEY, sealed BLOB NOT NULL)")
        .execute(&mut *tx)
        .await?;
    for (key, value) in info {
        sqlx::query("INSERT INTO backup_info (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    for (name, contents) in files {
        sqlx::query("INSERT INTO backup_files (name, sealed) VALUES (?, ?)")
            .bind(name)
            .bind(sealer.seal(name, contents))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let summary = summarize(&mut connection).await?;
    connection.close().await?;
    publish(partial, out)?;
    Ok(summary)
}

/// Moves the finished file to `out`, never over an existing file: a hard
/// link fails if `out` exists; where links are not supported (some network
/// and FAT file systems), `out` is created empty first (failing if it
/// exists) and the file renamed over it.
fn publish(partial: &Path, out: &Path) -> anyhow::Result<()> {
    match std::fs::hard_link(partial, out) {
        Ok(()) => {
            if let Err(error) = std::fs::remove_file(partial) {
                tracing::warn!(file = %partial.display(), %error, "cannot remove the temporary copy");
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(error).with_context(|| format!("{} exists; nothing was replaced", out.display()))
        }
        Err(_) => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| format!("writing {}", out.display()))?;
            if let Err(error) = std::fs::rename(partial, out) {
                // The empty file made to claim the name goes: it would
                // refuse every later backup of that name.
                let _ = std::fs::remove_file(out);
                return Err(error).with_context(|| format!("writing {}", out.display()));
            }
            Ok(())
        }
    }?;
    // The name is durable before the log says the backup was written; a
    // backup it cannot make durable is not left behind.
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent).inspect_err(|_| {
        let _ = std::fs::remove_file(out);
    })
}

/// Syncs the directory `dir` (the names in it) to disk. A file system
/// that cannot sync a directory (some shared folders and 9p mounts say
/// EINVAL) is taken at its word: there is nothing more to do there.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::File::open(dir).and_then(|dir| dir.sync_all()) {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        synced => synced.with_context(|| format!("syncing {}", dir.display())),
    }
}

/// Counts what a database (an installation's or a backup's) holds.
async fn summarize(connection: &mut SqliteConnection) -> anyhow::Result<Summary> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM secrets) AS secrets, \
                (SELECT count(*) FROM versions) AS versions, \
                (SELECT count(*) FROM audit_events) AS events, \
                (SELECT coalesce(max(seq), 0) FROM audit_events) AS head",
    )
    .fetch_one(&mut *connection)
    .await?;
    Ok(Summary {
        secrets: row.get("secrets"),
        versions: row.get("versions"),
        audit_events: row.get("events"),
        audit_head: row.get("head"),
    })
}
