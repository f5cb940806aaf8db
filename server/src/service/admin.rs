//! The Admin service: policy (get, apply, history), the audit log (query,
//! verify), master keys (list, create, rotate, retire). Authorized with
//! the policy, audit and keys actions, audited like every other request.

use super::AppState;
use super::context::RequestContext;
use crate::audit::{self, AuditEvent, StoredEvent, hex};
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::governance;
use crate::policy::Policy;
use crate::store::AuditQuery;
use rekey_shared::KeyName;
use rekey_shared::proto::admin_server::Admin;
use rekey_shared::proto::{self};
use rekey_shared::time::{millis_from_timestamp, timestamp_from_millis};
use std::sync::Arc;

const AUDIT_PAGE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct AdminService {
    state: Arc<AppState>,
}

impl AdminService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    fn authorize(&self, context: &RequestContext, action: Action, resource: &str) -> Result<()> {
        context.authorize(&self.state.authorizer, action, resource)
    }

    async fn get_policy_impl(
        &self,
        context: &RequestContext,
        _: proto::GetPolicyRequest,
    ) -> Result<proto::PolicyDocument> {
        self.authorize(context, Action::GetPolicy, "*")?;
        let stored = self.state.store.current_policy().await?;
        Ok(match stored {
            Some(stored) => proto::PolicyDocument {
                version: stored.version,
                document: stored.document,
                created_at: Some(timestamp_from_millis(stored.created_at)),
                created_by: stored.created_by,
            },
            None => proto::PolicyDocument::default(),
        })
    }

    async fn apply_policy_impl(
        &self,
        context: &RequestContext,
        request: proto::ApplyPolicyRequest,
    ) -> Result<proto::PolicyDocument> {
        context.set_resource("*");
        self.authorize(context, Action::ApplyPolicy, "*")?;
        let policy = Policy::parse_to_apply(&request.document)
            .map_err(|error| Error::InvalidArgument(error.to_string()))?;
        let (_, current) = governance::current_policy(&self.state.store).await?;
        let based_on = request.based_on_version.unwrap_or(current);
        if based_on != current {
            return Err(Error::FailedPrecondition(format!(
                "the document was edited from policy version {based_on}, but version {current} \
                 has been applied since; get it again (rekey policy get) and redo the change, or \
                 apply with --force"
            )));
        }
        let version = governance::apply_policy(
            &self.state.store,
            &policy,
            context.principal.as_str(),
            based_on,
            &context.change_event(),
        )
        .await?;
        context.recorded();
        // In force for the next request, here; elsewhere within seconds.
        self.state.put_policy_in_force(policy.clone(), version);
        Ok(proto::PolicyDocument {
            version,
            document: policy.to_toml(),
            created_at: Some(timestamp_from_millis(rekey_shared::time::now_millis())),
            created_by: context.principal.to_string(),
        })
    }

    async fn policy_history_impl(
        &self,
        context: &RequestContext,
        _: proto::ListPolicyHistoryRequest,
    ) -> Result<proto::ListPolicyHistoryResponse> {
        self.authorize(context, Action::GetPolicy, "*")?;
        let versions = self.state.store.policy_history().await?;
        Ok(proto::ListPolicyHistoryResponse {
            versions: versions
                .into_iter()
                .map(|version| proto::PolicyDocument {
                    version: version.version,
                    document: String::new(),
                    created_at: Some(timestamp_from_millis(version.created_at)),
                    created_by: version.created_by,
                })
                .collect(),
        })
    }

    async fn query_audit_impl(
        &self,
        context: &RequestContext,
        request: proto::QueryAuditRequest,
    ) -> Result<proto::QueryAuditResponse> {
        self.authorize(context, Action::ReadAudit, "*")?;
        let limit = match request.limit {
            0 => 100,
            limit if limit <= AUDIT_PAGE => limit,
            limit => {
                return Err(Error::InvalidArgument(format!(
                    "limit {limit} is too large; the maximum is {AUDIT_PAGE}"
                )));
            }
        };
        // No stored text holds a NUL (events write it `\0`), and
        // PostgreSQL refuses one in a parameter.
        for (what, text) in [
            ("principal", &request.principal),
            ("resource", &request.resource),
        ] {
            if text.contains('\0') {
                return Err(Error::InvalidArgument(format!(
                    "the {what} filter contains a NUL character; write it \\0, as events store it"
                )));
            }
        }
        let non_empty = |text: String| (!text.is_empty()).then_some(text);
        let events = self
            .state
            .store
            .audit_events(&AuditQuery {
                after_seq: request.after_seq,
                since: request.since.as_ref().map(millis_from_timestamp),
                principal: non_empty(request.principal),
                resource: non_empty(request.resource),
                limit,
            })
            .await?;
        let mut events: Vec<_> = events.into_iter().map(event_message).collect();
        let fits = crate::service::convert::fitting(&events);
        let more = fits < events.len();
        events.truncate(fits);
        Ok(proto::QueryAuditResponse { events, more })
    }

    async fn verify_audit_impl(
        &self,
        context: &RequestContext,
        request: proto::VerifyAuditRequest,
    ) -> Result<proto::VerifyAuditResponse> {
        self.authorize(context, Action::VerifyAudit, "*")?;
        let store = &self.state.store;
        // Hold the log against the caller's checkpoint and against the
        // newest event this server knows of before the walk began: a
        // caller's older checkpoint must not hide a tail cut off since.
        let own = store.audit_head();
        let theirs = (request.checkpoint_seq > 0)
            .then(|| (request.checkpoint_seq, request.checkpoint_mac.clone()));
        // The caller's checkpoint of an archived event is refused by the
        // walk; the server's own, archived by another replica, is passed
        // over.
        let mut verdict = match &theirs {
            Some(_) => audit::verify_store(store, theirs.clone()).await?,
            None => audit::verify_store_against_own(store, own.clone()).await?,
        };
        if verdict.finding.is_none() && theirs.is_some() && own.is_some() && own != theirs {
            verdict = audit::verify_store_against_own(store, own).await?;
        }
        let audit::Verdict {
            first_seq,
            events,
            finding,
            head_seq,
            head_mac,
        } = verdict;
        let first_bad_seq = finding.as_ref().map_or(0, audit::Finding::first_bad_seq);
        if let Some(finding) = &finding {
            tracing::error!(%finding, "audit log verification failed");
        } else {
            tracing::info!(seq = head_seq, mac = %hex(&head_mac), "audit log verified");
        }
        Ok(proto::VerifyAuditResponse {
            ok: finding.is_none(),
            events,
            head_seq,
            head_mac,
            finding: finding.map(|f| f.to_string()).unwrap_or_default(),
            first_bad_seq,
            first_seq,
        })
    }

    async fn list_keys_impl(
        &self,
        context: &RequestContext,
        _: proto::ListKeysRequest,
    ) -> Result<proto::ListKeysResponse> {
        let mut keys: std::collections::BTreeMap<String, proto::MasterKey> = Default::default();
        for stored in self.state.store.list_master_keys().await? {
            if !context.allows(
                &self.state.authorizer,
                Action::KeysManage,
                &format!("key:{}", stored.name),
            ) {
                continue;
            }
            let entry = keys
                .entry(stored.name.clone())
                .or_insert_with(|| proto::MasterKey {
                    name: stored.name.clone(),
                    versions: Vec::new(),
                    created_at: Some(timestamp_from_millis(stored.created_at)),
                });
            entry.versions.push(stored.version);
        }
        context.summarize(&format!("{} keys listed", keys.len()));
        Ok(proto::ListKeysResponse {
            keys: keys.into_values().collect(),
        })
    }

    async fn add_key_version(
        &self,
        context: &RequestContext,
        name: &str,
        must_exist: bool,
    ) -> Result<proto::MasterKey> {
        context.set_resource(&format!("key:{name}"));
        let name = KeyName::parse(name)?;
        self.authorize(context, Action::KeysManage, &format!("key:{name}"))?;
        let store = &self.state.store;
        let exists = self.state.keyring.exists(store, &name).await?;
        match (exists, must_exist) {
            (true, false) => {
                return Err(Error::AlreadyExists(format!(
                    "master key {name} already exists; rotate it to add a version"
                )));
            }
            (false, true) => return Err(crate::keyring::missing_key(&name)),
            _ => {}
        }
        // Said by the change's own event: a failure's is its error.
        let event = AuditEvent {
            detail: if must_exist { "rotated" } else { "created" }.to_owned(),
            ..context.change_event()
        };
        self.state
            .keyring
            .create_version(store, &name, &event)
            .await?;
        context.recorded();
        let versions = store.master_key_versions(name.as_str()).await?;
        Ok(proto::MasterKey {
            name: name.to_string(),
            versions: versions.iter().map(|key| key.version).collect(),
            created_at: versions
                .first()
                .map(|key| timestamp_from_millis(key.created_at)),
        })
    }

    async fn create_key_impl(
        &self,
        context: &RequestContext,
        request: proto::CreateKeyRequest,
    ) -> Result<proto::MasterKey> {
        self.add_key_version(context, &request.name, false).await
    }

    async fn rotate_key_impl(
        &self,
        context: &RequestContext,
        request: proto::RotateKeyRequest,
    ) -> Result<proto::MasterKey> {
        self.add_key_version(context, &request.name, true).await
    }

    async fn rewrap_key_impl(
        &self,
        context: &RequestContext,
        request: proto::RewrapKeyRequest,
    ) -> Result<proto::RewrapKeyResponse> {
        const BATCH: u32 = 200;
        context.set_resource(&format!("key:{}", request.name));
        let name = KeyName::parse(&request.name)?;
        self.authorize(context, Action::KeysManage, &format!("key:{name}"))?;
        let (store, keyring) = (&self.state.store, &self.state.keyring);
        // The newest version the database holds, not the one this server
        // keeps: a rotation on another replica within the last second
        // would make the rewrap a no-op that answered done.
        let to = keyring.newest_stored(store, &name).await?;
        // Each batch commits with an event of its own; a request that
        // re-wrapped nothing is recorded as any other.
        let rewrapped = keyring
            .rewrap_all(store, &to, BATCH, &context.change_event(), |_| {
                context.recorded()
            })
            .await?;
        Ok(proto::RewrapKeyResponse {
            version: to.reference.version,
            rewrapped,
        })
    }

    async fn retire_key_impl(
        &self,
        context: &RequestContext,
        request: proto::RetireKeyRequest,
    ) -> Result<proto::RetireKeyResponse> {
        context.set_resource(&format!("key:{}", request.name));
        let name = KeyName::parse(&request.name)?;
        self.authorize(context, Action::KeysManage, &format!("key:{name}"))?;
        let event = AuditEvent {
            detail: format!("retired version {}", request.version),
            ..context.change_event()
        };
        self.state
            .store
            .retire_master_key(name.as_str(), request.version, &event)
            .await?;
        context.recorded();
        Ok(proto::RetireKeyResponse {})
    }
}

