//! Writes: create, put, update (metadata, master key, value), stage moves,
//! tags.

use super::SecretsService;
use super::validate::{
    check_description, check_tag_keys, check_tags, key_name_or_default, random_suffix,
    version_id_from_token,
};
use crate::auth::Action;
use crate::crypto;
use crate::error::{Error, Result};
use crate::service::context::RequestContext;
use crate::store::{NewSecret, NewVersion, PutOutcome, Rewrapped, SecretRecord, SecretUpdate};
use rekey_shared::proto;
use rekey_shared::time::now_millis;
use rekey_shared::{KeyName, SecretName, SecretValue, Stage, VersionId};

impl SecretsService {
    pub(super) async fn create(
        &self,
        context: &RequestContext,
        request: proto::CreateSecretRequest,
    ) -> Result<proto::CreateSecretResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        let key_name = key_name_or_default(&request.key_name)?;
        check_description(&request.description)?;
        let tags = check_tags(&request.tags)?;
        let value = SecretValue::from_fields(request.secret_string, request.secret_binary)?;
        let version_id = version_id_from_token(&request.client_request_token)?;
        self.authorize(context, Action::CreateSecret, name.as_str())?;
        if value.is_some() {
            self.authorize_key(context, &key_name)?;
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
                created_by: context.principal.to_string(),
                sealed: self.seal(&key_name, &secret.id, &version_id, value).await?,
            }),
            None => None,
        };
        match self
            .state
            .store
            .create_secret(&secret, first.as_ref(), &context.change_event())
            .await
        {
            Ok(()) => {
                context.recorded();
                let version = first
                    .as_ref()
                    .map(|version| version.version_id.to_string())
                    .unwrap_or_default();
                self.publish(context, "secret_created", name.as_str(), &version, "");
                if !version.is_empty() {
                    self.publish(context, "version_added", name.as_str(), &version, "CURRENT");
                }
                Ok(proto::CreateSecretResponse {
                    name: name.to_string(),
                    secret_id: secret.id,
                    version_id: first.map(|version| version.version_id.to_string()),
                })
            }
            // A retried create (same token, same value) is answered as the
            // first was. Only under the master key this request may use: the
            // comparison opens the existing value, and must not answer for
            // one under a key the caller may not use.
            Err(Error::AlreadyExists(message)) => {
                if let (Some(value), false) = (&value, request.client_request_token.is_empty())
                    // The first create may share a batch not yet durable.
                    && self.state.store.barrier().await.is_ok()
                    && let Some(existing) = self.state.store.secret(&name).await?
                    && existing.key_name == key_name
                    && let Some(reused) = self
                        .reused_token(context, &existing, &version_id, value)
                        .await?
                {
                    return Ok(proto::CreateSecretResponse {
                        name: reused.name,
                        secret_id: reused.secret_id,
                        version_id: Some(reused.version_id),
                    });
                }
                Err(Error::AlreadyExists(message))
            }
            Err(error) => Err(error),
        }
    }

    pub(super) async fn put_value(
        &self,
        context: &RequestContext,
        request: proto::PutSecretValueRequest,
    ) -> Result<proto::PutSecretValueResponse> {
        context.set_resource(&request.name);
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
        self.authorize(context, Action::PutSecretValue, name.as_str())?;
        self.refuse_run_token(&request.client_request_token, &version_id)
            .await?;
        let secret = self.live_secret(&name).await?;
        self.authorize_key(context, &secret.key_name)?;
        self.put(context, &secret, &version_id, &value, &requested)
            .await
    }

    /// Description, master key (every data key re-wrapped, values
    /// untouched), and a new CURRENT value, each optional: one
    /// transaction, so a request that fails changes nothing.
    pub(super) async fn update(
        &self,
        context: &RequestContext,
        request: proto::UpdateSecretRequest,
    ) -> Result<proto::UpdateSecretResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        if let Some(description) = &request.description {
            check_description(description)?;
        }
        let new_key = request
            .key_name
            .as_deref()
            .map(KeyName::parse)
            .transpose()?;
        let value = SecretValue::from_fields(request.secret_string, request.secret_binary)?;
        let version_id = version_id_from_token(&request.client_request_token)?;
        if request.description.is_none() && new_key.is_none() && value.is_none() {
            return Err(Error::InvalidArgument(
                "nothing to update: give a description, a key name or a value".to_owned(),
            ));
        }
        self.authorize(context, Action::UpdateSecret, name.as_str())?;
        if value.is_some() {
            self.refuse_run_token(&request.client_request_token, &version_id)
                .await?;
        }
        let mut secret = self.live_secret(&name).await?;
        let moving = new_key.filter(|key| *key != secret.key_name);
        if let Some(key) = &moving {
            self.authorize_key(context, &secret.key_name)?;
            self.authorize_key(context, key)?;
        }
        let key_name = moving.clone().unwrap_or_else(|| secret.key_name.clone());
        if value.is_some() {
            self.authorize_key(context, &key_name)?;
        }
        let changes_metadata = request.description.is_some() || moving.is_some();
        // A retried request whose version exists already (same token, same
        // value) answers with it; another value under the token is refused.
        let mut version_exists = match &value {
            Some(value) => self
                .reused_token(context, &secret, &version_id, value)
                .await?
                .is_some(),
            None => false,
        };
        // Twice at most: a request with the same token that adds its
        // version meanwhile makes this one a retry.
        loop {
            let version = match (&value, version_exists) {
                (Some(value), false) => Some(NewVersion {
                    version_id: version_id.clone(),
                    created_at: now_millis(),
                    created_by: context.principal.to_string(),
                    sealed: self.seal(&key_name, &secret.id, &version_id, value).await?,
                }),
                _ => None,
            };
            if !changes_metadata && version.is_none() {
                break;
            }
            let rewrapped = match &moving {
                Some(key) => self.rewrap_all(&secret, key).await?,
                None => Vec::new(),
            };
            let update = SecretUpdate {
                description: request.description.as_deref(),
                new_key: moving.as_ref().map(|key| (key, rewrapped.as_slice())),
                version: version.as_ref(),
                now: now_millis(),
            };
            let outcome = self
                .state
                .store
                .update_secret(&secret.id, &update, &context.change_event())
                .await?;
            if let (Some(PutOutcome::VersionExists), Some(value)) = (&outcome, &value) {
                // Its first write may share a batch not yet durable.
                self.state.store.barrier().await?;
                self.reused_token(context, &secret, &version_id, value)
                    .await?
                    .ok_or_else(|| Error::internal("update", "a version vanished"))?;
                version_exists = true;
                continue;
            }
            context.recorded();
            if changes_metadata {
                self.publish(context, "secret_changed", name.as_str(), "", "metadata");
            }
            secret.key_name = key_name;
            if let Some(PutOutcome::Added(stages)) = outcome {
                self.added(context, &secret, &version_id, &stages);
            }
            break;
        }
        Ok(proto::UpdateSecretResponse {
            name: name.to_string(),
            secret_id: secret.id,
            version_id: value.map(|_| version_id.to_string()),
        })
    }

    /// Every version's data key wrapped under the newest version of `key`.
    async fn rewrap_all(&self, secret: &SecretRecord, key: &KeyName) -> Result<Vec<Rewrapped>> {
        let keyring = &self.state.keyring;
        let store = &self.state.store;
        let to = keyring.for_encryption(store, key).await?;
        let mut rewrapped = Vec::new();
        for version in store.all_versions(&secret.id).await? {
            let from = keyring.for_decryption(store, &version.sealed.key).await?;
            let moved = crypto::rewrap_data_key(
                &from,
                &to,
                &secret.id,
                &version.version_id,
                &version.sealed,
            )
            .map_err(|_| {
                Error::Integrity(format!(
                    "the data key of {} version {} failed its integrity check",
                    secret.name, version.version_id
                ))
            })?;
            rewrapped.push(Rewrapped {
                version_id: version.version_id,
                wrapped_data_key: moved.wrapped_data_key,
                from: version.sealed.key,
                to: moved.key,
            });
        }
        Ok(rewrapped)
    }

    pub(super) async fn move_stage(
        &self,
        context: &RequestContext,
        request: proto::UpdateSecretVersionStageRequest,
    ) -> Result<proto::UpdateSecretVersionStageResponse> {
        context.set_resource(&request.name);
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
        self.authorize(context, Action::UpdateSecretVersionStage, name.as_str())?;
        let secret = self.live_secret(&name).await?;
        // The value of a run that ended without finishing (a gate not
        // passed, a revert that left it in the target) becomes CURRENT only
        // by whoever may approve rotations of the secret: a stage move
        // would otherwise wave through what its approvers did not.
        if stage.is_current()
            && let Some(to) = &to
            && let Some(run) = self.state.store.run(to.as_str()).await?
            && run.secret_id == secret.id
            && run.phase == crate::rotation::Phase::Ended
            && run.outcome != Some(crate::rotation::Outcome::Succeeded)
        {
            self.authorize(context, Action::ApproveRotation, name.as_str())?;
        }
        self.state
            .store
            .move_stage(
                &secret,
                &stage,
                to.as_ref(),
                from.as_ref(),
                now_millis(),
                &context.change_event(),
            )
            .await?;
        context.recorded();
        let version = to.as_ref().map(ToString::to_string).unwrap_or_default();
        self.publish(
            context,
            "stages_moved",
            name.as_str(),
            &version,
            stage.as_str(),
        );
        if stage.is_current() {
            self.engine.spawn_drive(&secret.id);
        }
        Ok(proto::UpdateSecretVersionStageResponse {
            name: name.to_string(),
            secret_id: secret.id,
        })
    }

    pub(super) async fn tag(
        &self,
        context: &RequestContext,
        request: proto::TagResourceRequest,
    ) -> Result<proto::TagResourceResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        if request.tags.is_empty() {
            return Err(Error::InvalidArgument("give at least one tag".to_owned()));
        }
        let tags = check_tags(&request.tags)?;
        self.authorize(context, Action::TagResource, name.as_str())?;
        let secret = self.live_secret(&name).await?;
        self.state
            .store
            .tag_secret(&secret.id, &tags, now_millis(), &context.change_event())
            .await?;
        context.recorded();
        self.publish(context, "secret_changed", name.as_str(), "", "tags");
        Ok(proto::TagResourceResponse {})
    }

    pub(super) async fn untag(
        &self,
        context: &RequestContext,
        request: proto::UntagResourceRequest,
    ) -> Result<proto::UntagResourceResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        if request.tag_keys.is_empty() {
            return Err(Error::InvalidArgument(
                "give at least one tag key".to_owned(),
            ));
        }
        check_tag_keys(&request.tag_keys)?;
        self.authorize(context, Action::UntagResource, name.as_str())?;
        let secret = self.live_secret(&name).await?;
        self.state
            .store
            .untag_secret(
                &secret.id,
                &request.tag_keys,
                now_millis(),
                &context.change_event(),
            )
            .await?;
        context.recorded();
        self.publish(context, "secret_changed", name.as_str(), "", "tags");
        Ok(proto::UntagResourceResponse {})
    }
}
