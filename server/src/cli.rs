//! The `rekeyd` command line: flags, then one function per subcommand.
//! Output meant for scripts goes to standard output; logs go to standard
//! error. Exit codes: 0 success, 1 error, 2 usage.

use crate::config::{self, Loaded, LogFormat};
use crate::installation;
use crate::passphrase::PassphraseSource;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "rekeyd", version, about = "The rekey secrets server")]
struct Cli {
    #[command(flatten)]
    location: Location,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Location {
    /// The installation directory.
    #[arg(long, global = true, env = "REKEY_DIR", default_value = "./rekey-data")]
    dir: PathBuf,
    /// A configuration file to use instead of DIR/rekeyd.toml.
    #[arg(long, global = true, env = "REKEY_CONFIG")]
    config: Option<PathBuf>,
    /// Read the root key's passphrase from this open file descriptor (for
    /// an installation made with `init --passphrase`).
    #[arg(
        long,
        global = true,
        env = "REKEY_ROOT_PASSPHRASE_FD",
        value_name = "N"
    )]
    passphrase_fd: Option<i32>,
    /// Read the root key's passphrase from this file (mode 0600; e.g. a
    /// systemd credential).
    #[arg(
        long,
        global = true,
        env = "REKEY_ROOT_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    passphrase_file: Option<PathBuf>,
}

impl Location {
    fn passphrase(&self) -> PassphraseSource {
        PassphraseSource::new(self.passphrase_fd, self.passphrase_file.clone())
    }

    /// The configuration of the installation, with the passphrase source.
    fn load(&self) -> anyhow::Result<Loaded> {
        let mut loaded = config::load(&self.dir, self.config.as_deref())?;
        loaded.passphrase = self.passphrase();
        Ok(loaded)
    }

