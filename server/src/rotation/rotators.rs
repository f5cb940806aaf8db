//! Rotators: what each step does to the world outside rekey. `password`
//! makes a new random value (or a new value for one field of a JSON
//! secret) and has no target system; `exec:NAME` runs a program named in
//! the server configuration, once per step, with an empty environment, a
//! JSON document on standard input and a time limit.
//!
//! Errors say what failed in words an operator can act on; a value never
//! appears in one (a program's standard error is redacted and truncated).

use super::Step;
use super::database::{DatabaseRotator, Dialect, Session, Strategy};
use crate::config::{ExecRotator, RotationSettings};
use crate::password::{self, PasswordPolicy};
use rekey_shared::SecretValue;
use rekey_shared::value::MAX_VALUE_BYTES;
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// The longest standard-error text kept in a run's history.
const MAX_LOG_CHARS: usize = 2000;

/// The rotator settings of a configuration, stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RotatorSettings {
    pub password_policy: PasswordPolicy,
    /// For a JSON value: the field that gets the new password.
    pub json_field: String,
    pub admin_secret: String,
    pub strategy: String,
    /// Alternating users: the database user the admin switches with its
    /// clone, pinned when rotation is configured (from the secret's
    /// CURRENT value then), so that whoever may later write the secret's
    /// value cannot point the admin at another user.
    pub user: String,
    /// Alternating users: where the user's new passwords go (host, port,
    /// TLS verified or not), pinned with `user`, so that whoever may later
    /// write the value cannot have testSecret log in elsewhere with a
    /// password that works. Empty in a configuration from before it was
    /// pinned: the admin's place.
    pub place: String,
}

/// What a step is given.
#[derive(Debug)]
pub struct StepInput<'a> {
    pub step: Step,
    /// A revert: setSecret and testSecret of CURRENT's value after a run
    /// ended without success.
    pub revert: bool,
    pub secret_name: &'a str,
    pub secret_id: &'a str,
    pub token: &'a str,
    pub current: Option<&'a SecretValue>,
    pub pending: Option<&'a SecretValue>,
    /// The PREVIOUS value: a database user may still have it.
    pub previous: Option<&'a SecretValue>,
    /// When reverting: the run's pending value, which the target may hold.
    pub replacing: Option<&'a SecretValue>,
}

/// What a step returns: a new value (createSecret only) and what the
/// rotator said (already redacted).
#[derive(Debug, Default)]
pub struct StepOutput {
    pub new_value: Option<SecretValue>,
    pub log: String,
    /// setSecret of a single database user: which of the step's values
    /// the target took when it logged in to change the password, the one
    /// a revert puts back (not a CURRENT a writer may have chosen).
    pub held: Option<Held>,
}

/// One of a step's values (see [`StepOutput::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Current,
    Previous,
    /// The pending value: the target took it already, nothing changed.
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RotatorError(pub String);

#[derive(Debug, Clone)]
pub enum Rotator {
    Password(RotatorSettings),
    Exec { name: String, program: ExecRotator },
    Database(DatabaseRotator),
}

impl Rotator {
    /// The rotator a configuration names, if this server has it.
    pub fn from_config(
        rotator: &str,
        settings: &RotatorSettings,
        server: &RotationSettings,
    ) -> Result<Self, RotatorError> {
        if rotator == "password" {
            return Ok(Rotator::Password(settings.clone()));
        }
        if rotator == "postgres" || rotator == "mysql" {
            let strategy = Strategy::parse(&settings.strategy)?;
            if strategy == Strategy::Alternating && settings.admin_secret.is_empty() {
                return Err(RotatorError(
                    "the alternating strategy needs an admin secret (--admin-secret NAME)"
                        .to_owned(),
                ));
            }
            return Ok(Rotator::Database(DatabaseRotator {
                dialect: if rotator == "postgres" {
                    Dialect::Postgres
                } else {
                    Dialect::Mysql
                },
                strategy,
                policy: settings.password_policy.clone(),
                user: settings.user.clone(),
                place: settings.place.clone(),
                admin: None,
                session: Session {
                    limit: Duration::from_secs(server.database_timeout_seconds.max(1)),
                    ca_file: server.database_ca_file.clone(),
                },
            }));
        }
        if let Some(name) = rotator.strip_prefix("exec:") {
            return match server.exec.get(name) {
                Some(program) => Ok(Rotator::Exec {
                    name: name.to_owned(),
                    program: program.clone(),
                }),
                None => Err(RotatorError(format!(
                    "no exec rotator {name:?} is configured on this server (rotation.exec.{name} in rekeyd.toml)"
                ))),
            };
        }
        Err(RotatorError(format!(
            "rotator {rotator:?} is not available; use password, postgres, mysql or exec:NAME"
        )))
    }

