//! `rekey run`: starts a command with secret values in its environment,
//! read once before it starts, and passes its exit status through. It
//! never prints a value; a secret that cannot be read stops it before the
//! command starts.

use crate::client::Connection;
use rekey_shared::proto;
use std::process::ExitCode;
use zeroize::Zeroizing;

/// `VAR=NAME[#FIELD]`: the variable, the secret, and a field of its JSON
/// value.
#[derive(Debug, Clone)]
pub struct EnvSpec {
    variable: String,
    name: String,
    field: Option<String>,
}

/// Parses `VAR=NAME[#FIELD]` (for the flag parser).
pub fn parse_env(spec: &str) -> Result<EnvSpec, String> {
    let (variable, secret) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not VAR=NAME[#FIELD]"))?;
    let valid = variable
        .chars()
        .enumerate()
        .all(|(index, c)| c == '_' || c.is_ascii_alphabetic() || (index > 0 && c.is_ascii_digit()));
    if variable.is_empty() || !valid {
        return Err(format!(
            "{variable:?} is not a variable name (letters, digits, _; not starting with a digit)"
        ));
    }
    let (name, field) = match secret.split_once('#') {
        Some((name, field)) => (name, Some(field.to_owned())),
        None => (secret, None),
    };
    if name.is_empty() {
        return Err(format!("{spec:?} names no secret"));
    }
    Ok(EnvSpec {
        variable: variable.to_owned(),
        name: name.to_owned(),
        field,
    })
}

/// The text a variable gets: the value, or one field of its JSON.
fn pick(
    response: &proto::GetSecretValueResponse,
    field: Option<&str>,
) -> anyhow::Result<Zeroizing<String>> {
    let text = response.secret_string.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "{} is a binary value; an environment variable needs text",
            response.name
        )
    })?;
    let Some(field) = field else {
        return Ok(Zeroizing::new(text.to_owned()));
    };
    let document: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| anyhow::anyhow!("the value of {} is not JSON", response.name))?;
    let picked = document.get(field).ok_or_else(|| {
        anyhow::anyhow!("the JSON value of {} has no field {field:?}", response.name)
    })?;
    Ok(Zeroizing::new(match picked {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }))
}

/// Reads every value, then runs `command` with them and returns its exit
/// code (128 + the signal for a command a signal ended).
pub async fn run(
    connection: &Connection,
    specs: Vec<EnvSpec>,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut client = connection.secrets().await?;
    let mut values = Vec::with_capacity(specs.len());
    for spec in &specs {
        let response = client
            .get_secret_value(proto::GetSecretValueRequest {
                name: spec.name.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        values.push((
            spec.variable.as_str(),
            pick(&response, spec.field.as_deref())?,
        ));
    }
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("give a command after --"))?;
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .envs(
            values
                .iter()
                .map(|(variable, value)| (variable, value.as_str())),
        )
        .spawn()
        .map_err(|error| anyhow::anyhow!("cannot start {program}: {error}"))?;
    drop(values);
    let status = child.wait().await?;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
