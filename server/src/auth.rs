//! Authentication and authorization of requests.
//!
//! [`Authenticator`] is the one interceptor every API service runs behind:
//! it turns the connection's certificate into a [`Principal`] in the
//! request's extensions, or refuses the request with UNAUTHENTICATED (a
//! refused or revoked certificate). [`Authorizer`] holds the current policy
//! and answers "may P do A on R?"; handlers ask it through their
//! `RequestContext`, which also records the answer for the audit log.

use crate::policy::{Decision, Policy};
use crate::principal::Principal;
use crate::tls::{ConnectionInfo, Revocations};
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
    revocations: Arc<Revocations>,
}

impl Authenticator {
    pub fn new(revocations: Arc<Revocations>) -> Self {
        Self { revocations }
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
            Err(refusal) => return Err(Status::unauthenticated(refusal.to_string())),
        };
        if self.revocations.is_revoked(&peer.serial) {
            return Err(Status::unauthenticated(format!(
                "client certificate refused: serial {} was revoked",
                peer.serial
            )));
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