fn event_message(stored: StoredEvent) -> proto::AuditEvent {
    // Cut as events are stored now: one stored before they were could be
    // too large for any client to take in a page (verification reads the
    // rows as stored).
    let event = match stored.event.storable() {
        std::borrow::Cow::Borrowed(_) => stored.event,
        std::borrow::Cow::Owned(cut) => cut,
    };
    proto::AuditEvent {
        seq: stored.seq,
        time: Some(timestamp_from_millis(event.time)),
        principal: event.principal,
        peer: event.peer,
        action: event.action,
        resource: event.resource,
        decision: event.decision,
        outcome: event.outcome,
        request_id: event.request_id,
        detail: event.detail,
    }
}

audited_service! {
    Admin for AdminService {
    get_policy(proto::GetPolicyRequest) -> proto::PolicyDocument => get_policy_impl, GetPolicy;
    apply_policy(proto::ApplyPolicyRequest) -> proto::PolicyDocument => apply_policy_impl, ApplyPolicy;
    list_policy_history(proto::ListPolicyHistoryRequest) -> proto::ListPolicyHistoryResponse => policy_history_impl, GetPolicy;
    query_audit(proto::QueryAuditRequest) -> proto::QueryAuditResponse => query_audit_impl, ReadAudit;
    verify_audit(proto::VerifyAuditRequest) -> proto::VerifyAuditResponse => verify_audit_impl, VerifyAudit;
    list_keys(proto::ListKeysRequest) -> proto::ListKeysResponse => list_keys_impl, KeysManage;
    create_key(proto::CreateKeyRequest) -> proto::MasterKey => create_key_impl, KeysManage;
    rotate_key(proto::RotateKeyRequest) -> proto::MasterKey => rotate_key_impl, KeysManage;
    rewrap_key(proto::RewrapKeyRequest) -> proto::RewrapKeyResponse => rewrap_key_impl, KeysManage;
    retire_key(proto::RetireKeyRequest) -> proto::RetireKeyResponse => retire_key_impl, KeysManage;
    }
}
