//! The Secrets service: create, read, put, describe, list, list versions and
//! move stages. Every handler authorizes before it reads or changes secret
//! data; looking up what the decision needs (the secret's master key name)
//! is the one read allowed before it.

use super::AppState;
use super::convert::{
    decode_page_token, encode_page_token, page_size, secret_metadata, secret_version, today,
};
use crate::auth::{self, Action};
use crate::crypto::{self, SealedValue};
use crate::error::{Error, Result};
use crate::principal::Principal;
use crate::stages;
use crate::store::{NewSecret, NewVersion, PutOutcome, SecretQuery, SecretRecord, VersionRecord};
use rekey_shared::proto::secrets_server::Secrets;
use rekey_shared::proto::{self, FilterKey};
use rekey_shared::time::{now_millis, timestamp_from_millis};
use rekey_shared::{KeyName, SecretName, SecretValue, Stage, VersionId};
use std::sync::Arc;
use tonic::{Request, Response, Status};

const MAX_DESCRIPTION_CHARS: usize = 2048;
const MAX_TAGS: usize = 50;
const MAX_PAGE: u32 = 100;

#[derive(Debug, Clone)]
pub struct SecretsService {
    state: Arc<AppState>,
}

impl SecretsService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    fn authorize(&self, principal: &Principal, action: Action, resource: &str) -> Result<()> {
        self.state.authorizer.authorize(principal, action, resource)
    }

    fn authorize_key(&self, principal: &Principal, key: &KeyName) -> Result<()> {
        self.authorize(principal, Action::KeysUse, &format!("key:{key}"))
    }

    /// The secret a request names; one scheduled for deletion cannot be used.
    async fn live_secret(&self, name: &SecretName) -> Result<SecretRecord> {
        let secret = self
            .state
            .store
            .secret(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("secret {name} does not exist")))?;
        if let Some(date) = secret.deletion_date {
            return Err(Error::FailedPrecondition(format!(
                "secret {name} is scheduled for deletion on {}; restore it first",
                rekey_shared::time::format_timestamp(&timestamp_from_millis(date))
            )));
        }
        Ok(secret)
    }

    async fn open(&self, secret: &SecretRecord, version: &VersionRecord) -> Result<SecretValue> {
        let master = self
            .state
            .keyring
            .for_decryption(&self.state.store, &version.sealed.key)
            .await?;
        crypto::open_value(&master, &secret.id, &version.version_id, &version.sealed).map_err(
            |_| {
                Error::Integrity(format!(
                    "the stored value of {} version {} failed its integrity check; \
                 it was changed outside rekey or is corrupt",
                    secret.name, version.version_id
                ))
            },
        )
    }

    async fn seal(
        &self,
        key_name: &KeyName,
        secret_id: &str,
        version_id: &VersionId,
        value: &SecretValue,
    ) -> Result<SealedValue> {
        let master = self
            .state
            .keyring
            .for_encryption(&self.state.store, key_name)
            .await?;
        Ok(crypto::seal_value(&master, secret_id, version_id, value))
    }

    /// A client request token reused: the same value gives the existing
    /// version back, another value is refused.
    async fn reused_token(
        &self,
        secret: &SecretRecord,
        version_id: &VersionId,
        value: &SecretValue,
    ) -> Result<Option<proto::PutSecretValueResponse>> {
        let Some(existing) = self.state.store.version(&secret.id, version_id).await? else {
            return Ok(None);
        };
        if !self.open(secret, &existing).await?.same_as(value) {
            return Err(Error::AlreadyExists(format!(
                "client request token {version_id} was already used for a version of {} with a \
                 different value; use a new token for a new value",
                secret.name
            )));
        }
        let map = self.state.store.stage_map(&secret.id).await?;
        Ok(Some(proto::PutSecretValueResponse {
            name: secret.name.to_string(),
            secret_id: secret.id.clone(),
            version_id: version_id.to_string(),
            version_stages: stages::stages_of(&map, version_id)
                .iter()
                .map(ToString::to_string)
                .collect(),
        }))
    }

    async fn put(
        &self,
        principal: &Principal,
        secret: &SecretRecord,
        version_id: &VersionId,
        value: &SecretValue,
        requested: &[Stage],
    ) -> Result<proto::PutSecretValueResponse> {
        if let Some(response) = self.reused_token(secret, version_id, value).await? {
            return Ok(response);
        }
        let version = NewVersion {
            version_id: version_id.clone(),
            created_at: now_millis(),
            created_by: principal.to_string(),
            sealed: self
                .seal(&secret.key_name, &secret.id, version_id, value)
                .await?,
        };
        match self
            .state
            .store
            .put_version(&secret.id, &version, requested)
            .await?
        {
            PutOutcome::Added(stages) => Ok(proto::PutSecretValueResponse {
                name: secret.name.to_string(),
                secret_id: secret.id.clone(),
                version_id: version_id.to_string(),
                version_stages: stages.iter().map(ToString::to_string).collect(),
            }),
            // Another request with the same token won the race.
            PutOutcome::VersionExists => self
                .reused_token(secret, version_id, value)
                .await?
                .ok_or_else(|| Error::internal("put", "a version vanished")),
        }
    }
}

