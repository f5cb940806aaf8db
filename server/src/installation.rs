//! An installation directory: what `rekeyd init` writes and `rekeyd dev`
//! fills with demo secrets. Init refuses to overwrite anything; every file
//! holding key material is created with mode 0600.

use crate::audit::{AuditEvent, AuditKey};
use crate::config::{self, CONFIG_FILE};
use crate::crypto::RootKey;
use crate::governance;
use crate::keyring::{Keyring, new_root_key, read_root_key};
use crate::passphrase::{PassphraseSettings, PassphraseSource};
use crate::pki::{CA_CERTIFICATE, CA_KEY, CertificateAuthority, write_private};
use crate::policy::Policy;
use crate::store::{NewSecret, NewVersion, Store};
use anyhow::Context;
use rekey_shared::{KeyName, SecretName, SecretValue, VersionId};
use std::path::{Path, PathBuf};

pub const ADMIN_IDENTITY: &str = "admin.pem";

/// The file a restore writes first and removes last: an installation that
/// holds it was restored only in part (the restore was killed, its
/// terminal hung up, the power cut), its values never proven, and no
/// command opens it.
pub const UNFINISHED_RESTORE: &str = "RESTORE-UNFINISHED";

/// Refuses `dir` if a restore into it did not finish.
pub fn refuse_unfinished_restore(dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        !dir.join(UNFINISHED_RESTORE).exists(),
        "a restore into {} did not finish (it holds {UNFINISHED_RESTORE}): what is there was \
         never proven; remove the directory and restore again",
        dir.display()
    );
    Ok(())
}
pub const ADMIN_PRINCIPAL: &str = "admin";

/// An opened installation: its store (with the audit chain keyed from the
/// root key) and its master keys.
#[derive(Debug)]
pub struct Opened {
    pub store: Store,
    pub keyring: Keyring,
}

/// The installation's root key: derived from its passphrase when it has
/// one, read from `root.key` otherwise.
pub fn root_key(loaded: &config::Loaded) -> anyhow::Result<RootKey> {
    match &loaded.config.root_passphrase {
        Some(settings) => {
            let passphrase = loaded.passphrase.get(
                &format!(
                    "passphrase of the rekey installation in {}",
                    loaded.dir.display()
                ),
                false,
            )?;
            settings.derive(&passphrase)
        }
        None => read_root_key(&loaded.path(&loaded.config.root_key_file)),
    }
}

/// Opens the store and keyring of the installation `loaded` describes,
/// for a command other than the server: its database must be at this
/// binary's schema version (`Store::open_current`), so that a newer
/// binary's command never migrates it under an older server.
pub async fn open(loaded: &config::Loaded) -> anyhow::Result<Opened> {
    refuse_unfinished_restore(&loaded.dir)?;
    let root = root_key(loaded)?;
    let store = Store::open_current(&loaded.database_url(), AuditKey::derive(&root)).await;
    opened(loaded, store, root).await
}

/// Opens the installation for the server, which brings its database's
/// schema up to date as it starts.
/// An embedded database that is not there is refused, not created: one
/// moved aside (for a restore, say) would otherwise be served empty, with
/// no policy and no revocations.
pub async fn open_to_serve(loaded: &config::Loaded) -> anyhow::Result<Opened> {
    refuse_unfinished_restore(&loaded.dir)?;
    let url = loaded.database_url();
    if url.starts_with("sqlite:")
        && let Some(file) = crate::store::database_file(&url)
        && !file.exists()
    {
        anyhow::bail!(
            "the database {} does not exist; put it back, restore a backup (rekeyd restore), \
             or make a new installation (rekeyd init)",
            file.display()
        );
    }
    open_with(loaded, root_key(loaded)?).await
}

/// Opens the installation with a root key already at hand, bringing its
/// database's schema up to date (the server; a database just made or
/// restored).
pub async fn open_with(loaded: &config::Loaded, root: RootKey) -> anyhow::Result<Opened> {
    let read_cache_bytes = loaded.config.read_cache_mib as usize * (1 << 20);
    let store = Store::open_to_serve(
        &loaded.database_url(),
        AuditKey::derive(&root),
        read_cache_bytes,
    )
    .await;
    opened(loaded, store, root).await
}

async fn opened(
    loaded: &config::Loaded,
    store: crate::error::Result<Store>,
    root: RootKey,
) -> anyhow::Result<Opened> {
    let store = store.map_err(|error| anyhow::anyhow!("{error}"))?;
    proven(loaded, &store, &root).await?;
    Ok(Opened {
        store,
        keyring: Keyring::new(root),
    })
}

