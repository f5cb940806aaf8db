//! The end of a secret's life, and its undoing: delete with a recovery
//! window or at once, restore. Also random passwords, which touch no secret.

use super::SecretsService;
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::password::{self, PasswordPolicy};
use crate::service::context::RequestContext;
use crate::store::Deletion;
use rekey_shared::SecretName;
use rekey_shared::proto;
use rekey_shared::time::{now_millis, timestamp_from_millis};

const DEFAULT_RECOVERY_DAYS: u32 = 30;
const MILLIS_PER_DAY: i64 = 86_400_000;

impl SecretsService {
    pub(super) async fn delete(
        &self,
        context: &RequestContext,
        request: proto::DeleteSecretRequest,
    ) -> Result<proto::DeleteSecretResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        let now = now_millis();
        let deletion = match (
            request.recovery_window_days,
            request.force_delete_without_recovery,
        ) {
            (Some(_), true) => {
                return Err(Error::InvalidArgument(
                    "give a recovery window or force deletion, not both".to_owned(),
                ));
            }
            (_, true) => Deletion::Now,
            (days, false) => {
                let days = days.unwrap_or(DEFAULT_RECOVERY_DAYS);
                if !(7..=30).contains(&days) {
                    return Err(Error::InvalidArgument(format!(
                        "a recovery window of {days} days is out of range; it must be 7-30 days"
                    )));
                }
                Deletion::At(now + i64::from(days) * MILLIS_PER_DAY)
            }
        };
        self.authorize(context, Action::DeleteSecret, name.as_str())?;
        let secret = self.secret(&name).await?;
        if !request.secret_id.is_empty() && request.secret_id != secret.id {
            return Err(Error::FailedPrecondition(format!(
                "{name} is no longer the secret {} that was asked about (it was deleted and \
                 created again); nothing was deleted: look at it again",
                request.secret_id
            )));
        }
        self.state
            .store
            .delete_secret(&secret, deletion, &context.change_event())
            .await?;
        context.recorded();
        self.publish(
            context,
            "secret_deleted",
            name.as_str(),
            "",
            if deletion == Deletion::Now {
                "forced"
            } else {
                "scheduled"
            },
        );
        let deletion_date = match deletion {
            Deletion::Now => now,
            Deletion::At(date) => date,
        };
        tracing::info!(
            secret = %name,
            principal = %context.principal,
            forced = deletion == Deletion::Now,
            "secret deleted"
        );
        Ok(proto::DeleteSecretResponse {
            name: name.to_string(),
            secret_id: secret.id,
            deletion_date: Some(timestamp_from_millis(deletion_date)),
        })
    }

    pub(super) async fn restore(
        &self,
        context: &RequestContext,
        request: proto::RestoreSecretRequest,
    ) -> Result<proto::RestoreSecretResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::RestoreSecret, name.as_str())?;
        let secret = self.secret(&name).await?;
        self.state
            .store
            .restore_secret(&secret, now_millis(), &context.change_event())
            .await?;
        context.recorded();
        self.publish(context, "secret_restored", name.as_str(), "", "");
        Ok(proto::RestoreSecretResponse {
            name: name.to_string(),
            secret_id: secret.id,
        })
    }

    pub(super) async fn random_password(
        &self,
        context: &RequestContext,
        request: proto::GetRandomPasswordRequest,
    ) -> Result<proto::GetRandomPasswordResponse> {
        context.set_resource("*");
        let policy = PasswordPolicy {
            length: request.password_length.unwrap_or(password::DEFAULT_LENGTH),
            exclude_characters: request.exclude_characters,
            exclude_numbers: request.exclude_numbers,
            exclude_punctuation: request.exclude_punctuation,
            exclude_uppercase: request.exclude_uppercase,
            exclude_lowercase: request.exclude_lowercase,
            include_space: request.include_space,
            require_each_included_type: request.require_each_included_type.unwrap_or(true),
        };
        self.authorize(context, Action::GetRandomPassword, "*")?;
        let generated = password::generate(&policy)
            .map_err(|error| Error::InvalidArgument(error.to_string()))?;
        Ok(proto::GetRandomPasswordResponse {
            random_password: generated.as_str().to_owned(),
        })
    }
}