fn version_id_from_token(token: &str) -> Result<VersionId> {
    if token.is_empty() {
        Ok(VersionId::random())
    } else {
        VersionId::parse(token)
            .map_err(|error| Error::InvalidArgument(format!("client request token: {error}")))
    }
}

fn key_name_or_default(name: &str) -> Result<KeyName> {
    if name.is_empty() {
        Ok(KeyName::default_key())
    } else {
        Ok(KeyName::parse(name)?)
    }
}

fn check_description(description: &str) -> Result<()> {
    let length = description.chars().count();
    if length > MAX_DESCRIPTION_CHARS {
        return Err(Error::InvalidArgument(format!(
            "description is {length} characters long; the limit is {MAX_DESCRIPTION_CHARS}"
        )));
    }
    Ok(())
}

fn check_tags(tags: &[proto::Tag]) -> Result<Vec<(String, String)>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidArgument(format!(
            "{} tags given; a secret carries at most {MAX_TAGS}",
            tags.len()
        )));
    }
    let mut checked: Vec<(String, String)> = Vec::with_capacity(tags.len());
    for tag in tags {
        let key_length = tag.key.chars().count();
        if !(1..=128).contains(&key_length) {
            return Err(Error::InvalidArgument(format!(
                "tag key {:?} is {key_length} characters long; it must be 1-128",
                tag.key
            )));
        }
        let value_length = tag.value.chars().count();
        if value_length > 256 {
            return Err(Error::InvalidArgument(format!(
                "the value of tag {:?} is {value_length} characters long; the limit is 256",
                tag.key
            )));
        }
        checked.retain(|(key, _)| *key != tag.key);
        checked.push((tag.key.clone(), tag.value.clone()));
    }
    Ok(checked)
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 6];
    crypto::random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The handlers, returning domain errors; the trait below maps them to
/// `Status` in one place.
impl SecretsService {
    async fn create_secret_impl(
        &self,
        request: Request<proto::CreateSecretRequest>,
    ) -> Result<Response<proto::CreateSecretResponse>> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let name = SecretName::parse(&request.name)?;
        let key_name = key_name_or_default(&request.key_name)?;
        check_description(&request.description)?;
        let tags = check_tags(&request.tags)?;
        let value = SecretValue::from_fields(request.secret_string, request.secret_binary)?;
        let version_id = version_id_from_token(&request.client_request_token)?;
        self.authorize(&principal, Action::CreateSecret, name.as_str())?;
        if value.is_some() {
            self.authorize_key(&principal, &key_name)?;
        }
        if !self
            .state
            .keyring
            .exists(&self.state.store, &key_name)
            .await?
        {
            return Err(crate::keyring::missing_key(&key_name));
        }