    /// [`Self::load`], for a command that opens the installation here:
    /// its log lines (a warning at close, an audit checkpoint) go to
    /// standard error as serve's do, and the process is hardened as the
    /// server is, since it holds the root key (no core dump of it).
    fn load_to_administer(&self) -> anyhow::Result<Loaded> {
        let loaded = self.load()?;
        init_logging(&loaded.config.log)?;
        harden_process();
        Ok(loaded)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new installation: configuration, CA, server certificate,
    /// root key, database and the admin identity (admin.pem).
    Init {
        /// Another host name or address the server certificate must name.
        #[arg(long = "san", value_name = "HOST")]
        sans: Vec<String>,
        /// The database: `postgres://USER@HOST/DB` for several replicas
        /// (default: the embedded SQLite file rekey.db).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Derive the root key from a passphrase (Argon2id) instead of
        /// writing root.key: asked on the terminal (twice), or read from
        /// --passphrase-fd, --passphrase-file or REKEY_ROOT_PASSPHRASE(_FD,
        /// _FILE).
        #[arg(long)]
        passphrase: bool,
    },
    /// Serve the installation.
    Serve {
        /// Address to listen on (overrides the configuration).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Address of the Prometheus metrics listener, "" for none
        /// (overrides the configuration).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// A throwaway installation with demo secrets, served on a loopback
    /// port unless --listen or REKEY_LISTEN says otherwise.
    Dev {
        /// Default: REKEY_LISTEN, else a free loopback port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Address of the Prometheus metrics listener, "" for none.
        /// Default: REKEY_METRICS_LISTEN, else a free loopback port.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// Client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Master keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Policy, from the installation itself.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Write an online, consistent copy of the installation to FILE
    /// (values stay encrypted; restoring needs the root key).
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Make a new installation in --dir from a backup, with the root key of
    /// the installation it was made from.
    Restore {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The root key of the backed-up installation (its root.key); not
        /// needed when its root key comes from a passphrase.
        #[arg(long, value_name = "FILE")]
        root_key_file: Option<PathBuf>,
        /// Restore a backup of format 1 (made before backups proved their
        /// tables), whose policy, certificates and settings cannot be
        /// proven unchanged.
        #[arg(long)]
        accept_unproven_tables: bool,
    },
    /// The audit log, from the installation itself.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the default configuration file.
    PrintDefaultConfig,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the whole audit chain: the archived events (see [audit]
    /// retention_days), then the database's, from the first event on.
    VerifyArchive {
        /// The archive directory (default: the configured archive_dir).
        #[arg(long, value_name = "DIR")]
        archive_dir: Option<PathBuf>,
        /// An event the chain must hold, as the server's log printed it
        /// ("audit checkpoint" seq and mac): a tail cut off is found too.
        #[arg(long, value_name = "SEQ:MAC", value_parser = rekey_shared::checkpoint::parse)]
        checkpoint: Option<(i64, Vec<u8>)>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Issue an identity file (key, certificate and CA in one PEM, mode 0600).
    Issue {
        /// The principal: a name of A-Z a-z 0-9 . _ @ - or a spiffe:// URI.
        name: String,
        /// Bind the principal to this role (repeatable): a new policy version.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Where to write the identity file (default: ./NAME.pem).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Days of validity (1 to 3650).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
    },
    /// Issue a fresh certificate for a principal (roles stay as bound).
    Renew {
        name: String,
        /// Where to write the identity file (default: ./NAME.pem, replaced).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Days of validity (1 to 3650).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
    },
    /// Revoke every certificate of a principal (or the one issued here
    /// with that serial), or with --serial one serial number of any CA.
    Revoke {
        #[arg(
            value_name = "NAME",
            required_unless_present = "serial",
            conflicts_with = "serial"
        )]
        target: Option<String>,
        /// A serial number (hex), also of a certificate another CA issued.
        #[arg(long, value_name = "SERIAL")]
        serial: Option<String>,
        /// The serial is a CA certificate's (an intermediate's another CA
        /// issued): every client that sends that certificate is refused.
        #[arg(long, requires = "serial")]
        ca: bool,
        /// The certificate (PEM) of the CA that issued the serial: only
        /// that CA's certificate of that serial is revoked (serials are
        /// unique per issuer only). Without it, every certificate of that
        /// serial, whoever issued it.
        #[arg(long, value_name = "CA_FILE", requires = "serial")]
        issuer: Option<PathBuf>,
    },
    /// List issued certificates: valid, expired or revoked.
    List,
    /// Issue the server a fresh certificate and key from the installation's
    /// CA, for the host names and addresses its certificate names now and
    /// those given; they replace the configured files, and a running server
    /// serves them within seconds.
    RenewServer {
        /// Another host name or IP address to name (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Days of validity (1 to 3650; no later than the CA's own expiry).
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a master key.
    Create { name: String },
    /// List master keys and their versions.
    List,
    /// Add a version to a master key; new data keys are wrapped under it.
    Rotate { name: String },
    /// Re-wrap every data key under the newest version of its master key
    /// (online; run it again to resume after an interruption).
    Rewrap { name: Option<String> },
    /// Remove a master-key version that no data key uses any more.
    Retire { name: String, version: u32 },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Break glass: bind a principal to the allow-everything break-glass role
    /// (local access only).
    Recover {
        #[arg(long, default_value = "admin")]
        principal: String,
        /// When the stored policy is one this rekeyd cannot read (a newer
        /// one applied it), replace it by one that binds the principal
        /// alone: every other binding goes. Refused without it.
        #[arg(long)]
        replace_unreadable: bool,
    },
}

/// Runs `rekeyd` and returns its exit code.
pub fn main() -> ExitCode {
    // Every file rekeyd creates (database, WAL, keys) is its owner's only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Every subcommand may hold the root key or the CA key in memory (cert,
    // keys, backup, restore, init), not only the server. Again once logging
    // is set up in `serve` and `dev`, so that a failure is logged there.
    harden_process();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rekeyd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rekeyd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let location = &cli.location;
    match cli.command {
        Command::Init {
            sans,
            database_url,
            passphrase,
        } => {
            let source = passphrase.then(|| location.passphrase());
            let made = installation::init(
                &location.dir,
                &sans,
                database_url.as_deref(),
                source.as_ref(),
            )
            .await?;
            println!(
                "created an installation in {}\nadmin identity: {}\nstart it with: rekeyd --dir {} serve",
                made.dir.display(),
                made.admin_identity.display(),
                made.dir.display()
            );
            Ok(())
        }
        Command::Serve {
            listen,
            metrics_listen,
        } => {
            let mut loaded = location.load()?;
            if let Some(listen) = listen {
                loaded.config.listen = listen;
            }
            if let Some(listen) = metrics_listen {
                loaded.config.metrics.listen = listen;
            }
            init_logging(&loaded.config.log)?;
            serve_until_signal(&loaded).await
        }
        Command::Dev {
            listen,
            metrics_listen,
        } => {
            // A flag, else the environment as for serve, else a free port.
            let or_environment = |flag: Option<String>, variable: &str| {
                flag.or_else(|| std::env::var(variable).ok())
                    .unwrap_or_else(|| "127.0.0.1:0".to_owned())
            };
            dev(
                &or_environment(listen, "REKEY_LISTEN"),
                &or_environment(metrics_listen, "REKEY_METRICS_LISTEN"),
            )
            .await
        }
        Command::Cert(command) => {
            let loaded = location.load_to_administer()?;
            crate::cli_admin::cert(&loaded, command).await
        }
        Command::Keys(command) => {
            let loaded = location.load_to_administer()?;
            crate::cli_admin::keys(&loaded, command).await
        }
        Command::Policy(PolicyCommand::Recover {
            principal,
            replace_unreadable,
        }) => {
            let loaded = location.load_to_administer()?;
            crate::cli_admin::recover(&loaded, &principal, replace_unreadable).await
        }
        Command::Backup { file } => {
            let loaded = location.load_to_administer()?;
            let summary = crate::backup::backup(&loaded, &file).await?;
            println!("backup written to {}: {summary}", file.display());
            Ok(())
        }
        Command::Restore {
            file,
            root_key_file,
            accept_unproven_tables,
        } => {
            // It opens every value to prove them: no core dump of that. Its
            // log lines (a migration applied) go where serve's do.
            init_logging(&config::LogConfig::default())?;
            harden_process();
            let restored = crate::backup::restore(
                &file,
                &location.dir,
                root_key_file.as_deref(),
                &location.passphrase(),
                accept_unproven_tables,
            )
            .await?;
            let proven = if restored.tables_proven {
                "every table is as it was backed up, every value opens and the audit log verifies"
            } else {
                "every value opens and the audit log verifies; this backup (format 1) could not \
                 prove its other tables: check its policy (rekey policy get) and certificates \
                 (rekeyd cert list) before you serve it"
            };
            for program in &restored.programs {
                println!(
                    "a backup holds no rotator programs: copy {} to {} before a run needs it",
                    program.display(),
                    location.dir.join(program).display()
                );
            }
            println!(
                "restored {} into {}: {}; {proven}\n\
                 rotation is paused there (rotation.paused in its rekeyd.toml): runs made after \
                 the backup are not in it, so a target may hold a password the backup does not; \
                 check the targets, then set paused = false\n\
                 start it with: rekeyd --dir {} serve",
                file.display(),
                location.dir.display(),
                restored.summary,
                location.dir.display()
            );
            Ok(())
        }
        Command::Audit(AuditCommand::VerifyArchive {
            archive_dir,
            checkpoint,
        }) => {
            let loaded = location.load_to_administer()?;
            let dir = archive_dir.unwrap_or_else(|| loaded.path(&loaded.config.audit.archive_dir));
            let opened = installation::open(&loaded).await?;
            let verified = crate::retention::verify_archive(&opened.store, &dir, checkpoint).await;
            opened.store.close().await;
            println!("{}", verified.context("the audit log does not verify")?);
            Ok(())
        }
        Command::PrintDefaultConfig => {
            print!("{}", config::default_toml());
            Ok(())
        }
    }
}

fn init_logging(log: &config::LogConfig) -> anyhow::Result<()> {
    // sqlx logs a database URL's parameters it does not know with their
    // values (libpq's sslpassword, say), whatever the level asked for.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .with_context(|| format!("log level {:?}", log.level))?
        .add_directive("sqlx_postgres::options=error".parse()?);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|error| anyhow::anyhow!("setting up logging: {error}"))
}

/// Keeps secrets out of core files: no core dumps, not ptrace-attachable by
/// other processes of the same user.
fn harden_process() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(error) = setrlimit(Resource::Core, no_core) {
        tracing::warn!(%error, "cannot disable core dumps");
    }
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(%error, "cannot mark the process not dumpable");
    }
}

/// Completes on SIGTERM or SIGINT, and with `hangup` on SIGHUP too
/// (`crate::signals::stop`), saying that the server shuts down.
fn shutdown_signal(hangup: bool) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let stop = crate::signals::stop(hangup)?;
    Ok(async move {
        stop.await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
}

async fn serve_until_signal(loaded: &Loaded) -> anyhow::Result<()> {
    harden_process();
    // Root key (a passphrase perhaps), database, policy, TLS files and
    // webhook settings first: nothing is said to be listening before all of
    // them are known to be good.
    let prepared = crate::prepare(loaded, installation::open_to_serve(loaded).await?).await?;
    // The root key is derived; the passphrase is not kept.
    loaded.passphrase.forget();
    let shutdown = shutdown_signal(false)?;
    let listener = TcpListener::bind(&loaded.config.listen)
        .await
        .with_context(|| format!("listening on {}", loaded.config.listen))?;
    let metrics = crate::metrics::http::bind(&loaded.config.metrics.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, dir = %loaded.dir.display(), "rekeyd serving");
    if let Some(metrics) = &metrics {
        println!("{}", metrics_line(metrics)?);
    }
    // Scripts and tests wait for this line: the port is bound from here on.
    println!("rekeyd listening on https://{address}");
    crate::serve_prepared(prepared, listener, metrics, shutdown).await
}

/// The line that says where the metrics are, printed before the
/// `rekeyd listening on` line.
fn metrics_line(metrics: &TcpListener) -> anyhow::Result<String> {
    Ok(format!(
        "rekeyd metrics on http://{}/metrics",
        metrics.local_addr()?
    ))
}

async fn dev(listen: &str, metrics_listen: &str) -> anyhow::Result<()> {
    // Before anything is written: a signal while the installation is made
    // still ends in its removal, as does the terminal closing (SIGHUP).
    let shutdown = shutdown_signal(true)?;
    let dir = tempfile::Builder::new()
        .prefix("rekey-dev-")
        .tempdir()
        .context("creating a temporary directory")?;
    let made = installation::init(dir.path(), &[], None, None).await?;
    installation::add_demo_secrets(dir.path()).await?;
    let mut loaded = config::load_new_installation(dir.path())?;
    loaded.config.listen = listen.to_owned();
    init_logging(&loaded.config.log)?;
    harden_process();
    let prepared = crate::prepare(&loaded, installation::open_to_serve(&loaded).await?).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let metrics = crate::metrics::http::bind(metrics_listen).await?;
    let address = listener.local_addr()?;
    if let Some(metrics) = &metrics {
        println!("{}", metrics_line(metrics)?);
    }
    println!(
        "rekeyd dev: a throwaway installation in {} (removed on exit), with demo secrets.\n\
         Connect rekey to it from another terminal:\n\n  \
         export REKEY_SERVER=https://{address} REKEY_IDENTITY={}\n\n\
         then try `rekey list` and `rekey get demo/api/payments`\n\
         (in a source checkout without rekey installed: cargo run -q --bin rekey -- list).\n\
         Stop with Ctrl-C.\n\
         rekeyd listening on https://{address}",
        dir.path().display(),
        made.admin_identity.display()
    );
    let served = crate::serve_prepared(prepared, listener, metrics, shutdown).await;
    drop(dir);
    served
}
