//! Notifications: webhooks called when a rotation run waits for approval,
//! fails or needs attention, or a certificate nears expiry. The rotation
//! engine raises notices through [`Notifications`], which never waits and
//! never fails: each webhook has a bounded queue and a worker of its own
//! (`queue`) that signs and sends the deliveries in order, retrying with
//! backoff (`deliver`, `payload`); `expiry` watches the certificates.
//!
//! Notices are raised where the engine makes the transition, not from the
//! Watch events: those also carry other replicas' events, and a run is
//! driven by one replica at a time, so each notice leaves one process.
//! Deliveries live in memory only: what is still queued when the process
//! dies is lost (the run's history and the audit log keep the facts).
//! Bodies carry no values; the HMAC secrets stay in their files.

pub mod deliver;
pub mod expiry;
pub mod payload;
mod queue;

pub use payload::Notice;

use crate::config::Loaded;
use queue::{Delivery, Retries, Webhook};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a stopping server gives the deliveries still queued.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where notices are raised. Without webhooks it drops them.
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    webhooks: Arc<Vec<Arc<Webhook>>>,
}

impl Notifications {
    /// Queues `notice` for every webhook that wants its kind.
    pub fn send(&self, notice: Notice) {
        let kind = notice.kind();
        let wanted = self.webhooks.iter().filter(|webhook| webhook.wants(kind));
        let at = rekey_shared::time::now_millis();
        for webhook in wanted {
            let id = uuid::Uuid::new_v4().to_string();
            webhook.enqueue(Delivery {
                body: notice.body(&id, at).into(),
                id,
                kind,
            });
        }
    }
}

/// The webhook workers and the certificate check of a serving process.
#[derive(Debug)]
pub struct Notifier {
    notifications: Notifications,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    expiry: JoinHandle<()>,
}

impl Notifier {
    /// Checks the configuration (URLs, secret files, CA files) and starts
    /// a worker per webhook and the certificate check. A bad setting is an
    /// error naming the webhook and the field.
    pub fn start(loaded: &Loaded) -> anyhow::Result<Self> {
        let settings = &loaded.config.notifications;
        for (value, field) in [
            (u64::from(settings.max_attempts), "max_attempts"),
            (settings.retry_base_milliseconds, "retry_base_milliseconds"),
            (settings.timeout_seconds, "timeout_seconds"),
        ] {
            anyhow::ensure!(value > 0, "notifications.{field} must be at least 1");
        }
        let mut webhooks = Vec::new();
        for (index, webhook) in settings.webhooks.iter().enumerate() {
            let field = |name: &str| format!("notifications.webhooks[{index}].{name}");
            let ca_file = webhook.ca_file.as_ref().map(|file| loaded.path(file));
            let target = deliver::Target::parse(&webhook.url, ca_file.as_deref())
                .map_err(|error| anyhow::anyhow!("{}: {error:#}", field("url")))?;
            let secret = payload::WebhookSecret::read(&loaded.path(&webhook.secret_file))
                .map_err(|error| anyhow::anyhow!("{}: {error:#}", field("secret_file")))?;
            let events = webhook.events.as_ref().map_or("all".to_owned(), |events| {
                let names: Vec<&str> = events.iter().map(|kind| kind.as_str()).collect();
                names.join(",")
            });
            tracing::info!(webhook = %target.origin, events, "webhook configured");
            webhooks.push(Arc::new(Webhook::new(
                target,
                secret,
                webhook.events.clone(),
            )));
        }
        let retries = Retries {
            max_attempts: settings.max_attempts,
            base: Duration::from_millis(settings.retry_base_milliseconds),
            timeout: Duration::from_secs(settings.timeout_seconds),
        };
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let workers = webhooks
            .iter()
            .map(|webhook| tokio::spawn(queue::work(webhook.clone(), retries, stopping.clone())))
            .collect();
        let notifications = Notifications {
            webhooks: Arc::new(webhooks),
        };
        let expiry = tokio::spawn(expiry::run(
            loaded.clone(),
            settings.certificate_warning_days,
            notifications.clone(),
        ));
        Ok(Self {
            notifications,
            stop,
            workers,
            expiry,
        })
    }

    pub fn notifications(&self) -> Notifications {
        self.notifications.clone()
    }

    /// Gives what is still queued one last attempt, for at most
    /// [`DRAIN_TIMEOUT`]; what remains then is dropped, with a warning.
    pub async fn stop(mut self) {
        self.expiry.abort();
        let _ = self.stop.send(true);
        let workers = &mut self.workers;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            for worker in workers.iter_mut() {
                let _ = worker.await;
            }
        })
        .await;
        // Drop aborts the workers still trying.
        if drained.is_err() {
            for webhook in self.notifications.webhooks.iter() {
                let pending = webhook.pending();
                if pending > 0 {
                    tracing::warn!(
                        webhook = %webhook.target.origin,
                        pending,
                        "webhook deliveries dropped at shutdown"
                    );
                }
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.expiry.abort();
        for worker in &self.workers {
            worker.abort();
        }
    }
}
