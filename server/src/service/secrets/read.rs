//! Reads: one value, a batch of values, metadata, listings of secrets and of
//! versions.

use super::SecretsService;
use super::pages::visible_page;
use super::validate;
use super::{live, not_found};
use crate::audit::AuditEvent;
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::service::context::RequestContext;
use crate::service::convert::{fitting, page_size, secret_metadata, secret_version, today};
use crate::store::{Gate, SecretQuery, SecretRecord, ValueRead, VersionRecord};
use rekey_shared::proto;
use rekey_shared::time::timestamp_from_millis;
use rekey_shared::{KeyName, SecretName, Stage, VersionId};
use tonic::Status;

const MAX_PAGE: u32 = 100;
const MAX_BATCH: usize = 20;

impl SecretsService {
    /// One value, by version id, by stage, or CURRENT. Authorized first:
    /// `secrets:GetSecretValue` on the name, then `keys:Use` on its key.
    async fn read_value(
        &self,
        context: &RequestContext,
        name: &SecretName,
        version_id: Option<&VersionId>,
        stage: Option<&Stage>,
    ) -> Result<proto::GetSecretValueResponse> {
        self.authorize(context, Action::GetSecretValue, name.as_str())?;
        self.read_checked(context, name, version_id, stage, KeyCheck::Record)
            .await
    }

    /// One CURRENT value of a batch: a denial is this entry's error, not
    /// the decision of the whole request.
    async fn read_in_batch(
        &self,
        context: &RequestContext,
        name: &SecretName,
    ) -> Result<proto::GetSecretValueResponse> {
        if !context.allows(
            &self.state.authorizer,
            Action::GetSecretValue,
            name.as_str(),
        ) {
            return Err(denied(context, Action::GetSecretValue, name.as_str()));
        }
        self.read_checked(context, name, None, None, KeyCheck::Entry)
            .await
    }

    /// The secret and, once `keys:Use` on its key is allowed, the version
    /// asked for. The store reads both in one step (`Store::read_value`),
    /// asking between the two statements whether to go on: that gate
    /// decides on the policy as it is when the read starts. The decision
    /// is then made again on the policy as it is now, as `check` says; if
    /// only the second allows (the policy changed meanwhile), the version
    /// is read then. If only the first allowed, the ciphertext was read
    /// under that decision and is dropped unopened.
    async fn read_checked(
        &self,
        context: &RequestContext,
        name: &SecretName,
        version_id: Option<&VersionId>,
        stage: Option<&Stage>,
        check: KeyCheck,
    ) -> Result<proto::GetSecretValueResponse> {
        let store = &self.state.store;
        let selected = stage.cloned().unwrap_or_else(Stage::current);
        let policy = self.state.authorizer.policy();
        let principal = context.principal.clone();
        let gate: Gate = Box::new(move |secret| {
            secret.deletion_date.is_none()
                && policy
                    .evaluate(
                        principal.as_str(),
                        Action::KeysUse.as_str(),
                        &key_resource(&secret.key_name),
                    )
                    .is_allowed()
        });
        let (secret, found) = match store.read_value(name, version_id, &selected, gate).await? {
            ValueRead::NoSecret => return Err(not_found(name)),
            ValueRead::Stopped(secret) => (live(secret)?, None),
            ValueRead::Read(secret, found) => (live(secret)?, Some(found)),
        };
        self.use_key(context, check, &secret.key_name)?;
        let found = match found {
            Some(found) => found,
            None => {
                store
                    .version_with_stages(&secret.id, version_id, &selected)
                    .await?
            }
        };
        self.may_open(context, check, &secret, &found)?;
        match self.answer(&secret, found, version_id, stage).await {
            // What SQLite kept in memory may be wrapped under a master-key
            // version another process retired meanwhile: a value that does
            // not open is read once more from the database (`open` made
            // what was kept of the secret stale) before the read fails.
            Err(Error::Integrity(_)) => {
                let found = store
                    .version_with_stages(&secret.id, version_id, &selected)
                    .await?;
                self.may_open(context, check, &secret, &found)?;
                self.answer(&secret, found, version_id, stage).await
            }
            answered => answered,
        }
    }

