//! The server configuration: one struct, one set of defaults (its `Default`),
//! read from `rekeyd.toml`, then overridden by `REKEY_*` environment
//! variables, then by flags, in that order for every subcommand. Loading
//! never writes a file. Relative paths are relative to the configuration
//! file's directory (the installation directory).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "rekeyd.toml";

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC listener (mutual TLS). `REKEY_LISTEN`.
    pub listen: String,
    /// `sqlite://FILE` (relative to the installation). `REKEY_DATABASE_URL`.
    pub database_url: String,
    /// The root key that wraps master keys; mode 0600. `REKEY_ROOT_KEY_FILE`.
    /// Unused when the root key comes from a passphrase.
    pub root_key_file: PathBuf,
    /// How often secrets whose recovery window ended are erased, in
    /// seconds. `REKEY_PURGE_INTERVAL_SECONDS`.
    pub purge_interval_seconds: u64,
    /// The most memory, in MiB, that an SQLite server spends on reads it
    /// answers again without the database (values still sealed; see
    /// `store::read_cache`); 0 keeps nothing. `REKEY_READ_CACHE_MIB`.
    pub read_cache_mib: u32,
    /// Set by `rekeyd init --passphrase`: the root key is derived from a
    /// passphrase (Argon2id) with these parameters instead of read from
    /// `root_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_passphrase: Option<crate::passphrase::PassphraseSettings>,
    pub tls: TlsFiles,
    pub log: LogConfig,
    pub rotation: RotationSettings,
    pub rate_limit: RateLimitSettings,
    pub metrics: MetricsSettings,
    pub audit: AuditSettings,
    pub notifications: NotificationSettings,
}

/// Audit retention (see `crate::retention`): events older than
/// `retention_days` leave the database for JSON-lines files in
/// `archive_dir`, which `rekeyd audit verify-archive` verifies with the
/// database. With several PostgreSQL replicas, set it on one of them only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Days an event stays in the database; 0 keeps every event there
    /// forever. `REKEY_AUDIT_RETENTION_DAYS`.
    pub retention_days: u32,
    /// Where archived events go (relative to the installation).
    pub archive_dir: PathBuf,
    /// How often old events are archived, in seconds (and once at start).
    pub archive_interval_seconds: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention_days: 0,
            archive_dir: PathBuf::from("audit-archive"),
            archive_interval_seconds: 3600,
        }
    }
}

/// Requests per principal: a token bucket refilled at `requests_per_second`
/// (0: no limit) that holds at most `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub requests_per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 1000,
            burst: 5000,
        }
    }
}

/// The Prometheus metrics listener: plain HTTP, no client certificate, so
/// it belongs on loopback (or another private interface).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address of `GET /metrics`; `""` turns the listener off.
    /// `REKEY_METRICS_LISTEN`.
    pub listen: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".to_owned(),
        }
    }
}

/// How rotation runs behave, and the custom rotators this server may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationSettings {
    /// Attempts of a step in an automatic run before the run fails.
    pub max_attempts: u32,
    /// The first retry waits this long; each further one twice as long.
    pub retry_base_seconds: u64,
    /// Programs a rotation configuration may name as `exec:NAME`. Only
    /// these run: never a path given through the API.
    pub exec: std::collections::BTreeMap<String, ExecRotator>,
    /// How long a step of the `postgres` and `mysql` rotators may take
    /// (its statements are limited to it on the database server too).
    pub database_timeout_seconds: u64,
    /// The CA (PEM) that signed the certificates of the databases (all but
    /// those whose credentials say `"ssl": false`), beside the web's roots;
    /// relative to the installation directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_ca_file: Option<PathBuf>,
    /// No schedule starts a run, no run moves on, and StartRotation is
    /// refused: what `restore` writes, so that a restored installation
    /// (a drill on another host, or the real one after a loss) does not
    /// rotate passwords on the target systems before an operator has
    /// checked that they hold the restored CURRENT values.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRotator {
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_exec_timeout")]
    pub timeout_seconds: u64,
}

impl ExecRotator {
    /// Whether the program is kept inside the installation: a relative
    /// path of more than a name (`rotators/ldap.sh`), the installation's
    /// own; a bare name is looked up on `PATH`.
    pub fn in_installation(&self) -> bool {
        self.command.is_relative() && self.command.components().count() > 1
    }
}

impl RotationSettings {
    /// The longest a rotation step may take: the longest exec rotator's
    /// time limit, or a database rotator's with its backstop.
    pub fn longest_step(&self) -> std::time::Duration {
        let exec = self
            .exec
            .values()
            .map(|program| program.timeout_seconds.max(1));
        let longest = exec.chain([self.database_timeout_seconds.max(1) + 5]).max();
        std::time::Duration::from_secs(longest.unwrap_or_default())
    }
}

fn default_exec_timeout() -> u64 {
    30
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_base_seconds: 30,
            exec: Default::default(),
            database_timeout_seconds: 60,
            database_ca_file: None,
            paused: false,
        }
    }
}

