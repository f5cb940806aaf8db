//! The tower layer around the whole gRPC router, so that every call is
//! counted: those the interceptor refuses (`UNAUTHENTICATED`), those no
//! service serves (`UNIMPLEMENTED`), and every handler's answer.
//!
//! A call is counted once, when its status is known: from the response
//! headers for a trailers-only answer (every error of a unary call), else
//! from the trailers when the body yields them (a unary success, and a
//! stream when it ends). A call whose client goes away first counts as
//! `CANCELLED`, or `DEADLINE_EXCEEDED` when its `grpc-timeout` had passed.
//! The duration runs from the call's arrival to that moment. It also puts
//! the RPC's path on the request (`auth::CalledPath`), for the interceptor's
//! audit of a refusal.

use super::requests::{MethodId, RequestMetrics};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::body::Body;

#[derive(Debug, Clone)]
pub struct RequestMetricsLayer {
    metrics: Arc<RequestMetrics>,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RequestMetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The router, measured.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Measured<S>
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
        let called = crate::auth::CalledPath(request.uri().clone());
        request.extensions_mut().insert(called);
        let mut call = Call {
            method: self.metrics.method(request.uri().path()),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            timeout: grpc_timeout(request.headers()),
            counted: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            match answer.await {
                Ok(response) => Ok(call.watch(response)),
                Err(error) => {
                    call.count(Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

/// One call on its way; counts itself at the latest when dropped.
struct Call {
    metrics: Arc<RequestMetrics>,
    method: MethodId,
    started: Instant,
    timeout: Option<Duration>,
    counted: bool,
}

impl Call {
    fn count(&mut self, code: Code) {
        if !self.counted {
            self.counted = true;
            self.metrics
                .record(self.method, code, self.started.elapsed());
        }
    }

    /// Counts a trailers-only answer now; otherwise waits for the trailers.
    fn watch(mut self, response: http::Response<Body>) -> http::Response<Body> {
        if let Some(code) = status_in(response.headers()) {
            self.count(code);
            return response;
        }
        if response.body().is_end_stream() {
            // No status anywhere: not a gRPC answer the client can read.
            self.count(Code::Unknown);
            return response;
        }
        response.map(|body| Body::new(Observed { body, call: self }))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = match self.timeout {
            Some(timeout) if self.started.elapsed() >= timeout => Code::DeadlineExceeded,
            _ => Code::Cancelled,
        };
        self.count(code);
    }
}

fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A response body that counts its call when the trailers go by.
struct Observed {
    body: Body,
    call: Call,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call
                        .count(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.count(status.code()),
            Poll::Ready(None) => this.call.count(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let timeout = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout("10x"), None);
    }
}
