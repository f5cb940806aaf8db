//! `rekeyd restore FILE`: a new installation from a backup. Checked before
//! anything is written: the format, that the root key opens the backup's
//! files, that the clear description matches its sealed copy, that the
//! files it names are there as they were written (their MACs). Then the
//! database is copied first, and its tables and schema proven on the copy
//! (their MACs) before anything else is written; then that every file the
//! configuration names is there. Once written, the new installation is
//! opened and proven: every master key unwraps, every version's value
//! opens, the audit chain verifies. Any failure removes what was written.

use super::contents::{self, ContentsKey};
use super::{
    CONFIG, DATABASE_CA, FILES_INFO, FIRST_FORMAT, FORMAT, FileSealer, INFO_FILE, PASSPHRASE_INFO,
    SERVER_CERTIFICATE, SERVER_KEY, Summary, crl_name, info_text, sync_dir, webhook_ca_name,
    webhook_secret_name,
};
use crate::audit::{self, AuditEvent};
use crate::config::{CONFIG_FILE, Config, Loaded};
use crate::crypto::{self, RootKey};
use crate::installation::{self, Opened};
use crate::keyring::read_root_key;
use crate::passphrase::{PassphraseSettings, PassphraseSource};
use crate::pki::{CA_CERTIFICATE, CA_KEY};
use crate::store::{Cursor, SecretQuery};
use anyhow::Context;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// What a restore brought back.
#[derive(Debug)]
pub struct Restored {
    pub summary: Summary,
    /// The backup proved every table and its schema (format 2 on); one of
    /// format 1 proves only its values and audit chain.
    pub tables_proven: bool,
    /// The programs of `exec` rotators kept inside the installation
    /// (`rotators/ldap.sh`): a backup does not hold them, and a run that
    /// needs one fails until it is copied there.
    pub programs: Vec<PathBuf>,
}

/// Restores the backup `file` into `dir`, which must be empty or absent,
/// with the root key of the installation it was made from: its
/// `root_key_file` (copied into the new installation), or, for an
/// installation whose root key comes from a passphrase, that passphrase.
///
/// A backup of format 1 cannot prove its tables beyond the values and the
/// audit chain; it is restored only with `accept_unproven` (the operator
/// trusts where it was kept), else refused before anything is written.
pub async fn restore(
    file: &Path,
    dir: &Path,
    root_key_file: Option<&Path>,
    passphrase: &PassphraseSource,
    accept_unproven: bool,
) -> anyhow::Result<Restored> {
    refuse_installation(dir)?;
    let (info, sealed) = read_backup(file).await?;
    let (root, root_text) = match root_key_file {
        Some(path) => {
            let root = read_root_key(path)?;
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading root key {}", path.display()))?,
            );
            (root, Some(text))
        }
        None => {
            let settings: PassphraseSettings = info
                .get(PASSPHRASE_INFO)
                .map(|text| toml::from_str(text))
                .transpose()
                .context("the passphrase parameters in the backup do not parse")?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "give --root-key-file: the backed-up installation keeps its root key \
                         in a file (root.key)"
                    )
                })?;
            let phrase = passphrase.get(
                &format!(
                    "passphrase of the backed-up installation in {}",
                    file.display()
                ),
                false,
            )?;
            (settings.derive(&phrase)?, None)
        }
    };
    let files = open_files(file, &sealed, &FileSealer::new(&root))?;
    let sealed_info = files
        .get(INFO_FILE)
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    let clear_info: Vec<(&String, &String)> = info.iter().collect();
    anyhow::ensure!(
        sealed_info.as_deref() == Some(info_text(&clear_info).as_str()),
        "the description of {} (backup_info) was changed after it was written",
        file.display()
    );
    let format = info.get("format").and_then(|format| format.parse().ok());
    let tables_proven = format != Some(FIRST_FORMAT);
    anyhow::ensure!(
        tables_proven || accept_unproven,
        "{} is a backup of format 1, made before backups proved their tables: its policy, \
         certificates and settings cannot be proven unchanged. Restore it only if you trust \
         where it was kept, with --accept-unproven-tables",
        file.display()
    );
    let key = ContentsKey::new(&root);
    if tables_proven {
        prove_files(file, &info, &files, &key)?;
    }
    // From the first file written, a signal (Ctrl-C, SIGTERM) ends the
    // restore as a failure does, taking back what it
    // wrote: an installation half written, its values never proven, must
    // not be left to serve.
    // Not SIGHUP: a restore under `nohup` goes on.
    let interrupted = crate::signals::stop(false)?;
    let mut written = Written::new(dir)?;
    // What no signal handler can take back (SIGKILL, SIGHUP, a power cut)
    // leaves this mark, and no command opens a marked installation.
    written.mark_unfinished()?;
    let restoring = async {
        // The tables are proven on the copy, as it is restored: not on the
        // file, which could change under the restore, or come with a
        // write-ahead log of other pages beside it.
        let database = written.database("rekey.db", file)?;
        if tables_proven {
            prove_tables(file, &database, &info, key).await?;
        }
        let config = write_files(&mut written, &files, root_text.as_ref())?;
        let programs: Vec<PathBuf> = config
            .rotation
            .exec
            .values()
            .filter(|program| program.in_installation())
            .map(|program| program.command.clone())
            .collect();
        drop_backup_tables(&database).await?;
        let loaded = Loaded {
            file_config: config.clone(),
            config,
            dir: dir.to_owned(),
            passphrase: passphrase.clone(),
        };
        prove(&loaded, root, &info)
            .await
            .map(|summary| (summary, programs))
    };
    let restored = tokio::select! {
        restored = restoring => restored,
        () = interrupted => Err(anyhow::anyhow!("interrupted by a signal")),
    };
    match restored {
        Ok((summary, programs)) => {
            written.finish()?;
            Ok(Restored {
                summary,
                tables_proven,
                programs,
            })
        }
        Err(error) => Err(error.context(format!(
            "restoring {}; nothing was left in {}",
            file.display(),
            dir.display()
        ))),
    }
}

