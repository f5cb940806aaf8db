//! The Rotation service: configure, start, step, approve or reject, retry,
//! cancel, describe, list runs and approvals. Operator actions go through
//! the engine, which holds the secret's lock while it changes the run.

use super::AppState;
use super::context::RequestContext;
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::rotation::engine::{Engine, history, moved_on};
use crate::rotation::planner::{Plan, Wait};
use crate::rotation::{ApprovalRecord, ConfigRecord, Outcome, Phase, Revert, RunRecord, Step};
use crate::store::SecretRecord;
use rekey_shared::SecretName;
use rekey_shared::proto::rotation_server::Rotation;
use rekey_shared::proto::{self};
use rekey_shared::time::{now_millis, timestamp_from_millis};
use std::sync::Arc;

mod configure;
mod messages;

use messages::config_message;
pub use messages::state_name;

#[derive(Debug, Clone)]
pub struct RotationService {
    state: Arc<AppState>,
    engine: Arc<Engine>,
}

impl RotationService {
    pub fn new(state: Arc<AppState>, engine: Arc<Engine>) -> Self {
        Self { state, engine }
    }

    fn authorize(&self, context: &RequestContext, action: Action, name: &SecretName) -> Result<()> {
        context.authorize(&self.state.authorizer, action, name.as_str())
    }