/// Webhooks called when an approval is requested, a run fails or needs
/// attention, or a certificate nears expiry (see `crate::notify`). The
/// HMAC secrets live in files of their own, so this file can be shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// Warn when a certificate the server uses expires within this many
    /// days (checked at start, then every 12 hours).
    pub certificate_warning_days: u32,
    /// Attempts of one delivery before it is given up (timeouts,
    /// connection errors, 408, 429 and 5xx answers are retried).
    pub max_attempts: u32,
    /// The first retry waits this long; each further one twice as long, at
    /// most five minutes.
    pub retry_base_milliseconds: u64,
    /// The time limit of one attempt: connect, TLS, request and answer.
    pub timeout_seconds: u64,
    /// Left out of the file when empty, so that `[[notifications.webhooks]]`
    /// can be appended to the file `rekeyd init` writes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` (verified against the web's root CAs, or
    /// against `ca_file`).
    pub url: String,
    /// The HMAC-SHA256 key: the file's contents without surrounding white
    /// space, at least 16 bytes; mode 0600.
    pub secret_file: PathBuf,
    /// The events this webhook receives; all of them when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<NotificationKind>>,
    /// CA certificates (PEM) that an `https://` receiver's certificate must
    /// chain to, instead of the web's root CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// `url` as Debug shows it: no user or password, no query, and with
/// `keep_path` its path (a webhook's may carry a token: not kept).
fn shown_url(url: &str, keep_path: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..end]
        .rsplit_once('@')
        .map_or(&rest[..end], |(_, host)| host);
    let path = if keep_path {
        rest[end..].split(['?', '#']).next().unwrap_or_default()
    } else {
        ""
    };
    format!("{scheme}://{host}{path}")
}

// By hand: a database URL may carry a password, a webhook URL a token.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &shown_url(&self.database_url, true))
            .field("root_key_file", &self.root_key_file)
            .field("purge_interval_seconds", &self.purge_interval_seconds)
            .field("read_cache_mib", &self.read_cache_mib)
            .field("root_passphrase", &self.root_passphrase)
            .field("tls", &self.tls)
            .field("log", &self.log)
            .field("rotation", &self.rotation)
            .field("rate_limit", &self.rate_limit)
            .field("metrics", &self.metrics)
            .field("audit", &self.audit)
            .field("notifications", &self.notifications)
            .finish()
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url(&self.url, false))
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// What a notification is about: the `X-Rekey-Event` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    ApprovalRequested,
    RunFailed,
    CertificateExpiring,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::ApprovalRequested => "approval_requested",
            NotificationKind::RunFailed => "run_failed",
            NotificationKind::CertificateExpiring => "certificate_expiring",
        }
    }
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            certificate_warning_days: 30,
            max_attempts: 8,
            retry_base_milliseconds: 1000,
            timeout_seconds: 10,
            webhooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub certificate: PathBuf,
    /// The server's private key (PEM, mode 0600).
    pub private_key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// CRL files (PEM or DER) of the client CAs, read at start and again
    /// when they change.
    pub crl_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. `REKEY_LOG_FORMAT`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `rekey_server=debug`. `REKEY_LOG`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".to_owned(),
            database_url: "sqlite://rekey.db".to_owned(),
            root_key_file: PathBuf::from("root.key"),
            purge_interval_seconds: 60,
            read_cache_mib: 32,
            root_passphrase: None,
            tls: TlsFiles::default(),
            log: LogConfig::default(),
            rotation: RotationSettings::default(),
            rate_limit: RateLimitSettings::default(),
            metrics: MetricsSettings::default(),
            audit: AuditSettings::default(),
            notifications: NotificationSettings::default(),
        }
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            certificate: PathBuf::from("server.pem"),
            private_key: PathBuf::from("server.key"),
            client_ca: PathBuf::from("ca.pem"),
            crl_files: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// A loaded configuration with the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The configuration as its file says, before the environment's
    /// `REKEY_*` overrides: what a backup keeps (an override left in an
    /// operator's shell is not the installation's).
    pub file_config: Config,
    pub dir: PathBuf,
    /// Where the passphrase comes from, when the root key is derived from
    /// one (asked once per process).
    pub passphrase: crate::passphrase::PassphraseSource,
}

impl Loaded {
    pub fn path(&self, relative: &Path) -> PathBuf {
        self.dir.join(relative)
    }

    /// The database URL with a relative SQLite path made absolute. The
    /// installation's directory goes in escaped: sqlx decodes `%XX` in the
    /// path and takes what follows a `?` as options, so a directory named
    /// `rekey%20dr` or `dr?1` would otherwise open another file.
    pub fn database_url(&self) -> String {
        let url = &self.config.database_url;
        // `sqlite:FILE` as well as `sqlite://FILE`: a relative file is the
        // installation's, never the working directory's (`/` under systemd).
        let file = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match file {
            Some(file) if !file.starts_with('/') && !file.starts_with(':') => {
                let dir = self.dir.display().to_string();
                let dir = dir.replace('%', "%25").replace('?', "%3F");
                format!("sqlite://{}/{file}", dir.trim_end_matches('/'))
            }
            _ => url.clone(),
        }
    }
}

