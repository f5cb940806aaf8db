//! Group commit of the events that stand alone (a read's, a refusal's, a
//! failure's): each request queues its event and waits; one task takes
//! everything queued, appends it to the chain in one transaction (as one
//! writer of the write batch, `store::batch`, or on SQLite while no batch
//! is open on a connection of its own, `store::sqlite::events`), and
//! answers every waiter once that is durable. A read is still answered
//! only after its event is on disk (fail-closed), but a thousand
//! concurrent reads cost a handful of fsyncs instead of a thousand.
//!
//! Batches form by themselves: while one commits, the next fills. With one
//! request in flight a batch is that one event, so nothing waits for a
//! timer. The task runs the commit, not the request, so a client that
//! hangs up mid-commit cannot roll back the others' events.

use super::StoreMetrics;
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most events one transaction appends.
const MAX_BATCH: usize = 512;
/// How many events may wait for the committer before requests wait to queue.
const QUEUE: usize = 4096;

struct Waiting {
    event: AuditEvent,
    done: oneshot::Sender<Result<()>>,
}

#[derive(Debug)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
}

impl GroupCommit {
    /// Starts the committer: `commit` appends a batch of events in one
    /// transaction and returns once it is durable. The task ends when the
    /// store is dropped. Each committed batch's size goes to `sizes`.
    pub(super) fn start<C, F>(sizes: Arc<StoreMetrics>, mut commit: C) -> Self
    where
        C: FnMut(Vec<AuditEvent>) -> F + Send + 'static,
        F: Future<Output = Result<()>> + Send,
    {
        let (queue, mut receiver) = mpsc::channel::<Waiting>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, waiters): (Vec<_>, Vec<_>) = batch
                    .drain(..)
                    .map(|waiting| (waiting.event, waiting.done))
                    .unzip();
                let count = events.len();
                let result = commit(events).await;
                match &result {
                    Ok(()) => sizes.audit_events.observe(count as f64),
                    Err(error) => {
                        tracing::error!(%error, events = count, "audit events not written")
                    }
                }
                for done in waiters {
                    // A waiter that went away needs no answer.
                    let _ = done.send(result.clone());
                }
            }
        });
        Self { queue }
    }

    /// Appends `event` to the chain; durable when this returns `Ok`.
    pub(super) async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.enqueue(event).await?.await.map_err(|_| stopped())?
    }

    /// Appends `events` to the chain in their order; all durable when this
    /// returns `Ok`. They queue together, so they share commits.
    pub(super) async fn record_all(&self, events: &[AuditEvent]) -> Result<()> {
        let mut answers = Vec::with_capacity(events.len());
        for event in events {
            answers.push(self.enqueue(event).await?);
        }
        for answer in answers {
            answer.await.map_err(|_| stopped())??;
        }
        Ok(())
    }

    /// Queues `event` for the committer; the answer says when it is durable.
    async fn enqueue(&self, event: &AuditEvent) -> Result<oneshot::Receiver<Result<()>>> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Waiting {
                event: event.clone(),
                done,
            })
            .await
            .map_err(|_| stopped())?;
        Ok(answer)
    }
}

fn stopped() -> Error {
    Error::Internal("the audit committer has stopped".to_owned())
}