/// Proves that `root` is the installation's own: it must open a stored
/// master key (`init` makes `default`, and the last version of a key is
/// never retired). Another installation's `root.key` (a
/// `REKEY_ROOT_KEY_FILE` left in a shell, a file copied from the wrong
/// host) would otherwise be found out only when a value is read, and
/// meanwhile every audit event would be chained under a key that does not
/// verify, and a backup sealed under it would never restore. A passphrase
/// is proven before this by its check value.
async fn proven(loaded: &config::Loaded, store: &Store, root: &RootKey) -> anyhow::Result<()> {
    let keys = store
        .list_master_keys()
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let Some(key) = keys.first() else {
        return Ok(());
    };
    let Ok(name) = KeyName::parse(&key.name) else {
        anyhow::bail!("the database holds a master key named {:?}", key.name);
    };
    let reference = crate::crypto::KeyRef {
        name,
        version: key.version,
    };
    if root
        .unwrap_master_key(reference, &key.wrapped_material)
        .is_err()
    {
        let (source, check) = match &loaded.config.root_passphrase {
            Some(_) => (
                "the root key of the passphrase".to_owned(),
                format!("[root_passphrase] in {CONFIG_FILE}"),
            ),
            None => (
                format!(
                    "the root key {}",
                    loaded.path(&loaded.config.root_key_file).display()
                ),
                format!("root_key_file in {CONFIG_FILE} and REKEY_ROOT_KEY_FILE"),
            ),
        };
        anyhow::bail!(
            "{source} does not open the master keys of the database (master key {} version {} \
             does not open with it): the two are different installations'; check {check}, \
             and database_url and REKEY_DATABASE_URL",
            key.name,
            key.version
        );
    }
    Ok(())
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    pub dir: PathBuf,
    pub admin_identity: PathBuf,
}

/// Creates a new installation in `dir`, which must not hold one already.
/// `database_url`: where the data lives when not in the embedded SQLite
/// file (`postgres://…` for several replicas). `passphrase`: derive the root
/// key from a passphrase from there instead of writing `root.key`.
pub async fn init(
    dir: &Path,
    extra_hosts: &[String],
    database_url: Option<&str>,
    passphrase: Option<&PassphraseSource>,
) -> anyhow::Result<Initialized> {
    let defaults = config::Config::default();
    let server_certificate = defaults.tls.certificate.display().to_string();
    let server_key = defaults.tls.private_key.display().to_string();
    let root_key = defaults.root_key_file.display().to_string();
    refuse_unfinished_restore(dir)?;
    let files = [
        CONFIG_FILE,
        &root_key,
        "rekey.db",
        CA_KEY,
        CA_CERTIFICATE,
        &server_certificate,
        &server_key,
        ADMIN_IDENTITY,
    ];
    for existing in files {
        if dir.join(existing).exists() {
            anyhow::bail!(
                "{} already holds an installation ({existing} exists); refusing to overwrite it",
                dir.display()
            );
        }
    }
    let made = !dir.exists();
    let initialized = init_files(dir, made, extra_hosts, database_url, passphrase).await;
    if initialized.is_err() {
        // Everything named above was made here (none was there): a failed
        // init (a passphrase mistyped, a database down) leaves nothing that
        // a second one would refuse.
        let database = ["rekey.db-wal", "rekey.db-shm", "rekey.db.rekeyd-lock"];
        for file in files.iter().chain(database.iter()) {
            let _ = std::fs::remove_file(dir.join(file));
        }
        if made {
            let _ = std::fs::remove_dir(dir);
        }
    }
    initialized
}

