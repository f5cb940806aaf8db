//! Operators' actions on a secret's active run (cancel, reject, retry,
//! step, approve): each on the run as it is then, persisted with its
//! history and audit event before the run is driven on. Under the secret's
//! lock when it can be had within a moment; a drive holds it through a
//! whole step (a rotator call may take minutes), and an action does not
//! wait for that: the run's revision keeps the two apart (whichever writes
//! second is refused, and a refused drive leaves the run to the engine's
//! next round, which starts from what the action stored).

use super::{Engine, history};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::rotation::planner::{self, Plan};
use crate::rotation::{HistoryRecord, Outcome, Phase, RunRecord, Step};
use crate::store::SecretRecord;
use rekey_shared::time::now_millis;

/// How long an action waits for a drive to let go of the secret's lock
/// before it acts without it.
const WAIT_FOR_A_DRIVE: std::time::Duration = std::time::Duration::from_millis(500);

impl Engine {
    /// An operator's action on the secret's active run: `change` looks at
    /// the run and what it waits for, and returns the run to persist with
    /// its history (or refuses). Then the run is driven on. Beside a drive
    /// (without the lock), a write refused because the drive moved the run
    /// on meanwhile is tried again on the run as it is then.
    pub async fn act(
        &self,
        secret: &SecretRecord,
        event: &AuditEvent,
        change: impl Fn(&RunRecord, &Plan) -> Result<(RunRecord, Vec<HistoryRecord>, &'static str)>,
    ) -> Result<RunRecord> {
        const TRIES_BESIDE_A_DRIVE: usize = 5;
        let lock = self.lock_for(&secret.id);
        let held = tokio::time::timeout(WAIT_FOR_A_DRIVE, lock.lock())
            .await
            .ok();
        let mut tries = 0;
        let saved = loop {
            tries += 1;
            let run = self.active_run_of(secret).await?;
            let (plan, _, _) = self.plan_of(secret, &run).await?;
            let (mut next, entries, kind) = change(&run, &plan)?;
            match self
                .state
                .store
                .update_run(&mut next, &entries, Some(event))
                .await
            {
                Err(Error::Aborted(_)) if held.is_none() && tries < TRIES_BESIDE_A_DRIVE => {
                    continue;
                }
                other => other?,
            }
            let detail = entries
                .last()
                .map(|entry| entry.detail.clone())
                .unwrap_or_default();
            self.publish(
                kind,
                secret,
                &next,
                Some(next.step),
                &detail,
                &event.principal,
            );
            break next;
        };
        // A drive under way goes on from what was stored, or leaves it to
        // the next round; with the lock, this action drives on itself.
        if held.is_some() {
            drop(held);
            self.drive_after_change(&secret.id).await;
        }
        // The run as it is now; the change is saved, so a failure to read
        // it answers with the run as the change left it.
        match self.state.store.runs_of(&secret.id, 1).await {
            Ok(runs) => Ok(runs.into_iter().next().unwrap_or(saved)),
            Err(error) => {
                tracing::warn!(%error, "reading a run after a change to it; answering with the run as changed");
                Ok(saved)
            }
        }
    }

    /// The secret's active run, or FAILED_PRECONDITION.
    async fn active_run_of(&self, secret: &SecretRecord) -> Result<RunRecord> {
        self.state
            .store
            .active_run(&secret.id)
            .await?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "secret {} has no active rotation run",
                    secret.name
                ))
            })
    }

    /// Records an approval of the step the run waits at, then drives on;
    /// refused unless run `run_id` is still the active one and still waits
    /// for an approval of that step (the approver decided on what they
    /// saw, not on a run that began or moved on since).
    pub async fn approve(
        &self,
        secret: &SecretRecord,
        run_id: &str,
        approval: crate::rotation::ApprovalRecord,
        event: &AuditEvent,
    ) -> Result<bool> {
        let recorded;
        {
            let lock = self.lock_for(&secret.id);
            let _held = lock.lock().await;
            let run = self.active_run_of(secret).await?;
            let (plan, _, _) = self.plan_of(secret, &run).await?;
            if run.id != run_id || plan.awaited_approval() != Some(approval.step) {
                return Err(moved_on(secret, approval.step));
            }
            let entry = history(
                approval.step,
                "approved",
                run.attempt,
                &approval.principal,
                &approval.comment,
            );
            recorded = self
                .state
                .store
                .add_approval(&run.id, &approval, &[entry], event)
                .await?;
            if recorded {
                self.publish(
                    "approved",
                    secret,
                    &run,
                    Some(approval.step),
                    &approval.comment,
                    &approval.principal,
                );
            }
        }
        self.drive_after_change(&secret.id).await;
        Ok(recorded)
    }

    /// Begins ending a run for an operator (cancel, reject).
    pub fn ending(run: &RunRecord, outcome: Outcome, reason: &str) -> RunRecord {
        let mut next = run.clone();
        next.phase = Phase::Ending;
        next.outcome = Some(outcome);
        next.revert = planner::revert_for(run);
        next.end_reason = reason.to_owned();
        next.next_attempt_at = None;
        next.updated_at = now_millis();
        next
    }
}

/// The refusal of an approval or rejection whose run ended, or moved past
/// the step, between the approver's look and the change.
pub fn moved_on(secret: &SecretRecord, step: Step) -> Error {
    Error::FailedPrecondition(format!(
        "the rotation of {} no longer waits for an approval of {step} in the run you saw; \
         look at it again (rekey rotation show {})",
        secret.name, secret.name
    ))
}
