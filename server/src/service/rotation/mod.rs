//! The Rotation service: configure, start, step, approve or reject, retry,
//! cancel, describe, list runs and approvals. Operator actions go through
//! the engine, which holds the secret's lock while it changes the run.

use super::AppState;
use super::context::RequestContext;
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::rotation::engine::{Engine, history, moved_on};
use crate::rotation::planner::{Plan, Wait};
use crate::rotation::rotators::{Rotator, RotatorSettings};
use crate::rotation::{
    ApprovalRecord, ConfigRecord, DEFAULT_APPROVAL_EXPIRY, Outcome, Phase, Revert, RunRecord, Step,
    schedule,
};
use crate::store::SecretRecord;
use rekey_shared::SecretName;
use rekey_shared::proto::rotation_server::Rotation;
use rekey_shared::proto::{self};
use rekey_shared::time::{now_millis, timestamp_from_millis};
use std::sync::Arc;

mod messages;

pub use messages::state_name;
use messages::{config_message, policy_from};

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

    async fn latest_run(&self, secret: &SecretRecord) -> Result<proto::RotationRun> {
        let run = self
            .state
            .store
            .runs_of(&secret.id, 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("rotation", "the run vanished"))?;
        self.run_message(secret, &run).await
    }

    async fn configure(
        &self,
        context: &RequestContext,
        request: proto::ConfigureRotationRequest,
    ) -> Result<proto::RotationConfig> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::ConfigureRotation, &name)?;
        let secret = self.secret(&name).await?;
        let store = &self.state.store;
        let existing = store.rotation_config(&secret.id).await?;
        let now = now_millis();
        if request.disable {
            let mut config = existing.clone().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "secret {name} has no rotation configuration to disable"
                ))
            })?;
            config.enabled = false;
            config.next_rotation_at = None;
            config.configured_by = context.principal.to_string();
            config.configured_at = now;
            store
                .save_rotation_config(&config, existing.as_ref(), false, &context.change_event())
                .await?;
            context.recorded();
            return Ok(config_message(name.as_str(), &config));
        }
        let rotator = if request.rotator.is_empty() {
            existing
                .as_ref()
                .map(|config| config.rotator.clone())
                .ok_or_else(|| {
                    Error::InvalidArgument("give a rotator: password or exec:NAME".to_owned())
                })?
        } else {
            request.rotator.clone()
        };
        let mut settings = RotatorSettings {
            password_policy: policy_from(request.password_policy),
            json_field: request.json_field,
            admin_secret: request.admin_secret,
            strategy: request.strategy,
            user: String::new(),
        };
        let checked = Rotator::from_config(&rotator, &settings, &self.state.rotation)
            .map_err(|error| Error::InvalidArgument(error.0))?;
        if checked.admin_secret(&settings).is_some() {
            // The user the admin may act on, from the value as it is now:
            // not from what a later writer of the value names.
            let current = self.engine.current_value(&secret).await?;
            let named =
                crate::rotation::database::pinned_user(current.as_ref()).map_err(|error| {
                    Error::FailedPrecondition(format!(
                        "alternating users pin the database user the secret's CURRENT value \
                         names when rotation is configured: {error}"
                    ))
                })?;
            // Configured again the same way (a new schedule, say), the pin
            // stays: configuring is no way to take up whatever user a
            // writer of the value has named since.
            let pinned = existing
                .as_ref()
                .filter(|existing| existing.rotator == rotator)
                .and_then(|existing| {
                    serde_json::from_str::<RotatorSettings>(&existing.settings).ok()
                })
                .filter(|before| {
                    before.strategy == settings.strategy
                        && before.admin_secret == settings.admin_secret
                        && !before.user.is_empty()
                })
                .map(|before| before.user);
            if let Some(pinned) = &pinned
                && *pinned != named
            {
                return Err(Error::FailedPrecondition(format!(
                    "rotation of {name} switches database user {pinned}, but its CURRENT value \
                     names {named}: configuring again keeps the user; to switch to {named}, \
                     configure the single strategy first, then alternating users again"
                )));
            }
            settings.user = named;
        }
        crate::password::generate(&settings.password_policy)
            .map_err(|error| Error::InvalidArgument(format!("password policy: {error}")))?;
        let parsed = if request.schedule.is_empty() {
            None
        } else {
            Some(schedule::parse(&request.schedule).map_err(Error::InvalidArgument)?)
        };
        // A schedule that never comes due would look configured and never
        // rotate (a date that does not exist, a year long past).
        if let Some(schedule) = &parsed
            && schedule.next(None, now).is_none()
        {
            return Err(Error::InvalidArgument(format!(
                "schedule {:?} never comes due: no time in the next 10 years matches it",
                request.schedule
            )));
        }
        if !request.window.is_empty() {
            if parsed.is_none() {
                return Err(Error::InvalidArgument(
                    "a window needs a schedule".to_owned(),
                ));
            }
            schedule::parse_duration(&request.window).map_err(Error::InvalidArgument)?;
        }
        let steps: Vec<Step> = request
            .approval_steps
            .iter()
            .map(|step| {
                Step::from_proto(*step)
                    .ok_or_else(|| Error::InvalidArgument(format!("unknown step {step}")))
            })
            .collect::<Result<_>>()?;
        let (required, role) = if steps.is_empty() {
            if request.approvals_required > 0 {
                return Err(Error::InvalidArgument(
                    "approvals are required of no step: name the steps with --approve".to_owned(),
                ));
            }
            (0, String::new())
        } else {
            if request.approvals_required == 0 {
                return Err(Error::InvalidArgument(
                    "a gated step needs at least 1 approval; 0 is not allowed".to_owned(),
                ));
            }
            let role = if request.approver_role.is_empty() {
                "approver".to_owned()
            } else {
                request.approver_role.clone()
            };
            if !self.state.authorizer.policy().roles.contains_key(&role) {
                return Err(Error::InvalidArgument(format!(
                    "approver role {role:?} is not defined by the policy"
                )));
            }
            (request.approvals_required, role)
        };
        let expiry = if request.approval_expiry.is_empty() {
            DEFAULT_APPROVAL_EXPIRY.to_owned()
        } else {
            schedule::parse_duration(&request.approval_expiry).map_err(Error::InvalidArgument)?;
            request.approval_expiry.clone()
        };
        if !settings.admin_secret.is_empty() {
            let admin = SecretName::parse(&settings.admin_secret)?;
            // Whoever configures an admin secret must be allowed to read it:
            // its value, and its master key.
            self.authorize(context, Action::GetSecretValue, &admin)?;
            let admin_secret = self.secret(&admin).await?;
            context.authorize(
                &self.state.authorizer,
                Action::KeysUse,
                &format!("key:{}", admin_secret.key_name),
            )?;
        }
        let last_rotated_at = existing.as_ref().and_then(|config| config.last_rotated_at);
        let config = ConfigRecord {
            secret_id: secret.id.clone(),
            rotator,
            schedule: request.schedule,
            window: request.window,
            approval_steps: steps,
            approvals_required: required,
            approver_role: role,
            approval_expiry: expiry,
            settings: serde_json::to_string(&settings).unwrap_or_else(|_| "{}".to_owned()),
            enabled: true,
            configured_by: context.principal.to_string(),
            configured_at: now,
            next_rotation_at: parsed.and_then(|schedule| schedule.next(last_rotated_at, now)),
            last_rotated_at,
        };
        // A run reads its rotator and gates from the configuration as it
        // goes: changing them under a run waiting for approval would let
        // whoever may configure (not approve) wave it through.
        let frozen = existing
            .as_ref()
            .is_some_and(|existing| changes_how_runs_go(existing, &config));
        if frozen && store.active_run(&secret.id).await?.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "a rotation of {name} is under way; its rotator and approval gates cannot change \
                 until it ends (wait, or rekey rotation cancel {name}); the schedule can"
            )));
        }
        store
            .save_rotation_config(&config, existing.as_ref(), frozen, &context.change_event())
            .await?;
        context.recorded();
        Ok(config_message(name.as_str(), &config))
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
        self.run_message(&secret, &run).await
    }

    async fn step(
        &self,
        context: &RequestContext,
        request: proto::StepRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::StepRotation, &name)?;
        let secret = self.secret(&name).await?;
        let principal = context.principal.to_string();
        self.engine
            .act(&secret, &context.change_event(), |run, plan| match plan {
                Plan::Wait(Wait::Operator(step)) => {
                    let mut next = run.clone();
                    next.operator_go = true;
                    next.updated_at = now_millis();
                    let entry = history(*step, "operator_step", run.attempt, &principal, "");
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
            })
            .await?;
        context.recorded();
        self.latest_run(&secret).await
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
        self.latest_run(&secret).await
    }

    async fn retry(
        &self,
        context: &RequestContext,
        request: proto::RetryRotationRequest,
    ) -> Result<proto::RotationRun> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::RetryRotation, &name)?;
        let secret = self.secret(&name).await?;
        let principal = context.principal.to_string();
        self.engine
            .act(&secret, &context.change_event(), |run, plan| match plan {
                Plan::Wait(Wait::StepFailed(_)) | Plan::Wait(Wait::RetryAt(_)) => {
                    let step = step_of(plan, run);
                    let mut next = run.clone();
                    next.phase = Phase::Running;
                    next.next_attempt_at = None;
                    next.operator_go = true;
                    next.updated_at = now_millis();
                    let entry = history(step, "retried", run.attempt, &principal, "");
                    Ok((next, vec![entry], "step_changed"))
                }
                _ => Err(Error::FailedPrecondition(format!(
                    "no step of the run of {name} failed; there is nothing to retry"
                ))),
            })
            .await?;
        context.recorded();
        self.latest_run(&secret).await
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
        self.latest_run(&secret).await
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
        Ok(proto::ListRotationRunsResponse { runs })
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
            if run.initiator == principal
                || !context.allows(
                    &self.state.authorizer,
                    Action::ApproveRotation,
                    secret.name.as_str(),
                )
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

/// Whether `new` changes what a run under way reads of its configuration:
/// the rotator with its settings, and the approval gates.
fn changes_how_runs_go(old: &ConfigRecord, new: &ConfigRecord) -> bool {
    old.rotator != new.rotator
        || old.settings != new.settings
        || old.approval_steps != new.approval_steps
        || old.approvals_required != new.approvals_required
        || old.approver_role != new.approver_role
        || old.approval_expiry != new.approval_expiry
}
