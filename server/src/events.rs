//! Change events for Watch: published after a change commits, fanned out to
//! every subscriber, filtered per subscriber by name prefix and permission.
//! Events carry names, version ids, steps and principals, never values.

use rekey_shared::proto::WatchEvent;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The kind of the event that ends every Watch stream when the server
/// shuts down; never sent to clients.
pub const SERVER_STOPPING: &str = "server_stopping";

/// How many events a slow subscriber may fall behind before it is told it
/// missed some.
const BACKLOG: usize = 1024;

#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Arc<WatchEvent>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

/// The fields of an event besides its kind and secret.
#[derive(Debug, Default, Clone)]
pub struct Details {
    pub version_id: String,
    pub run_id: String,
    pub step: i32,
    pub detail: String,
    pub principal: String,
}

impl Events {
    pub fn publish(&self, kind: &str, name: &str, details: Details) {
        let event = WatchEvent {
            at: Some(rekey_shared::time::timestamp_from_millis(
                rekey_shared::time::now_millis(),
            )),
            kind: kind.to_owned(),
            name: name.to_owned(),
            version_id: details.version_id,
            run_id: details.run_id,
            step: details.step,
            detail: details.detail,
            principal: details.principal,
        };
        // No subscriber is not an error.
        let _ = self.sender.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.sender.subscribe()
    }
}