fn refuse_installation(dir: &Path) -> anyhow::Result<()> {
    crate::installation::refuse_unfinished_restore(dir)?;
    match std::fs::read_dir(dir) {
        Ok(mut entries) => anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty; restore makes a new installation in an empty or new directory",
            dir.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    }
    Ok(())
}

type Files = HashMap<String, Zeroizing<Vec<u8>>>;

/// The backup's description and its installation files, still sealed.
async fn read_backup(
    file: &Path,
) -> anyhow::Result<(HashMap<String, String>, Vec<(String, Vec<u8>)>)> {
    anyhow::ensure!(file.is_file(), "{} is not a file", file.display());
    let not_a_backup = || format!("{} is not a rekeyd backup", file.display());
    let mut connection = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(file)
            .read_only(true)
            .immutable(true),
    )
    .await
    .with_context(not_a_backup)?;
    let info: HashMap<String, String> = sqlx::query("SELECT key, value FROM backup_info")
        .fetch_all(&mut connection)
        .await
        .with_context(not_a_backup)?
        .iter()
        .map(|row| Ok((row.try_get("key")?, row.try_get("value")?)))
        .collect::<sqlx::Result<_>>()
        .with_context(not_a_backup)?;
    let format: i64 = info
        .get("format")
        .and_then(|format| format.parse().ok())
        .with_context(not_a_backup)?;
    anyhow::ensure!(
        (FIRST_FORMAT..=FORMAT).contains(&format),
        "{} is a backup of format {format}; this rekeyd reads formats {FIRST_FORMAT} to {FORMAT}",
        file.display()
    );
    let sealed = sqlx::query("SELECT name, sealed FROM backup_files")
        .fetch_all(&mut connection)
        .await
        .with_context(not_a_backup)?
        .iter()
        .map(|row| Ok((row.try_get("name")?, row.try_get("sealed")?)))
        .collect::<sqlx::Result<_>>()
        .with_context(not_a_backup)?;
    connection.close().await?;
    Ok((info, sealed))
}

