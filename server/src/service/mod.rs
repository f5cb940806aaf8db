//! The gRPC services. Each handler follows the same path: its
//! [`RequestContext`] carries the principal the interceptor attached;
//! the handler validates the request, authorizes it through the context,
//! then reads or changes the store, sealing and opening values through the
//! keyring. [`AppState::finish`] writes the request's audit event unless
//! the change already wrote it, before the answer leaves (fail-closed);
//! [`Abandoned`] writes it for a request dropped before its handler ended.

/// Implements a service trait: each RPC makes its request context, calls
/// its handler, and lets `AppState::finish` audit the outcome and map a
/// domain error to a `Status`. One line per RPC: the RPC, its request and
/// response, the handler, and the action the audit event names.
///
/// A request whose action changes something ([`Action::changes`]) runs in
/// a task of its own, to its end, whether or not its client is still
/// there: a change that commits is then always published to Watch and
/// audited as it ended. (Dropped with its client, a handler could be
/// dropped after its commit began, and the change it made reached no
/// watcher.) Reads are dropped with their client.
///
/// [`Action::changes`]: crate::auth::Action::changes
macro_rules! audited_service {
    ($trait:ident for $service:ty {
        $($rpc:ident($request:ty) -> $response:ty => $handler:ident, $action:ident;)*
    }) => {
        #[tonic::async_trait]
        impl $trait for $service {
            $(
                async fn $rpc(
                    &self,
                    request: tonic::Request<$request>,
                ) -> Result<tonic::Response<$response>, tonic::Status> {
                    let service = self.clone();
                    let handled = async move {
                        let context = $crate::service::context::RequestContext::new(
                            &request,
                            $crate::auth::Action::$action,
                        )?;
                        let abandoned =
                            $crate::service::Abandoned::new(&service.state, &context);
                        let result = match service.state.admit(&context) {
                            Ok(()) => service.$handler(&context, request.into_inner()).await,
                            Err(refused) => Err(refused),
                        };
                        abandoned.answered();
                        service.state.finish(&context, result).await.map(tonic::Response::new)
                    };
                    if $crate::auth::Action::$action.changes() {
                        let running = self.state.changes.started(&self.state);
                        tokio::spawn(async move {
                            let _running = running;
                            handled.await
                        })
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::internal("the request's handler failed")))
                    } else {
                        handled.await
                    }
                }
            )*
        }
    };
}

pub mod admin;
pub mod context;
pub mod convert;
pub mod rotation;
pub mod secrets;
pub mod unhandled;
pub mod watch;

use crate::auth::Authorizer;
use crate::error::{Error, Result};
use crate::keyring::Keyring;
use crate::store::Store;
use crate::tls::Revocations;
use context::RequestContext;
use std::sync::Arc;
use tonic::Status;

/// Records the event of a request whose handler was dropped before it
/// ended (its client went away, or its deadline passed), which `finish`
/// never sees: a `CANCELLED` event, written in the background (nothing
/// was answered). Only reads are dropped so (changes run to their end:
/// see `audited_service`), and a runtime that shuts down drops the rest.
#[derive(Debug)]
pub struct Abandoned<'a> {
    state: &'a Arc<AppState>,
    context: &'a RequestContext,
    armed: bool,
}

impl<'a> Abandoned<'a> {
    pub fn new(state: &'a Arc<AppState>, context: &'a RequestContext) -> Self {
        Self {
            state,
            context,
            armed: true,
        }
    }

