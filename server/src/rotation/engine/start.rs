//! Starting runs: the scheduler's start of due runs (a claim on the
//! schedule makes exactly one replica start each, and a schedule moved on
//! without a run commits with its event), a start someone asked for, and
//! the refusals of a paused server.

use super::{Engine, history};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::rotation::schedule;
use crate::rotation::{Phase, Revert, RunRecord, ScheduleClaim, Step};
use crate::store::SecretRecord;
use rekey_shared::time::now_millis;
use rekey_shared::{Stage, VersionId};
use std::sync::Arc;

impl Engine {
    /// Starts the runs whose schedule is due, as the principal who last
    /// configured rotation (the initiator of a scheduled run).
    pub(super) async fn start_due(self: &Arc<Self>) -> Result<()> {
        let now = now_millis();
        let store = &self.state.store;
        for config in store.due_rotations(now).await? {
            let Some(secret) = store.secret_by_id(&config.secret_id).await? else {
                continue;
            };
            let parsed = schedule::parse(&config.schedule).ok();
            let due_at = config.next_rotation_at.unwrap_or(now);
            let window = schedule::parse_duration(&config.window).ok();
            let next = parsed
                .as_ref()
                .and_then(|schedule| schedule.next(Some(now), now));
            let event = |detail: &str| {
                AuditEvent::system("rotation:Schedule", secret.name.as_str(), detail)
            };
            if let Some(window) = window
                && now > due_at.saturating_add(window)
            {
                // The window passed (the server was down): wait for the
                // next. Exactly one process moves the schedule on, with
                // its event.
                let skipped = event("the rotation window passed; skipped to the next time");
                store.claim_due(&secret.id, due_at, next, &skipped).await?;
                continue;
            }
            // The run and the schedule's move from this due time commit
            // together: one process starts it, and a process that dies
            // first leaves it due.
            let claim = ScheduleClaim { due_at, next };
            match self
                .create_run(&secret, &config.configured_by, false, Some(claim), None)
                .await
            {
                Ok(Some(run)) => {
                    tracing::info!(secret = %secret.name, run = %run.id, "scheduled rotation started");
                    let started = event(&format!("scheduled run {} started", run.id));
                    store.record(&started).await?;
                }
                // Another replica started it.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, secret = %secret.name, "a scheduled rotation did not start");
                    // Nothing was written. A failure of the server's own
                    // (its database away for a moment) does not cost a
                    // whole period: the run is due again in a minute (not
                    // at once: a failure that lasts would be an event a
                    // second). What the run itself refuses, it skips to
                    // the next time. The move commits with its event.
                    let (then, said) = if error.is_servers_own() {
                        (Some(now + 60_000), "; tried again in a minute")
                    } else {
                        (next, "")
                    };
                    let not_started = event(&format!("not started: {}{said}", error.told()));
                    store
                        .claim_due(&secret.id, due_at, then, &not_started)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Creates a run that someone started (not yet driven). Its token is
    /// reserved here and becomes the new version's id.
    pub async fn start_run(
        self: &Arc<Self>,
        secret: &SecretRecord,
        initiator: &str,
        manual: bool,
        event: Option<AuditEvent>,
    ) -> Result<RunRecord> {
        self.not_paused()?;
        self.create_run(secret, initiator, manual, None, event)
            .await?
            .ok_or_else(|| Error::internal("rotation", "a run without a claim was not stored"))
    }

    /// Refuses, while rotation is paused, a request that would move a run
    /// now (a start, a step, a retry). An approval or a cancel is recorded
    /// and takes effect once rotation resumes: a cancel must be possible
    /// before a run restored in the middle is driven again.
    pub fn not_paused(&self) -> Result<()> {
        if self.state.rotation.paused {
            return Err(Error::FailedPrecondition(
                "rotation is paused on this server (rotation.paused in rekeyd.toml, as a restore \
                 leaves it): check that the target systems hold the CURRENT values, then set it \
                 to false and restart the server"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Creates a run; a scheduled one with its schedule's `claim`, which
    /// another process may have taken (`None`: nothing was written).
    async fn create_run(
        self: &Arc<Self>,
        secret: &SecretRecord,
        initiator: &str,
        manual: bool,
        claim: Option<ScheduleClaim>,
        event: Option<AuditEvent>,
    ) -> Result<Option<RunRecord>> {
        let scheduled = claim.is_some();
        let store = &self.state.store;
        if store.rotation_config(&secret.id).await?.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "secret {} has no rotation configuration; run `rekey rotation configure {}` first",
                secret.name, secret.name
            )));
        }
        let current = store
            .version_at_stage(&secret.id, &Stage::current())
            .await?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "secret {} has no value to rotate from",
                    secret.name
                ))
            })?;
        let now = now_millis();
        let run = RunRecord {
            revision: 0,
            id: VersionId::random().into_string(),
            secret_id: secret.id.clone(),
            manual,
            scheduled,
            initiator: initiator.to_owned(),
            phase: Phase::Running,
            step: Step::Create,
            set_applied: false,
            operator_go: false,
            attempt: 0,
            next_attempt_at: None,
            approval_requested_at: None,
            current_at_start: current.version_id.to_string(),
            outcome: None,
            revert: Revert::NotNeeded,
            end_reason: String::new(),
            last_error: String::new(),
            created_at: now,
            updated_at: now,
            ended_at: None,
        };
        let how = match (scheduled, manual) {
            (true, _) => "scheduled",
            (false, true) => "manual",
            (false, false) => "automatic",
        };
        // A scheduled run is started by the server, for the principal who
        // configured the schedule (its initiator): not by that principal.
        let event = event.unwrap_or_else(|| {
            if scheduled {
                AuditEvent::system(
                    "rotation:StartRotation",
                    secret.name.as_str(),
                    &format!(
                        "scheduled run {} started; its initiator is {initiator}, who configured \
                         the schedule",
                        run.id
                    ),
                )
            } else {
                AuditEvent {
                    principal: initiator.to_owned(),
                    ..AuditEvent::system(
                        "rotation:StartRotation",
                        secret.name.as_str(),
                        &format!("{how} run {} started", run.id),
                    )
                }
            }
        });
        let stored = store
            .insert_run(
                &run,
                &[history(Step::Create, "started", 0, initiator, how)],
                claim,
                &event,
            )
            .await?;
        if !stored {
            return Ok(None);
        }
        self.publish("run_started", secret, &run, None, how, initiator);
        Ok(Some(run))
    }
}
