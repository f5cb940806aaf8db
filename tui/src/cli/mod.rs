//! The `rekey` command line. Each subcommand maps to one RPC (or a loop of
//! paged RPCs) and prints its result as text or JSON. Exit codes: 0 success,
//! 1 an error from the server or the input, 2 a usage error. Errors are one
//! line on standard error and never contain a value.
//!
//! This file holds the flags; `read`, `write` and `lifecycle` run them.

mod admin;
mod configure;
mod inject;
mod lifecycle;
mod read;
mod rotation;
mod write;

pub use configure::ConfigureArgs;
pub use rotation::RotationCommand;

use crate::client::Connection;
use crate::input::ValueSource;
use crate::output::{self, Format};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rekey_shared::proto;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "rekey",
    version,
    about = "The rekey secrets manager: command line"
)]
struct Cli {
    /// The server, as https://host:port.
    #[arg(
        long,
        global = true,
        env = "REKEY_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    server: String,
    /// The identity file (key, certificate and CA in one PEM, mode 0600).
    #[arg(long, global = true, env = "REKEY_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a secret, optionally with its first value.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The master key that protects it.
        #[arg(long = "key", default_value = "default")]
        key_name: String,
        /// A tag, KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<proto::Tag>,
        /// A client request token (32-64 characters) for safe retries.
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        value: ValueSource,
    },
    /// Print a value: CURRENT, or a stage, or a version.
    Get {
        name: String,
        #[arg(long, conflicts_with = "version")]
        stage: Option<String>,
        #[arg(long)]
        version: Option<String>,
        /// Print one field of a JSON value.
        #[arg(long, value_name = "KEY")]
        field: Option<String>,
    },
    /// Print the CURRENT values of up to 20 secrets, or of those a filter matches.
    BatchGet {
        names: Vec<String>,
        #[command(flatten)]
        filters: FilterArgs,
    },
    /// Add a version; it becomes CURRENT unless stages are given.
    Put {
        name: String,
        /// A stage for the new version (repeatable), e.g. PENDING.
        #[arg(long = "stage", value_name = "STAGE")]
        stages: Vec<String>,
        /// A client request token (32-64 characters) for safe retries.
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        value: ValueSource,
    },
    /// Change the description or master key, or add a CURRENT value.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Move the secret to this master key (data keys are re-wrapped).
        #[arg(long = "key")]
        key_name: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        value: ValueSource,
    },
    /// Show a secret's metadata and the stages of its versions.
    Describe { name: String },
    /// List secrets.
    List {
        #[command(flatten)]
        filters: FilterArgs,
        #[arg(long, value_enum, default_value = "name")]
        sort: Sort,
        /// Sort in descending order.
        #[arg(long)]
        desc: bool,
        /// Also list secrets scheduled for deletion.
        #[arg(long)]
        include_deleted: bool,
        /// Secrets per request (1-100).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// List a secret's versions, newest first.
    Versions {
        name: String,
        /// Include deprecated versions (those without a stage).
        #[arg(long)]
        all: bool,
    },
    /// Move a stage to a version, or remove it.
    #[command(group(clap::ArgGroup::new("which").args(["to", "from"]).required(true).multiple(true)))]
    Stage {
        name: String,
        stage: String,
        /// The version that gets the stage.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Only if the stage is on this version now; alone, removes the stage.
        #[arg(long, value_name = "VERSION")]
        from: Option<String>,
    },
    /// Add or replace tags.
    Tag {
        name: String,
        #[arg(value_name = "KEY=VALUE", required = true, value_parser = parse_tag)]
        tags: Vec<proto::Tag>,
    },
    /// Remove tags.
    Untag {
        name: String,
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Schedule a secret's deletion (default 30 days), or delete it now.
    Delete {
        name: String,
        /// Days before it is erased (7-30).
        #[arg(long, value_name = "N", conflicts_with = "force")]
        recovery_days: Option<u32>,
        /// Erase it now, with every version: this cannot be undone.
        #[arg(long)]
        force: bool,
    },
    /// Cancel a scheduled deletion.
    Restore { name: String },
    /// Print a random password from the server's OS random generator.
    Password(PasswordArgs),
    /// The access policy: show, apply, history.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit log: recent events, or `audit verify`.
    Audit(AuditArgs),
    /// Rotation: configure, step, retry, cancel, show, history, runs.
    #[command(subcommand)]
    Rotation(RotationCommand),
    /// Start a rotation now (automatic, or --manual: each step on command).
    Rotate {
        name: String,
        #[arg(long)]
        manual: bool,
        /// Return at once instead of waiting for an automatic run to end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Approve the rotation step a run waits at.
    Approve {
        name: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// Only if this run (the id `rotation show` gives) is still the one waiting.
        #[arg(long = "run", value_name = "RUN_ID", default_value = "")]
        run_id: String,
        /// Only if the run still waits at this step (createSecret, setSecret,
        /// testSecret, finishSecret).
        #[arg(long, value_name = "STEP", value_parser = parse_step)]
        step: Option<i32>,
    },
    /// Reject the rotation step a run waits at: the run is cancelled.
    Reject {
        name: String,
        #[arg(long)]
        comment: String,
        /// Only if this run (the id `rotation show` gives) is still the one waiting.
        #[arg(long = "run", value_name = "RUN_ID", default_value = "")]
        run_id: String,
    },
    /// Runs waiting for an approval you may give, oldest first.
    Approvals,
    /// A first look: an embedded server with demo data, and the UI on it.
    Demo,
    /// Print change events as they happen (one line, or one JSON object, each).
    Watch {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Run a command with secret values in its environment and pass its
    /// exit code through; no value is printed.
    Run {
        /// VAR=NAME, or VAR=NAME#FIELD for one field of a JSON value
        /// (repeatable).
        #[arg(long = "env", value_name = "VAR=NAME[#FIELD]", value_parser = inject::parse_env, required = true)]
        env: Vec<inject::EnvSpec>,
        /// Start the command again, with the new values, when one of them
        /// changes.
        #[arg(long)]
        watch: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish,
    /// powershell), e.g. `rekey completions bash > /etc/bash_completion.d/rekey`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `rekey man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force (TOML).
    Get,
    /// Apply a policy file (TOML) as the new version.
    /// A file written by `policy get` names the version it was edited from
    /// (`# policy version N`): applying it is refused if another version
    /// was applied since, unless `--force`.
    Apply {
        file: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// List the policy versions, newest first.
    History,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub verify: Option<AuditCommand>,
    /// Only events at or after T: RFC 3339 (2026-11-28T10:00:00Z) or an
    /// age such as 30m, 12h, 7d.
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Only events of this principal.
    #[arg(long, value_name = "P")]
    pub principal: Option<String>,
    /// Only events whose resource starts with R.
    #[arg(long, value_name = "R")]
    pub resource: Option<String>,
    /// At most N events (the newest are not guaranteed: events come in
    /// order from the start of the window).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Then keep printing new events as they are written (asking every
    /// second), until interrupted: for shipping to a log system.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the whole chain; exit 1 naming the first bad event.
    Verify {
        /// A checkpoint from the server log, as SEQ:MAC.
        #[arg(long, value_name = "SEQ:MAC")]
        checkpoint: Option<String>,
    },
}

/// Which secrets a listing matches. Each flag is repeatable; values are
/// prefixes and `!` negates.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Names starting with P.
    #[arg(long = "prefix", value_name = "P")]
    pub prefixes: Vec<String>,
    /// A tag with exactly KEY and a value starting with VALUE.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// A tag key starting with K.
    #[arg(long = "tag-key", value_name = "K")]
    pub tag_keys: Vec<String>,
    /// A tag value starting with V.
    #[arg(long = "tag-value", value_name = "V")]
    pub tag_values: Vec<String>,
    /// A description starting with D.
    #[arg(long = "description", value_name = "D")]
    pub descriptions: Vec<String>,
    /// Name, tag key, tag value or description starting with T.
    #[arg(long = "any", value_name = "T")]
    pub any: Vec<String>,
}

impl FilterArgs {
    pub fn to_filters(&self) -> Vec<proto::Filter> {
        use proto::FilterKey;
        [
            (FilterKey::Name, &self.prefixes),
            (FilterKey::Tag, &self.tags),
            (FilterKey::TagKey, &self.tag_keys),
            (FilterKey::TagValue, &self.tag_values),
            (FilterKey::Description, &self.descriptions),
            (FilterKey::All, &self.any),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(key, values)| proto::Filter {
            key: key as i32,
            values: values.clone(),
        })
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sort {
    Name,
    Created,
    Changed,
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// 1-4096 characters.
    #[arg(long, default_value_t = 32)]
    pub length: u32,
    #[arg(long, value_name = "CHARS", default_value = "")]
    pub exclude_characters: String,
    #[arg(long)]
    pub exclude_numbers: bool,
    #[arg(long)]
    pub exclude_punctuation: bool,
    #[arg(long)]
    pub exclude_uppercase: bool,
    #[arg(long)]
    pub exclude_lowercase: bool,
    #[arg(long)]
    pub include_space: bool,
    /// Do not require one character of each included type.
    #[arg(long)]
    pub no_require_each_type: bool,
}

/// A reader that stops reading (`rekey list | head -1`) ends rekey with
/// exit 0 and nothing on standard error, as it ends the other commands of
/// a pipeline: Rust ignores SIGPIPE, so printing to the closed pipe
/// panicked (exit 101, a multi-line panic message).
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if let Some(error) = message.strip_prefix("failed printing to stdout: ") {
            if error.contains("Broken pipe") {
                std::process::exit(0);
            }
            // A full disk, say: one line and exit 1, not a panic's report.
            eprintln!("rekey: cannot write the output: {error}");
            std::process::exit(1);
        }
        default(info);
    }));
}

/// `--step`: a step's name (`setSecret` or `set`).
fn parse_step(text: &str) -> Result<i32, String> {
    configure::parse_step(text)
        .map_err(|_| format!("--step {text:?}: steps are create, set, test, finish"))
}

fn parse_tag(text: &str) -> Result<proto::Tag, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("tag {text:?} is not KEY=VALUE"))?;
    Ok(proto::Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// Keeps the values `rekey` holds (`get`, the UI's revealed values,
/// `rekey run --watch`'s for its command's whole life) out of core files and
/// away from debuggers: a process that is not dumpable writes no core
/// file, and other processes of its user cannot attach to it or read its
/// memory. Unlike a core-size limit it does not pass to the command
/// `rekey run` starts: exec makes a process dumpable again. Best effort:
/// a failure changes nothing else.
fn not_dumpable() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
}

/// Runs `rekey` and returns its exit code.
pub fn main() -> ExitCode {
    quiet_on_closed_pipe();
    not_dumpable();
    let cli = Cli::parse();
    // Generated from the flags above, so they never drift from them.
    let generated = match cli.command {
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rekey", &mut script);
            Some(Ok(script))
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            Some(
                clap_mangen::Man::new(Cli::command())
                    .render(&mut page)
                    .map(|()| page),
            )
        }
        _ => None,
    };
    if let Some(text) = generated {
        let written =
            text.and_then(|text| std::io::Write::write_all(&mut std::io::stdout(), &text));
        return match written {
            Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("rekey: cannot write it: {error}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    let connection = Connection {
        server: cli.server,
        identity: cli.identity,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rekey: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None => runtime.block_on(async {
            let (channel, principal) = connection.lazy_channel()?;
            crate::ui::run(channel, &connection.server, &principal, None).await
        }),
        Some(Command::Demo) => runtime.block_on(crate::demo::run()),
        Some(Command::Run {
            env,
            watch,
            command,
        }) => {
            return match runtime.block_on(inject::run(&connection, env, command, watch)) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("rekey: {}", describe(&error));
                    ExitCode::FAILURE
                }
            };
        }
        Some(command) => runtime.block_on(run(&connection, cli.output, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`rekey get big | head -c 10`): a quiet end,
        // as the panic hook makes it for printing.
        Err(error) if is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            let refused = runtime.block_on(certificate_refused(&connection, &error));
            eprintln!("rekey: {}", refused.unwrap_or_else(|| describe(&error)));
            ExitCode::FAILURE
        }
    }
}