/// Loads `config_file` (or `dir/rekeyd.toml`), then applies the environment.
/// A missing file is an error only when it was named explicitly.
pub fn load(dir: &Path, config_file: Option<&Path>) -> anyhow::Result<Loaded> {
    let (path, explicit) = match config_file {
        Some(path) => (path.to_owned(), true),
        None => (dir.join(CONFIG_FILE), false),
    };
    let mut config = match std::fs::read_to_string(&path) {
        // The line and the reason, not the line's text: it may hold a
        // database password.
        Ok(text) => toml::from_str(&text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            anyhow::anyhow!(
                "configuration file {}{}: {}",
                path.display(),
                line.map(|line| format!(", line {line}"))
                    .unwrap_or_default(),
                error.message()
            )
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Config::default()
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading configuration {}", path.display()));
        }
    };
    let file_config = config.clone();
    apply_environment(&mut config, |name| std::env::var(name).ok())?;
    let dir = match config_file {
        Some(path) => path.parent().map(Path::to_owned).unwrap_or_default(),
        None => dir.to_owned(),
    };
    Ok(Loaded {
        config,
        file_config,
        dir,
        passphrase: Default::default(),
    })
}

/// As [`load`], for an installation `init` or `dev` has just made in
/// `dir`: the environment may tune it (logging, limits), but what it is
/// made of (its database and its root key) is the file's. A
/// `REKEY_DATABASE_URL` or `REKEY_ROOT_KEY_FILE` left in an operator's
/// shell would otherwise have `init` migrate and write into that database.
pub fn load_new_installation(dir: &Path) -> anyhow::Result<Loaded> {
    let mut loaded = load(dir, None)?;
    let path = dir.join(CONFIG_FILE);
    let own: Config = toml::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("reading configuration {}", path.display()))?,
    )
    .with_context(|| format!("configuration file {}", path.display()))?;
    loaded.config.database_url = own.database_url;
    loaded.config.root_key_file = own.root_key_file;
    loaded.config.root_passphrase = own.root_passphrase;
    Ok(loaded)
}

/// `REKEY_*` variables override the file.
pub fn apply_environment(
    config: &mut Config,
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    if let Some(listen) = var("REKEY_LISTEN") {
        config.listen = listen;
    }
    if let Some(url) = var("REKEY_DATABASE_URL") {
        config.database_url = url;
    }
    if let Some(path) = var("REKEY_ROOT_KEY_FILE") {
        config.root_key_file = PathBuf::from(path);
    }
    if let Some(seconds) = var("REKEY_PURGE_INTERVAL_SECONDS") {
        config.purge_interval_seconds = seconds
            .parse()
            .ok()
            .filter(|seconds| *seconds > 0)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "REKEY_PURGE_INTERVAL_SECONDS is {seconds:?}; give whole seconds, at least 1"
                )
            })?;
    }
    if let Some(mib) = var("REKEY_READ_CACHE_MIB") {
        config.read_cache_mib = mib.parse().map_err(|_| {
            anyhow::anyhow!("REKEY_READ_CACHE_MIB is {mib:?}; give whole MiB (0 keeps nothing)")
        })?;
    }
    if let Some(days) = var("REKEY_AUDIT_RETENTION_DAYS") {
        config.audit.retention_days = days.parse().map_err(|_| {
            anyhow::anyhow!(
                "REKEY_AUDIT_RETENTION_DAYS is {days:?}; give whole days (0 keeps every event)"
            )
        })?;
    }
    if let Some(listen) = var("REKEY_METRICS_LISTEN") {
        config.metrics.listen = listen;
    }
    if let Some(level) = var("REKEY_LOG") {
        config.log.level = level;
    }
    if let Some(format) = var("REKEY_LOG_FORMAT") {
        config.log.format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!("REKEY_LOG_FORMAT is {other:?}; use text or json"),
        };
    }
    Ok(())
}

/// The default configuration as TOML, with a header that says how it is
/// read.
pub fn default_toml() -> String {
    toml_of(&Config::default())
}

/// `config` as the file `rekeyd init` writes, with its header.
pub fn toml_of(config: &Config) -> String {
    let body = toml::to_string_pretty(config).unwrap_or_default();
    format!(
        "# rekeyd configuration. Relative paths are relative to this file's directory.\n\
         # Environment variables override it: REKEY_LISTEN, REKEY_DATABASE_URL,\n\
         # REKEY_ROOT_KEY_FILE, REKEY_PURGE_INTERVAL_SECONDS, REKEY_READ_CACHE_MIB,\n\
         # REKEY_LOG, REKEY_LOG_FORMAT,\n\
         # REKEY_METRICS_LISTEN (\"\" turns the metrics listener off),\n\
         # REKEY_AUDIT_RETENTION_DAYS (0 keeps every audit event in the database);\n\
         # a passphrase-derived root key ([root_passphrase]) comes from --passphrase-fd N,\n\
         # --passphrase-file FILE, REKEY_ROOT_PASSPHRASE_FD, REKEY_ROOT_PASSPHRASE_FILE,\n\
         # REKEY_ROOT_PASSPHRASE or a prompt;\n\
         # flags override both.\n\n{body}"
    )
}

#[cfg(test)]
mod tests;
