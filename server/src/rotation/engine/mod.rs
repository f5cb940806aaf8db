//! The executor of rotation runs. For a secret it loads the persisted run,
//! asks the planner what to do, does it, persists the result (history,
//! watch event, audit event), and asks again until the planner says wait.
//! One driver per secret at a time: a lock per secret in this process, and
//! a lease in the database across replicas ([`lease`]). Every transition
//! is persisted before the next one, and a step's effect is idempotent for
//! the run's token, so a server killed anywhere resumes cleanly: at start,
//! and every second, every active run is driven again, by whichever
//! replica holds or next claims its lease.
//!
//! The same loop starts scheduled runs when they are due ([`start`]); a
//! claim on the schedule makes exactly one replica start each.

use super::planner::{self, Inputs, Plan};
use super::{HistoryRecord, Outcome, Phase, RunRecord, Step};
use crate::audit::AuditEvent;
use crate::auth::Action;
use crate::crypto;
use crate::error::{Error, Result};
use crate::events::Details;
use crate::notify::Notice;
use crate::service::AppState;
use crate::store::SecretRecord;
use rekey_shared::time::now_millis;
use rekey_shared::{SecretValue, Stage, VersionId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod actions;
mod lease;
mod start;
mod steps;

pub use actions::moved_on;

pub use lease::LEASE;

const TICK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Engine {
    state: Arc<AppState>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// This process, as the owner of the leases it takes.
    owner: String,
    /// Shutdown began: no drive starts another transition.
    stopping: std::sync::atomic::AtomicBool,
}

pub fn history(
    step: Step,
    event: &str,
    attempt: u32,
    principal: &str,
    detail: &str,
) -> HistoryRecord {
    HistoryRecord {
        at: now_millis(),
        step,
        event: event.to_owned(),
        attempt,
        principal: principal.to_owned(),
        detail: detail.to_owned(),
    }
}

impl Engine {
    pub fn new(state: Arc<AppState>) -> Arc<Self> {
        Arc::new(Self {
            state,
            locks: Default::default(),
            owner: VersionId::random().into_string(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Shutdown: each drive ends once the transition under way (a step
    /// and its outcome) is persisted, and none begins another; the next
    /// process resumes the runs where they stand. Shutdown waits for the
    /// drives, as for other changes (`AppState::changes`).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    fn lock_for(&self, secret_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(locks) => locks,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(secret_id.to_owned()).or_default().clone()
    }

    /// Whether a drive of the secret's run holds its lock now.
    fn is_driven(&self, secret_id: &str) -> bool {
        self.lock_for(secret_id).try_lock().is_err()
    }

    fn publish(
        &self,
        kind: &str,
        secret: &SecretRecord,
        run: &RunRecord,
        step: Option<Step>,
        detail: &str,
        principal: &str,
    ) {
        self.state.events.publish(
            kind,
            secret.name.as_str(),
            Details {
                version_id: run.id.clone(),
                run_id: run.id.clone(),
                step: step.map_or(0, Step::to_proto),
                detail: detail.to_owned(),
                principal: principal.to_owned(),
            },
        );
    }

    /// Raises `run_failed`: the run ended failed or needing attention, or
    /// (`state` `step_failed`) waits for an operator after a failed step.
    fn notify_failed(&self, secret: &SecretRecord, run: &RunRecord, state: &str) {
        self.state.notifications.send(Notice::RunFailed {
            secret: secret.name.as_str().to_owned(),
            run_id: run.id.clone(),
            step: run.step.as_str().to_owned(),
            state: state.to_owned(),
            attempts: run.attempt,
            initiator: run.initiator.clone(),
        });
    }

    /// The loop: resume every active run now, then every second drive
    /// active runs (retry times, approval expiry) and start due schedules.
    pub async fn run(self: Arc<Self>) {
        if self.state.rotation.paused {
            tracing::warn!(
                "rotation is paused (rotation.paused in the configuration): no schedule starts a \
                 run and no run moves on until it is set to false and the server restarted"
            );
            return;
        }
        if let Err(error) = self.state.store.clear_leases().await {
            tracing::error!(%error, "clearing the leases of a previous process failed");
        }
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = self.start_due().await {
                tracing::error!(%error, "starting scheduled rotations failed");
            }
            match self.state.store.all_runs(true, 10_000).await {
                Ok(runs) => {
                    for run in runs {
                        // A run being driven (a step under way, however
                        // long) is left to its driver: one slow rotator
                        // holds up neither the other runs nor this loop.
                        if self.is_driven(&run.secret_id) {
                            continue;
                        }
                        self.spawn_drive(&run.secret_id);
                    }
                }
                Err(error) => tracing::error!(%error, "listing active rotation runs failed"),
            }
        }
    }

    /// Drives the secret's active run in the background.
    pub fn spawn_drive(self: &Arc<Self>, secret_id: &str) {
        let engine = self.clone();
        let secret_id = secret_id.to_owned();
        let running = self.state.changes.started(&self.state);
        tokio::spawn(async move {
            let _running = running;
            if let Err(error) = engine.drive_on(&secret_id).await {
                tracing::error!(%error, secret_id, "driving a rotation run failed");
            }
        });
    }

    /// Drives the secret's run on after a change was made; a run that
    /// changed under the drive (an operator or another replica wrote it
    /// meanwhile) is left to the next round, which starts from what is
    /// stored.
    pub async fn drive_on(&self, secret_id: &str) -> Result<()> {
        match self.drive(secret_id).await {
            Err(Error::Aborted(message)) => {
                tracing::info!(secret_id, %message, "the next round drives the run from what is stored");
                Ok(())
            }
            other => other,
        }
    }

    /// Drives the secret's run on after a change to it was saved (an
    /// operator's action, an approval, a manual run's start): the change
    /// stands whatever happens next, so a drive that fails for the
    /// server's own reasons is logged and left to the engine's next round
    /// (every step is idempotent), not answered to the client as if the
    /// change had failed. A rotator's failure is the run's, recorded in it.
    pub async fn drive_after_change(&self, secret_id: &str) {
        if let Err(error) = self.drive_on(secret_id).await {
            tracing::warn!(%error, secret_id, "driving a rotation run on after a change failed; the next round drives it");
        }
    }

    /// Principals whose approval of the run's current step still counts:
    /// they may approve rotations of the secret and hold the approver role
    /// now (permission is checked again when the step runs).
    async fn valid_approvals(
        &self,
        secret: &SecretRecord,
        run: &RunRecord,
        role: &str,
    ) -> Result<Vec<String>> {
        let policy = self.state.authorizer.policy();
        Ok(self
            .state
            .store
            .approvals(&run.id)
            .await?
            .into_iter()
            .filter(|approval| approval.step == run.step)
            .filter(|approval| {
                policy
                    .evaluate(
                        &approval.principal,
                        Action::ApproveRotation.as_str(),
                        secret.name.as_str(),
                    )
                    .is_allowed()
                    && (role.is_empty() || policy.has_role(&approval.principal, role))
            })
            .map(|approval| approval.principal)
            .collect())
    }

    /// The secret's CURRENT value, if it has one.
    pub async fn current_value(&self, secret: &SecretRecord) -> Result<Option<SecretValue>> {
        self.value_at(secret, &Stage::current()).await
    }

    /// The value of the secret's version that carries `stage`, if one does.
    async fn value_at(&self, secret: &SecretRecord, stage: &Stage) -> Result<Option<SecretValue>> {
        match self.state.store.version_at_stage(&secret.id, stage).await? {
            Some(version) => self.open(secret, version.version_id.as_str()).await,
            None => Ok(None),
        }
    }

    async fn open(&self, secret: &SecretRecord, version_id: &str) -> Result<Option<SecretValue>> {
        let Ok(version_id) = VersionId::parse(version_id) else {
            return Ok(None);
        };
        let store = &self.state.store;
        let Some(version) = store.version(&secret.id, &version_id).await? else {
            return Ok(None);
        };
        let master = self
            .state
            .keyring
            .for_decryption(store, &version.sealed.key)
            .await?;
        crypto::open_value(&master, &secret.id, &version.version_id, &version.sealed)
            .map(Some)
            .map_err(|_| {
                Error::Integrity(format!(
                    "the stored value of {} version {} failed its integrity check",
                    secret.name, version.version_id
                ))
            })
    }

    /// The planner's view of a run now: what it waits for.
    pub async fn plan_of(
        &self,
        secret: &SecretRecord,
        run: &RunRecord,
    ) -> Result<(Plan, u32, u32)> {
        let store = &self.state.store;
        let gates = store
            .rotation_config(&secret.id)
            .await?
            .map(|config| config.gates())
            .unwrap_or_default();
        let current = store
            .version_at_stage(&secret.id, &Stage::current())
            .await?
            .map(|version| version.version_id.to_string());
        let approvals = self.valid_approvals(secret, run, &gates.role).await?;
        let have = planner::counted_approvals(run, &approvals);
        let plan = planner::plan(
            run,
            &Inputs {
                gates: &gates,
                approvals: &approvals,
                current_version: current.as_deref(),
                now: now_millis(),
            },
        );
        let need = if gates.gates(run.step) {
            gates.required.max(1)
        } else {
            0
        };
        Ok((plan, have, need))
    }

    /// Drives the secret's active run until the planner says wait.
    ///
    /// Boxed: the future is deep, and naming it `Send` here spares every
    /// caller the compiler's higher-ranked lifetime inference.
    pub fn drive<'a>(
        &'a self,
        secret_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(self.drive_run(secret_id))
    }

    async fn drive_run(&self, secret_id: &str) -> Result<()> {
        // Paused, a run stays as it is stored (approvals, cancels and
        // steps asked for meanwhile are recorded) until rotation resumes.
        if self.state.rotation.paused {
            return Ok(());
        }
        // Most calls find no run (every put that moves CURRENT asks, in case
        // a run was abandoned by it); those need no lock and no lease. A run
        // started after this look is driven by whoever started it.
        if self.state.store.active_run(secret_id).await?.is_none() {
            return Ok(());
        }
        let lock = self.lock_for(secret_id);
        let _held = lock.lock().await;
        if self.is_stopping() {
            return Ok(());
        }
        let Some(lease) = lease::Lease::claim(&self.state, secret_id, &self.owner).await? else {
            // Another replica drives this run.
            return Ok(());
        };
        let store = &self.state.store;
        // Bounded: every iteration persists progress; a run needs far fewer.
        for transition in 0..64 {
            if self.is_stopping() {
                return Ok(());
            }
            // Every transition starts with a full lease (the claim just
            // gave the first one), and none starts after another process
            // took the run over.
            if transition > 0 && !lease.renew().await? {
                tracing::warn!(
                    secret_id,
                    "the rotation lease was taken over; stopping here"
                );
                return Ok(());
            }
            let Some(run) = store.active_run(secret_id).await? else {
                return Ok(());
            };
            let Some(secret) = store.secret_by_id(secret_id).await? else {
                return Ok(());
            };
            // A run without configuration (deleted meanwhile) can only end.
            let config = store
                .rotation_config(secret_id)
                .await?
                .unwrap_or_else(|| crate::rotation::ConfigRecord::none(secret_id));
            let gates = config.gates();
            let current = store
                .version_at_stage(secret_id, &Stage::current())
                .await?
                .map(|version| version.version_id.to_string());
            let approvals = self.valid_approvals(&secret, &run, &gates.role).await?;
            let now = now_millis();
            let plan = planner::plan(
                &run,
                &Inputs {
                    gates: &gates,
                    approvals: &approvals,
                    current_version: current.as_deref(),
                    now,
                },
            );
            match plan {
                Plan::Wait(_) => return Ok(()),
                Plan::RequestApproval(step) => {
                    let mut next = run.clone();
                    next.approval_requested_at = Some(now);
                    next.updated_at = now;
                    let need = gates.required.max(1);
                    let detail = format!("{need} approval(s) by role {} needed", gates.role);
                    store
                        .update_run(
                            &mut next,
                            &[history(
                                step,
                                "awaiting_approval",
                                run.attempt,
                                "system",
                                &detail,
                            )],
                            None,
                        )
                        .await?;
                    self.publish(
                        "awaiting_approval",
                        &secret,
                        &next,
                        Some(step),
                        &detail,
                        &run.initiator,
                    );
                    self.state.notifications.send(Notice::ApprovalRequested {
                        secret: secret.name.as_str().to_owned(),
                        run_id: next.id.clone(),
                        step: step.as_str().to_owned(),
                        initiator: next.initiator.clone(),
                        approvals_required: need,
                        approver_role: gates.role.clone(),
                    });
                }
                Plan::BeginEnding { outcome, reason } => {
                    let mut next = run.clone();
                    self.begin_ending(&mut next, outcome, &reason);
                    let event =
                        AuditEvent::system("rotation:EndRotation", secret.name.as_str(), &reason);
                    store
                        .update_run(
                            &mut next,
                            &[history(
                                run.step,
                                outcome.as_str(),
                                run.attempt,
                                "system",
                                &reason,
                            )],
                            Some(&event),
                        )
                        .await?;
                    self.publish(
                        outcome.as_str(),
                        &secret,
                        &next,
                        Some(run.step),
                        &reason,
                        "system",
                    );
                }
                Plan::Revert => {
                    tokio::select! {
                        reverted = self.revert(&secret, &config.rotator, &config.settings, &run) => reverted?,
                        () = lease.lost() => return Ok(()),
                    }
                }
                Plan::End(outcome) => {
                    let mut next = run.clone();
                    next.phase = Phase::Ended;
                    next.outcome = Some(outcome);
                    next.ended_at = Some(now);
                    next.updated_at = now;
                    let detail = if next.end_reason.is_empty() {
                        outcome.as_str().to_owned()
                    } else {
                        next.end_reason.clone()
                    };
                    // Not the reason: it may quote a rotator's error or an
                    // approver's comment, which are the history's.
                    let event = AuditEvent::system(
                        "rotation:EndRotation",
                        secret.name.as_str(),
                        &format!(
                            "run {} ended {} (the run's history has why)",
                            run.id,
                            outcome.as_str()
                        ),
                    );
                    store
                        .end_run(
                            &mut next,
                            &[history(
                                run.step,
                                "ended",
                                run.attempt,
                                "system",
                                outcome.as_str(),
                            )],
                            &event,
                        )
                        .await?;
                    self.publish(outcome.as_str(), &secret, &next, None, &detail, "system");
                    if matches!(outcome, Outcome::Failed | Outcome::NeedsAttention) {
                        self.notify_failed(&secret, &next, outcome.as_str());
                    }
                    return Ok(());
                }
                // Dropped (its rotator killed) when the lease is lost: the
                // replica that has the run now runs the step again, from
                // what is stored.
                Plan::Execute(step) => {
                    tokio::select! {
                        executed = self.execute(&secret, &config, &run, step) => executed?,
                        () = lease.lost() => return Ok(()),
                    }
                }
            }
        }
        Ok(())
    }

    fn begin_ending(&self, run: &mut RunRecord, outcome: Outcome, reason: &str) {
        *run = Self::ending(run, outcome, reason);
    }
}