    async fn secret(&self, name: &SecretName) -> Result<SecretRecord> {
        self.state
            .store
            .secret(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("secret {name} does not exist")))
    }

    /// A run with its pipeline, approvals and history.
    async fn run_message(
        &self,
        secret: &SecretRecord,
        run: &RunRecord,
    ) -> Result<proto::RotationRun> {
        let store = &self.state.store;
        let (plan, have, need) = self.engine.plan_of(secret, run).await?;
        let history = store.history(&run.id).await?;
        let approvals = store.approvals(&run.id).await?;
        let state = state_name(run, &plan);
        let steps = Step::ALL
            .iter()
            .map(|&step| {
                let attempts = history
                    .iter()
                    .filter(|h| h.step == step && h.event == "step_started")
                    .count() as u32;
                let gated_need = if step == run.step { need } else { 0 };
                let step_state = if run.outcome == Some(Outcome::Succeeded) || step < run.step {
                    "done".to_owned()
                } else if step > run.step {
                    "pending".to_owned()
                } else {
                    match run.phase {
                        Phase::Ended | Phase::Ending => match run.revert {
                            Revert::Done => "reverted".to_owned(),
                            Revert::Failed => "needs_attention".to_owned(),
                            _ if !run.last_error.is_empty() => "failed".to_owned(),
                            _ => run.outcome.map_or("ended", Outcome::as_str).to_owned(),
                        },
                        Phase::StepFailed => "failed".to_owned(),
                        Phase::Running => match &plan {
                            Plan::Wait(Wait::Operator(_)) => "waiting_for_operator".to_owned(),
                            Plan::Wait(Wait::Approval { .. }) | Plan::RequestApproval(_) => {
                                "awaiting_approval".to_owned()
                            }
                            Plan::Wait(Wait::RetryAt(_)) => "failed".to_owned(),
                            _ => "running".to_owned(),
                        },
                    }
                };
                proto::StepState {
                    step: step.to_proto(),
                    state: step_state,
                    attempts,
                    error: if step == run.step {
                        run.last_error.clone()
                    } else {
                        String::new()
                    },
                    approvals: if step == run.step { have } else { 0 },
                    approvals_required: gated_need,
                }
            })
            .collect();
        Ok(proto::RotationRun {
            run_id: run.id.clone(),
            name: secret.name.to_string(),
            version_id: run.id.clone(),
            manual: run.manual,
            scheduled: run.scheduled,
            initiator: run.initiator.clone(),
            state,
            current_step: run.step.to_proto(),
            steps,
            approvals: approvals
                .into_iter()
                .map(|a| proto::Approval {
                    step: a.step.to_proto(),
                    principal: a.principal,
                    at: Some(timestamp_from_millis(a.at)),
                    comment: a.comment,
                })
                .collect(),
            history: history
                .into_iter()
                .map(|h| proto::HistoryEntry {
                    at: Some(timestamp_from_millis(h.at)),
                    step: h.step.to_proto(),
                    event: h.event,
                    attempt: h.attempt,
                    principal: h.principal,
                    detail: h.detail,
                })
                .collect(),
            end_reason: run.end_reason.clone(),
            started_at: Some(timestamp_from_millis(run.created_at)),
            updated_at: Some(timestamp_from_millis(run.updated_at)),
            ended_at: run.ended_at.map(timestamp_from_millis),
            next_attempt_at: run.next_attempt_at.map(timestamp_from_millis),
            active: run.phase != Phase::Ended,
        })
    }

    /// `run` as the answer to an action shows it: whole to a caller
    /// allowed to describe the rotation; to one allowed only to act,
    /// without its history, errors, comments and reasons, which
    /// `rotation:DescribeRotation` guards.
    fn shown(
        &self,
        context: &RequestContext,
        secret: &SecretRecord,
        mut run: proto::RotationRun,
    ) -> proto::RotationRun {
        if context.allows(
            &self.state.authorizer,
            Action::DescribeRotation,
            secret.name.as_str(),
        ) {
            return run;
        }
        run.history.clear();
        run.end_reason.clear();
        for step in &mut run.steps {
            step.error.clear();
        }
        for approval in &mut run.approvals {
            approval.comment.clear();
        }
        run
    }

    async fn latest_run(
        &self,
        context: &RequestContext,
        secret: &SecretRecord,
    ) -> Result<proto::RotationRun> {
        let run = self
            .state
            .store
            .runs_of(&secret.id, 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("rotation", "the run vanished"))?;
        let message = self.run_message(secret, &run).await?;
        Ok(self.shown(context, secret, message))
    }

    async fn start(
        &self,
        context: &RequestContext,
        request: proto::StartRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::StartRotation, &name)?;
        let secret = self.secret(&name).await?;
        if let Some(date) = secret.deletion_date {
            return Err(Error::FailedPrecondition(format!(
                "secret {name} is scheduled for deletion on {}",
                rekey_shared::time::format_millis(date)
            )));
        }
        let config = self.state.store.rotation_config(&secret.id).await?;
        if config.as_ref().is_some_and(|config| !config.enabled) {
            return Err(Error::FailedPrecondition(format!(
                "rotation of {name} is disabled; configure it again to enable it"
            )));
        }
        let run = self
            .engine
            .start_run(
                &secret,
                context.principal.as_str(),
                request.manual,
                Some(context.change_event()),
            )
            .await?;
        context.recorded();
        if request.manual {
            self.engine.drive_after_change(&secret.id).await;
        } else {
            self.engine.spawn_drive(&secret.id);
        }
        let message = self.run_message(&secret, &run).await?;
        Ok(self.shown(context, &secret, message))
    }

    async fn step(
        &self,
        context: &RequestContext,
        request: proto::StepRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::StepRotation, &name)?;
        self.engine.not_paused()?;
        let secret = self.secret(&name).await?;
        let principal = context.principal.to_string();
        self.engine
            .act(&secret, &context.change_event(), |run, plan| {
                still_active(&request.run_id, run, &name)?;
                operator_step(run, plan, &name, &principal)
            })
            .await?;
        context.recorded();
        self.latest_run(context, &secret).await
    }

    async fn approve(
        &self,
        context: &RequestContext,
        request: proto::ApproveRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::ApproveRotation, &name)?;
        let secret = self.secret(&name).await?;
        let store = &self.state.store;
        let run = store.active_run(&secret.id).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!("secret {name} has no active rotation run"))
        })?;
        if !request.run_id.is_empty() && request.run_id != run.id {
            return Err(Error::FailedPrecondition(format!(
                "run {} of {name} is no longer the active one (run {} is); look at it again \
                 (rekey rotation show {name})",
                request.run_id, run.id
            )));
        }
        let principal = context.principal.to_string();
        if principal == run.initiator {
            context.refuse("an approval of one's own run");
            return Err(Error::PermissionDenied(if run.scheduled {
                format!(
                    "{principal} configured the scheduled rotation of {name} and cannot approve its runs"
                )
            } else {
                format!("{principal} started this run of {name} and cannot approve it")
            }));
        }
        let config = store
            .rotation_config(&secret.id)
            .await?
            .unwrap_or_else(|| ConfigRecord::none(&secret.id));
        if !config.approver_role.is_empty()
            && !self
                .state
                .authorizer
                .policy()
                .has_role(&principal, &config.approver_role)
        {
            context.refuse("without the approver role");
            return Err(Error::PermissionDenied(format!(
                "approving rotations of {name} needs role {}; {principal} does not have it",
                config.approver_role
            )));
        }
        let (plan, _, _) = self.engine.plan_of(&secret, &run).await?;
        let step = plan.awaited_approval().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the run of {name} does not wait for an approval now"
            ))
        })?;
        // The step the approver saw: an approval never counts for a later
        // gate of the run than the one it was given for.
        if request.step != 0 {
            let seen = Step::from_proto(request.step)
                .ok_or_else(|| Error::InvalidArgument(format!("unknown step {}", request.step)))?;
            if seen != step {
                return Err(Error::FailedPrecondition(format!(
                    "the run of {name} now waits for an approval of {step}, not of {seen}: \
                     look at it again (rekey rotation show {name})"
                )));
            }
        }
        crate::service::secrets::validate::check_comment(&request.comment)?;
        if request.reject {
            if request.comment.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "a rejection needs a comment".to_owned(),
                ));
            }
            let reason = format!("rejected by {principal}: {}", request.comment);
            let seen = run.id.clone();
            self.engine
                .act(&secret, &context.change_event(), |run, plan| {
                    if run.id != seen || plan.awaited_approval() != Some(step) {
                        return Err(moved_on(&secret, step));
                    }
                    let next = Engine::ending(run, Outcome::Rejected, &reason);
                    let entry =
                        history(step, "rejected", run.attempt, &principal, &request.comment);
                    Ok((next, vec![entry], "rejected"))
                })
                .await?;
        } else {
            let recorded = self
                .engine
                .approve(
                    &secret,
                    &run.id,
                    ApprovalRecord {
                        step,
                        principal: principal.clone(),
                        at: now_millis(),
                        comment: request.comment,
                    },
                    &context.change_event(),
                )
                .await?;
            if !recorded {
                return Err(Error::AlreadyExists(format!(
                    "{principal} already approved {step} of this run; one principal counts once"
                )));
            }
        }
        context.recorded();
        self.latest_run(context, &secret).await
    }

    async fn retry(
        &self,
        context: &RequestContext,
        request: proto::RetryRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::RetryRotation, &name)?;
        self.engine.not_paused()?;
        let secret = self.secret(&name).await?;
        let principal = context.principal.to_string();
        self.engine
            .act(&secret, &context.change_event(), |run, plan| {
                still_active(&request.run_id, run, &name)?;
                retried(run, plan, &name, &principal)
            })
            .await?;
        context.recorded();
        self.latest_run(context, &secret).await
    }

    async fn cancel(
        &self,
        context: &RequestContext,
        request: proto::CancelRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::CancelRotation, &name)?;
        let secret = self.secret(&name).await?;
        let principal = context.principal.to_string();
        self.engine
            .act(&secret, &context.change_event(), |run, _| {
                still_active(&request.run_id, run, &name)?;
                if run.phase == Phase::Ending {
                    return Err(Error::FailedPrecondition(format!(
                        "the run of {name} is already ending"
                    )));
                }
                let next = Engine::ending(
                    run,
                    Outcome::Cancelled,
                    &format!("cancelled by {principal}"),
                );
                let entry = history(run.step, "cancelled", run.attempt, &principal, "");
                Ok((next, vec![entry], "cancelled"))
            })
            .await?;
        context.recorded();
        self.latest_run(context, &secret).await
    }

    async fn describe(
        &self,
        context: &RequestContext,
        request: proto::DescribeRotationRequest,
    ) -> Result<proto::DescribeRotationResponse> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::DescribeRotation, &name)?;
        let secret = self.secret(&name).await?;
        let store = &self.state.store;
        let config = store.rotation_config(&secret.id).await?;
        let run = match store.runs_of(&secret.id, 1).await?.into_iter().next() {
            Some(run) => Some(self.run_message(&secret, &run).await?),
            None => None,
        };
        Ok(proto::DescribeRotationResponse {
            config: config.map(|config| config_message(name.as_str(), &config)),
            run,
        })
    }

    async fn list_runs(
        &self,
        context: &RequestContext,
        request: proto::ListRotationRunsRequest,
    ) -> Result<proto::ListRotationRunsResponse> {
        let limit = match request.limit {
            0 => 100,
            limit => limit.min(1000),
        };
        let store = &self.state.store;
        let mut runs = Vec::new();
        if !request.name.is_empty() {
            context.set_resource(&request.name);
            let name = SecretName::parse(&request.name)?;
            self.authorize(context, Action::DescribeRotation, &name)?;
            let secret = self.secret(&name).await?;
            for run in store.runs_of(&secret.id, limit).await? {
                if !request.active_only || run.phase != Phase::Ended {
                    runs.push(self.run_message(&secret, &run).await?);
                }
            }
        } else {
            context.set_resource("*");
            for run in store.all_runs(request.active_only, limit).await? {
                let Some(secret) = store.secret_by_id(&run.secret_id).await? else {
                    continue;
                };
                if context.allows(
                    &self.state.authorizer,
                    Action::DescribeRotation,
                    secret.name.as_str(),
                ) {
                    runs.push(self.run_message(&secret, &run).await?);
                }
            }
            context.summarize(&format!("{} runs listed", runs.len()));
        }
        // What needs attention first, then what is active, newest first.
        runs.sort_by_key(|run| (run.state != "needs_attention", !run.active));
        let fits = crate::service::convert::fitting(&runs);
        let more = fits < runs.len();
        runs.truncate(fits);
        Ok(proto::ListRotationRunsResponse { runs, more })
    }

    async fn list_approvals(
        &self,
        context: &RequestContext,
        _: proto::ListApprovalsRequest,
    ) -> Result<proto::ListApprovalsResponse> {
        context.set_resource("*");
        let store = &self.state.store;
        let principal = context.principal.to_string();
        let policy = self.state.authorizer.policy();
        let mut waiting = Vec::new();
        for run in store.all_runs(true, 10_000).await? {
            let Some(secret) = store.secret_by_id(&run.secret_id).await? else {
                continue;
            };
            // The inbox shows whole runs (history, errors, comments): a
            // caller must be allowed to describe them, as DESIGN has the
            // inbox under rotation:DescribeRotation, besides approving.
            let allowed =
                |action| context.allows(&self.state.authorizer, action, secret.name.as_str());
            if run.initiator == principal
                || !allowed(Action::ApproveRotation)
                || !allowed(Action::DescribeRotation)
            {
                continue;
            }
            let role = store
                .rotation_config(&secret.id)
                .await?
                .map(|config| config.approver_role)
                .unwrap_or_default();
            if !role.is_empty() && !policy.has_role(&principal, &role) {
                continue;
            }
            let (plan, _, _) = self.engine.plan_of(&secret, &run).await?;
            let step = match plan {
                Plan::Wait(Wait::Approval { step, .. }) => step,
                _ => continue,
            };
            let already = store
                .approvals(&run.id)
                .await?
                .iter()
                .any(|a| a.step == step && a.principal == principal);
            if !already {
                waiting.push((
                    run.approval_requested_at.unwrap_or(run.created_at),
                    self.run_message(&secret, &run).await?,
                ));
            }
        }
        waiting.sort_by_key(|(at, _)| *at);
        context.summarize(&format!("{} runs await this principal", waiting.len()));
        Ok(proto::ListApprovalsResponse {
            runs: waiting.into_iter().map(|(_, run)| run).collect(),
        })
    }
}

