//! The configuration's unit tests: what Debug shows, URLs and paths made
//! the installation's, the environment's overrides, webhooks.

use super::*;

/// The file a directory's database URL opens is the one in that
/// directory, whatever its name holds.
#[test]
fn a_directory_named_like_url_syntax_keeps_its_database() {
    for dir in [
        "/srv/rekey%20dr",
        "/srv/dr?mode=ro",
        "/srv/a b/",
        "/",
        "relative/dir",
    ] {
        let loaded = Loaded {
            config: Config::default(),
            file_config: Config::default(),
            dir: PathBuf::from(dir),
            passphrase: Default::default(),
        };
        let url = loaded.database_url();
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        assert_eq!(
            options.get_filename(),
            Path::new(dir).join("rekey.db"),
            "{url}"
        );
    }
}

#[test]
fn debug_shows_no_password_or_token() {
    let mut config = Config {
        database_url: "postgres://rekey:hunter2-pw@db.internal:5432/rekey?password=hunter3"
            .to_owned(),
        ..Config::default()
    };
    config.notifications.webhooks.push(WebhookConfig {
        url: "https://hooks.example/services/T0KEN-4a1c?key=T0KEN-2".to_owned(),
        secret_file: "hook.key".into(),
        events: None,
        ca_file: None,
    });
    let shown = format!("{config:?}");
    assert!(
        shown.contains("postgres://db.internal:5432/rekey"),
        "{shown}"
    );
    assert!(shown.contains("https://hooks.example\""), "{shown}");
    for secret in ["hunter2", "hunter3", "T0KEN"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn a_malformed_file_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        "listen = \"127.0.0.1:8443\"\ndatabase_url = \"postgres://rekey:hunter2-pw@db/rekey\n",
    )
    .unwrap();
    let error = format!("{:#}", load(dir.path(), None).unwrap_err());
    assert!(error.contains("line 2"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn default_toml_parses_back_to_the_defaults() {
    let shown = default_toml();
    let parsed: Config = toml::from_str(&shown).unwrap();
    assert_eq!(parsed, Config::default());
    for line in [
        "[audit]",
        "retention_days = 0",
        "archive_dir = \"audit-archive\"",
        "archive_interval_seconds = 3600",
        "REKEY_AUDIT_RETENTION_DAYS",
    ] {
        assert!(shown.contains(line), "{line} missing from\n{shown}");
    }
}

#[test]
fn read_cache_size_from_the_environment() {
    let mut config = Config::default();
    assert_eq!(config.read_cache_mib, 32);
    apply_environment(&mut config, |name| {
        (name == "REKEY_READ_CACHE_MIB").then(|| "0".to_owned())
    })
    .unwrap();
    assert_eq!(config.read_cache_mib, 0);
    let error = apply_environment(&mut config, |name| {
        (name == "REKEY_READ_CACHE_MIB").then(|| "32M".to_owned())
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("whole MiB"), "{error}");
}

#[test]
fn audit_retention_from_the_environment() {
    let mut config = Config::default();
    apply_environment(&mut config, |name| {
        (name == "REKEY_AUDIT_RETENTION_DAYS").then(|| "90".to_owned())
    })
    .unwrap();
    assert_eq!(config.audit.retention_days, 90);
    let error = apply_environment(&mut config, |name| {
        (name == "REKEY_AUDIT_RETENTION_DAYS").then(|| "-1".to_owned())
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("whole days"), "{error}");
}

#[test]
fn environment_overrides_the_file_and_unknown_fields_are_refused() {
    let mut config: Config = toml::from_str("listen = \"0.0.0.0:1\"").unwrap();
    apply_environment(&mut config, |name| {
        (name == "REKEY_LISTEN").then(|| "127.0.0.1:2".to_owned())
    })
    .unwrap();
    assert_eq!(config.listen, "127.0.0.1:2");
    assert_eq!(config.database_url, Config::default().database_url);
    apply_environment(&mut config, |name| {
        (name == "REKEY_METRICS_LISTEN").then(String::new)
    })
    .unwrap();
    assert_eq!(config.metrics.listen, "");
    let error = toml::from_str::<Config>("lisen = 1")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field"), "{error}");
}

#[test]
fn relative_sqlite_paths_follow_the_directory() {
    let loaded = Loaded {
        config: Config::default(),
        file_config: Config::default(),
        dir: PathBuf::from("/srv/rekey"),
        passphrase: Default::default(),
    };
    assert_eq!(loaded.database_url(), "sqlite:///srv/rekey/rekey.db");
    let short = |url: &str| {
        Loaded {
            config: Config {
                database_url: url.to_owned(),
                ..Config::default()
            },
            file_config: Config::default(),
            dir: PathBuf::from("/srv/rekey"),
            passphrase: Default::default(),
        }
        .database_url()
    };
    assert_eq!(short("sqlite:data/r.db"), "sqlite:///srv/rekey/data/r.db");
    assert_eq!(short("sqlite:/var/lib/r.db"), "sqlite:/var/lib/r.db");
    assert_eq!(short("sqlite::memory:"), "sqlite::memory:");
}

#[test]
fn webhooks_parse_and_unknown_event_kinds_are_refused() {
    let config: Config = toml::from_str(
        "[notifications]\ncertificate_warning_days = 7\n\
         [[notifications.webhooks]]\nurl = \"https://hooks.example.com/rekey\"\n\
         secret_file = \"webhook.secret\"\nevents = [\"run_failed\"]\n",
    )
    .unwrap();
    let notifications = &config.notifications;
    assert_eq!(notifications.certificate_warning_days, 7);
    assert_eq!(notifications.max_attempts, 8);
    assert_eq!(
        notifications.webhooks[0].events,
        Some(vec![NotificationKind::RunFailed])
    );
    let shown = toml_of(&config);
    assert_eq!(toml::from_str::<Config>(&shown).unwrap(), config, "{shown}");
    let error = toml::from_str::<Config>(
        "[[notifications.webhooks]]\nurl = \"http://x\"\nsecret_file = \"s\"\nevents = [\"run_started\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("unknown variant `run_started`"), "{error}");
}
