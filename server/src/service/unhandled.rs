//! Requests no handler saw. tonic answers some requests to the API's
//! services before their handler runs: a body that does not decode, one
//! larger than the message limit, a compression the server does not take,
//! a method the service does not have, a service there is none of. No
//! `RequestContext` audits those, and DESIGN audits every request.
//!
//! This layer around the router puts a [`Seen`] mark on each request; the
//! handler's context (as it is made) and the interceptor's refusal (which
//! audits its own) set it. An error answer to a request whose mark was
//! never set is audited here: action `request`, the RPC's path as the
//! resource, the status as the outcome and its message as the detail. As
//! the interceptor's refusals, such events are written at most once a
//! second per principal (or address, for a certificate that names none),
//! each counting those left out, and take nothing from the rate limit.
//! Health and reflection are not audited (DESIGN).

use crate::auth::{NO_PRINCIPAL, before_handler};
use crate::service::AppState;
use crate::tls::ConnectionInfo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tonic::body::Body;

/// Set once a handler's context, or the interceptor's refusal, has taken
/// over the request's audit.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<AtomicBool>);

impl Seen {
    /// Marks `request` as audited elsewhere.
    pub fn mark(extensions: &http::Extensions) {
        if let Some(seen) = extensions.get::<Seen>() {
            seen.0.store(true, Ordering::Release);
        }
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Paths whose requests are not audited.
const UNAUDITED: [&str; 2] = ["/grpc.health.v1.", "/grpc.reflection."];

#[derive(Debug, Clone)]
pub struct UnhandledLayer {
    state: Arc<AppState>,
}

impl UnhandledLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<S> tower_layer::Layer<S> for UnhandledLayer {
    type Service = Unhandled<S>;

    fn layer(&self, inner: S) -> Unhandled<S> {
        Unhandled {
            inner,
            layer: self.clone(),
        }
    }
}

/// The router, with requests no handler saw audited.
#[derive(Debug, Clone)]
pub struct Unhandled<S> {
    inner: S,
    layer: UnhandledLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for Unhandled<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if UNAUDITED.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        let seen = Seen::default();
        let unseen = Unseen {
            // A clone of the request's own (shared bytes): no copy of the
            // path on every request for the rare unhandled one.
            uri: request.uri().clone(),
            info: request.extensions().get::<ConnectionInfo>().cloned(),
            layer: self.layer.clone(),
            seen: seen.clone(),
        };
        request.extensions_mut().insert(seen);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            unseen.audit(response.headers());
            Ok(response)
        })
    }
}

/// What an event needs of a request, should no handler see it.
struct Unseen {
    uri: http::Uri,
    info: Option<ConnectionInfo>,
    layer: UnhandledLayer,
    seen: Seen,
}

impl Unseen {
    /// Audits an error answer (trailers-only: its status in `headers`) to
    /// a request no handler saw.
    fn audit(self, headers: &http::HeaderMap) {
        if self.seen.is_set() {
            return;
        }
        let Some(status) = tonic::Status::from_header_map(headers) else {
            return;
        };
        if status.code() == tonic::Code::Ok {
            return;
        }
        // Keyed apart from the interceptor's refusals of the same
        // certificate.
        let (principal, key) = match self.info.as_ref().map(|info| (info, info.peer.as_ref())) {
            Some((_, Ok(certificate))) => {
                let principal = certificate.principal.as_str();
                (principal, format!("request {principal}"))
            }
            Some((info, Err(_))) => (
                NO_PRINCIPAL,
                format!("request {NO_PRINCIPAL}@{}", info.remote_addr.ip()),
            ),
            None => (NO_PRINCIPAL, format!("request {NO_PRINCIPAL}")),
        };
        let code = crate::service::secrets::code_name(status.code());
        let event = before_handler(
            self.info.as_ref(),
            principal,
            ("request", "none", code),
            self.uri.path(),
            status.message(),
        );
        self.layer.state.record_refusal(&key, event);
    }
}