    /// Runs one step. Boxed with its `Send` bound spelled out, which keeps
    /// the compiler's inference of the engine's futures tractable.
    pub fn run<'a>(
        &'a self,
        input: &'a StepInput<'a>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<StepOutput, RotatorError>> + Send + 'a>,
    > {
        Box::pin(async move {
            match self {
                Rotator::Password(settings) => password_step(settings, input),
                Rotator::Exec { name, program } => exec_step(name, program, input).await,
                Rotator::Database(database) => database.run(input).await,
            }
        })
    }

    /// The admin secret a database rotator switches users with, if any.
    pub fn admin_secret<'a>(&self, settings: &'a RotatorSettings) -> Option<&'a str> {
        match self {
            Rotator::Database(database) if database.strategy == Strategy::Alternating => {
                Some(settings.admin_secret.as_str())
            }
            _ => None,
        }
    }

    pub fn with_admin(mut self, value: SecretValue) -> Self {
        if let Rotator::Database(database) = &mut self {
            database.admin = Some(value);
        }
        self
    }
}

fn password_step(
    settings: &RotatorSettings,
    input: &StepInput<'_>,
) -> Result<StepOutput, RotatorError> {
    if input.step != Step::Create || input.revert {
        // No target system: setting and testing are nothing to do.
        return Ok(StepOutput::default());
    }
    let generated = password::generate(&settings.password_policy)
        .map_err(|error| RotatorError(format!("the password policy: {error}")))?;
    if settings.json_field.is_empty() {
        return Ok(StepOutput {
            new_value: Some(SecretValue::text(generated.as_str())),
            log: String::new(),
            held: None,
        });
    }
    let current = match input.current {
        Some(SecretValue::Text(text)) => text,
        _ => {
            return Err(RotatorError(format!(
                "field {:?} needs a JSON text value, and CURRENT is not text",
                settings.json_field
            )));
        }
    };
    let mut document: serde_json::Value = serde_json::from_str(current).map_err(|_| {
        RotatorError(format!(
            "field {:?} needs a JSON object, and CURRENT is not JSON",
            settings.json_field
        ))
    })?;
    let object = document.as_object_mut().ok_or_else(|| {
        RotatorError(format!(
            "field {:?} needs a JSON object, and CURRENT is another JSON value",
            settings.json_field
        ))
    })?;
    // A field the value does not have is most likely mistyped (or a
    // path, which is not supported): adding it would leave the password
    // the value holds as it is, under a run that says it rotated.
    let Some(field) = object.get_mut(&settings.json_field) else {
        return Err(RotatorError(format!(
            "CURRENT has no field {:?} to put the new password in (--field names a top-level \
             field of the JSON object, as it is spelled there)",
            settings.json_field
        )));
    };
    if let serde_json::Value::String(old) = field {
        zeroize::Zeroize::zeroize(old);
    }
    *field = serde_json::Value::String(generated.as_str().to_owned());
    let text = Zeroizing::new(serde_json::to_string(&document).unwrap_or_default());
    if let Some(serde_json::Value::String(field)) = document.get_mut(&settings.json_field) {
        zeroize::Zeroize::zeroize(field);
    }
    Ok(StepOutput {
        new_value: Some(SecretValue::text(text.as_str())),
        log: String::new(),
        held: None,
    })
}

fn value_fields(
    prefix: &str,
    value: Option<&SecretValue>,
    document: &mut serde_json::Map<String, serde_json::Value>,
) {
    use base64::Engine;
    match value {
        Some(SecretValue::Text(text)) => {
            document.insert(
                prefix.to_owned(),
                serde_json::Value::String(text.as_str().to_owned()),
            );
        }
        Some(SecretValue::Binary(bytes)) => {
            document.insert(
                format!("{prefix}_base64"),
                serde_json::Value::String(
                    base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()),
                ),
            );
        }
        None => {
            document.insert(prefix.to_owned(), serde_json::Value::Null);
        }
    }
}

