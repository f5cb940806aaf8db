//! Watch events across replicas. With several replicas on one PostgreSQL
//! database, every event published in one process is sent with `NOTIFY` on
//! one channel, and every replica `LISTEN`s and hands the events of the
//! others to its own Watch subscribers, who filter them by permission as
//! any other. So a client watching through replica A sees a rotation run on
//! replica B. Events carry names, ids, steps and principals, never values.
//!
//! Delivery is at most once, as Watch is within one process, but a gap is
//! never silent: a listener that loses its connection ends every Watch
//! stream of its process (`events::EVENTS_LOST`: UNAVAILABLE, "reconnect
//! and read again"), when it finds out and again once it listens again;
//! and a sender that could not send an event (its queue full, `NOTIFY`
//! failed) first sends the others an `EVENTS_LOST` of its own, which ends
//! theirs. A client that reconnects reads what it keeps again.
//!
//! A connection can also die without a word (a firewall or NAT forgets it,
//! a network partition: no reset reaches the listener, and `LISTEN` waits
//! for good). Each replica sends a heartbeat on the channel every
//! [`HEARTBEAT`], which comes back to its own listener too: a listener that
//! hears nothing for [`SILENCE`] takes its connection for lost, as above.
//!
//! A replica sends its events after their changes commit, so one that dies
//! in between (killed, out of memory, its machine gone) never sends them.
//! The others hear its heartbeats stop: a replica heard from that falls
//! silent for [`SILENCE`] without having said it leaves ends the Watch
//! streams of every replica that heard it, as a lost connection does. At
//! shutdown a replica sends what it has queued and then that it leaves.

use crate::error::{Error, Result};
use crate::events::Relayed;
use crate::service::AppState;
use rekey_shared::proto::WatchEvent;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// The start of the heartbeat a replica sends as it shuts down, before its
/// origin.
const LEAVING: &str = "leaving:";

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

/// How often each replica sends a heartbeat on the channel.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a listener may hear nothing (its own heartbeats included)
/// before it takes its connection for lost.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// How many events may wait to be sent to the other replicas; beyond, an
/// event is dropped (and logged) rather than held without bound.
const OUTGOING: usize = 1024;

/// Starts relaying this process's events to the other replicas and
/// theirs to this one's subscribers, until the task is aborted; with an
/// embedded database, which one process serves, the task ends at once.
///
/// Events published from the moment this returns are relayed (the relay
/// is in place before any other task of the server runs); Watch streams
/// opened before the first `LISTEN` succeeds are ended once it does, since
/// the other replicas' events until then never reached them.
pub fn start(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    if !state.store.is_shared() {
        return tokio::spawn(async {});
    }
    let origin = rekey_shared::VersionId::random().into_string();
    let (relay, outgoing) = mpsc::channel(OUTGOING);
    state.events.relay_to(relay);
    tokio::spawn(async move {
        tokio::join!(
            send_out(&state, &origin, outgoing),
            take_in(&state, &origin),
            beat(&state, &origin)
        );
    })
}

/// Sends this process's events out; after one could not be sent, the
/// others' `EVENTS_LOST` goes out before the next event, and is tried
/// again every second meanwhile, so that a gap followed by quiet is not
/// learned of only at the next change.
async fn send_out(state: &AppState, origin: &str, mut outgoing: mpsc::Receiver<Relayed>) {
    let mut lost = false;
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = outgoing.recv() => match event {
                Some(Relayed::Event(event)) => Some(event),
                Some(Relayed::Leave(done)) => {
                    // Everything queued before was sent (or tried). An
                    // `EVENTS_LOST` still owed goes first; unsent, this
                    // replica does not say it leaves, so that the others
                    // take its silence for the gap it is.
                    lost |= state.events.take_relay_dropped();
                    if lost {
                        lost = send(state, origin, &crate::events::events_lost())
                            .await
                            .is_err();
                    }
                    let leaving = format!("{LEAVING}{origin}");
                    if lost {
                        tracing::warn!("the other replicas could not be told of events lost; not saying this one leaves");
                    } else if let Err(error) = state.store.heartbeat(&leaving).await {
                        tracing::debug!(%error, "the other replicas were not told this one leaves");
                    }
                    let _ = done.send(());
                    continue;
                }
                None => return,
            },
            _ = retry.tick(), if lost => None,
        };
        lost |= state.events.take_relay_dropped();
        if lost {
            lost = send(state, origin, &crate::events::events_lost())
                .await
                .is_err();
        }
        if let Some(event) = event
            && let Err(error) = send(state, origin, &event).await
        {
            tracing::warn!(%error, kind = %event.kind, "sending a watch event to the other replicas failed");
            lost = true;
        }
    }
}

/// Sends a heartbeat every [`HEARTBEAT`] (see the module's paragraph); a
/// failure is the listener's to find, by the silence.
async fn beat(state: &AppState, origin: &str) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = state.store.heartbeat(origin).await {
            tracing::debug!(%error, "a heartbeat to the other replicas was not sent");
        }
    }
}

async fn send(state: &AppState, origin: &str, event: &WatchEvent) -> Result<()> {
    state.store.notify(&payload(origin, event)?).await
}

/// The most bytes of a payload: PostgreSQL refuses a `NOTIFY` of 8000
/// bytes or more (the whole write would fail, and the others would hear
/// `EVENTS_LOST` instead).
const MAX_PAYLOAD: usize = 7_900;