/// The operator's go for the step a manual run waits at.
fn operator_step(
    run: &RunRecord,
    plan: &Plan,
    name: &SecretName,
    principal: &str,
) -> Result<(RunRecord, Vec<crate::rotation::HistoryRecord>, &'static str)> {
    match plan {
        Plan::Wait(Wait::Operator(step)) => {
            let mut next = run.clone();
            next.operator_go = true;
            next.updated_at = now_millis();
            let entry = history(*step, "operator_step", run.attempt, principal, "");
            Ok((next, vec![entry], "step_changed"))
        }
        Plan::Wait(Wait::Approval { step, have, need }) => Err(Error::FailedPrecondition(format!(
            "{step} awaits approval ({have} of {need}); an approver runs `rekey approve {name}`"
        ))),
        Plan::Wait(Wait::StepFailed(step)) => Err(Error::FailedPrecondition(format!(
            "{step} failed; retry it with `rekey rotation retry {name}` or cancel the run"
        ))),
        _ if !run.manual => Err(Error::FailedPrecondition(format!(
            "the run of {name} is automatic: its steps run by themselves"
        ))),
        _ => Err(Error::FailedPrecondition(format!(
            "the run of {name} does not wait for an operator now"
        ))),
    }
}

/// Refuses a request for run `seen` (when the caller named one) once it
/// is no longer the active run.
fn still_active(seen: &str, run: &RunRecord, name: &SecretName) -> Result<()> {
    if seen.is_empty() || seen == run.id {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "run {seen} of {name} is no longer the active one (run {} is); look at it again \
         (rekey rotation show {name})",
        run.id
    )))
}

