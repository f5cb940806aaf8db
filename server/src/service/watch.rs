//! The Watch service: a stream of change events for a name prefix, or for
//! the secrets a request names (each one the caller must be allowed to
//! watch, or the stream is refused), with each event checked against the
//! policy in force (`secrets:Watch` on its secret) before it is sent. A watcher that falls too far behind is told
//! so and the stream ends; it reconnects. A stream whose certificate is
//! revoked ends within a second.

use super::AppState;
use super::context::RequestContext;
use crate::auth::Action;
use crate::error::{Error, Result};
use rekey_shared::SecretName;
use rekey_shared::proto::watch_server::Watch;
use rekey_shared::proto::{self, WatchEvent};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct WatchService {
    state: Arc<AppState>,
}

impl WatchService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// The stream of `request`'s events for `context`'s principal, whose
    /// certificate is `peer`: it ends (UNAUTHENTICATED) within a second of
    /// that certificate's revocation or expiry, as the connection's next
    /// request would.
    fn open(
        &self,
        context: &RequestContext,
        peer: Option<crate::principal::PeerCertificate>,
        request: proto::WatchRequest,
    ) -> Result<EventStream> {
        let names = watched_names(&request.names)?;
        // A prefix no name can start with (a glob, a space) would give a
        // stream that stays silent for good.
        if !request.prefix.is_empty() {
            context.set_resource(&request.prefix);
            SecretName::parse(&request.prefix).map_err(|error| {
                Error::InvalidArgument(format!(
                    "the prefix is matched as the start of a name, character for character (no \
                     globs): {error}"
                ))
            })?;
        }
        let resource = match (names.first(), request.prefix.is_empty()) {
            (Some(first), _) => first.as_str(),
            (None, true) => "*",
            (None, false) => request.prefix.as_str(),
        };
        context.set_resource(resource);
        if names.is_empty() {
            // Events are filtered one by one; a caller the policy lets
            // watch nothing at all is refused, not given a stream that
            // stays silent (a caching client would take the silence for no
            // change).
            if !self
                .state
                .authorizer
                .policy()
                .allows_somewhere(context.principal.as_str(), Action::Watch.as_str())
            {
                context.authorize(&self.state.authorizer, Action::Watch, resource)?;
            }
        } else {
            // Each secret named must be one it may watch: its events would
            // all be filtered out.
            for name in &names {
                context.set_resource(name.as_str());
                context.authorize(&self.state.authorizer, Action::Watch, name.as_str())?;
            }
            context.set_resource(resource);
        }
        let slot = self
            .state
            .streams
            .take(context.principal.as_str(), MAX_WATCHES_PER_PRINCIPAL)
            .ok_or_else(|| Error::ResourceExhausted {
                message: format!(
                    "{} has {MAX_WATCHES_PER_PRINCIPAL} Watch streams open, the most one principal \
                     may; close one (one stream can watch a prefix, or up to {MAX_NAMES} names)",
                    context.principal
                ),
                retry_after_ms: 1_000,
            })?;
        context.summarize("watching");
        let state = self.state.clone();
        let principal = context.principal.clone();
        let prefix = if names.is_empty() {
            request.prefix
        } else {
            String::new()
        };
        let events = BroadcastStream::new(self.state.events.subscribe())
            .map(Watched::Event)
            .chain(tokio_stream::once(Watched::Closed));
        let checks =
            IntervalStream::new(tokio::time::interval(REVOCATION_CHECK)).map(|_| Watched::Check);
        let stream = events
            .merge(checks)
            // The server is shutting down: end the stream.
            .take_while(|item| match item {
                Watched::Closed => false,
                Watched::Event(Ok(event)) => event.kind != crate::events::SERVER_STOPPING,
                _ => true,
            })
            .filter_map(move |item| {
                if let Some(refusal) = peer
                    .as_ref()
                    .and_then(|peer| crate::auth::no_longer_valid(&state.revocations, peer))
                {
                    return Some(Err(Status::unauthenticated(refusal)));
                }
                match item {
                    // Events of other replicas may have been missed: end
                    // the stream, as a watcher that fell behind is ended.
                    Watched::Event(Ok(event)) if event.kind == crate::events::EVENTS_LOST => {
                        Some(Err(Status::unavailable(
                            "events from another replica may have been missed; reconnect and \
                             read again",
                        )))
                    }
                    // What the watcher keeps may be no longer its to read.
                    Watched::Event(Ok(event)) if event.kind == crate::events::POLICY_CHANGED => {
                        Some(Err(Status::unavailable(
                            "another policy is in force; reconnect and read again",
                        )))
                    }
                    Watched::Event(Ok(event)) => {
                        let visible = event.name.starts_with(&prefix)
                            && (names.is_empty() || names.iter().any(|n| n.as_str() == event.name))
                            && state
                                .authorizer
                                .decide(&principal, Action::Watch, &event.name)
                                .is_allowed();
                        // A rotation's errors, approvers' comments and
                        // reasons are its history's, for whoever may
                        // describe it; state words and stages are not.
                        let described = event.run_id.is_empty()
                            || STATE_DETAILS.contains(&event.kind.as_str())
                            || state
                                .authorizer
                                .decide(&principal, Action::DescribeRotation, &event.name)
                                .is_allowed();
                        visible.then(|| {
                            let mut event = (*event).clone();
                            if !described {
                                event.detail.clear();
                            }
                            Ok(event)
                        })
                    }
                    Watched::Event(Err(BroadcastStreamRecvError::Lagged(missed))) => {
                        Some(Err(Status::resource_exhausted(format!(
                            "this watcher fell {missed} events behind; reconnect and reload"
                        ))))
                    }
                    Watched::Check | Watched::Closed => None,
                }
            });
        // End the stream after the first error; its slot goes with it.
        let mut failed = false;
        let stream = stream.take_while(move |item| {
            let _counted = &slot;
            let keep = !failed;
            failed = item.is_err();
            keep
        });
        Ok(Box::pin(stream))
    }
}

/// The rotation events whose detail is a state word or a stage, never
/// free text: shown to every watcher.
const STATE_DETAILS: &[&str] = &[
    "run_started",
    "step_changed",
    "version_added",
    "stages_moved",
    "awaiting_approval",
    "finished",
];

/// The most Watch streams one principal may have open, on all its
/// connections: a fleet of programs sharing one identity, each with a
/// caching client, stays well within it.
const MAX_WATCHES_PER_PRINCIPAL: usize = 1_000;

/// The most secrets one stream may name.
const MAX_NAMES: usize = 100;

/// The secrets a request names, checked.
fn watched_names(names: &[String]) -> Result<Vec<SecretName>> {
    if names.len() > MAX_NAMES {
        return Err(Error::InvalidArgument(format!(
            "a watch names at most {MAX_NAMES} secrets; {} were given",
            names.len()
        )));
    }
    names
        .iter()
        .map(|name| SecretName::parse(name).map_err(Error::from))
        .collect()
}

/// How often an open stream looks whether its certificate was revoked.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// What a watcher's stream is made of.
enum Watched {
    Event(Result<Arc<WatchEvent>, BroadcastStreamRecvError>),
    /// Time to look at the revocations again.
    Check,
    /// The hub is gone.
    Closed,
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let context = RequestContext::new(&request, Action::Watch)?;
        let peer = request
            .extensions()
            .get::<crate::tls::ConnectionInfo>()
            .and_then(|info| info.peer.as_ref().as_ref().ok())
            .cloned();
        let result = self
            .state
            .admit(&context)
            .and_then(|()| self.open(&context, peer, request.into_inner()));
        self.state.finish(&context, result).await.map(Response::new)
    }
}
