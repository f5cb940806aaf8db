//! Change events for Watch: published after a change commits, fanned out to
//! every subscriber, filtered per subscriber by name prefix and permission.
//! Events carry names, version ids, steps and principals, never values.

use rekey_shared::proto::WatchEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, mpsc, oneshot};

/// What goes to the other replicas (see `crate::fanout`): an event, or, at
/// shutdown, word that this replica leaves, once every event queued before
/// it was sent (answered on the sender).
#[derive(Debug)]
pub enum Relayed {
    Event(Arc<WatchEvent>),
    Leave(oneshot::Sender<()>),
}

/// The kind of the event that ends every Watch stream when the server
/// shuts down; never sent to clients.
pub const SERVER_STOPPING: &str = "server_stopping";

/// The kind of the event that ends every Watch stream of this process
/// (UNAVAILABLE) because events of other replicas may have been missed;
/// never sent to clients, who reconnect and read again.
pub const EVENTS_LOST: &str = "events_lost";

/// The kind of the event that ends every Watch stream of this process
/// (UNAVAILABLE) because another policy is in force: what a client keeps
/// from before (a caching client's values) may be no longer its to read.
/// Never sent to clients, who reconnect and read again, under the new one.
pub const POLICY_CHANGED: &str = "policy_changed";

/// The event of kind [`EVENTS_LOST`].
pub fn events_lost() -> WatchEvent {
    WatchEvent {
        kind: EVENTS_LOST.to_owned(),
        ..WatchEvent::default()
    }
}

/// How many events a slow subscriber may fall behind before it is told it
/// missed some.
const BACKLOG: usize = 1024;

#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Arc<WatchEvent>>,
    /// Where events published here also go for the other replicas
    /// (see `crate::fanout`); unset with an embedded database.
    relay: OnceLock<mpsc::Sender<Relayed>>,
    /// An event could not be queued for the other replicas: they are told
    /// so before the next one that is sent (see `crate::fanout`).
    relay_dropped: AtomicBool,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            relay: OnceLock::new(),
            relay_dropped: AtomicBool::new(false),
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
        let event = Arc::new(event);
        if kind != SERVER_STOPPING
            && let Some(relay) = self.relay.get()
            && relay.try_send(Relayed::Event(event.clone())).is_err()
        {
            tracing::warn!(
                kind,
                "an event was not sent to the other replicas (backlog full)"
            );
            self.relay_dropped.store(true, Ordering::SeqCst);
        }
        self.deliver(event);
    }

    /// Hands an event to this process's subscribers only: one that another
    /// replica published.
    pub fn deliver(&self, event: Arc<WatchEvent>) {
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    /// From now on, every event published here is also sent to `relay`.
    pub fn relay_to(&self, relay: mpsc::Sender<Relayed>) {
        let _ = self.relay.set(relay);
    }

    /// At shutdown: sends the other replicas every event still queued for
    /// them, then word that this replica leaves (so that they do not take
    /// its silence for a crash, see `crate::fanout`); returns when that is
    /// done, or after `within`.
    pub async fn leave_replicas(&self, within: std::time::Duration) {
        let Some(relay) = self.relay.get() else {
            return;
        };
        let (done, sent) = oneshot::channel();
        let left = async {
            if relay.send(Relayed::Leave(done)).await.is_ok() {
                let _ = sent.await;
            }
        };
        if tokio::time::timeout(within, left).await.is_err() {
            tracing::warn!(
                seconds = within.as_secs(),
                "events for the other replicas still unsent at shutdown"
            );
        }
    }

    /// Whether an event was dropped on its way to the other replicas since
    /// the last time this was asked.
    pub fn take_relay_dropped(&self) -> bool {
        self.relay_dropped.swap(false, Ordering::SeqCst)
    }

    /// Ends every Watch stream of this process: events may have been lost.
    pub fn lost(&self) {
        self.deliver(Arc::new(events_lost()));
    }

    /// Ends every Watch stream of this process: another policy is in force.
    pub fn policy_changed(&self) {
        self.deliver(Arc::new(WatchEvent {
            kind: POLICY_CHANGED.to_owned(),
            ..WatchEvent::default()
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.sender.subscribe()
    }
}