    /// The handler ended: `finish` records the request.
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        // As for a failure: a change already recorded does not stand for
        // how the request ended.
        if !self.armed || !self.context.needs_event(true) {
            return;
        }
        // Unwinding from a panic of the handler, whose client hears
        // INTERNAL (a change's task), not a client gone.
        let event = if std::thread::panicking() {
            self.context.event(
                "INTERNAL",
                Some(
                    "the request's handler failed; a change it made may have committed with its \
                     own event",
                ),
            )
        } else {
            self.context.event(
                "CANCELLED",
                Some(
                    "the client went away, or its deadline passed, before the answer; a change \
                     it made may have committed with its own event",
                ),
            )
        };
        self.state.record_in_background(event);
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub keyring: Keyring,
    pub authorizer: Authorizer,
    pub revocations: Arc<Revocations>,
    pub events: crate::events::Events,
    pub rotation: crate::config::RotationSettings,
    pub limits: crate::limits::RateLimiter,
    /// Watch streams open, per principal.
    pub streams: crate::limits::OpenStreams,
    /// Refusals before any handler (the interceptor's, and requests tonic
    /// answered first), recorded one a second per key.
    pub refusals: crate::auth::RefusalLog,
    /// Webhook notifications (approval requested, run failed).
    pub notifications: crate::notify::Notifications,
    /// Seals the page tokens of listings.
    pub page_tokens: convert::PageTokens,
    /// The changes running in tasks of their own, which shutdown waits for.
    pub changes: Changes,
}

/// Counts the changes running in tasks of their own (see
/// `audited_service`), and the audit events written in the background
/// (`AppState::record_in_background`): one whose client went away is no
/// longer a request the server's drain waits for, so shutdown waits for
/// these before it stops telling the other replicas of changes, logs the
/// final audit checkpoint and closes the store.
#[derive(Debug, Default)]
pub struct Changes {
    running: std::sync::atomic::AtomicUsize,
    none_running: tokio::sync::Notify,
}

/// One change running; dropped when it ends.
#[derive(Debug)]
pub struct Running(Arc<AppState>);

impl Drop for Running {
    fn drop(&mut self) {
        let changes = &self.0.changes;
        if changes
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            changes.none_running.notify_waiters();
        }
    }
}

impl Changes {
    /// A change of `state` starts.
    pub fn started(&self, state: &Arc<AppState>) -> Running {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Running(state.clone())
    }

    /// How many are running.
    pub fn running(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once no change is running.
    pub async fn all_done(&self) {
        loop {
            let none_running = self.none_running.notified();
            if self.running.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            none_running.await;
        }
    }
}

impl AppState {
    /// Puts `policy` (version `version`) in force, unless a newer one is,
    /// and ends every Watch stream: what a watcher keeps from before may be
    /// no longer its to read (see `events::POLICY_CHANGED`).
    pub fn put_policy_in_force(&self, policy: crate::policy::Policy, version: i64) {
        self.authorizer.replace(policy, version);
        self.events.policy_changed();
    }

    /// Writes `event` without waiting for it, for a request whose answer
    /// does not wait (a refusal before any handler, a request abandoned).
    /// Outside a runtime (one that has shut down, dropping its tasks'
    /// futures) nothing can be written: the event is lost.
    pub fn record_in_background(self: &Arc<Self>, event: crate::audit::AuditEvent) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Counted as a change: shutdown waits for it before it logs the
        // final audit checkpoint and closes the store.
        let running = self.changes.started(self);
        let state = self.clone();
        runtime.spawn(async move {
            let _running = running;
            if let Err(error) = state.store.record(&event).await {
                tracing::error!(%error, action = %event.action, "an audit event was not written");
            }
        });
    }

    /// Records `event` of a request refused (or answered) before any
    /// handler, one a second for `key`, the rest counted
    /// ([`Self::refusals`]); in the background, as nothing waits for it.
    pub fn record_refusal(self: &Arc<Self>, key: &str, event: crate::audit::AuditEvent) {
        if let Some(event) = self.refusals.admit(key, event, std::time::Instant::now()) {
            self.record_in_background(event);
        }
    }

