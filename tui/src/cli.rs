//! The `rekey` command line. Each subcommand maps to one RPC (or a loop of
//! paged RPCs) and prints its result as text or JSON. Exit codes: 0 success,
//! 1 an error from the server or the input, 2 a usage error. Errors are one
//! line on standard error and never contain a value.

use crate::client::Connection;
use crate::input::ValueSource;
use crate::output::{self, Format};
use clap::{Parser, Subcommand};
use rekey_shared::proto::{self, Filter, FilterKey};
use serde_json::json;
use std::io::Write;
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
    /// Show a secret's metadata and the stages of its versions.
    Describe { name: String },
    /// List secrets.
    List {
        /// Only names starting with P (repeatable; `!P` excludes).
        #[arg(long = "prefix", value_name = "P")]
        prefixes: Vec<String>,
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

/// Runs `rekey` and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        eprintln!(
            "rekey: the terminal UI is not available yet; run `rekey --help` for the commands"
        );
        return ExitCode::from(2);
    };
    let connection = Connection {
        server: cli.server,
        identity: cli.identity,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rekey: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&connection, cli.output, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rekey: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// One line for an error: a server status with its code, or the chain of
/// causes of anything else.
fn describe(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
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
    format!("{error:#}")
}

fn name_filters(prefixes: &[String]) -> Vec<Filter> {
    if prefixes.is_empty() {
        return Vec::new();
    }
    vec![Filter {
        key: FilterKey::Name as i32,
        values: prefixes.to_vec(),
    }]
}

fn token(token: Option<String>) -> String {
    token.unwrap_or_else(|| rekey_shared::VersionId::random().into_string())
}

async fn run(connection: &Connection, format: Format, command: Command) -> anyhow::Result<()> {
    let mut secrets = connection.secrets().await?;
    match command {
        Command::Create {
            name,
            description,
            key_name,
            tags,
            token: request_token,
            value,
        } => {
            let (secret_string, secret_binary) = match value.named()? {
                Some(value) => value.to_fields(),
                None => (None, None),
            };
            let response = secrets
                .create_secret(proto::CreateSecretRequest {
                    name,
                    description,
                    key_name,
                    tags,
                    client_request_token: token(request_token),
                    secret_string,
                    secret_binary,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "name": response.name,
                    "secret_id": response.secret_id,
                    "version_id": response.version_id,
                })),
                Format::Text => println!("created {} ({})", response.name, response.secret_id),
            }
        }
        Command::Get {
            name,
            stage,
            version,
            field,
        } => {
            let response = secrets
                .get_secret_value(proto::GetSecretValueRequest {
                    name,
                    version_id: version,
                    version_stage: stage,
                })
                .await?
                .into_inner();
            print_value(format, &response, field.as_deref())?;
        }
        Command::Put {
            name,
            stages,
            token: request_token,
            value,
        } => {
            let (secret_string, secret_binary) = value.required()?.to_fields();
            let response = secrets
                .put_secret_value(proto::PutSecretValueRequest {
                    name,
                    client_request_token: token(request_token),
                    secret_string,
                    secret_binary,
                    version_stages: stages,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "name": response.name,
                    "secret_id": response.secret_id,
                    "version_id": response.version_id,
                    "version_stages": response.version_stages,
                })),
                Format::Text => println!(
                    "{} version {} [{}]",
                    response.name,
                    response.version_id,
                    response.version_stages.join(",")
                ),
            }
        }
        Command::Describe { name } => {
            let response = secrets
                .describe_secret(proto::DescribeSecretRequest { name })
                .await?
                .into_inner();
            output::print_metadata(format, &response);
        }
        Command::List {
            prefixes,
            page_size,
        } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = secrets
                    .list_secrets(proto::ListSecretsRequest {
                        filters: name_filters(&prefixes),
                        page_size,
                        page_token,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                all.extend(page.secrets);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::print_secret_list(format, &all);
        }
        Command::Versions { name, all } => {
            let mut versions = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = secrets
                    .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
                        name: name.clone(),
                        include_deprecated: all,
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                versions.extend(page.versions);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::print_versions(format, &versions);
        }
        Command::Stage {
            name,
            stage,
            to,
            from,
        } => {
            if to.is_none() && from.is_none() {
                anyhow::bail!("give --to VERSION, --from VERSION (to remove the stage), or both");
            }
            secrets
                .update_secret_version_stage(proto::UpdateSecretVersionStageRequest {
                    name: name.clone(),
                    version_stage: stage.clone(),
                    move_to_version_id: to.clone(),
                    remove_from_version_id: from,
                })
                .await?;
            match (format, to) {
                (Format::Json, to) => output::print_json(&json!({
                    "name": name, "stage": stage, "version_id": to,
                })),
                (Format::Text, Some(to)) => println!("{name}: {stage} is on version {to}"),
                (Format::Text, None) => println!("{name}: {stage} removed"),
            }
        }
    }
    Ok(())
}

fn print_value(
    format: Format,
    response: &proto::GetSecretValueResponse,
    field: Option<&str>,
) -> anyhow::Result<()> {
    if let Some(field) = field {
        let text = response.secret_string.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is a binary value; --field needs a JSON value",
                response.name
            )
        })?;
        let document: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| anyhow::anyhow!("the value of {} is not JSON", response.name))?;
        let picked = document.get(field).ok_or_else(|| {
            anyhow::anyhow!("the JSON value of {} has no field {field:?}", response.name)
        })?;
        match (format, picked) {
            (Format::Text, serde_json::Value::String(text)) => println!("{text}"),
            (_, other) => println!("{other}"),
        }
        return Ok(());
    }
    match format {
        Format::Json => output::print_json(&output::value_json(response)),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            if let Some(text) = &response.secret_string {
                writeln!(stdout, "{text}")?;
            } else if let Some(binary) = &response.secret_binary {
                stdout.write_all(binary)?;
            }
            stdout.flush()?;
        }
    }
    Ok(())
}
