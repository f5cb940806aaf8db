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
        let answers = self.enqueue_all(events)?;
        for answer in answers {
            answer.await.map_err(|_| stopped())??;
        }
        Ok(())
    }

    /// Queues `event` for the committer; the answer says when it is durable.
    async fn enqueue(&self, event: &AuditEvent) -> Result<oneshot::Receiver<Result<()>>> {
        let mut answers = self.enqueue_all(std::slice::from_ref(event))?;
        answers.pop().ok_or_else(stopped)
    }

    /// Queues `events`, in their order, without waiting: the caller's
    /// request answered, its `Abandoned` no longer stands for it, so a
    /// caller dropped (its client gone) while it waited for room would
    /// lose its event. While the queue is full, what does not fit is
    /// queued by a task of its own, in order.
    fn enqueue_all(&self, events: &[AuditEvent]) -> Result<Vec<oneshot::Receiver<Result<()>>>> {
        let mut answers = Vec::with_capacity(events.len());
        let mut waiting = events.iter().map(|event| {
            let (done, answer) = oneshot::channel();
            answers.push(answer);
            Waiting {
                event: event.clone(),
                done,
            }
        });
        let mut rest = Vec::new();
        for one in waiting.by_ref() {
            match self.queue.try_send(one) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
                Err(mpsc::error::TrySendError::Full(one)) => {
                    rest.push(one);
                    break;
                }
            }
        }
        rest.extend(waiting);
        if !rest.is_empty() {
            let queue = self.queue.clone();
            tokio::spawn(async move {
                for one in rest {
                    // Closed: the store is shutting down; the waiter hears
                    // it from its dropped answer.
                    if queue.send(one).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(answers)
    }
}

fn stopped() -> Error {
    Error::Internal("the audit committer has stopped".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// An event whose request is dropped while the queue is full is queued
    /// all the same: its request was answered, and nothing else records it.
    #[tokio::test]
    async fn an_event_dropped_while_the_queue_is_full_is_still_committed() {
        let committed = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let group = {
            let (committed, release) = (committed.clone(), release.clone());
            GroupCommit::start(Arc::default(), move |events: Vec<AuditEvent>| {
                let (committed, release) = (committed.clone(), release.clone());
                async move {
                    // Each batch waits to be let through.
                    release.acquire().await.map_err(|_| stopped())?.forget();
                    committed.fetch_add(events.len(), Ordering::SeqCst);
                    Ok(())
                }
            })
        };
        let event = AuditEvent::system("Read", "x", "");
        // The first batch holds the committer; then the queue fills.
        let first = group.enqueue(&event).await.unwrap();
        tokio::task::yield_now().await;
        let mut answers = Vec::new();
        for _ in 0..QUEUE {
            answers.push(group.enqueue(&event).await.unwrap());
        }
        {
            let dropped = group.record(&event);
            let mut dropped = std::pin::pin!(dropped);
            let waker = std::task::Waker::noop();
            assert!(matches!(
                dropped.as_mut().poll(&mut Context::from_waker(waker)),
                Poll::Pending
            ));
        }
        release.add_permits(1_000);
        first.await.unwrap().unwrap();
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        let total = 1 + QUEUE + 1;
        let all = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while committed.load(Ordering::SeqCst) < total {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            all.is_ok(),
            "{} of {total} committed",
            committed.load(Ordering::SeqCst)
        );
    }
}