/// When a call failed as a connection that closed (UNAVAILABLE), whether
/// the server in fact refused this client's certificate at the handshake
/// (revoked, expired, of another CA), which tonic cannot tell apart: the
/// line that says so, as an operator can act on it.
async fn certificate_refused(connection: &Connection, error: &anyhow::Error) -> Option<String> {
    let status = error.downcast_ref::<tonic::Status>()?;
    let status = rekey_shared::channel::dropped_call_is_unavailable(status.clone());
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let identity = connection.identity().ok()?;
    let alert = rekey_shared::probe::certificate_refused(&connection.server, &identity).await?;
    Some(format!(
        "the server refuses this client's certificate at the TLS handshake ({alert:?}): \
         revoked, expired or not of its CA; get a new identity (rekeyd cert renew) \
         (UNAUTHENTICATED)"
    ))
}

fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

/// One line for an error: a server status with its code, or the chain of
/// causes of anything else.
fn describe(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        let status = &rekey_shared::channel::dropped_call_is_unavailable(status.clone());
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ) && let Some(source) = std::error::Error::source(status)
        {
            return format!(
                "{} ({})",
                rekey_shared::channel::describe_transport_error(source),
                output::status_line(status)
            );
        }
        return output::status_line(status);
    }
    // A local error can quote the server too (a rotator's error in a
    // failed run), so it is shown as anything else from there.
    output::shown(&format!("{error:#}")).into_owned()
}