        let secret = NewSecret {
            id: format!("{name}-{}", random_suffix()),
            name: name.clone(),
            description: request.description,
            key_name: key_name.clone(),
            tags,
            created_at: now_millis(),
        };
        let first = match &value {
            Some(value) => Some(NewVersion {
                version_id: version_id.clone(),
                created_at: secret.created_at,
                created_by: principal.to_string(),
                sealed: self.seal(&key_name, &secret.id, &version_id, value).await?,
            }),
            None => None,
        };
        match self
            .state
            .store
            .create_secret(&secret, first.as_ref())
            .await
        {
            Ok(()) => Ok(Response::new(proto::CreateSecretResponse {
                name: name.to_string(),
                secret_id: secret.id,
                version_id: first.map(|version| version.version_id.to_string()),
            })),
            // A retried create (same token, same value) is answered as the first was.
            Err(Error::AlreadyExists(message)) => {
                if let (Some(value), false) = (&value, request.client_request_token.is_empty())
                    && let Some(existing) = self.state.store.secret(&name).await?
                    && let Some(reused) = self.reused_token(&existing, &version_id, value).await?
                {
                    return Ok(Response::new(proto::CreateSecretResponse {
                        name: reused.name,
                        secret_id: reused.secret_id,
                        version_id: Some(reused.version_id),
                    }));
                }
                Err(Error::AlreadyExists(message))
            }
            Err(error) => Err(error),
        }
    }

    async fn get_secret_value_impl(
        &self,
        request: Request<proto::GetSecretValueRequest>,
    ) -> Result<Response<proto::GetSecretValueResponse>> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let name = SecretName::parse(&request.name)?;
        let version_id = request
            .version_id
            .as_deref()
            .map(VersionId::parse)
            .transpose()?;
        let stage = request
            .version_stage
            .as_deref()
            .map(Stage::parse)
            .transpose()?;
        self.authorize(&principal, Action::GetSecretValue, name.as_str())?;
        let secret = self.live_secret(&name).await?;
        self.authorize_key(&principal, &secret.key_name)?;

        let store = &self.state.store;
        let version = match (&version_id, &stage) {
            (Some(version_id), _) => {
                store
                    .version(&secret.id, version_id)
                    .await?
                    .ok_or_else(|| {
                        Error::NotFound(format!("secret {name} has no version {version_id}"))
                    })?
            }
            (None, stage) => {
                let stage = stage.clone().unwrap_or_else(Stage::current);
                store
                    .version_at_stage(&secret.id, &stage)
                    .await?
                    .ok_or_else(|| {
                        if stage.is_current() {
                            Error::NotFound(format!("secret {name} has no value yet"))
                        } else {
                            Error::NotFound(format!(
                                "secret {name} has no version with stage {stage}"
                            ))
                        }
                    })?
            }
        };
        let map = store.stage_map(&secret.id).await?;
        let version_stages = stages::stages_of(&map, &version.version_id);
        if let (Some(stage), Some(_)) = (&stage, &version_id)
            && !version_stages.contains(stage)
        {
            return Err(Error::NotFound(format!(
                "version {} of {name} does not carry stage {stage}",
                version.version_id
            )));
        }
        let value = self.open(&secret, &version).await?;
        store
            .record_access(&secret.id, &version.version_id, today())
            .await?;
        let (secret_string, secret_binary) = value.to_fields();
        Ok(Response::new(proto::GetSecretValueResponse {
            name: name.to_string(),
            secret_id: secret.id,
            version_id: version.version_id.to_string(),
            version_stages: version_stages.iter().map(ToString::to_string).collect(),
            secret_string,
            secret_binary,
            created_at: Some(timestamp_from_millis(version.created_at)),
        }))
    }

    async fn put_secret_value_impl(
        &self,
        request: Request<proto::PutSecretValueRequest>,
    ) -> Result<Response<proto::PutSecretValueResponse>> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let name = SecretName::parse(&request.name)?;
        let value = SecretValue::from_fields(request.secret_string, request.secret_binary)?
            .ok_or_else(|| {
                Error::InvalidArgument("give a value: secret_string or secret_binary".to_owned())
            })?;
        let requested = request
            .version_stages
            .iter()
            .map(|stage| Stage::parse(stage))
            .collect::<Result<Vec<_>, _>>()?;
        let version_id = version_id_from_token(&request.client_request_token)?;
        self.authorize(&principal, Action::PutSecretValue, name.as_str())?;
        let secret = self.live_secret(&name).await?;
        self.authorize_key(&principal, &secret.key_name)?;
        let response = self
            .put(&principal, &secret, &version_id, &value, &requested)
            .await?;
        Ok(Response::new(response))
    }

    async fn describe_secret_impl(
        &self,
        request: Request<proto::DescribeSecretRequest>,
    ) -> Result<Response<proto::SecretMetadata>> {
        let principal = auth::principal(&request)?;
        let name = SecretName::parse(&request.get_ref().name)?;
        self.authorize(&principal, Action::DescribeSecret, name.as_str())?;
        let secret = self
            .state
            .store
            .secret(&name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("secret {name} does not exist")))?;
        let map = self.state.store.stage_map(&secret.id).await?;
        Ok(Response::new(secret_metadata(&secret, &map)))
    }

    async fn list_secrets_impl(
        &self,
        request: Request<proto::ListSecretsRequest>,
    ) -> Result<Response<proto::ListSecretsResponse>> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let limit = page_size(request.page_size, MAX_PAGE)?;
        let mut query = SecretQuery {
            after_name: decode_page_token("secrets", &request.page_token)?,
            limit,
            ..SecretQuery::default()
        };
        for filter in &request.filters {
            if filter.key() != FilterKey::Name {
                return Err(Error::Unimplemented(format!(
                    "filtering by {} is not supported yet; filter by name",
                    filter.key().as_str_name()
                )));
            }
            for value in &filter.values {
                match value.strip_prefix('!') {
                    Some(excluded) => query.excluded_name_prefixes.push(excluded.to_owned()),
                    None => query.name_prefixes.push(value.clone()),
                }
            }
        }
        let store = &self.state.store;
        let page = store.list_secrets(&query).await?;
        let next_page_token = match page.last() {
            Some(last) if page.len() == limit as usize => {
                encode_page_token("secrets", last.name.as_str())
            }
            _ => String::new(),
        };
        let mut secrets = Vec::with_capacity(page.len());
        for secret in &page {
            if self
                .authorize(&principal, Action::ListSecrets, secret.name.as_str())
                .is_ok()
            {
                let map = store.stage_map(&secret.id).await?;
                secrets.push(secret_metadata(secret, &map));
            }
        }
        Ok(Response::new(proto::ListSecretsResponse {
            secrets,
            next_page_token,
        }))
    }

    async fn list_secret_version_ids_impl(
        &self,
        request: Request<proto::ListSecretVersionIdsRequest>,
    ) -> Result<Response<proto::ListSecretVersionIdsResponse>> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let name = SecretName::parse(&request.name)?;
        let limit = page_size(request.page_size, MAX_PAGE)?;
        let before_seq = decode_page_token("versions", &request.page_token)?
            .map(|seq| seq.parse::<i64>())
            .transpose()
            .map_err(|_| Error::InvalidArgument("page token is malformed".to_owned()))?;
        self.authorize(&principal, Action::ListSecretVersionIds, name.as_str())?;
        let secret = self
            .state
            .store
            .secret(&name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("secret {name} does not exist")))?;
        let versions = self
            .state
            .store
            .list_versions(&secret.id, request.include_deprecated, before_seq, limit)
            .await?;
        let next_page_token = match versions.last() {
            Some(last) if versions.len() == limit as usize => {
                encode_page_token("versions", &last.seq.to_string())
            }
            _ => String::new(),
        };
        Ok(Response::new(proto::ListSecretVersionIdsResponse {
            name: name.to_string(),
            secret_id: secret.id,
            versions: versions.iter().map(secret_version).collect(),
            next_page_token,
        }))
    }

    async fn update_secret_version_stage_impl(
        &self,
        request: Request<proto::UpdateSecretVersionStageRequest>,
    ) -> Result<Response<proto::UpdateSecretVersionStageResponse>> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let name = SecretName::parse(&request.name)?;
        let stage = Stage::parse(&request.version_stage)?;
        let to = request
            .move_to_version_id
            .as_deref()
            .map(VersionId::parse)
            .transpose()?;
        let from = request
            .remove_from_version_id
            .as_deref()
            .map(VersionId::parse)
            .transpose()?;
        if to.is_none() && from.is_none() {
            return Err(Error::InvalidArgument(
                "give move_to_version_id, remove_from_version_id, or both".to_owned(),
            ));
        }
        self.authorize(&principal, Action::UpdateSecretVersionStage, name.as_str())?;
        let secret = self.live_secret(&name).await?;
        self.state
            .store
            .move_stage(
                &secret.id,
                &name,
                &stage,
                to.as_ref(),
                from.as_ref(),
                now_millis(),
            )
            .await?;
        Ok(Response::new(proto::UpdateSecretVersionStageResponse {
            name: name.to_string(),
            secret_id: secret.id,
        }))
    }
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn create_secret(
        &self,
        request: Request<proto::CreateSecretRequest>,
    ) -> Result<Response<proto::CreateSecretResponse>, Status> {
        Ok(self.create_secret_impl(request).await?)
    }

    async fn get_secret_value(
        &self,
        request: Request<proto::GetSecretValueRequest>,
    ) -> Result<Response<proto::GetSecretValueResponse>, Status> {
        Ok(self.get_secret_value_impl(request).await?)
    }

    async fn put_secret_value(
        &self,
        request: Request<proto::PutSecretValueRequest>,
    ) -> Result<Response<proto::PutSecretValueResponse>, Status> {
        Ok(self.put_secret_value_impl(request).await?)
    }

    async fn describe_secret(
        &self,
        request: Request<proto::DescribeSecretRequest>,
    ) -> Result<Response<proto::SecretMetadata>, Status> {
        Ok(self.describe_secret_impl(request).await?)
    }

    async fn list_secrets(
        &self,
        request: Request<proto::ListSecretsRequest>,
    ) -> Result<Response<proto::ListSecretsResponse>, Status> {
        Ok(self.list_secrets_impl(request).await?)
    }

    async fn list_secret_version_ids(
        &self,
        request: Request<proto::ListSecretVersionIdsRequest>,
    ) -> Result<Response<proto::ListSecretVersionIdsResponse>, Status> {
        Ok(self.list_secret_version_ids_impl(request).await?)
    }

    async fn update_secret_version_stage(
        &self,
        request: Request<proto::UpdateSecretVersionStageRequest>,
    ) -> Result<Response<proto::UpdateSecretVersionStageResponse>, Status> {
        Ok(self.update_secret_version_stage_impl(request).await?)
    }
}
