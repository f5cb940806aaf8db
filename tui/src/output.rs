//! What `rekey` prints: text for people, JSON (`--output json`) for
//! scripts, and errors as one line on standard error.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rekey_shared::proto;
use rekey_shared::time::format_timestamp;
use serde_json::{Value, json};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Text from the server as a terminal may show it: control characters
/// (escape sequences, carriage returns, new lines) and bidirectional
/// overrides written as `\u{1b}`, so that what another client stored (a
/// description, the name an audit event quotes, a rotator's error) cannot
/// move the cursor, retitle the window, set the clipboard or forge lines.
/// Values are printed as they are: `get` is for programs.
pub fn shown(text: &str) -> Cow<'_, str> {
    escaped(text, |_| false)
}

/// A document from the server (a policy) as [`shown`], but keeping its
/// lines and tabs.
pub fn shown_document(text: &str) -> Cow<'_, str> {
    escaped(text, |c| matches!(c, '\n' | '\t'))
}

fn escaped(text: &str, kept: impl Fn(char) -> bool) -> Cow<'_, str> {
    let hidden = |c: char| {
        !kept(c)
            && (c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    };
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn time(timestamp: &Option<prost_types::Timestamp>) -> Value {
    timestamp
        .as_ref()
        .map_or(Value::Null, |t| Value::String(format_timestamp(t)))
}

fn tags_json(tags: &[proto::Tag]) -> Value {
    Value::Object(
        tags.iter()
            .map(|tag| (tag.key.clone(), Value::String(tag.value.clone())))
            .collect(),
    )
}

/// Prints `value` as pretty JSON straight to standard output: no text of
/// it is built in memory first, where a value it holds would stay behind.
pub fn print_json(value: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out));
    // As `println!` would: the panic hook ends a closed pipe quietly.
    if let Err(error) = written {
        panic!("failed printing to stdout: {error}");
    }
}

pub fn metadata_json(secret: &proto::SecretMetadata) -> Value {
    json!({
        "name": secret.name,
        "secret_id": secret.secret_id,
        "description": secret.description,
        "key_name": secret.key_name,
        "tags": tags_json(&secret.tags),
        "created_at": time(&secret.created_at),
        "changed_at": time(&secret.changed_at),
        "last_accessed_at": time(&secret.last_accessed_at),
        "deletion_date": time(&secret.deletion_date),
        "rotation_enabled": secret.rotation_enabled,
        "last_rotated_at": time(&secret.last_rotated_at),
        "next_rotation_at": time(&secret.next_rotation_at),
        "versions": secret.versions.iter().map(|v| json!({
            "version_id": v.version_id,
            "stages": v.stages,
        })).collect::<Vec<_>>(),
    })
}

pub fn print_metadata(format: Format, secret: &proto::SecretMetadata) {
    if format == Format::Json {
        return print_json(&metadata_json(secret));
    }
    let or_dash = |value: Value| match value {
        Value::String(text) => text,
        _ => "-".to_owned(),
    };
    println!("name:          {}", secret.name);
    println!("id:            {}", secret.secret_id);
    println!("description:   {}", shown(&secret.description));
    println!("master key:    {}", secret.key_name);
    println!("created:       {}", or_dash(time(&secret.created_at)));
    println!("changed:       {}", or_dash(time(&secret.changed_at)));
    println!("last accessed: {}", or_dash(time(&secret.last_accessed_at)));
    println!(
        "rotation:      {}",
        if secret.rotation_enabled {
            "enabled"
        } else {
            "off"
        }
    );
    println!("last rotated:  {}", or_dash(time(&secret.last_rotated_at)));
    println!("next rotation: {}", or_dash(time(&secret.next_rotation_at)));
    if secret.deletion_date.is_some() {
        println!("deletion date: {}", or_dash(time(&secret.deletion_date)));
    }
    let tags: Vec<String> = secret
        .tags
        .iter()
        .map(|tag| format!("{}={}", shown(&tag.key), shown(&tag.value)))
        .collect();
    println!("tags:          {}", tags.join(" "));
    println!("versions:");
    for version in &secret.versions {
        println!("  {}  {}", version.version_id, version.stages.join(","));
    }
}

pub fn print_secret_list(format: Format, secrets: &[proto::SecretMetadata]) {
    if format == Format::Json {
        return print_json(&Value::Array(secrets.iter().map(metadata_json).collect()));
    }
    println!("{:<40} {:<20} DESCRIPTION", "NAME", "CHANGED");
    for secret in secrets {
        let changed = match time(&secret.changed_at) {
            Value::String(text) => text,
            _ => "-".to_owned(),
        };
        println!(
            "{:<40} {:<20} {}",
            shown(&secret.name),
            changed,
            shown(&secret.description)
        );
    }
}

