//! Authentication and authorization of requests.
//!
//! [`authenticate`] is the one interceptor every API service runs behind: it
//! turns the connection's certificate into a [`Principal`] in the request's
//! extensions, or refuses the request with UNAUTHENTICATED. [`Authorizer`]
//! is the one function every handler calls before it reads or changes secret
//! data. Until the policy engine fills it, an authenticated principal may do
//! everything; the seam and its call sites are what matter now.

use crate::principal::Principal;
use crate::tls::ConnectionInfo;
use std::fmt;
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
    GetRandomPassword,
    KeysUse,
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
            Self::GetRandomPassword => "secrets:GetRandomPassword",
            Self::KeysUse => "keys:Use",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The interceptor: a request gets a principal or is refused.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn authenticate(mut request: Request<()>) -> Result<Request<()>, Status> {
    let info = request
        .extensions()
        .get::<ConnectionInfo>()
        .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
    let principal = match info.peer.as_ref() {
        Ok(peer) => peer.principal.clone(),
        Err(refusal) => return Err(Status::unauthenticated(refusal.to_string())),
    };
    request.extensions_mut().insert(principal);
    Ok(request)
}

/// The principal that [`authenticate`] put on the request.
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

/// Decides whether a principal may perform an action on a resource.
#[derive(Debug, Default)]
pub struct Authorizer {}

impl Authorizer {
    /// Every handler calls this before it reads or changes secret data.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: &str,
    ) -> crate::error::Result<()> {
        tracing::debug!(%principal, %action, resource, "authorized");
        Ok(())
    }
}
