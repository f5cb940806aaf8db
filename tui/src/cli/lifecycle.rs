//! Commands that end or restore a secret, and random passwords.

use super::PasswordArgs;
use crate::output::{self, Format};
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::{self};
use rekey_shared::time::format_timestamp;
use serde_json::json;
use tonic::transport::Channel;

type Client = SecretsClient<Channel>;

pub async fn delete(
    client: &mut Client,
    format: Format,
    name: String,
    recovery_days: Option<u32>,
    force: bool,
) -> anyhow::Result<()> {
    let response = client
        .delete_secret(proto::DeleteSecretRequest {
            name,
            recovery_window_days: recovery_days,
            force_delete_without_recovery: force,
            secret_id: String::new(),
        })
        .await?
        .into_inner();
    let date = response
        .deletion_date
        .as_ref()
        .map(format_timestamp)
        .unwrap_or_default();
    match format {
        Format::Json => output::print_json(&json!({
            "name": response.name,
            "secret_id": response.secret_id,
            "deletion_date": date,
            "forced": force,
        })),
        Format::Text if force => println!("deleted {} and every version of it", response.name),
        Format::Text => println!(
            "{} is scheduled for deletion on {date}; `rekey restore {}` brings it back until then",
            response.name, response.name
        ),
    }
    Ok(())
}

pub async fn restore(client: &mut Client, format: Format, name: String) -> anyhow::Result<()> {
    let response = client
        .restore_secret(proto::RestoreSecretRequest { name })
        .await?
        .into_inner();
    match format {
        Format::Json => output::print_json(&json!({
            "name": response.name, "secret_id": response.secret_id,
        })),
        Format::Text => println!("restored {}", response.name),
    }
    Ok(())
}

pub async fn password(
    client: &mut Client,
    format: Format,
    args: &PasswordArgs,
) -> anyhow::Result<()> {
    let response = client
        .get_random_password(proto::GetRandomPasswordRequest {
            password_length: Some(args.length),
            exclude_characters: args.exclude_characters.clone(),
            exclude_numbers: args.exclude_numbers,
            exclude_punctuation: args.exclude_punctuation,
            exclude_uppercase: args.exclude_uppercase,
            exclude_lowercase: args.exclude_lowercase,
            include_space: args.include_space,
            require_each_included_type: Some(!args.no_require_each_type),
        })
        .await?
        .into_inner();
    let password = zeroize::Zeroizing::new(response.random_password);
    match format {
        Format::Json => {
            let mut document = json!({ "random_password": password.as_str() });
            output::print_json(&document);
            output::wipe_json(&mut document);
        }
        Format::Text => println!("{}", password.as_str()),
    }
    Ok(())
}
