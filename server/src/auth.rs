//! Authentication and authorization of requests.
//!
//! [`Authenticator`] is the one interceptor every API service runs behind:
//! it turns the connection's certificate into a [`Principal`] in the
//! request's extensions, or refuses the request with UNAUTHENTICATED (a
//! refused or revoked certificate) and audits the refusal (action
//! `authenticate`, the RPC's path as the resource; at most one a second
//! per certificate, counting the rest). [`Authorizer`] holds the current policy
//! and answers "may P do A on R?"; handlers ask it through their
//! `RequestContext`, which also records the answer for the audit log.

use crate::audit::AuditEvent;
use crate::limits::OncePerSecond;
use crate::policy::{Decision, Policy};
use crate::principal::{PeerCertificate, Principal};
use crate::service::AppState;
use crate::tls::{ConnectionInfo, Revocations};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
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
    /// Whether a request for this action may change what the server holds
    /// (the key actions are all managed under `keys:Manage`, listing too).
    pub fn changes(self) -> bool {
        match self {
            Self::CreateSecret
            | Self::PutSecretValue
            | Self::UpdateSecret
            | Self::UpdateSecretVersionStage
            | Self::TagResource
            | Self::UntagResource
            | Self::DeleteSecret
            | Self::RestoreSecret
            | Self::ConfigureRotation
            | Self::StartRotation
            | Self::StepRotation
            | Self::RetryRotation
            | Self::CancelRotation
            | Self::ApproveRotation
            | Self::KeysManage
            | Self::ApplyPolicy => true,
            Self::GetSecretValue
            | Self::DescribeSecret
            | Self::ListSecrets
            | Self::ListSecretVersionIds
            | Self::Watch
            | Self::GetRandomPassword
            | Self::DescribeRotation
            | Self::KeysUse
            | Self::GetPolicy
            | Self::ReadAudit
            | Self::VerifyAudit => false,
        }
    }

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

/// The URI of the RPC a request calls (path `/rekey.v1.Secrets/ListSecrets`),
/// put on it by the layer around the router (`metrics::layer`): tonic
/// hands an interceptor the request without it. (A clone of the request's
/// own: no copy of the path on every request for the rare refusal.)
#[derive(Debug, Clone)]
pub struct CalledPath(pub http::Uri);

/// The principal of a refusal's event when the certificate names none
/// (no principal can be spelled with parentheses).
pub(crate) const NO_PRINCIPAL: &str = "(none)";

/// The most of a called path a refusal's event keeps (the client chose it).
pub(crate) const MAX_PATH_CHARS: usize = 200;

impl Authenticator {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Refuses the request with UNAUTHENTICATED `message`, and audits the
    /// refusal, since no handler runs to do it. Nothing leaves with a
    /// refusal, so the answer does not wait for the event. Refusals of one
    /// certificate (or, when it names no principal, of one address) are
    /// recorded at most once a second ([`RefusalLog`]); they take nothing
    /// from the principal's rate limit, which its other certificates share.
    fn refuse(&self, request: &Request<()>, key: &str, principal: &str, message: String) -> Status {
        crate::service::unhandled::Seen::mark(request.extensions());
        let extensions = request.extensions();
        let path = extensions
            .get::<CalledPath>()
            .map_or("", |called| called.0.path());
        let event = before_handler(
            extensions.get::<ConnectionInfo>(),
            principal,
            ("authenticate", "deny", "UNAUTHENTICATED"),
            path,
            &message,
        );
        self.state.record_refusal(key, event);
        Status::unauthenticated(message)
    }
}

/// The event of a request answered before any handler (refused by the
/// interceptor, or by tonic: `service::unhandled`): its action, decision
/// and outcome, the RPC's `path` and the `detail` cut to
/// [`MAX_PATH_CHARS`] (the client chose them), the connection's peer.
pub(crate) fn before_handler(
    connection: Option<&ConnectionInfo>,
    principal: &str,
    (action, decision, outcome): (&str, &str, &str),
    path: &str,
    detail: &str,
) -> AuditEvent {
    AuditEvent {
        time: rekey_shared::time::now_millis(),
        principal: principal.to_owned(),
        peer: connection.map_or_else(String::new, |info| info.remote_addr.to_string()),
        action: action.to_owned(),
        resource: path.chars().take(MAX_PATH_CHARS).collect(),
        decision: decision.to_owned(),
        outcome: outcome.to_owned(),
        request_id: rekey_shared::VersionId::random().into_string(),
        detail: detail.chars().take(MAX_PATH_CHARS).collect(),
    }
}