/// What `stream` gives, the first `limit` bytes of it, in a buffer that
/// never grows (so no copy of a value is left in memory it gave back).
async fn read_limited(mut stream: impl AsyncRead + Unpin, limit: usize) -> Zeroizing<Vec<u8>> {
    let mut buffer = Zeroizing::new(Vec::with_capacity(limit));
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if buffer.len() < limit {
                    let keep = read.min(limit - buffer.len());
                    buffer.extend_from_slice(&chunk[..keep]);
                }
            }
        }
    }
    chunk.fill(0);
    buffer
}

/// Replaces every occurrence of the values with `<redacted>`, and keeps
/// the text short. Of each value: the whole of it, and in a JSON object
/// the value of every field whose name says it holds a secret (see
/// [`secret_texts`]); binary values that are UTF-8 as text.
fn redact(text: &str, values: &[Option<&SecretValue>]) -> String {
    let mut secrets: Vec<Zeroizing<String>> = values
        .iter()
        .flatten()
        .flat_map(|value| secret_texts(value))
        .collect();
    // A secret that holds another goes first, or its rest would show.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut redacted = text.to_owned();
    for secret in &secrets {
        redacted = redacted.replace(secret.as_str(), "<redacted>");
    }
    let mut short: String = redacted.trim().chars().take(MAX_LOG_CHARS).collect();
    if redacted.trim().chars().count() > MAX_LOG_CHARS {
        short.push_str(" …");
    }
    short
}

/// Field names that hold secrets, as parts of a JSON object's keys.
const SECRET_FIELDS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
];

/// What of `value` a log must not show: the value, and the strings and
/// numbers (of at least 4 characters, so that `"key_version": 1` does not
/// hide every 1) under JSON fields whose names say they are secret, at any
/// depth.
fn secret_texts(value: &SecretValue) -> Vec<Zeroizing<String>> {
    let mut found = Vec::new();
    // As the program's input carries a binary value: in base64.
    if let SecretValue::Binary(bytes) = value
        && !bytes.is_empty()
    {
        use base64::Engine;
        found.push(Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()),
        ));
    }
    let text = match value {
        SecretValue::Text(text) => text.as_str(),
        SecretValue::Binary(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => return found,
        },
    };
    if text.is_empty() {
        return found;
    }
    found.push(Zeroizing::new(text.to_owned()));
    fn walk(node: &serde_json::Value, secret: bool, found: &mut Vec<Zeroizing<String>>) {
        match node {
            serde_json::Value::Object(fields) => {
                for (name, field) in fields {
                    let name = name.to_ascii_lowercase();
                    let named = SECRET_FIELDS.iter().any(|part| name.contains(part));
                    walk(field, secret || named, found);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, secret, found);
                }
            }
            serde_json::Value::String(text) if secret && text.chars().count() >= 4 => {
                found.push(Zeroizing::new(text.clone()));
            }
            serde_json::Value::Number(number) if secret => {
                let text = number.to_string();
                if text.len() >= 4 {
                    found.push(Zeroizing::new(text));
                }
            }
            _ => {}
        }
    }
    if let Ok(document) = serde_json::from_str::<serde_json::Value>(text) {
        walk(&document, false, &mut found);
    }
    // Each as a JSON string writes it too (a program that prints its
    // input): `pa"ss\wd` as `pa\"ss\\wd`, within its quotes.
    let escaped: Vec<Zeroizing<String>> = found
        .iter()
        .filter_map(|secret| {
            let quoted = Zeroizing::new(serde_json::to_string(secret.as_str()).ok()?);
            let inner = quoted.get(1..quoted.len() - 1)?;
            (inner != secret.as_str()).then(|| Zeroizing::new(inner.to_owned()))
        })
        .collect();
    found.extend(escaped);
    found
}

/// An exec rotator's process group (its id is the program's), killed
/// whole when dropped: when the step ends, or when its future is dropped.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(pid) = self.0.and_then(|id| i32::try_from(id).ok()) else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            // Gone already (ESRCH) is what a program that cleans up leaves.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

