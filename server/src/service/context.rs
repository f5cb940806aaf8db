//! One request's context: who asks, from where, under which request id;
//! the authorization decisions made for it; and whether its audit event is
//! already written (a change writes it in its own transaction). Every
//! handler authorizes through it, so every decision reaches the audit log.

use crate::audit::AuditEvent;
use crate::auth::{self, Action, Authorizer};
use crate::error::{Error, Result};
use crate::policy::Decision;
use crate::principal::Principal;
use crate::tls::ConnectionInfo;
use std::sync::Mutex;
use tonic::Request;

/// The longest resource text an event keeps.
const MAX_RESOURCE_CHARS: usize = 600;

#[derive(Debug)]
pub struct RequestContext {
    pub principal: Principal,
    peer: String,
    pub request_id: String,
    audit: Mutex<AuditState>,
}

#[derive(Debug)]
struct AuditState {
    action: &'static str,
    resource: String,
    decision: &'static str,
    detail: String,
    /// A change of its own was committed with its event.
    recorded: bool,
    /// It gets no event (a rate-limit refusal counted in the next one).
    unaudited: bool,
    authorized_once: bool,
    /// A rate-limit refusal recorded by itself: how many its event counts
    /// (itself and those left out before it), counted again should the
    /// event not be written.
    over_limit: Option<u64>,
}

impl RequestContext {
    /// The context of a request for `action` (the RPC's own action; the
    /// event keeps it even when the request fails before authorization).
    pub fn new<T>(request: &Request<T>, action: Action) -> Result<Self> {
        let principal = auth::principal(request)?;
        // From here on, the request's audit is this context's.
        crate::service::unhandled::Seen::mark(request.extensions());
        let peer = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.remote_addr.to_string())
            .unwrap_or_default();
        Ok(Self {
            principal,
            peer,
            request_id: rekey_shared::VersionId::random().into_string(),
            audit: Mutex::new(AuditState {
                action: action.as_str(),
                resource: String::new(),
                decision: "none",
                detail: String::new(),
                recorded: false,
                unaudited: false,
                authorized_once: false,
                over_limit: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AuditState> {
        match self.audit.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// What the request is about, as the client named it, before it is
    /// validated (so a refused request's event still says what it asked).
    pub fn set_resource(&self, resource: &str) {
        self.state().resource = resource.chars().take(MAX_RESOURCE_CHARS).collect();
    }

    /// Authorizes `action` on `resource`, or fails with PERMISSION_DENIED.
    /// The first decision names the event's action and resource. A denial
    /// of a later check (`keys:Use` on the secret's key, the admin secret
    /// of a configuration) leaves them, so that the event still says what
    /// was asked of what (a search for the secret finds it), and says in
    /// its detail what was denied.
    pub fn authorize(&self, authorizer: &Authorizer, action: Action, resource: &str) -> Result<()> {
        let decision = authorizer.decide(&self.principal, action, resource);
        let mut state = self.state();
        if decision.is_allowed() {
            if !state.authorized_once {
                state.action = action.as_str();
                state.resource = resource.to_owned();
                state.decision = "allow";
                state.authorized_once = true;
            }
            return Ok(());
        }
        let why = match &decision {
            Decision::DeniedBy(role) => format!("denied by role {role}"),
            _ => "no statement allows it".to_owned(),
        };
        state.decision = "deny";
        if state.authorized_once {
            state.detail = format!("{action} on {resource}: {why}");
        } else {
            state.action = action.as_str();
            state.resource = resource.to_owned();
            state.detail = why;
        }
        Err(Error::PermissionDenied(format!(
            "{} may not {action} on {resource}",
            self.principal
        )))
    }

    /// Whether `action` on `resource` is allowed, without recording: for
    /// leaving out of a listing what the caller may not see.
    pub fn allows(&self, authorizer: &Authorizer, action: Action, resource: &str) -> bool {
        authorizer
            .decide(&self.principal, action, resource)
            .is_allowed()
    }

    /// The event of this request, as it stands, with `outcome`.
    pub fn event(&self, outcome: &str, detail: Option<&str>) -> AuditEvent {
        let state = self.state();
        AuditEvent {
            time: rekey_shared::time::now_millis(),
            principal: self.principal.to_string(),
            peer: self.peer.clone(),
            action: state.action.to_owned(),
            resource: state.resource.clone(),
            decision: state.decision.to_owned(),
            outcome: outcome.to_owned(),
            request_id: self.request_id.clone(),
            detail: match detail {
                Some(detail) if state.detail.is_empty() => detail.to_owned(),
                Some(detail) => format!("{}; {detail}", state.detail),
                None => state.detail.clone(),
            },
        }
    }

    /// The event of a change that succeeds; the store writes it in the
    /// change's transaction and the handler then calls [`Self::recorded`].
    pub fn change_event(&self) -> AuditEvent {
        self.event("OK", None)
    }

    /// For requests that filter rather than refuse (listings, batches):
    /// the event says what was shown.
    pub fn summarize(&self, detail: &str) {
        let mut state = self.state();
        if state.decision == "none" {
            state.decision = "filter";
        }
        state.detail = detail.to_owned();
    }

    /// A refusal past the policy's decision (an approval of one's own run,
    /// or without the configured approver role): the event's decision is
    /// `deny`, as a search for refusals expects, `why` its detail.
    pub fn refuse(&self, why: &str) {
        let mut state = self.state();
        state.decision = "deny";
        state.detail = why.to_owned();
    }

    /// The event's detail, with the decision left as it is.
    pub fn set_detail(&self, detail: &str) {
        self.state().detail = detail.to_owned();
    }

    /// This request is a rate-limit refusal recorded by itself, counting
    /// `left_out` refused before it.
    pub fn refused_over_limit(&self, left_out: u64) {
        self.state().over_limit = Some(left_out + 1);
    }

    /// The refusals this request's event counts, if it is a rate-limit
    /// refusal recorded by itself.
    pub fn counted_refusals(&self) -> Option<u64> {
        self.state().over_limit
    }

    /// This request gets no event of its own (a rate-limit refusal counted
    /// in the next recorded one).
    pub fn leave_unaudited(&self) {
        self.state().unaudited = true;
    }

    pub fn recorded(&self) {
        self.state().recorded = true;
    }

    /// Whether the request's outcome needs an event of its own: not when
    /// it is left unaudited, nor when it succeeded and its change wrote
    /// the event; a failure after a change of its own was committed does.
    pub fn needs_event(&self, failed: bool) -> bool {
        let state = self.state();
        !state.unaudited && (!state.recorded || failed)
    }
}