/// Which refusals made before any handler are recorded (the
/// interceptor's, and requests answered before their handler: see
/// `service::unhandled`): one a second for each key (a certificate's
/// serial, a principal, an address), counting the rest
/// ([`OncePerSecond`]). A flood of refused requests on an open connection
/// costs one audit write a second, whatever the rate limits say (they may
/// be off). Counts that no later recorded refusal carried are written by
/// the sweep that writes the rate limit's ([`Self::take_unrecorded`]),
/// every second and at shutdown.
#[derive(Debug, Default)]
pub struct RefusalLog {
    recent: Mutex<HashMap<String, Refused>>,
}

/// One key's refusals, and the event of the last one, which an event
/// counting those left out after it repeats.
#[derive(Debug)]
struct Refused {
    refusals: OncePerSecond,
    last: AuditEvent,
}

/// Beyond this many keys, those recorded over a second ago with nothing
/// left to count are forgotten.
const MAX_REMEMBERED: usize = 10_000;

impl RefusalLog {
    /// `event` if it is to be recorded (its detail noting how many were
    /// left out before it), or `None`, counted for the next one.
    pub(crate) fn admit(&self, key: &str, event: AuditEvent, now: Instant) -> Option<AuditEvent> {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if !recent.contains_key(key) {
            // Pruned as a key is added, not on every refusal.
            if recent.len() > MAX_REMEMBERED {
                recent.retain(|_, refused| {
                    refused.refusals.recorded_within_a_second(now)
                        || refused.refusals.left_out() > 0
                });
            }
            recent.insert(
                key.to_owned(),
                Refused {
                    refusals: OncePerSecond::default(),
                    last: AuditEvent::default(),
                },
            );
        }
        let Some(refused) = recent.get_mut(key) else {
            return Some(event);
        };
        let admitted = refused.refusals.admit(now);
        refused.last = event;
        let left_out = admitted?;
        let mut event = refused.last.clone();
        if left_out > 0 {
            event.detail.push_str(&format!(
                "; {left_out} more refused since the last recorded refusal"
            ));
        }
        Some(event)
    }

    /// For each key with refusals left out that no recorded one counted:
    /// the key, its count, and an event that records them (the last
    /// refusal's, saying so). They count as recorded from now on. With
    /// `now`, only keys none was recorded of in the second before (a flood
    /// under way costs one write a second, its recorded refusals'); without,
    /// every key (at shutdown).
    pub(crate) fn take_unrecorded(&self, now: Option<Instant>) -> Vec<(String, u64, AuditEvent)> {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .iter_mut()
            .filter(|(_, refused)| {
                refused.refusals.left_out() > 0
                    && now.is_none_or(|now| !refused.refusals.recorded_within_a_second(now))
            })
            .map(|(key, refused)| {
                let left_out = refused.refusals.take_left_out();
                let event = AuditEvent {
                    request_id: rekey_shared::VersionId::random().into_string(),
                    time: rekey_shared::time::now_millis(),
                    detail: format!(
                        "{left_out} more refused after the last recorded refusal, not recorded \
                         one by one (the last: {})",
                        refused.last.detail
                    ),
                    ..refused.last.clone()
                };
                (key.clone(), left_out, event)
            })
            .collect()
    }