/// Opens the backup's installation files with the root key's sealer.
fn open_files(
    file: &Path,
    sealed: &[(String, Vec<u8>)],
    sealer: &FileSealer,
) -> anyhow::Result<Files> {
    let mut files = Files::new();
    let mut unopened = Vec::new();
    for (name, sealed) in sealed {
        match sealer.open(name, sealed) {
            Ok(contents) => {
                files.insert(name.clone(), contents);
            }
            Err(_) => unopened.push(name.as_str()),
        }
    }
    // None opens: another root key. Some do: this key is the backup's,
    // and what does not open was damaged since (a bit flipped, a bad copy).
    anyhow::ensure!(
        unopened.is_empty() || !files.is_empty(),
        "this root key does not open {}: the backup was made by an installation with another \
         root key",
        file.display()
    );
    anyhow::ensure!(
        unopened.is_empty(),
        "{} is damaged: this root key opens the backup, but not {} in it (restore from another \
         copy of the backup)",
        file.display(),
        unopened.join(", ")
    );
    for required in [CONFIG, CA_CERTIFICATE, SERVER_CERTIFICATE, SERVER_KEY] {
        anyhow::ensure!(
            files.contains_key(required),
            "{} lacks {required}",
            file.display()
        );
    }
    Ok(files)
}

/// Checks that the backup holds the installation files its description
/// names, each as it was written (its MAC), and no other: a file taken out,
/// or one of another backup put in its place, is refused before anything
/// is written.
fn prove_files(
    file: &Path,
    info: &HashMap<String, String>,
    files: &Files,
    key: &ContentsKey,
) -> anyhow::Result<()> {
    let named: Vec<(&str, &str)> = info
        .get(FILES_INFO)
        .map(|entries| {
            entries
                .split(',')
                .filter_map(|entry| entry.split_once(':'))
                .collect()
        })
        .unwrap_or_default();
    for (name, mac) in &named {
        let contents = files.get(*name).ok_or_else(|| {
            anyhow::anyhow!("{} lacks {name}, which it was written with", file.display())
        })?;
        anyhow::ensure!(
            key.file_mac(name, contents) == *mac,
            "{} was changed after it was written: its {name} is not the one it was written with",
            file.display()
        );
    }
    if let Some(extra) = files
        .keys()
        .find(|name| *name != INFO_FILE && !named.iter().any(|(named, _)| named == name))
    {
        anyhow::bail!(
            "{} holds {extra}, which it was not written with",
            file.display()
        );
    }
    Ok(())
}

/// Checks that the tables and schema of `database` (the restored copy of
/// the backup `file`) are as the backup was written (their MACs).
async fn prove_tables(
    file: &Path,
    database: &Path,
    info: &HashMap<String, String>,
    key: ContentsKey,
) -> anyhow::Result<()> {
    let written: BTreeMap<String, String> = info
        .iter()
        .filter(|(entry, _)| entry.starts_with(contents::ENTRY_PREFIX))
        .map(|(entry, mac)| (entry.clone(), mac.clone()))
        .collect();
    let path = database.to_owned();
    let found = tokio::task::spawn_blocking(move || contents::macs(&path, &key))
        .await?
        .with_context(|| format!("reading {}", file.display()))?;
    if let Some(difference) = contents::difference(&written, &found) {
        anyhow::bail!(
            "{} was changed after it was written: {difference}",
            file.display()
        );
    }
    Ok(())
}

