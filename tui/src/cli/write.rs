//! Commands that write: create, put, update, stage, tag, untag.

use crate::input::ValueSource;
use crate::output::{self, Format};
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::{self};
use serde_json::json;
use tonic::transport::Channel;

type Client = SecretsClient<Channel>;

pub async fn create(
    client: &mut Client,
    format: Format,
    mut request: proto::CreateSecretRequest,
    value: &ValueSource,
) -> anyhow::Result<()> {
    if let Some(value) = value.named()? {
        (request.secret_string, request.secret_binary) = value.to_fields();
    }
    let response = client.create_secret(request).await?.into_inner();
    match format {
        Format::Json => output::print_json(&json!({
            "name": response.name,
            "secret_id": response.secret_id,
            "version_id": response.version_id,
        })),
        Format::Text => println!("created {} ({})", response.name, response.secret_id),
    }
    Ok(())
}

fn print_put(format: Format, response: &proto::PutSecretValueResponse) {
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

pub async fn put(
    client: &mut Client,
    format: Format,
    name: String,
    stages: Vec<String>,
    token: String,
    value: &ValueSource,
) -> anyhow::Result<()> {
    let (secret_string, secret_binary) = value.required()?.to_fields();
    let response = client
        .put_secret_value(proto::PutSecretValueRequest {
            name,
            client_request_token: token,
            secret_string,
            secret_binary,
            version_stages: stages,
        })
        .await?
        .into_inner();
    print_put(format, &response);
    Ok(())
}

pub async fn update(
    client: &mut Client,
    format: Format,
    mut request: proto::UpdateSecretRequest,
    value: &ValueSource,
) -> anyhow::Result<()> {
    if let Some(value) = value.named()? {
        (request.secret_string, request.secret_binary) = value.to_fields();
    }
    let response = client.update_secret(request).await?.into_inner();
    match format {
        Format::Json => output::print_json(&json!({
            "name": response.name,
            "secret_id": response.secret_id,
            "version_id": response.version_id,
        })),
        Format::Text => match &response.version_id {
            Some(version) => println!("updated {}; CURRENT is version {version}", response.name),
            None => println!("updated {}", response.name),
        },
    }
    Ok(())
}

pub async fn stage(
    client: &mut Client,
    format: Format,
    name: String,
    stage: String,
    to: Option<String>,
    from: Option<String>,
) -> anyhow::Result<()> {
    client
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
    Ok(())
}

pub async fn tag(
    client: &mut Client,
    format: Format,
    name: String,
    tags: Vec<proto::Tag>,
) -> anyhow::Result<()> {
    let count = tags.len();
    client
        .tag_resource(proto::TagResourceRequest {
            name: name.clone(),
            tags,
        })
        .await?;
    match format {
        Format::Json => output::print_json(&json!({ "name": name, "tagged": count })),
        Format::Text => println!("{name}: {count} tag(s) set"),
    }
    Ok(())
}

pub async fn untag(
    client: &mut Client,
    format: Format,
    name: String,
    keys: Vec<String>,
) -> anyhow::Result<()> {
    let count = keys.len();
    client
        .untag_resource(proto::UntagResourceRequest {
            name: name.clone(),
            tag_keys: keys,
        })
        .await?;
    match format {
        Format::Json => output::print_json(&json!({ "name": name, "untagged": count })),
        Format::Text => println!("{name}: {count} tag(s) removed"),
    }
    Ok(())
}
