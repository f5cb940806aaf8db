//! One webhook's deliveries: a bounded queue in memory (when it is full the
//! oldest delivery is dropped, with a warning) and the worker that sends
//! them in order, each signed afresh per attempt, retrying with exponential
//! backoff. When the server stops, what is still queued gets one last
//! attempt; the caller bounds how long that may take.

use super::deliver::{self, Attempt, Call, Target};
use super::payload::WebhookSecret;
use crate::config::NotificationKind;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Deliveries waiting for one webhook, at most this many.
pub const CAPACITY: usize = 1000;

/// No retry waits longer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One notification addressed to one webhook. Its id stays the same
/// across attempts, so a receiver can drop a duplicate.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub kind: NotificationKind,
    pub body: Arc<[u8]>,
}

/// How often and how patiently deliveries are attempted.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    pub max_attempts: u32,
    pub base: Duration,
    pub timeout: Duration,
}

/// The wait before attempt `failed + 1`, after `failed` failed attempts.
pub fn backoff(base: Duration, failed: u32) -> Duration {
    let factor = 1u32 << failed.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

#[derive(Debug)]
pub struct Webhook {
    pub target: Target,
    secret: WebhookSecret,
    /// `None`: every kind.
    events: Option<Vec<NotificationKind>>,
    queue: Mutex<VecDeque<Delivery>>,
    ready: Notify,
}

impl Webhook {
    pub fn new(
        target: Target,
        secret: WebhookSecret,
        events: Option<Vec<NotificationKind>>,
    ) -> Self {
        Self {
            target,
            secret,
            events,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    pub fn wants(&self, kind: NotificationKind) -> bool {
        self.events
            .as_ref()
            .is_none_or(|events| events.contains(&kind))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        match self.queue.lock() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a delivery without waiting.
    pub fn enqueue(&self, delivery: Delivery) {
        let dropped = {
            let mut queue = self.queue();
            let dropped = (queue.len() >= CAPACITY)
                .then(|| queue.pop_front())
                .flatten();
            queue.push_back(delivery);
            dropped
        };
        if let Some(dropped) = dropped {
            tracing::warn!(
                webhook = %self.target.origin,
                event = dropped.kind.as_str(),
                delivery = %dropped.id,
                "webhook queue full ({CAPACITY}); dropped its oldest delivery"
            );
        }
        self.ready.notify_one();
    }

    /// Deliveries not yet done.
    pub fn pending(&self) -> usize {
        self.queue().len()
    }

    fn front(&self) -> Option<Delivery> {
        self.queue().front().cloned()
    }

    /// Removes `delivery` once it is done (unless a full queue dropped it
    /// meanwhile).
    fn done(&self, delivery: &Delivery) {
        let mut queue = self.queue();
        if queue.front().is_some_and(|front| front.id == delivery.id) {
            queue.pop_front();
        }
    }

    async fn attempt(&self, delivery: &Delivery, timeout: Duration) -> Attempt {
        let timestamp = rekey_shared::time::now_millis().div_euclid(1000);
        let signature = self.secret.sign(timestamp, &delivery.body);
        let call = Call {
            kind: delivery.kind.as_str(),
            delivery: &delivery.id,
            timestamp,
            signature: &signature,
            body: &delivery.body,
        };
        deliver::attempt(&self.target, &call, timeout).await
    }
}

/// Sends the webhook's deliveries until `stop` turns true, then gives each
/// one still queued a last attempt.
pub async fn work(webhook: Arc<Webhook>, retries: Retries, mut stop: watch::Receiver<bool>) {
    'deliveries: loop {
        let Some(delivery) = next(&webhook, &mut stop).await else {
            break;
        };
        let mut attempt = 1;
        loop {
            match webhook.attempt(&delivery, retries.timeout).await {
                Attempt::Retry { reason, after } if attempt < retries.max_attempts => {
                    let wait = backoff(retries.base, attempt)
                        .max(after.unwrap_or_default())
                        .min(MAX_BACKOFF);
                    tracing::warn!(
                        webhook = %webhook.target.origin,
                        event = delivery.kind.as_str(),
                        delivery = %delivery.id,
                        attempt,
                        reason,
                        retry_in_milliseconds = wait.as_millis() as u64,
                        "webhook delivery failed; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|stopping| *stopping) => break 'deliveries,
                    }
                    attempt += 1;
                }
                outcome => {
                    report(&webhook, &delivery, attempt, &outcome, "");
                    webhook.done(&delivery);
                    continue 'deliveries;
                }
            }
        }
    }
    while let Some(delivery) = webhook.front() {
        let outcome = webhook.attempt(&delivery, retries.timeout).await;
        report(&webhook, &delivery, 1, &outcome, " at shutdown");
        webhook.done(&delivery);
    }
}

/// The oldest queued delivery, once there is one; `None` when stopping.
async fn next(webhook: &Webhook, stop: &mut watch::Receiver<bool>) -> Option<Delivery> {
    loop {
        if *stop.borrow() {
            return None;
        }
        if let Some(delivery) = webhook.front() {
            return Some(delivery);
        }
        tokio::select! {
            () = webhook.ready.notified() => {}
            _ = stop.wait_for(|stopping| *stopping) => return None,
        }
    }
}

fn report(webhook: &Webhook, delivery: &Delivery, attempt: u32, outcome: &Attempt, when: &str) {
    let (origin, event, id) = (&webhook.target.origin, delivery.kind.as_str(), &delivery.id);
    match outcome {
        Attempt::Delivered(status) => tracing::info!(
            webhook = %origin, event, delivery = %id, status, attempt,
            "webhook delivered{when}"
        ),
        Attempt::Refused(reason) => tracing::error!(
            webhook = %origin, event, delivery = %id, attempt, reason,
            "webhook delivery refused{when}; not retried"
        ),
        Attempt::Retry { reason, .. } => tracing::error!(
            webhook = %origin, event, delivery = %id, attempt, reason,
            "webhook delivery failed{when}; given up"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_five_minutes() {
        let base = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=10).map(|n| backoff(base, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(base, 1000), MAX_BACKOFF);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_delivery() {
        let target = Target::parse("http://127.0.0.1:9/", None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef").unwrap();
        let mut permissions = std::fs::metadata(&file).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
        std::fs::set_permissions(&file, permissions).unwrap();
        let webhook = Webhook::new(
            target,
            WebhookSecret::read(&file).unwrap(),
            Some(vec![NotificationKind::RunFailed]),
        );
        assert!(webhook.wants(NotificationKind::RunFailed));
        assert!(!webhook.wants(NotificationKind::ApprovalRequested));
        for n in 0..=CAPACITY {
            webhook.enqueue(Delivery {
                id: n.to_string(),
                kind: NotificationKind::RunFailed,
                body: Arc::from(&b"{}"[..]),
            });
        }
        assert_eq!(webhook.pending(), CAPACITY);
        let front = webhook.front().unwrap();
        assert_eq!(front.id, "1");
        webhook.done(&front);
        assert_eq!(webhook.front().unwrap().id, "2");
    }
}