    /// `keys:Use` on `key`, as `check` says to decide it.
    fn use_key(&self, context: &RequestContext, check: KeyCheck, key: &KeyName) -> Result<()> {
        let key = key_resource(key);
        match check {
            KeyCheck::Record => self.authorize(context, Action::KeysUse, &key),
            KeyCheck::Entry if context.allows(&self.state.authorizer, Action::KeysUse, &key) => {
                Ok(())
            }
            KeyCheck::Entry => Err(denied(context, Action::KeysUse, &key)),
        }
    }

    /// `keys:Use` on the key that opens `found`, when it is not the one
    /// the secret's record named. The version may be read apart from the
    /// secret (PostgreSQL reads the two in two statements; a retry reads
    /// the version again), and a secret moved to another master key with a
    /// new value between the two must not open under a decision taken on
    /// the key it left.
    fn may_open(
        &self,
        context: &RequestContext,
        check: KeyCheck,
        secret: &SecretRecord,
        found: &Option<(VersionRecord, Vec<Stage>)>,
    ) -> Result<()> {
        match found {
            Some((version, _)) if version.sealed.key.name != secret.key_name => {
                self.use_key(context, check, &version.sealed.key.name)
            }
            _ => Ok(()),
        }
    }

    /// The response for `found`, the version a read selected (`None`: no
    /// version is selected so).
    async fn answer(
        &self,
        secret: &SecretRecord,
        found: Option<(VersionRecord, Vec<Stage>)>,
        version_id: Option<&VersionId>,
        stage: Option<&Stage>,
    ) -> Result<proto::GetSecretValueResponse> {
        let store = &self.state.store;
        let name = &secret.name;
        let Some((version, version_stages)) = found else {
            return Err(Error::NotFound(match (version_id, stage) {
                (Some(version_id), _) => format!("secret {name} has no version {version_id}"),
                (None, Some(stage)) if !stage.is_current() => {
                    format!("secret {name} has no version with stage {stage}")
                }
                (None, _) => format!("secret {name} has no value yet"),
            }));
        };
        if let (Some(stage), Some(_)) = (stage, version_id)
            && !version_stages.contains(stage)
        {
            return Err(Error::NotFound(format!(
                "version {} of {name} does not carry stage {stage}",
                version.version_id
            )));
        }
        let value = self.open(secret, &version).await?;
        // Access dates have day resolution: a read writes at most once a
        // day per secret, and not at all once both rows say today.
        let day = today();
        if secret.accessed_day < Some(day) || version.accessed_day < Some(day) {
            store
                .record_access(&secret.id, &version.version_id, day)
                .await?;
        }
        let (secret_string, secret_binary) = value.to_fields();
        Ok(proto::GetSecretValueResponse {
            name: name.to_string(),
            secret_id: secret.id.clone(),
            version_id: version.version_id.to_string(),
            version_stages: version_stages.iter().map(ToString::to_string).collect(),
            secret_string,
            secret_binary,
            created_at: Some(timestamp_from_millis(version.created_at)),
        })
    }

    pub(super) async fn get_value(
        &self,
        context: &RequestContext,
        request: proto::GetSecretValueRequest,
    ) -> Result<proto::GetSecretValueResponse> {
        context.set_resource(&request.name);
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
        self.read_value(context, &name, version_id.as_ref(), stage.as_ref())
            .await
    }