fn token(token: Option<String>) -> String {
    token.unwrap_or_else(|| rekey_shared::VersionId::random().into_string())
}

async fn run(connection: &Connection, format: Format, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Policy(command) => {
            return admin::policy(&mut connection.admin().await?, format, command).await;
        }
        Command::Audit(args) => {
            return admin::audit(&mut connection.admin().await?, format, args).await;
        }
        Command::Rotation(command) => {
            return rotation::command(connection, format, command).await;
        }
        Command::Rotate {
            name,
            manual,
            no_wait,
        } => return rotation::rotate(connection, format, name, manual, no_wait).await,
        Command::Approve {
            name,
            comment,
            run_id,
            step,
        } => {
            let seen = (run_id, step.unwrap_or_default());
            return rotation::approve(connection, format, name, seen, comment, false).await;
        }
        Command::Reject {
            name,
            comment,
            run_id,
        } => {
            return rotation::approve(connection, format, name, (run_id, 0), comment, true).await;
        }
        Command::Approvals => return rotation::approvals(connection, format).await,
        Command::Watch { prefix } => return rotation::watch(connection, format, prefix).await,
        _ => {}
    }
    let mut secrets = connection.secrets().await?;
    let client = &mut secrets;
    match command {
        Command::Create {
            name,
            description,
            key_name,
            tags,
            token: request_token,
            value,
        } => {
            let request = proto::CreateSecretRequest {
                name,
                description,
                key_name,
                tags,
                client_request_token: token(request_token),
                ..Default::default()
            };
            write::create(client, format, request, &value).await
        }
        Command::Get {
            name,
            stage,
            version,
            field,
        } => read::get(client, format, name, stage, version, field.as_deref()).await,
        Command::BatchGet { names, filters } => {
            read::batch_get(client, format, names, filters.to_filters()).await
        }
        Command::Put {
            name,
            stages,
            token: request_token,
            value,
        } => write::put(client, format, name, stages, token(request_token), &value).await,
        Command::Update {
            name,
            description,
            key_name,
            token: request_token,
            value,
        } => {
            let request = proto::UpdateSecretRequest {
                name,
                description,
                key_name,
                client_request_token: token(request_token),
                ..Default::default()
            };
            write::update(client, format, request, &value).await
        }
        Command::Describe { name } => read::describe(client, format, name).await,
        Command::List {
            filters,
            sort,
            desc,
            include_deleted,
            page_size,
        } => {
            let request = proto::ListSecretsRequest {
                filters: filters.to_filters(),
                page_size,
                page_token: String::new(),
                sort_by: match sort {
                    Sort::Name => proto::SortBy::Name,
                    Sort::Created => proto::SortBy::Created,
                    Sort::Changed => proto::SortBy::Changed,
                } as i32,
                sort_order: if desc {
                    proto::SortOrder::Desc
                } else {
                    proto::SortOrder::Asc
                } as i32,
                include_planned_deletion: include_deleted,
            };
            read::list(client, format, request).await
        }
        Command::Versions { name, all } => read::versions(client, format, name, all).await,
        Command::Stage {
            name,
            stage,
            to,
            from,
        } => write::stage(client, format, name, stage, to, from).await,
        Command::Tag { name, tags } => write::tag(client, format, name, tags).await,
        Command::Untag { name, keys } => write::untag(client, format, name, keys).await,
        Command::Delete {
            name,
            recovery_days,
            force,
        } => lifecycle::delete(client, format, name, recovery_days, force).await,
        Command::Restore { name } => lifecycle::restore(client, format, name).await,
        Command::Password(args) => lifecycle::password(client, format, &args).await,
        Command::Policy(_)
        | Command::Audit(_)
        | Command::Rotation(_)
        | Command::Rotate { .. }
        | Command::Approve { .. }
        | Command::Reject { .. }
        | Command::Approvals
        | Command::Demo
        | Command::Run { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Watch { .. } => unreachable!("handled above"),
    }
}
