//! The Secrets service. Handlers live in three files by subject (reads,
//! writes, lifecycle); this one holds what they share and the trait impl
//! that maps their domain errors to `Status` in one place.
//!
//! Every handler authorizes before it reads or changes secret data; looking
//! up what the decision needs (the secret's master key name) is the one
//! read allowed before it.

mod lifecycle;
mod pages;
mod read;
pub(crate) mod validate;
mod write;

pub use read::code_name;

use super::AppState;
use crate::auth::Action;
use crate::crypto::{self, SealedValue};
use crate::error::{Error, Result};
use crate::events::Details;
use crate::rotation::engine::Engine;
use crate::service::context::RequestContext;
use crate::stages;
use crate::store::{NewVersion, PutOutcome, SecretRecord, VersionRecord};
use rekey_shared::proto;
use rekey_shared::proto::secrets_server::Secrets;
use rekey_shared::time::now_millis;
use rekey_shared::{KeyName, SecretName, SecretValue, Stage, VersionId};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct SecretsService {
    state: Arc<AppState>,
    /// Told when CURRENT moves, so that a run it abandons ends at once.
    engine: Arc<Engine>,
}

impl SecretsService {
    pub fn new(state: Arc<AppState>, engine: Arc<Engine>) -> Self {
        Self { state, engine }
    }

    /// Publishes a change event once the change has committed.
    fn publish(
        &self,
        context: &RequestContext,
        kind: &str,
        name: &str,
        version_id: &str,
        detail: &str,
    ) {
        self.state.events.publish(
            kind,
            name,
            Details {
                version_id: version_id.to_owned(),
                detail: detail.to_owned(),
                principal: context.principal.to_string(),
                ..Details::default()
            },
        );
    }

    fn authorize(&self, context: &RequestContext, action: Action, resource: &str) -> Result<()> {
        context.authorize(&self.state.authorizer, action, resource)
    }

    fn authorize_key(&self, context: &RequestContext, key: &KeyName) -> Result<()> {
        self.authorize(context, Action::KeysUse, &format!("key:{key}"))
    }

    /// The secret a request names, scheduled for deletion or not.
    async fn secret(&self, name: &SecretName) -> Result<SecretRecord> {
        self.state
            .store
            .secret(name)
            .await?
            .ok_or_else(|| not_found(name))
    }