    /// Up to 20 named secrets, or a page of those matching filters. A
    /// secret that cannot be read is an entry in `errors`; the call itself
    /// succeeds. With filters, secrets the caller may not read are left out.
    pub(super) async fn batch_get(
        &self,
        context: &RequestContext,
        request: proto::BatchGetSecretValueRequest,
    ) -> Result<proto::BatchGetSecretValueResponse> {
        context.set_resource(&request.names.join(","));
        let mut response = proto::BatchGetSecretValueResponse::default();
        match (request.names.is_empty(), request.filters.is_empty()) {
            (false, false) => {
                return Err(Error::InvalidArgument(
                    "give names or filters, not both".to_owned(),
                ));
            }
            (true, true) => {
                return Err(Error::InvalidArgument(
                    "give up to 20 names, or filters".to_owned(),
                ));
            }
            (false, true) => {
                if request.names.len() > MAX_BATCH {
                    return Err(Error::InvalidArgument(format!(
                        "{} names given; a batch reads at most {MAX_BATCH}",
                        request.names.len()
                    )));
                }
                if !request.page_token.is_empty() {
                    return Err(Error::InvalidArgument(
                        "a batch of names has one page; drop the page token".to_owned(),
                    ));
                }
                self.state
                    .admit_more(context, request.names.len().saturating_sub(1) as u32)?;
                for raw in &request.names {
                    let read = match SecretName::parse(raw) {
                        Ok(name) => self.read_in_batch(context, &name).await,
                        Err(error) => Err(error.into()),
                    };
                    match read {
                        Ok(value) => response.secret_values.push(value),
                        Err(error) => response.errors.push(batch_error(raw, error)),
                    }
                }
            }
            (true, false) => {
                let mut query = SecretQuery {
                    filters: validate::filters(&request.filters)?,
                    limit: page_size(request.page_size, MAX_BATCH as u32)?,
                    ..SecretQuery::default()
                };
                query.after = self
                    .state
                    .page_tokens
                    .list_cursor(&request.page_token, &query)?;
                self.state
                    .admit_more(context, query.limit.saturating_sub(1))?;
                // What the caller may not read is left out, as in a listing.
                let page = visible_page(
                    &self.state.store,
                    &self.state.page_tokens,
                    &query,
                    |secret| {
                        context.allows(
                            &self.state.authorizer,
                            Action::GetSecretValue,
                            secret.name.as_str(),
                        )
                    },
                )
                .await?;
                response.next_page_token = page.next_page_token;
                for secret in &page.secrets {
                    let read = self.read_in_batch(context, &secret.name).await;
                    match read {
                        Ok(value) => response.secret_values.push(value),
                        Err(error) => response
                            .errors
                            .push(batch_error(secret.name.as_str(), error)),
                    }
                }
            }
        }
        // Each value given is an event of its own, as a read by name is:
        // the log names every secret whose value left, and none leaves
        // before its event is durable; so is each entry the policy refused,
        // as a refused read by name is. The batch's own event counts them.
        let given = response.secret_values.iter().map(|value| AuditEvent {
            resource: value.name.clone(),
            decision: "allow".to_owned(),
            ..context.event("OK", Some("given in a batch"))
        });
        let refused = response
            .errors
            .iter()
            .filter(|error| error.code == code_name(tonic::Code::PermissionDenied))
            .map(|error| AuditEvent {
                resource: error.name.clone(),
                decision: "deny".to_owned(),
                ..context.event(
                    code_name(tonic::Code::PermissionDenied),
                    Some(&format!("refused in a batch: {}", error.message)),
                )
            });
        let given: Vec<AuditEvent> = given.chain(refused).collect();
        self.state
            .store
            .record_all(&given)
            .await
            .map_err(|error| Error::audit_unwritable(&error))?;
        context.summarize(&format!(
            "{} read, {} not",
            response.secret_values.len(),
            response.errors.len()
        ));
        Ok(response)
    }