/// Writes the installation files with the standard names, and the
/// configuration, pointed at them, that the new installation reads.
fn write_files(
    written: &mut Written,
    files: &Files,
    root_text: Option<&Zeroizing<String>>,
) -> anyhow::Result<Config> {
    // Each file as it was (a webhook's secret may be any bytes); only the
    // configuration is read here.
    let bytes = |name: &str| files.get(name).map_or(&[][..], |bytes| bytes.as_slice());
    let config_text = std::str::from_utf8(bytes(CONFIG))
        .map_err(|_| anyhow::anyhow!("{CONFIG} in the backup is not text"))?;
    let mut config: Config =
        toml::from_str(config_text).context("the configuration in the backup does not parse")?;
    let defaults = Config::default();
    config.database_url = defaults.database_url;
    config.root_key_file = defaults.root_key_file.clone();
    config.tls.client_ca = defaults.tls.client_ca.clone();
    config.tls.certificate = defaults.tls.certificate.clone();
    config.tls.private_key = defaults.tls.private_key.clone();
    // The archive too: an absolute one would be the original's directory,
    // which a restore on the same host (a drill) would archive into.
    config.audit.archive_dir = defaults.audit.archive_dir.clone();
    // No rotation until an operator says so: the backup's CURRENT values
    // may not be what the targets hold (rotations after the backup), and a
    // drill must not rotate production's passwords.
    config.rotation.paused = true;
    config.tls.crl_files = (0..config.tls.crl_files.len())
        .map(|index| PathBuf::from(crl_name(index)))
        .collect();
    for (index, webhook) in config.notifications.webhooks.iter_mut().enumerate() {
        webhook.secret_file = PathBuf::from(webhook_secret_name(index));
        if webhook.ca_file.is_some() {
            webhook.ca_file = Some(PathBuf::from(webhook_ca_name(index)));
        }
    }
    if config.rotation.database_ca_file.is_some() {
        config.rotation.database_ca_file = Some(PathBuf::from(DATABASE_CA));
    }
    // Every file the configuration names must be in the backup: a CRL
    // silently left out would drop revocations.
    let mut named: Vec<PathBuf> = config.tls.crl_files.clone();
    named.extend(config.rotation.database_ca_file.clone());
    for webhook in &config.notifications.webhooks {
        named.push(webhook.secret_file.clone());
        named.extend(webhook.ca_file.clone());
    }
    for name in &named {
        anyhow::ensure!(
            files.contains_key(&name.display().to_string()),
            "the backup lacks {}, which its configuration names",
            name.display()
        );
    }

    match root_text {
        Some(root_text) => {
            config.root_passphrase = None;
            written.private(&defaults.root_key_file, root_text.as_bytes())?;
        }
        None => anyhow::ensure!(
            config.root_passphrase.is_some(),
            "the configuration in the backup has no passphrase parameters"
        ),
    }
    written.public(&config.tls.client_ca, bytes(CA_CERTIFICATE))?;
    written.public(&config.tls.certificate, bytes(SERVER_CERTIFICATE))?;
    written.private(&config.tls.private_key, bytes(SERVER_KEY))?;
    if files.contains_key(CA_KEY) {
        written.private(Path::new(CA_KEY), bytes(CA_KEY))?;
    }
    for crl in config.tls.crl_files.clone() {
        written.public(&crl, bytes(&crl.display().to_string()))?;
    }
    for webhook in &config.notifications.webhooks {
        let secret = &webhook.secret_file;
        written.private(secret, bytes(&secret.display().to_string()))?;
        if let Some(ca_file) = &webhook.ca_file {
            written.public(ca_file, bytes(&ca_file.display().to_string()))?;
        }
    }
    if let Some(ca_file) = &config.rotation.database_ca_file {
        written.public(ca_file, bytes(DATABASE_CA))?;
    }
    let config_file = crate::config::toml_of(&config);
    written.private(Path::new(CONFIG_FILE), config_file.as_bytes())?;
    Ok(config)
}

/// The restored database without the backup's own tables.
async fn drop_backup_tables(database: &Path) -> anyhow::Result<()> {
    let mut connection =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(database)).await?;
    sqlx::query("DROP TABLE backup_files")
        .execute(&mut connection)
        .await?;
    sqlx::query("DROP TABLE backup_info")
        .execute(&mut connection)
        .await?;
    sqlx::query("VACUUM").execute(&mut connection).await?;
    connection.close().await?;
    Ok(())
}

/// Opens the restored installation and proves it whole, then records the
/// restore in its audit log.
async fn prove(
    loaded: &Loaded,
    root: RootKey,
    info: &HashMap<String, String>,
) -> anyhow::Result<Summary> {
    let Opened { store, keyring } = installation::open_with(loaded, root).await?;
    let proven = async {
        // A lease of the process the backup was taken under means nothing here.
        store.clear_leases().await?;
        let verdict = audit::verify_store(&store, None).await?;
        if let Some(finding) = verdict.finding {
            return Err(crate::error::Error::Integrity(format!(
                "the audit log in the backup does not verify: {finding}"
            )));
        }
        let (secrets, versions) = open_every_value(&store, &keyring).await?;
        let made = info
            .get("created_at")
            .and_then(|millis| millis.parse().ok())
            .map(rekey_shared::time::format_millis)
            .unwrap_or_default();
        let source = info.get("source").cloned().unwrap_or_default();
        store
            .record(&AuditEvent::local(
                "backup:Restore",
                "*",
                &format!("restored from a backup of {source} made at {made}"),
            ))
            .await?;
        Ok(Summary {
            secrets,
            versions,
            audit_events: i64::try_from(verdict.events).unwrap_or(i64::MAX) + 1,
            audit_head: verdict.head_seq + 1,
        })
    }
    .await;
    store.close().await;
    proven.map_err(|error| anyhow::anyhow!("{error}"))
}