/// A retry of `run` (planned `plan`): the failed step runs again at once.
/// A run that is ending (cancelled, rejected, out of attempts) has no step
/// to retry, though its revert may wait for its backoff as a step does:
/// retried, it ran on forward, and could move CURRENT.
fn retried(
    run: &RunRecord,
    plan: &Plan,
    name: &SecretName,
    principal: &str,
) -> Result<(RunRecord, Vec<crate::rotation::HistoryRecord>, &'static str)> {
    match plan {
        Plan::Wait(Wait::StepFailed(_)) | Plan::Wait(Wait::RetryAt(_))
            if run.phase != Phase::Ending =>
        {
            let step = step_of(plan, run);
            let mut next = run.clone();
            next.phase = Phase::Running;
            next.next_attempt_at = None;
            next.operator_go = true;
            next.updated_at = now_millis();
            let entry = history(step, "retried", run.attempt, principal, "");
            Ok((next, vec![entry], "step_changed"))
        }
        _ if run.phase == Phase::Ending => Err(Error::FailedPrecondition(format!(
            "the run of {name} is ending (its change is being undone); there is no step to retry"
        ))),
        _ => Err(Error::FailedPrecondition(format!(
            "no step of the run of {name} failed; there is nothing to retry"
        ))),
    }
}