    pub(super) async fn describe(
        &self,
        context: &RequestContext,
        request: proto::DescribeSecretRequest,
    ) -> Result<proto::SecretMetadata> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::DescribeSecret, name.as_str())?;
        let secret = self.secret(&name).await?;
        let map = self.state.store.stage_map(&secret.id).await?;
        let rotation = self.state.store.rotation_config(&secret.id).await?;
        Ok(secret_metadata(&secret, &map, rotation.as_ref()))
    }

    pub(super) async fn list(
        &self,
        context: &RequestContext,
        request: proto::ListSecretsRequest,
    ) -> Result<proto::ListSecretsResponse> {
        context.set_resource("*");
        let (sort, descending) = validate::sort(request.sort_by, request.sort_order)?;
        let mut query = SecretQuery {
            filters: validate::filters(&request.filters)?,
            sort,
            descending,
            after: None,
            include_planned_deletion: request.include_planned_deletion,
            limit: page_size(request.page_size, MAX_PAGE)?,
        };
        query.after = self
            .state
            .page_tokens
            .list_cursor(&request.page_token, &query)?;
        let store = &self.state.store;
        let page = visible_page(store, &self.state.page_tokens, &query, |secret| {
            context.allows(
                &self.state.authorizer,
                Action::ListSecrets,
                secret.name.as_str(),
            )
        })
        .await?;
        let ids: Vec<String> = page
            .secrets
            .iter()
            .map(|secret| secret.id.clone())
            .collect();
        let details = store.page_details(&ids).await?;
        let no_stages = Default::default();
        let mut secrets: Vec<_> = page
            .secrets
            .iter()
            .map(|secret| {
                secret_metadata(
                    secret,
                    details.stages.get(&secret.id).unwrap_or(&no_stages),
                    details.rotation.get(&secret.id),
                )
            })
            .collect();
        let mut next_page_token = page.next_page_token;
        // A page of secrets with many tags and labels may be too large
        // for a client: it ends early, and the next goes on from there.
        let fits = fitting(&secrets);
        if fits < secrets.len() {
            secrets.truncate(fits);
            next_page_token = self
                .state
                .page_tokens
                .list_token(&query, &page.secrets[fits - 1]);
        }
        context.summarize(&format!(
            "{} listed, {} hidden by policy",
            secrets.len(),
            page.hidden
        ));
        Ok(proto::ListSecretsResponse {
            secrets,
            next_page_token,
        })
    }

    pub(super) async fn list_versions(
        &self,
        context: &RequestContext,
        request: proto::ListSecretVersionIdsRequest,
    ) -> Result<proto::ListSecretVersionIdsResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        let limit = page_size(request.page_size, MAX_PAGE)?;
        self.authorize(context, Action::ListSecretVersionIds, name.as_str())?;
        let secret = self.secret(&name).await?;
        // Bound to the secret and the flag: another's position would skip
        // this one's newer versions.
        let listing = format!("versions {} {}", secret.id, request.include_deprecated);
        let before_seq = self
            .state
            .page_tokens
            .decode(&listing, &request.page_token)?
            .map(|seq| seq.parse::<i64>())
            .transpose()
            .map_err(|_| Error::InvalidArgument("page token is malformed".to_owned()))?;
        let versions = self
            .state
            .store
            .list_versions(&secret.id, request.include_deprecated, before_seq, limit)
            .await?;
        let next_page_token = match versions.last() {
            Some(last) if versions.len() == limit as usize => self
                .state
                .page_tokens
                .encode(&listing, &last.seq.to_string()),
            _ => String::new(),
        };
        Ok(proto::ListSecretVersionIdsResponse {
            name: name.to_string(),
            secret_id: secret.id,
            versions: versions.iter().map(secret_version).collect(),
            next_page_token,
        })
    }
}

/// How a read checks `keys:Use`: recorded as the request's decision, or
/// as a batch entry's error only.
#[derive(Debug, Clone, Copy)]
enum KeyCheck {
    Record,
    Entry,
}

fn key_resource(key: &KeyName) -> String {
    format!("key:{key}")
}

/// A batch entry's refusal (not recorded as the request's decision).
fn denied(context: &RequestContext, action: Action, resource: &str) -> Error {
    Error::PermissionDenied(format!(
        "{} may not {action} on {resource}",
        context.principal
    ))
}

/// A batch entry's error as the response carries it.
fn batch_error(name: &str, error: Error) -> proto::BatchGetError {
    let status = Status::from(error);
    proto::BatchGetError {
        name: name.to_owned(),
        code: code_name(status.code()).to_owned(),
        message: status.message().to_owned(),
    }
}

/// The name gRPC gives a status code, as clients print it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
