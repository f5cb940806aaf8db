//! The lease a process holds on a secret's rotation work while it drives
//! the run: renewed by a heartbeat in the background, given up when the
//! driver is done. A process that dies stops renewing; once the lease
//! lapses, another replica's engine loop claims it and resumes the run at
//! its persisted step. A process that loses its lease (taken over, or
//! lapsed while it could not renew) stops the step it runs: two replicas
//! never act on one target at once.

use crate::error::Result;
use crate::service::AppState;
use rekey_shared::time::now_millis;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lease lasts without renewal: the longest a run waits for
/// another replica after its driver died.
pub const LEASE: Duration = Duration::from_secs(10);

/// How often the holder renews: several renewals fit in one lease.
const HEARTBEAT: Duration = Duration::from_secs(3);

fn until(now: i64) -> i64 {
    now + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

/// A held lease; dropping it stops the heartbeat and gives the lease up.
#[derive(Debug)]
pub struct Lease {
    state: Arc<AppState>,
    secret_id: String,
    owner: String,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Set once the lease is lost: taken over, or lapsed while renewals
    /// failed.
    lost: tokio::sync::watch::Receiver<bool>,
}

impl Lease {
    /// Claims the lease on `secret_id` for the process `process`, under a
    /// token of this claim's own; `None` when another process holds it.
    pub async fn claim(
        state: &Arc<AppState>,
        secret_id: &str,
        process: &str,
    ) -> Result<Option<Self>> {
        let owner = &format!("{process}/{}", rekey_shared::VersionId::random());
        // The lease runs from before it was asked for: the holder's own
        // reckoning of it ends no later than the database's.
        let asked = Instant::now();
        let now = now_millis();
        if !state
            .store
            .claim_lease(secret_id, owner, now, until(now))
            .await?
        {
            return Ok(None);
        }
        let (tell, lost) = tokio::sync::watch::channel(false);
        let heartbeat = {
            let (state, secret_id, owner) = (state.clone(), secret_id.to_owned(), owner.to_owned());
            tokio::spawn(async move {
                let mut beats = tokio::time::interval(HEARTBEAT);
                beats.tick().await;
                // Another replica can take the run over only with a shared
                // database; an embedded one's single server keeps its steps
                // through a failing disk.
                let shared = state.store.is_shared();
                // On the monotonic clock: a wall clock set back would
                // stretch the holder's reckoning past the lease.
                let mut held_until = asked + LEASE;
                loop {
                    beats.tick().await;
                    let asked = Instant::now();
                    let now = now_millis();
                    // A renewal may wait until a heartbeat before the lease
                    // lapses: one that hangs (a connection cut mid-call, no
                    // pool connection free) is a failure with time left to
                    // stop the step before another replica may take the run.
                    let left = if shared {
                        held_until
                            .saturating_duration_since(asked)
                            .saturating_sub(HEARTBEAT)
                    } else {
                        LEASE
                    };
                    let renewed = tokio::time::timeout(
                        left,
                        state.store.claim_lease(&secret_id, &owner, now, until(now)),
                    )
                    .await;
                    match renewed {
                        Ok(Ok(true)) => held_until = asked + LEASE,
                        Ok(Ok(false)) => {
                            tracing::error!(
                                secret_id,
                                "the rotation lease was taken over while held; the step under way is stopped"
                            );
                            let _ = tell.send(true);
                            return;
                        }
                        // The lease lapses before the next heartbeat could
                        // renew it: stop now, not a heartbeat after another
                        // replica may have taken the run.
                        _ if shared && Instant::now() + HEARTBEAT >= held_until => {
                            tracing::error!(
                                secret_id,
                                "the rotation lease lapsed while renewals failed; the step under way is stopped"
                            );
                            let _ = tell.send(true);
                            return;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%error, secret_id, "renewing a rotation lease failed")
                        }
                        Err(_) => tracing::warn!(secret_id, "renewing a rotation lease timed out"),
                    }
                }
            })
        };
        Ok(Some(Self {
            state: state.clone(),
            secret_id: secret_id.to_owned(),
            owner: owner.to_owned(),
            heartbeat,
            lost,
        }))
    }
}

impl Lease {
    /// Returns once the lease is lost (taken over, or lapsed while its
    /// renewals failed): another replica may drive the run from then on,
    /// so what this one does for it must stop. Never, while it holds.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        if lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Renews the lease now; false when another process took it over (this
    /// one stalled longer than [`LEASE`]), and the caller must stop.
    pub async fn renew(&self) -> Result<bool> {
        let now = now_millis();
        self.state
            .store
            .claim_lease(&self.secret_id, &self.owner, now, until(now))
            .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let (state, secret_id, owner) = (
            self.state.clone(),
            std::mem::take(&mut self.secret_id),
            std::mem::take(&mut self.owner),
        );
        tokio::spawn(async move {
            if let Err(error) = state.store.release_lease(&secret_id, &owner).await {
                tracing::warn!(%error, secret_id, "releasing a rotation lease failed; it lapses");
            }
        });
    }
}