    /// Counts `left_out` of `key`'s refusals as left out again: the event
    /// that was to count them was not written.
    pub(crate) fn count_again(&self, key: &str, left_out: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(refused) = recent.get_mut(key) {
            refused.refusals.count_left_out(left_out);
        }
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
            Err(refusal) => {
                let key = format!("{NO_PRINCIPAL}@{}", info.remote_addr.ip());
                return Err(self.refuse(&request, &key, NO_PRINCIPAL, refusal.to_string()));
            }
        };
        if let Some(message) = no_longer_valid(&self.state.revocations, peer) {
            let principal = peer.principal.as_str();
            return Err(self.refuse(&request, &peer.serial, principal, message));
        }
        let principal = peer.principal.clone();
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// Why a certificate that passed its connection's handshake may no longer
/// be served (revoked or expired since), if so: asked at every request,
/// and by an open Watch stream.
pub fn no_longer_valid(revocations: &Revocations, peer: &PeerCertificate) -> Option<String> {
    let issuer = crate::audit::hex(&peer.issuer);
    if revocations.is_revoked(&issuer, &peer.serial) {
        Some(format!(
            "client certificate refused: serial {} was revoked",
            peer.serial
        ))
    } else if let Some((_, serial)) = peer
        .chain
        .iter()
        .find(|(issuer, serial)| revocations.is_revoked_ca(issuer, serial))
    {
        Some(format!(
            "client certificate refused: serial {serial} of a CA certificate it sent was revoked"
        ))
    } else if revocations.revoked_by_crl(&peer.issuer, &peer.serial) {
        Some(format!(
            "client certificate refused: serial {} was revoked by its CA's CRL",
            peer.serial
        ))
    } else if peer.expired(rekey_shared::time::now_millis() / 1000) {
        Some(format!(
            "client certificate refused: serial {} expired while its connection was open",
            peer.serial
        ))
    } else {
        None
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

    /// Puts `policy` in force unless a newer version already is: an apply
    /// whose handler puts its version in force after another apply (or the
    /// sync) put a later one there does not bring the older back.
    pub fn replace(&self, policy: Policy, version: i64) {
        let mut current = match self.policy.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if version < self.version.load(Ordering::Acquire) {
            return;
        }
        *current = Arc::new(policy);
        self.version.store(version, Ordering::Release);
    }

    /// May `principal` perform `action` on `resource`?
    pub fn decide(&self, principal: &Principal, action: Action, resource: &str) -> Decision {
        self.policy()
            .evaluate(principal.as_str(), action.as_str(), resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_older_policy_never_replaces_a_newer_one() {
        let authorizer = Authorizer::new(Policy::default(), 1);
        let admin = Policy::default_for("admin");
        authorizer.replace(admin.clone(), 6);
        authorizer.replace(Policy::default(), 5);
        assert_eq!(authorizer.version(), 6);
        let policy = authorizer.policy();
        assert!(
            policy
                .evaluate("admin", "policy:ApplyPolicy", "*")
                .is_allowed()
        );
    }

    /// One refusal a second per key is recorded, carrying the count of
    /// those left out since; other keys are apart; counts that no recorded
    /// refusal carried are taken by the sweep, once.
    #[test]
    fn one_refusal_a_second_per_key_counts_the_rest() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let refusal = |detail: &str| AuditEvent::system("authenticate", "/x", detail);
        let detail = |admitted: Option<AuditEvent>| admitted.map(|event| event.detail);
        assert_eq!(
            detail(log.admit("a1", refusal("r"), start)),
            Some("r".into())
        );
        for _ in 0..3 {
            let later = start + Duration::from_millis(10);
            assert_eq!(detail(log.admit("a1", refusal("r"), later)), None);
        }
        let other = start + Duration::from_millis(10);
        assert_eq!(
            detail(log.admit("b2", refusal("s"), other)),
            Some("s".into())
        );
        assert_eq!(
            detail(log.admit("a1", refusal("r"), start + Duration::from_secs(1))),
            Some("r; 3 more refused since the last recorded refusal".into())
        );
        assert_eq!(
            detail(log.admit("a1", refusal("last"), start + Duration::from_millis(1500))),
            None
        );
        // Not within the second after a recorded one (the flood's own
        // writes), but after it, or at shutdown.
        let within = start + Duration::from_millis(1500);
        assert!(log.take_unrecorded(Some(within)).is_empty());
        let swept = log.take_unrecorded(Some(start + Duration::from_secs(2)));
        assert_eq!(swept.len(), 1);
        let (key, left_out, event) = &swept[0];
        assert_eq!((key.as_str(), *left_out), ("a1", 1));
        assert!(
            event.detail.starts_with("1 more refused"),
            "{}",
            event.detail
        );
        assert!(
            event.detail.ends_with("(the last: last)"),
            "{}",
            event.detail
        );
        assert!(log.take_unrecorded(None).is_empty());
        log.count_again("a1", 1);
        assert_eq!(log.take_unrecorded(None).len(), 1);
    }
}