pub fn print_versions(format: Format, versions: &[proto::SecretVersion]) {
    if format == Format::Json {
        let list: Vec<Value> = versions
            .iter()
            .map(|v| {
                json!({
                    "version_id": v.version_id,
                    "stages": v.stages,
                    "created_at": time(&v.created_at),
                    "created_by": v.created_by,
                    "last_accessed_at": time(&v.last_accessed_at),
                    "key_name": v.key_name,
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    println!(
        "{:<38} {:<24} {:<20} CREATED BY",
        "VERSION", "STAGES", "CREATED"
    );
    for version in versions {
        let created = match time(&version.created_at) {
            Value::String(text) => text,
            _ => "-".to_owned(),
        };
        println!(
            "{:<38} {:<24} {:<20} {}",
            version.version_id,
            version.stages.join(","),
            created,
            shown(&version.created_by)
        );
    }
}

/// A value as JSON: text as `secret_string`, binary base64 in `secret_binary`.
pub fn value_json(response: &proto::GetSecretValueResponse) -> Value {
    let mut object = json!({
        "name": response.name,
        "secret_id": response.secret_id,
        "version_id": response.version_id,
        "version_stages": response.version_stages,
        "created_at": time(&response.created_at),
    });
    if let Some(text) = &response.secret_string {
        object["secret_string"] = Value::String(text.clone());
    }
    if let Some(binary) = &response.secret_binary {
        object["secret_binary"] = Value::String(STANDARD.encode(binary));
    }
    object
}

/// Wipes every string of a JSON document parsed from a value (its
/// fields' values and names) before it is dropped.
pub fn wipe_json(document: &mut serde_json::Value) {
    use zeroize::Zeroize;
    match document {
        serde_json::Value::String(text) => text.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(wipe_json),
        serde_json::Value::Object(fields) => {
            for (_, field) in fields.iter_mut() {
                wipe_json(field);
            }
        }
        _ => {}
    }
}

/// One line for standard error from a gRPC status.
pub fn status_line(status: &tonic::Status) -> String {
    let code = screaming(&format!("{:?}", status.code()));
    let message = shown(status.message());
    if message.is_empty() {
        code
    } else {
        format!("{message} ({code})")
    }
}

/// `NotFound` → `NOT_FOUND`, as gRPC names its codes.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (index, c) in camel.chars().enumerate() {
        if c.is_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiping_a_json_document_empties_every_string() {
        let mut document = serde_json::json!({
            "password": "hunter2", "nested": {"token": "t0k"}, "list": ["a", 1], "port": 5432
        });
        wipe_json(&mut document);
        assert_eq!(
            document,
            serde_json::json!({"password": "", "nested": {"token": ""}, "list": ["", 1], "port": 5432})
        );
        let mut response = rekey_shared::proto::GetSecretValueResponse {
            secret_string: Some("hunter2".into()),
            secret_binary: Some(vec![1, 2, 3]),
            ..Default::default()
        };
        rekey_shared::value::wipe_response(&mut response);
        assert_eq!(response.secret_string.as_deref(), Some(""));
        assert_eq!(response.secret_binary.as_deref(), Some(&[][..]));
    }

    #[test]
    fn status_lines_name_the_code() {
        let status = tonic::Status::not_found("secret x does not exist");
        assert_eq!(status_line(&status), "secret x does not exist (NOT_FOUND)");
        let status = tonic::Status::invalid_argument("bad");
        assert_eq!(status_line(&status), "bad (INVALID_ARGUMENT)");
    }

    #[test]
    fn what_the_server_sends_cannot_steer_the_terminal() {
        assert!(matches!(
            shown("plain words/é"),
            Cow::Borrowed("plain words/é")
        ));
        assert_eq!(
            shown("a\u{1b}]52;c;aGk=\u{7}b\r\nforged\u{202e}"),
            "a\\u{1b}]52;c;aGk=\\u{7}b\\u{d}\\u{a}forged\\u{202e}"
        );
        assert_eq!(
            shown_document("[[roles]]\n\tname = \"x\u{9b}2J\"\r\n"),
            "[[roles]]\n\tname = \"x\\u{9b}2J\"\\u{d}\n"
        );
        let status = tonic::Status::not_found("no \u{1b}[2Jsecret");
        assert_eq!(status_line(&status), "no \\u{1b}[2Jsecret (NOT_FOUND)");
    }
}