/// Opens every version of every secret (also those scheduled for deletion)
/// and drops the plaintext at once; returns how many of each there were.
async fn open_every_value(
    store: &crate::store::Store,
    keyring: &crate::keyring::Keyring,
) -> crate::error::Result<(i64, i64)> {
    let (mut secrets, mut versions) = (0, 0);
    let mut after = None;
    loop {
        let page = store
            .list_secrets(&SecretQuery {
                after: after.clone(),
                include_planned_deletion: true,
                limit: 100,
                ..SecretQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(Cursor {
            value: 0,
            name: last.name.as_str().to_owned(),
        });
        for secret in &page {
            secrets += 1;
            for version in store.all_versions(&secret.id).await? {
                let master = keyring.for_decryption(store, &version.sealed.key).await?;
                crypto::open_value(&master, &secret.id, &version.version_id, &version.sealed)
                    .map_err(|_| {
                        crate::error::Error::Integrity(format!(
                            "version {} of {} does not open",
                            version.version_id, secret.name
                        ))
                    })?;
                versions += 1;
            }
        }
    }
    Ok((secrets, versions))
}

/// The files a restore wrote, removed again unless it succeeds.
struct Written {
    dir: PathBuf,
    made_dir: bool,
    files: Vec<PathBuf>,
    keep: bool,
}

impl Written {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            made_dir,
            files: Vec::new(),
            keep: false,
        })
    }

    /// The restored database, copied from `backup` into a file this run
    /// creates; on failure it goes with its write-ahead log, shared memory
    /// and the one-server lock the proof's open leaves beside it.
    fn database(&mut self, name: &str, backup: &Path) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        let mut from =
            std::fs::File::open(backup).with_context(|| format!("reading {}", backup.display()))?;
        let mut to = self.create(&path, 0o600)?;
        for companion in ["-wal", "-shm", "-journal", ".rekeyd-lock"] {
            let mut file = path.clone().into_os_string();
            file.push(companion);
            self.files.push(file.into());
        }
        std::io::copy(&mut from, &mut to)
            .and_then(|_| to.sync_all())
            .with_context(|| format!("copying {}", backup.display()))?;
        Ok(path)
    }

    fn private(&mut self, name: &Path, contents: &[u8]) -> anyhow::Result<()> {
        self.write(name, 0o600, contents)
    }

    fn public(&mut self, name: &Path, contents: &[u8]) -> anyhow::Result<()> {
        self.write(name, 0o644, contents)
    }

    fn write(&mut self, name: &Path, mode: u32, contents: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.dir.join(name);
        let mut file = self.create(&path, mode)?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Creates `path`, which must not exist, and removes it on failure:
    /// only files this run made are ever removed (a second restore into
    /// the same directory fails here, and takes nothing of the first's).
    fn create(&mut self, path: &Path, mode: u32) -> anyhow::Result<std::fs::File> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let file = options
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        self.files.push(path.to_owned());
        Ok(file)
    }

    /// Writes the mark of a restore under way (see
    /// [`crate::installation::UNFINISHED_RESTORE`]), durable before any
    /// other file is written.
    fn mark_unfinished(&mut self) -> anyhow::Result<()> {
        self.private(
            Path::new(crate::installation::UNFINISHED_RESTORE),
            b"a rekeyd restore into this directory has not finished\n",
        )?;
        sync_dir(&self.dir)
    }

    /// Keeps what was written and takes the mark away, once everything
    /// else is durable.
    fn finish(mut self) -> anyhow::Result<()> {
        sync_dir(&self.dir)?;
        self.keep = true;
        let mark = self.dir.join(crate::installation::UNFINISHED_RESTORE);
        std::fs::remove_file(&mark).with_context(|| {
            format!(
                "the restore is done, but its mark {} could not be removed; remove it",
                mark.display()
            )
        })?;
        sync_dir(&self.dir)
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Newest first: the mark of an unfinished restore, written first,
        // goes last, so a death during this leaves it.
        for file in self.files.iter().rev() {
            let _ = std::fs::remove_file(file);
        }
        if self.made_dir {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
