//! Commands that read: get, batch-get, describe, list, versions.

use crate::output::{self, Format, shown};
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::{self};
use serde_json::json;
use std::io::{IsTerminal, Write};
use tonic::transport::Channel;
use zeroize::Zeroizing;

type Client = SecretsClient<Channel>;

/// A value as printed: as it is, unless standard output is a terminal,
/// where its control characters (but line ends and tabs) are escaped, so
/// that a value cannot steer the terminal (set its clipboard through OSC
/// 52, retitle it, hide what follows). A copy that is wiped.
fn for_terminal(text: &str) -> Zeroizing<String> {
    if std::io::stdout().is_terminal() {
        Zeroizing::new(output::shown_document(text).into_owned())
    } else {
        Zeroizing::new(text.to_owned())
    }
}

pub async fn get(
    client: &mut Client,
    format: Format,
    name: String,
    stage: Option<String>,
    version: Option<String>,
    field: Option<&str>,
) -> anyhow::Result<()> {
    let mut response = client
        .get_secret_value(proto::GetSecretValueRequest {
            name,
            version_id: version,
            version_stage: stage,
        })
        .await?
        .into_inner();
    let printed = print_value(format, &response, field);
    rekey_shared::value::wipe_response(&mut response);
    printed
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
        let mut document: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| anyhow::anyhow!("the value of {} is not JSON", response.name))?;
        let found = match document.get(field) {
            Some(serde_json::Value::String(text)) if format == Format::Text => {
                println!("{}", for_terminal(text).as_str());
                true
            }
            Some(other) => {
                println!("{other}");
                true
            }
            None => false,
        };
        output::wipe_json(&mut document);
        anyhow::ensure!(
            found,
            "the JSON value of {} has no field {field:?}",
            response.name
        );
        return Ok(());
    }
    match format {
        Format::Json => {
            let mut document = output::value_json(response);
            output::print_json(&document);
            output::wipe_json(&mut document);
        }
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            if let Some(text) = &response.secret_string {
                writeln!(stdout, "{}", for_terminal(text).as_str())?;
            } else if let Some(binary) = &response.secret_binary {
                anyhow::ensure!(
                    !stdout.is_terminal(),
                    "{} holds a binary value, which is not written to a terminal: redirect it \
                     (rekey get {} > FILE)",
                    response.name,
                    response.name
                );
                stdout.write_all(binary)?;
            }
            stdout.flush()?;
        }
    }
    Ok(())
}

/// Values of several secrets. A secret that could not be read is reported
/// on standard error and makes the exit code 1; the others still print.
pub async fn batch_get(
    client: &mut Client,
    format: Format,
    names: Vec<String>,
    filters: Vec<proto::Filter>,
) -> anyhow::Result<()> {
    let mut values = Wiped(Vec::new());
    let mut errors = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .batch_get_secret_value(proto::BatchGetSecretValueRequest {
                names: names.clone(),
                filters: filters.clone(),
                page_size: 0,
                page_token,
            })
            .await?
            .into_inner();
        values.0.extend(page.secret_values);
        errors.extend(page.errors);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    match format {
        Format::Json => {
            let mut document = json!({
                "secret_values": values.0.iter().map(output::value_json).collect::<Vec<_>>(),
                "errors": errors.iter().map(|e| json!({
                    "name": e.name, "code": e.code, "message": e.message,
                })).collect::<Vec<_>>(),
            });
            output::print_json(&document);
            output::wipe_json(&mut document);
        }
        Format::Text => {
            for value in &values.0 {
                match (&value.secret_string, &value.secret_binary) {
                    // One line each: a value's own line ends, escaped, do
                    // not make lines that seem another secret's.
                    (Some(text), _) => {
                        let text = Zeroizing::new(shown(text).into_owned());
                        println!("{}: {}", value.name, text.as_str());
                    }
                    (None, Some(binary)) => {
                        println!("{}: ({} bytes, binary)", value.name, binary.len())
                    }
                    (None, None) => println!("{}:", value.name),
                }
            }
            for error in &errors {
                eprintln!(
                    "rekey: {}: {} ({})",
                    shown(&error.name),
                    shown(&error.message),
                    error.code
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} secrets could not be read",
            errors.len(),
            errors.len() + values.0.len()
        )
    }
}

/// Responses with values, wiped when dropped: also when a later page fails.
struct Wiped(Vec<proto::GetSecretValueResponse>);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0
            .iter_mut()
            .for_each(rekey_shared::value::wipe_response);
    }
}

pub async fn describe(client: &mut Client, format: Format, name: String) -> anyhow::Result<()> {
    let response = client
        .describe_secret(proto::DescribeSecretRequest { name })
        .await?
        .into_inner();
    output::print_metadata(format, &response);
    Ok(())
}

/// Every page of a listing.
pub async fn list(
    client: &mut Client,
    format: Format,
    mut request: proto::ListSecretsRequest,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    loop {
        let page = client.list_secrets(request.clone()).await?.into_inner();
        all.extend(page.secrets);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    output::print_secret_list(format, &all);
    Ok(())
}

pub async fn versions(
    client: &mut Client,
    format: Format,
    name: String,
    all: bool,
) -> anyhow::Result<()> {
    let mut versions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
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
    Ok(())
}