fn step_of(plan: &Plan, run: &RunRecord) -> Step {
    match plan {
        Plan::Wait(Wait::StepFailed(step)) => *step,
        _ => run.step,
    }
}

audited_service! {
    Rotation for RotationService {
    configure_rotation(proto::ConfigureRotationRequest) -> proto::RotationConfig => configure, ConfigureRotation;
    start_rotation(proto::StartRotationRequest) -> proto::RotationRun => start, StartRotation;
    step_rotation(proto::StepRotationRequest) -> proto::RotationRun => step, StepRotation;
    approve_rotation(proto::ApproveRotationRequest) -> proto::RotationRun => approve, ApproveRotation;
    retry_rotation(proto::RetryRotationRequest) -> proto::RotationRun => retry, RetryRotation;
    cancel_rotation(proto::CancelRotationRequest) -> proto::RotationRun => cancel, CancelRotation;
    describe_rotation(proto::DescribeRotationRequest) -> proto::DescribeRotationResponse => describe, DescribeRotation;
    list_rotation_runs(proto::ListRotationRunsRequest) -> proto::ListRotationRunsResponse => list_runs, DescribeRotation;
    list_approvals(proto::ListApprovalsRequest) -> proto::ListApprovalsResponse => list_approvals, DescribeRotation;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::Revert;

    fn run(phase: Phase) -> RunRecord {
        RunRecord {
            phase,
            step: Step::Test,
            set_applied: true,
            attempt: 1,
            next_attempt_at: Some(5_000),
            ..crate::rotation::planner::tests::run()
        }
    }

    /// A cancelled run whose revert the server's own failure interrupted
    /// waits for its backoff as a failed step does; a retry then is
    /// refused, not taken to run the rest of the steps.
    #[test]
    fn an_ending_run_has_no_step_to_retry() {
        let name = SecretName::parse("app/db").unwrap();
        let ending = RunRecord {
            outcome: Some(Outcome::Cancelled),
            revert: Revert::Needed,
            ..run(Phase::Ending)
        };
        let refused = retried(&ending, &Plan::Wait(Wait::RetryAt(5_000)), &name, "bob");
        assert!(
            matches!(&refused, Err(Error::FailedPrecondition(message)) if message.contains("is ending")),
            "{refused:?}"
        );
        let waiting = run(Phase::Running);
        let (next, _, _) =
            retried(&waiting, &Plan::Wait(Wait::RetryAt(5_000)), &name, "bob").unwrap();
        assert_eq!((next.phase, next.next_attempt_at), (Phase::Running, None));
    }
}
