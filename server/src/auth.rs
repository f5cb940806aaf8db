//! Authentication and authorization of requests.
//!
//! [`Authenticator`] is the one interceptor every API service runs behind:
//! it turns the connection's certificate into a [`Principal`] in the
//! request's extensions, or refuses the request with UNAUTHENTICATED (a
//! refused or revoked certificate) and audits the refusal (action
//! `authenticate`, the RPC's path as the resource). [`Authorizer`] holds the current policy
//! and answers "may P do A on R?"; handlers ask it through their
//! `RequestContext`, which also records the answer for the audit log.

use crate::audit::AuditEvent;
use crate::policy::{Decision, Policy};
use crate::principal::Principal;
use crate::service::AppState;
use crate::tls::ConnectionInfo;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use tonic::{Request, Status};

/// An action of the policy language, as DESIGN lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateSecret,
    GetSecretValue,
    PutSecretValue,
    UpdateSecret,
    DescribeSecret,
    ListSecrets,
    ListSecretVersionIds,
    UpdateSecretVersionStage,
    TagResource,
    UntagResource,
    DeleteSecret,
    RestoreSecret,
    Watch,
    GetRandomPassword,
    ConfigureRotation,
    StartRotation,
    StepRotation,
    RetryRotation,
    CancelRotation,
    ApproveRotation,
    DescribeRotation,
    KeysUse,
    KeysManage,
    GetPolicy,
    ApplyPolicy,
    ReadAudit,
    VerifyAudit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateSecret => "secrets:CreateSecret",
            Self::GetSecretValue => "secrets:GetSecretValue",
            Self::PutSecretValue => "secrets:PutSecretValue",
            Self::UpdateSecret => "secrets:UpdateSecret",
            Self::DescribeSecret => "secrets:DescribeSecret",
            Self::ListSecrets => "secrets:ListSecrets",
            Self::ListSecretVersionIds => "secrets:ListSecretVersionIds",
            Self::UpdateSecretVersionStage => "secrets:UpdateSecretVersionStage",
            Self::TagResource => "secrets:TagResource",
            Self::UntagResource => "secrets:UntagResource",
            Self::DeleteSecret => "secrets:DeleteSecret",
            Self::RestoreSecret => "secrets:RestoreSecret",
            Self::Watch => "secrets:Watch",
            Self::GetRandomPassword => "secrets:GetRandomPassword",
            Self::ConfigureRotation => "rotation:ConfigureRotation",
            Self::StartRotation => "rotation:StartRotation",
            Self::StepRotation => "rotation:StepRotation",
            Self::RetryRotation => "rotation:RetryRotation",
            Self::CancelRotation => "rotation:CancelRotation",
            Self::ApproveRotation => "rotation:ApproveRotation",
            Self::DescribeRotation => "rotation:DescribeRotation",
            Self::KeysUse => "keys:Use",
            Self::KeysManage => "keys:Manage",
            Self::GetPolicy => "policy:GetPolicy",
            Self::ApplyPolicy => "policy:ApplyPolicy",
            Self::ReadAudit => "audit:ReadAudit",
            Self::VerifyAudit => "audit:VerifyAudit",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The interceptor: a request gets a principal or is refused. It also
/// refuses certificates revoked after their connection was opened.
#[derive(Debug, Clone)]
pub struct Authenticator {
    state: Arc<AppState>,
}

/// The path of the RPC a request calls (`/rekey.v1.Secrets/ListSecrets`),
/// put on it by the layer around the router (`metrics::layer`): tonic
/// hands an interceptor the request without it.
#[derive(Debug, Clone)]
pub struct CalledPath(pub String);

/// The principal of a refusal's event when the certificate names none
/// (no principal can be spelled with parentheses).
const NO_PRINCIPAL: &str = "(none)";

impl Authenticator {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Refuses the request with UNAUTHENTICATED `message`, and audits the
    /// refusal, since no handler runs to do it. Nothing leaves with a
    /// refusal, so the answer does not wait for the event; refusals past
    /// the principal's rate limit are counted as the handlers' are
    /// (`limits`).
    fn refuse(&self, request: &Request<()>, principal: &str, message: String) -> Status {
        let left_out = match self
            .state
            .limits
            .check(principal, std::time::Instant::now())
        {
            Ok(()) => Some(0),
            Err(refusal) => refusal.record,
        };
        if let Some(left_out) = left_out {
            let mut detail = message.clone();
            if left_out > 0 {
                detail.push_str(&format!(
                    "; {left_out} more refused since the last recorded refusal"
                ));
            }
            let extensions = request.extensions();
            let event = AuditEvent {
                time: rekey_shared::time::now_millis(),
                principal: principal.to_owned(),
                peer: extensions
                    .get::<ConnectionInfo>()
                    .map(|info| info.remote_addr.to_string())
                    .unwrap_or_default(),
                action: "authenticate".to_owned(),
                resource: extensions
                    .get::<CalledPath>()
                    .map(|path| path.0.clone())
                    .unwrap_or_default(),
                decision: "deny".to_owned(),
                outcome: "UNAUTHENTICATED".to_owned(),
                request_id: rekey_shared::VersionId::random().into_string(),
                detail,
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                if let Err(error) = state.store.record(&event).await {
                    tracing::error!(%error, "the event of a refused certificate was not written");
                }
            });
        }
        Status::unauthenticated(message)
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let info = request
            .extensions()
            .get::<ConnectionInfo>()
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
        let peer = match info.peer.as_ref() {
            Ok(peer) => peer,
            Err(refusal) => return Err(self.refuse(&request, NO_PRINCIPAL, refusal.to_string())),
        };
        if self.state.revocations.is_revoked(&peer.serial) {
            let message = format!(
                "client certificate refused: serial {} was revoked",
                peer.serial
            );
            return Err(self.refuse(&request, peer.principal.as_str(), message));
        }
        let principal = peer.principal.clone();
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal the interceptor put on the request.
pub fn principal<T>(request: &Request<T>) -> crate::error::Result<Principal> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| {
            crate::error::Error::Unauthenticated(
                "request without an authenticated principal".to_owned(),
            )
        })
}

/// The current policy, replaced whole when a new version is applied (here
/// or by another process: see `sync`).
#[derive(Debug)]
pub struct Authorizer {
    policy: RwLock<Arc<Policy>>,
    version: AtomicI64,
}

impl Authorizer {
    pub fn new(policy: Policy, version: i64) -> Self {
        Self {
            policy: RwLock::new(Arc::new(policy)),
            version: AtomicI64::new(version),
        }
    }

    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(policy) => policy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, policy: Policy, version: i64) {
        let mut current = match self.policy.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(policy);
        self.version.store(version, Ordering::Release);
    }

    /// May `principal` perform `action` on `resource`?
    pub fn decide(&self, principal: &Principal, action: Action, resource: &str) -> Decision {
        self.policy()
            .evaluate(principal.as_str(), action.as_str(), resource)
    }
}
