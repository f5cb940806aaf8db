//! Watch events across replicas. With several replicas on one PostgreSQL
//! database, every event published in one process is sent with `NOTIFY` on
//! one channel, and every replica `LISTEN`s and hands the events of the
//! others to its own Watch subscribers, who filter them by permission as
//! any other. So a client watching through replica A sees a rotation run on
//! replica B. Events carry names, ids, steps and principals, never values.
//!
//! Delivery is at most once, as Watch is within one process: a listener
//! that loses its connection reconnects, and events sent meanwhile are not
//! seen (a client re-reads state after a gap).

use crate::service::AppState;
use rekey_shared::proto::WatchEvent;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An event on the wire, tagged with the process that published it.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    origin: String,
    at: i64,
    kind: String,
    name: String,
    version_id: String,
    run_id: String,
    step: i32,
    detail: String,
    principal: String,
}

impl Wire {
    fn of(origin: &str, event: &WatchEvent) -> Self {
        Self {
            origin: origin.to_owned(),
            at: event
                .at
                .as_ref()
                .map_or(0, rekey_shared::time::millis_from_timestamp),
            kind: event.kind.clone(),
            name: event.name.clone(),
            version_id: event.version_id.clone(),
            run_id: event.run_id.clone(),
            step: event.step,
            detail: event.detail.clone(),
            principal: event.principal.clone(),
        }
    }

    fn into_event(self) -> WatchEvent {
        WatchEvent {
            at: Some(rekey_shared::time::timestamp_from_millis(self.at)),
            kind: self.kind,
            name: self.name,
            version_id: self.version_id,
            run_id: self.run_id,
            step: self.step,
            detail: self.detail,
            principal: self.principal,
        }
    }
}

/// Relays this process's events to the other replicas and theirs to this
/// one's subscribers, until aborted. Returns at once with an embedded
/// database, which one process serves.
pub async fn run(state: Arc<AppState>) {
    if !state.store.is_shared() {
        return;
    }
    let origin = rekey_shared::VersionId::random().into_string();
    let (relay, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Arc<WatchEvent>>();
    state.events.relay_to(relay);
    let sender = {
        let (state, origin) = (state.clone(), origin.clone());
        async move {
            while let Some(event) = outgoing.recv().await {
                let payload = match serde_json::to_string(&Wire::of(&origin, &event)) {
                    Ok(payload) => payload,
                    Err(error) => {
                        tracing::error!(%error, "encoding a watch event failed");
                        continue;
                    }
                };
                if let Err(error) = state.store.notify(&payload).await {
                    tracing::warn!(%error, kind = %event.kind, "sending a watch event to the other replicas failed");
                }
            }
        }
    };
    let receiver = async move {
        loop {
            match state.store.listen().await {
                Ok(Some(mut listener)) => loop {
                    match listener.recv().await {
                        Ok(notification) => {
                            match serde_json::from_str::<Wire>(notification.payload()) {
                                Ok(wire) if wire.origin == origin => {}
                                Ok(wire) => state.events.deliver(Arc::new(wire.into_event())),
                                Err(error) => {
                                    tracing::warn!(%error, "a malformed watch event from another replica")
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "listening for other replicas' watch events failed");
                            break;
                        }
                    }
                },
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "listening for other replicas' watch events failed")
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    tokio::join!(sender, receiver);
}
