//! The Watch service: a stream of change events for a name prefix, with
//! each event checked against the policy in force (`secrets:Watch` on its
//! secret) before it is sent. A watcher that falls too far behind is told
//! so and the stream ends; it reconnects.

use super::AppState;
use super::context::RequestContext;
use crate::auth::Action;
use crate::error::Result;
use rekey_shared::proto::watch_server::Watch;
use rekey_shared::proto::{self, WatchEvent};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
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

    fn open(&self, context: &RequestContext, request: proto::WatchRequest) -> Result<EventStream> {
        context.set_resource(if request.prefix.is_empty() {
            "*"
        } else {
            &request.prefix
        });
        context.summarize("watching");
        let state = self.state.clone();
        let principal = context.principal.clone();
        let prefix = request.prefix;
        let stream = BroadcastStream::new(self.state.events.subscribe())
            // The server is shutting down: end the stream.
            .take_while(
                |item| !matches!(item, Ok(event) if event.kind == crate::events::SERVER_STOPPING),
            )
            .filter_map(move |item| match item {
                Ok(event) => {
                    let visible = event.name.starts_with(&prefix)
                        && state
                            .authorizer
                            .decide(&principal, Action::Watch, &event.name)
                            .is_allowed();
                    visible.then(|| Ok((*event).clone()))
                }
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    Some(Err(Status::resource_exhausted(format!(
                        "this watcher fell {missed} events behind; reconnect and reload"
                    ))))
                }
            });
        // End the stream after the first error.
        let mut failed = false;
        let stream = stream.take_while(move |item| {
            let keep = !failed;
            failed = item.is_err();
            keep
        });
        Ok(Box::pin(stream))
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let context = RequestContext::new(&request, Action::Watch)?;
        let result = self
            .state
            .admit(&context)
            .and_then(|()| self.open(&context, request.into_inner()));
        self.state.finish(&context, result).await.map(Response::new)
    }
}