/// `event` on the wire, its detail (a rotator's error, say: up to 2,000
/// characters, which JSON may escape to six bytes each) cut short, ending
/// in `…`, where the whole would be too long.
fn payload(origin: &str, event: &WatchEvent) -> Result<String> {
    let encode = |wire: &Wire| {
        serde_json::to_string(wire)
            .map_err(|error| Error::internal("encoding a watch event", error))
    };
    let mut wire = Wire::of(origin, event);
    let whole = encode(&wire)?;
    if whole.len() <= MAX_PAYLOAD {
        return Ok(whole);
    }
    // What the detail may take of the payload, written as JSON writes it.
    let detail_bytes: usize = wire.detail.chars().map(json_len).sum();
    let mut budget = (MAX_PAYLOAD + detail_bytes)
        .saturating_sub(whole.len())
        .saturating_sub('…'.len_utf8());
    let mut keep = 0;
    for c in wire.detail.chars() {
        let Some(left) = budget.checked_sub(json_len(c)) else {
            break;
        };
        budget = left;
        keep += c.len_utf8();
    }
    wire.detail.truncate(keep);
    wire.detail.push('…');
    encode(&wire)
}

/// The bytes `c` takes in a JSON string as `serde_json` writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if c < ' ' => 6,
        c => c.len_utf8(),
    }
}

/// Listens, reconnecting a second after the connection is lost; every
/// Watch stream of this process ends when it is lost and again once it
/// listens again (streams opened meanwhile missed events too), and once it
/// first listens (streams opened before missed the events until then).
async fn take_in(state: &AppState, origin: &str) {
    let mut lost = true;
    loop {
        if let Err(error) = listen(state, origin, &mut lost).await {
            tracing::warn!(%error, "listening for other replicas' watch events failed");
            state.events.lost();
            lost = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Hands the other replicas' events to this one's subscribers until the
/// connection fails or is lost.
async fn listen(state: &AppState, origin: &str, lost: &mut bool) -> Result<()> {
    let Some(mut listener) = state.store.listen().await? else {
        return std::future::pending().await;
    };
    if std::mem::take(lost) {
        state.events.lost();
    }
    // The other replicas heard on this connection, and when last; and
    // those that said they leave (a heartbeat sent as one leaves may come
    // after its word).
    let mut replicas: HashMap<String, Instant> = HashMap::new();
    let mut left: HashSet<String> = HashSet::new();
    loop {
        // `try_recv`, not `recv`: `recv` reconnects a lost connection
        // without saying so, and what was sent meanwhile is gone.
        let Ok(received) = tokio::time::timeout(SILENCE, listener.try_recv()).await else {
            tracing::warn!(
                "nothing heard on the connection for other replicas' watch events for {}s, not \
                 even this replica's own heartbeats; reconnecting",
                SILENCE.as_secs()
            );
            state.events.lost();
            *lost = true;
            return Ok(());
        };
        let Some(notification) = received? else {
            tracing::warn!(
                "the connection for other replicas' watch events was lost; reconnecting"
            );
            state.events.lost();
            *lost = true;
            // A new listener, not this one: this one would listen again
            // only inside its next `try_recv`, which waits for an event, so
            // streams opened meanwhile would be ended only when one came.
            return Ok(());
        };
        if std::mem::take(lost) {
            state.events.lost();
        }
        if crate::store::is_heartbeat(&notification) {
            match notification.payload().strip_prefix(LEAVING) {
                Some(leaving) => {
                    replicas.remove(leaving);
                    left.insert(leaving.to_owned());
                }
                None if notification.payload() != origin
                    && !left.contains(notification.payload()) =>
                {
                    replicas.insert(notification.payload().to_owned(), Instant::now());
                }
                None => {}
            }
            fell_silent(state, &mut replicas);
            continue;
        }
        match serde_json::from_str::<Wire>(notification.payload()) {
            Ok(wire) if wire.origin == origin => {}
            Ok(wire) => {
                if !left.contains(&wire.origin) {
                    replicas.insert(wire.origin.clone(), Instant::now());
                }
                state.events.deliver(Arc::new(wire.into_event()));
            }
            Err(error) => tracing::warn!(%error, "a malformed watch event from another replica"),
        }
    }
}

/// Forgets the replicas not heard from for [`SILENCE`], ending this
/// replica's Watch streams if any did not say it left: the events of its
/// last changes may never have been sent.
fn fell_silent(state: &AppState, replicas: &mut HashMap<String, Instant>) {
    let count = replicas.len();
    replicas.retain(|_, heard| heard.elapsed() < SILENCE);
    if replicas.len() < count {
        tracing::warn!(
            replicas = count - replicas.len(),
            "a replica fell silent without saying it leaves; the events of its last changes \
             may not have reached this one"
        );
        state.events.lost();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_detail_is_cut_to_what_notify_takes() {
        for detail in [
            "😀".repeat(2_000),
            "\u{1b}".repeat(2_000),
            "a".repeat(8_000),
        ] {
            let event = WatchEvent {
                kind: "failed".into(),
                name: "db/prod".into(),
                detail: detail.clone(),
                ..WatchEvent::default()
            };
            let payload = payload("origin", &event).unwrap();
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let wire: Wire = serde_json::from_str(&payload).unwrap();
            assert!(wire.detail.ends_with('…'));
            assert!(detail.starts_with(wire.detail.trim_end_matches('…')));
            // Cut no shorter than it had to be.
            assert!(payload.len() + 6 > MAX_PAYLOAD, "{}", payload.len());
        }
        let short = WatchEvent {
            detail: "done".into(),
            ..WatchEvent::default()
        };
        let wire: Wire = serde_json::from_str(&payload("o", &short).unwrap()).unwrap();
        assert_eq!(wire.detail, "done");
    }
}