async fn exec_step(
    name: &str,
    program: &ExecRotator,
    input: &StepInput<'_>,
) -> Result<StepOutput, RotatorError> {
    let mut document = serde_json::Map::new();
    document.insert("step".into(), input.step.as_str().into());
    document.insert("revert".into(), input.revert.into());
    document.insert("secret_name".into(), input.secret_name.into());
    document.insert("secret_id".into(), input.secret_id.into());
    document.insert("token".into(), input.token.into());
    value_fields("current", input.current, &mut document);
    value_fields("pending", input.pending, &mut document);
    // What the target may hold besides: to log in with when putting
    // CURRENT back (a user who changes their own password needs the one
    // they have now).
    value_fields("previous", input.previous, &mut document);
    value_fields("replacing", input.replacing, &mut document);
    let stdin_bytes = Zeroizing::new(serde_json::to_vec(&document).unwrap_or_default());
    for value in document.values_mut() {
        if let serde_json::Value::String(text) = value {
            zeroize::Zeroize::zeroize(text);
        }
    }

    // In a process group of its own, which ends with the step: nothing
    // the program started goes on changing the target after the step
    // ended (timed out, and reverted, say).
    let mut child = tokio::process::Command::new(&program.command)
        .args(&program.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            RotatorError(format!(
                "cannot start rotator {name} ({}): {error}",
                program.command.display()
            ))
        })?;
    let group = ProcessGroup(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let timeout = Duration::from_secs(program.timeout_seconds.max(1));
    let work = async {
        // Written while its output is read: a program may write more than
        // a pipe holds before it reads its input (which may be more than a
        // pipe holds too), and then neither side would go on.
        let input = async {
            if let Some(mut stdin) = stdin {
                // A program that does not read its input is its own business.
                let _ = stdin.write_all(&stdin_bytes).await;
                let _ = stdin.shutdown().await;
            }
        };
        let out = async {
            match stdout {
                Some(stream) => read_limited(stream, MAX_VALUE_BYTES + 1).await,
                None => Zeroizing::new(Vec::new()),
            }
        };
        let err = async {
            match stderr {
                Some(stream) => read_limited(stream, 64 * 1024).await,
                None => Zeroizing::new(Vec::new()),
            }
        };
        let ((), out, err, status) = tokio::join!(input, out, err, child.wait());
        (out, err, status)
    };
    let finished = tokio::time::timeout(timeout, work).await;
    drop(group);
    let (stdout, stderr, status) = match finished {
        Ok(result) => result,
        Err(_) => {
            return Err(RotatorError(format!(
                "rotator {name} did not finish {} within {} seconds and was stopped",
                input.step,
                timeout.as_secs()
            )));
        }
    };
    // What createSecret printed is the new value: never in its log either.
    let printed = (input.step == Step::Create && !input.revert).then(|| {
        let mut printed = stdout.to_vec();
        if printed.ends_with(b"\n") {
            printed.pop();
        }
        SecretValue::binary(printed)
    });
    // NUL escaped: PostgreSQL's text, where the run's history is kept,
    // cannot hold one.
    let log = redact(
        &String::from_utf8_lossy(&stderr),
        &[
            input.current,
            input.pending,
            input.previous,
            input.replacing,
            printed.as_ref(),
        ],
    )
    .replace('\0', "\\0");
    let status = status.map_err(|error| RotatorError(format!("rotator {name}: {error}")))?;
    if !status.success() {
        let code = status
            .code()
            .map_or("a signal".to_owned(), |code| format!("status {code}"));
        return Err(RotatorError(if log.is_empty() {
            format!("rotator {name} failed {} with {code}", input.step)
        } else {
            format!("rotator {name} failed {} with {code}: {log}", input.step)
        }));
    }
    if input.step != Step::Create || input.revert {
        return Ok(StepOutput {
            new_value: None,
            log,
            held: None,
        });
    }
    let mut value = stdout.to_vec();
    if value.ends_with(b"\n") {
        value.pop();
    }
    let value = Zeroizing::new(value);
    if value.is_empty() {
        return Err(RotatorError(format!(
            "rotator {name} printed no new value on standard output for createSecret"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(RotatorError(format!(
            "rotator {name} printed more than {MAX_VALUE_BYTES} bytes for createSecret"
        )));
    }
    let text = std::str::from_utf8(&value).map_err(|_| {
        RotatorError(format!(
            "rotator {name} printed a value that is not UTF-8 text for createSecret"
        ))
    })?;
    let new_value = SecretValue::text(text);
    if input
        .current
        .is_some_and(|current| current.same_as(&new_value))
    {
        return Err(RotatorError(format!(
            "rotator {name} printed the CURRENT value again for createSecret"
        )));
    }
    Ok(StepOutput {
        new_value: Some(new_value),
        log,
        held: None,
    })
}

#[cfg(test)]
mod tests;