    /// The secret a request names, without its tags (no caller of this
    /// shows them); one scheduled for deletion cannot be used.
    async fn live_secret(&self, name: &SecretName) -> Result<SecretRecord> {
        let secret = self
            .state
            .store
            .secret_without_tags(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        live(secret)
    }

    /// The value of `version`. One that does not open (its master-key
    /// version is gone, or the ciphertext was changed outside rekey) is
    /// not answered from memory again: the store's next reads of the
    /// secret's values go to the database, which may have been put right
    /// meanwhile.
    async fn open(&self, secret: &SecretRecord, version: &VersionRecord) -> Result<SecretValue> {
        let store = &self.state.store;
        let opened = async {
            let master = self
                .state
                .keyring
                .for_decryption(store, &version.sealed.key)
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
        .await;
        if opened.is_err() {
            store.forget_cached_reads_of(&secret.id);
        }
        opened
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
    /// version back, another value is refused. The values are compared
    /// only for a caller who made that version or may read it: to anyone
    /// else, the answer would say whether a guess is the value.
    async fn reused_token(
        &self,
        context: &RequestContext,
        secret: &SecretRecord,
        version_id: &VersionId,
        value: &SecretValue,
    ) -> Result<Option<proto::PutSecretValueResponse>> {
        let Some(existing) = self.state.store.version(&secret.id, version_id).await? else {
            return Ok(None);
        };
        let may_compare = existing.created_by == context.principal.to_string()
            || context.allows(
                &self.state.authorizer,
                Action::GetSecretValue,
                secret.name.as_str(),
            );
        if !may_compare {
            return Err(Error::AlreadyExists(format!(
                "client request token {version_id} was already used for a version of {}; use a \
                 new token for a new value",
                secret.name
            )));
        }
        if !self.open(secret, &existing).await?.same_as(value) {
            return Err(Error::AlreadyExists(format!(
                "client request token {version_id} was already used for a version of {} with a \
                 different value; use a new token for a new value",
                secret.name
            )));
        }
        let map = self.state.store.stage_map(&secret.id).await?;
        Ok(Some(put_response(
            secret,
            version_id,
            &stages::stages_of(&map, version_id),
        )))
    }

    /// Adds a version (or answers a retried request as the first was).
    async fn put(
        &self,
        context: &RequestContext,
        secret: &SecretRecord,
        version_id: &VersionId,
        value: &SecretValue,
        requested: &[Stage],
    ) -> Result<proto::PutSecretValueResponse> {
        if let Some(response) = self
            .reused_token(context, secret, version_id, value)
            .await?
        {
            return Ok(response);
        }
        let version = NewVersion {
            version_id: version_id.clone(),
            created_at: now_millis(),
            created_by: context.principal.to_string(),
            sealed: self
                .seal(&secret.key_name, &secret.id, version_id, value)
                .await?,
        };
        match self
            .state
            .store
            .put_version(&secret.id, &version, requested, &context.change_event())
            .await?
        {
            PutOutcome::Added(stages) => {
                context.recorded();
                self.added(context, secret, version_id, &stages);
                Ok(put_response(secret, version_id, &stages))
            }
            // Another request with the same token won the race; its write
            // may share a batch not yet durable, which this request's read
            // would not see until it is.
            PutOutcome::VersionExists => {
                self.state.store.barrier().await?;
                self.reused_token(context, secret, version_id, value)
                    .await?
                    .ok_or_else(|| Error::internal("put", "a version vanished"))
            }
        }
    }
}

impl SecretsService {
    /// What follows a committed new version: its events, and the engine
    /// told when it took CURRENT.
    fn added(
        &self,
        context: &RequestContext,
        secret: &SecretRecord,
        version_id: &VersionId,
        stages: &[Stage],
    ) {
        let labels: Vec<String> = stages.iter().map(ToString::to_string).collect();
        self.publish(
            context,
            "version_added",
            secret.name.as_str(),
            version_id.as_str(),
            &labels.join(","),
        );
        if stages.iter().any(Stage::is_current) {
            self.publish(
                context,
                "stages_moved",
                secret.name.as_str(),
                version_id.as_str(),
                "CURRENT",
            );
            self.engine.spawn_drive(&secret.id);
        }
    }

    /// Refuses a client request token that a rotation run holds for the
    /// version it makes.
    async fn refuse_run_token(&self, token: &str, version_id: &VersionId) -> Result<()> {
        if !token.is_empty() && self.state.store.is_run_token(version_id.as_str()).await? {
            return Err(Error::AlreadyExists(format!(
                "client request token {version_id} is reserved by a rotation run; use another"
            )));
        }
        Ok(())
    }
}

fn put_response(
    secret: &SecretRecord,
    version_id: &VersionId,
    stages: &[Stage],
) -> proto::PutSecretValueResponse {
    proto::PutSecretValueResponse {
        name: secret.name.to_string(),
        secret_id: secret.id.clone(),
        version_id: version_id.to_string(),
        version_stages: stages.iter().map(ToString::to_string).collect(),
    }
}

audited_service! {
    Secrets for SecretsService {
    create_secret(proto::CreateSecretRequest) -> proto::CreateSecretResponse => create, CreateSecret;
    get_secret_value(proto::GetSecretValueRequest) -> proto::GetSecretValueResponse => get_value, GetSecretValue;
    batch_get_secret_value(proto::BatchGetSecretValueRequest) -> proto::BatchGetSecretValueResponse => batch_get, GetSecretValue;
    put_secret_value(proto::PutSecretValueRequest) -> proto::PutSecretValueResponse => put_value, PutSecretValue;
    update_secret(proto::UpdateSecretRequest) -> proto::UpdateSecretResponse => update, UpdateSecret;
    describe_secret(proto::DescribeSecretRequest) -> proto::SecretMetadata => describe, DescribeSecret;
    list_secrets(proto::ListSecretsRequest) -> proto::ListSecretsResponse => list, ListSecrets;
    list_secret_version_ids(proto::ListSecretVersionIdsRequest) -> proto::ListSecretVersionIdsResponse => list_versions, ListSecretVersionIds;
    update_secret_version_stage(proto::UpdateSecretVersionStageRequest) -> proto::UpdateSecretVersionStageResponse => move_stage, UpdateSecretVersionStage;
    tag_resource(proto::TagResourceRequest) -> proto::TagResourceResponse => tag, TagResource;
    untag_resource(proto::UntagResourceRequest) -> proto::UntagResourceResponse => untag, UntagResource;
    delete_secret(proto::DeleteSecretRequest) -> proto::DeleteSecretResponse => delete, DeleteSecret;
    restore_secret(proto::RestoreSecretRequest) -> proto::RestoreSecretResponse => restore, RestoreSecret;
    get_random_password(proto::GetRandomPasswordRequest) -> proto::GetRandomPasswordResponse => random_password, GetRandomPassword;
    }
}

fn not_found(name: &SecretName) -> Error {
    Error::NotFound(format!("secret {name} does not exist"))
}

/// `secret`, unless it is scheduled for deletion.
fn live(secret: SecretRecord) -> Result<SecretRecord> {
    match secret.deletion_date {
        None => Ok(secret),
        Some(date) => Err(Error::FailedPrecondition(format!(
            "secret {} is scheduled for deletion on {}; restore it first (rekey restore)",
            secret.name,
            rekey_shared::time::format_millis(date)
        ))),
    }
}