async fn init_files(
    dir: &Path,
    made: bool,
    extra_hosts: &[String],
    database_url: Option<&str>,
    passphrase: Option<&PassphraseSource>,
) -> anyhow::Result<Initialized> {
    // Asked before anything is written: an init stopped at the prompt
    // (Ctrl-C) leaves no files that a second one would refuse.
    let passphrase_root = match passphrase {
        Some(source) => {
            let passphrase = source.get("passphrase for the new installation's root key", true)?;
            Some(PassphraseSettings::create(&passphrase)?)
        }
        None => None,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A directory init makes is its own (0700); one that was there keeps
    // its mode (`--dir .` or a shared /srv), the key files being 0600.
    #[cfg(unix)]
    if made {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut defaults = config::Config::default();
    if let Some(url) = database_url {
        defaults.database_url = url.to_owned();
    }

    let (ca, ca_key) = CertificateAuthority::generate("rekey CA")?;
    std::fs::write(dir.join(CA_CERTIFICATE), &ca.certificate_pem)?;
    write_private(&dir.join(CA_KEY), &ca_key)?;

    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    hosts.extend(extra_hosts.iter().cloned());
    let server = ca.issue_server(&hosts, 825)?;
    std::fs::write(dir.join(&defaults.tls.certificate), &server.certificate_pem)?;
    write_private(&dir.join(&defaults.tls.private_key), &server.key_pem)?;

    let root = match passphrase_root {
        Some((settings, root)) => {
            defaults.root_passphrase = Some(settings);
            root
        }
        None => {
            let (root_text, root) = new_root_key();
            write_private(&dir.join(&defaults.root_key_file), &root_text)?;
            root
        }
    };
    // Private: a database URL may carry a password.
    write_private(&dir.join(CONFIG_FILE), &config::toml_of(&defaults))?;

    let mut loaded = config::load_new_installation(dir)?;
    if let Some(source) = passphrase {
        loaded.passphrase = source.clone();
    }
    // A database with any schema is refused before anything is changed in
    // it: a newer binary's init would otherwise migrate another release's.
    let store = Store::create(&loaded.database_url(), AuditKey::derive(&root)).await;
    // New: no master key to prove the root key against yet.
    let store = store.map_err(|error| anyhow::anyhow!("{error}"))?;
    let keyring = Keyring::new(root);
    let made = write_installation(&loaded, &store, &keyring, &ca, dir).await;
    match made {
        // The files go (see `init`); the schema made in a database of
        // another server does not, and a second init would refuse it.
        Err(error) if !loaded.database_url().starts_with("sqlite:") => Err(error.context(
            "init made rekey's schema in that database before it failed, and left it there: \
             drop that database and create it empty again before another init",
        )),
        made => made,
    }
}

/// What `init` puts in the database it made the schema of (the master
/// key, the first policy), and the admin's identity file.
async fn write_installation(
    loaded: &config::Loaded,
    store: &Store,
    keyring: &Keyring,
    ca: &CertificateAuthority,
    dir: &Path,
) -> anyhow::Result<Initialized> {
    let initialized = async {
        if !store.list_master_keys().await?.is_empty() {
            return Err(crate::error::Error::FailedPrecondition(
                "the database already holds an installation; copy that installation's \
                 directory to add a replica instead"
                    .to_owned(),
            ));
        }
        keyring
            .create_version(
                store,
                &KeyName::default_key(),
                &AuditEvent::local("keys:Manage", "key:default", "created by rekeyd init"),
            )
            .await?;
        let policy = Policy::default_for(ADMIN_PRINCIPAL);
        governance::apply_policy(
            store,
            &policy,
            "rekeyd",
            0,
            &AuditEvent::local(
                "policy:ApplyPolicy",
                "*",
                "default policy written by rekeyd init",
            ),
        )
        .await
        .map(|_| ())
    }
    .await;
    store.close().await;
    initialized.map_err(|error| anyhow::anyhow!("{error}"))?;

    let admin_identity = dir.join(ADMIN_IDENTITY);
    crate::certificates::issue(loaded, ca, ADMIN_PRINCIPAL, 365, &admin_identity).await?;
    Ok(Initialized {
        dir: dir.to_owned(),
        admin_identity,
    })
}

/// The demo secrets of `rekeyd dev`.
pub const DEMO_SECRETS: &[(&str, &str, &str)] = &[
    (
        "demo/db/orders",
        "PostgreSQL credentials of the orders service",
        r#"{"engine":"postgres","host":"db.internal","port":5432,"username":"orders","password":"demo-orders-password","dbname":"orders"}"#,
    ),
    (
        "demo/api/payments",
        "API key of the payments provider",
        "demo-payments-api-key",
    ),
    (
        "demo/app/session-secret",
        "Signing key of web sessions",
        "demo-session-signing-key",
    ),
];

/// Stores the demo secrets, as the `system` principal.
pub async fn add_demo_secrets(dir: &Path) -> anyhow::Result<()> {
    let loaded = config::load_new_installation(dir)?;
    let Opened { store, keyring } = open(&loaded).await?;
    let key_name = KeyName::default_key();
    let master = keyring
        .for_encryption(&store, &key_name)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let now = rekey_shared::time::now_millis();
    for (name, description, value) in DEMO_SECRETS {
        let secret = NewSecret {
            id: format!("{name}-demo00"),
            name: SecretName::parse(name)?,
            description: (*description).to_owned(),
            key_name: key_name.clone(),
            tags: vec![("env".to_owned(), "demo".to_owned())],
            created_at: now,
        };
        let version_id = VersionId::random();
        let sealed =
            crate::crypto::seal_value(&master, &secret.id, &version_id, &SecretValue::text(*value));
        let version = NewVersion {
            version_id,
            created_at: now,
            created_by: "system".to_owned(),
            sealed,
        };
        let event = AuditEvent::system("secrets:CreateSecret", name, "demo secret");
        store
            .create_secret(&secret, Some(&version), &event)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
    }
    store.close().await;
    Ok(())
}