    /// Writes one event per principal for its rate-limit refusals that no
    /// recorded refusal has counted (see `limits`), and one per key for the
    /// refusals before any handler likewise left out ([`Self::refusals`]);
    /// a count whose event cannot be written is counted again for the next
    /// round.
    pub async fn record_unrecorded_refusals(&self, at_shutdown: bool) {
        for (principal, refused) in self.limits.take_unrecorded() {
            let event = crate::audit::AuditEvent {
                principal,
                action: "rate_limit".to_owned(),
                resource: "*".to_owned(),
                // A limit, not the policy's decision: as a refusal recorded
                // one by one says.
                decision: "none".to_owned(),
                outcome: "RESOURCE_EXHAUSTED".to_owned(),
                ..crate::audit::AuditEvent::system(
                    "rate_limit",
                    "*",
                    &format!(
                        "{refused} requests refused over the rate limit, not recorded one by one"
                    ),
                )
            };
            if let Err(error) = self.store.record(&event).await {
                tracing::error!(%error, "cannot record rate-limit refusals; counted again");
                self.limits.count_unrecorded(&event.principal, refused);
            }
        }
        let now = (!at_shutdown).then(std::time::Instant::now);
        for (key, left_out, event) in self.refusals.take_unrecorded(now) {
            if let Err(error) = self.store.record(&event).await {
                tracing::error!(%error, "cannot record refusals; counted again");
                self.refusals.count_again(&key, left_out);
            }
        }
    }

    /// Lets the request through its principal's rate limit, or refuses it
    /// with `RESOURCE_EXHAUSTED`; most refusals in a burst are left out of
    /// the audit log, counted in the next one recorded (see `limits`).
    pub fn admit(&self, context: &RequestContext) -> Result<()> {
        self.admit_as(context, 1)
    }

    /// As [`Self::admit`], for a request that counts as `requests`: a batch
    /// of reads costs what its reads would one by one (each is an audit
    /// event of its own), having paid for one as it came in.
    pub fn admit_more(&self, context: &RequestContext, requests: u32) -> Result<()> {
        // At most what a full bucket holds beside the one already taken:
        // a batch larger than the burst could never be had.
        let most = self.limits.settings().burst.max(1) - 1;
        match requests.min(most) {
            0 => Ok(()),
            more => self.admit_as(context, more),
        }
    }

    fn admit_as(&self, context: &RequestContext, requests: u32) -> Result<()> {
        let principal = context.principal.as_str();
        let now = std::time::Instant::now();
        let refusal = match self.limits.take(principal, f64::from(requests), now) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        match refusal.record {
            Some(left_out) => {
                tracing::warn!(%principal, left_out, "rate limit: requests refused");
                context.refused_over_limit(left_out);
                if left_out > 0 {
                    context.set_detail(&format!(
                        "over the rate limit; {left_out} more refused since the last recorded refusal"
                    ));
                }
            }
            None => context.leave_unaudited(),
        }
        let settings = self.limits.settings();
        let retry_after_ms = u64::try_from(refusal.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Err(Error::ResourceExhausted {
            message: format!(
                "{principal} made more than {} requests per second (burst {}); retry in {retry_after_ms} ms",
                settings.requests_per_second, settings.burst
            ),
            retry_after_ms,
        })
    }

    /// Writes the request's audit event (unless its change already did)
    /// and only then lets the answer go. A successful request whose event
    /// cannot be written fails. A request that failed after a change of
    /// its own was committed with its event (an update whose new version
    /// could not be added) gets an event for the failure too, so the log
    /// does not end it at that change's `OK`.
    pub async fn finish<T>(
        &self,
        context: &RequestContext,
        result: Result<T>,
    ) -> Result<T, Status> {
        if !context.needs_event(result.is_err()) {
            return result.map_err(Status::from);
        }
        let (outcome, detail, result) = match result {
            Ok(value) => ("OK".to_owned(), None, Ok(value)),
            Err(error) => {
                let status = Status::from(error);
                let code = secrets::code_name(status.code()).to_owned();
                let detail = status.message().to_owned();
                (code, Some(detail), Err(status))
            }
        };
        let event = context.event(&outcome, detail.as_deref());
        tracing::debug!(
            request_id = %event.request_id,
            principal = %event.principal,
            action = %event.action,
            resource = %event.resource,
            outcome = %event.outcome,
            "request"
        );
        if let Err(error) = self.store.record(&event).await {
            tracing::error!(request_id = %context.request_id, "audit event not written");
            // A rate-limit refusal's count goes to the sweep: none is lost.
            if let Some(refused) = context.counted_refusals() {
                self.limits
                    .count_unrecorded(context.principal.as_str(), refused);
            }
            return match result {
                Ok(_) => Err(Status::from(Error::audit_unwritable(&error))),
                Err(original) => Err(original),
            };
        }
        result
    }
}
