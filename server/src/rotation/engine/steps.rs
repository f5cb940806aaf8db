//! The effects of a run's steps: building the rotator (with the admin
//! secret of alternating database users), running a step and persisting its
//! success or failure, and the revert of a target system.

use super::{Engine, history};
use crate::audit::AuditEvent;
use crate::crypto;
use crate::error::{Error, Result};
use crate::events::Details;
use crate::rotation::planner::{self, AfterFailure};
use crate::rotation::rotators::{Held, Rotator, RotatorSettings, StepInput};
use crate::rotation::{Outcome, Phase, Revert, RunRecord, Step};
use crate::store::{NewVersion, PutOutcome, SecretRecord};
use rekey_shared::time::now_millis;
use rekey_shared::value::MAX_VALUE_BYTES;
use rekey_shared::{SecretValue, Stage, VersionId};

impl Engine {
    async fn rotator(&self, rotator: &str, settings: &str) -> Result<Rotator> {
        let settings: RotatorSettings = serde_json::from_str(settings).unwrap_or_default();
        let rotator = Rotator::from_config(rotator, &settings, &self.state.rotation)
            .map_err(|error| Error::FailedPrecondition(error.0))?;
        let Some(admin) = rotator.admin_secret(&settings) else {
            return Ok(rotator);
        };
        let name = rekey_shared::SecretName::parse(admin)?;
        let secret = self.state.store.secret(&name).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!("the admin secret {name} does not exist"))
        })?;
        let value = self.current_value(&secret).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!("the admin secret {name} has no value"))
        })?;
        Ok(rotator.with_admin(value))
    }

    /// Runs one step, then persists its success or failure.
    pub(super) async fn execute(
        &self,
        secret: &SecretRecord,
        config: &crate::rotation::ConfigRecord,
        run: &RunRecord,
        step: Step,
    ) -> Result<()> {
        let store = &self.state.store;
        let attempt = run.attempt + 1;
        let mut started = run.clone();
        started.updated_at = now_millis();
        // setSecret may change the target: say so before it can.
        if step == Step::Set {
            started.set_applied = true;
        }
        store
            .update_run(
                &mut started,
                &[history(step, "step_started", attempt, "system", "")],
                None,
            )
            .await?;
        self.publish(
            "step_changed",
            secret,
            &started,
            Some(step),
            "running",
            "system",
        );

        let result = self.effect(secret, config, &started, step).await;
        let interruptible = match &result {
            Err(error) => {
                self.is_interruption(run, step, STEP_INTERRUPTED, attempt, error)
                    .await
            }
            Ok(_) => false,
        };
        let now = now_millis();
        match result {
            Ok(StepDone::Finished) => Ok(()),
            Ok(StepDone::Advanced(log, held)) => {
                let mut next = started.clone();
                next.step = step.next().unwrap_or(Step::Finish);
                next.attempt = 0;
                next.operator_go = false;
                next.next_attempt_at = None;
                next.approval_requested_at = None;
                next.last_error = String::new();
                next.updated_at = now;
                let event = AuditEvent::system(
                    "rotation:StepRotation",
                    secret.name.as_str(),
                    &format!("run {}: {step} done", run.id),
                );
                let mut entries = vec![history(step, "step_done", attempt, "system", &log)];
                // What a revert puts back (see `revert`).
                if let Some(held) = held {
                    entries.push(history(step, TARGET_HELD, attempt, "system", &held));
                }
                store.update_run(&mut next, &entries, Some(&event)).await?;
                self.publish("step_changed", secret, &next, Some(step), "done", "system");
                Ok(())
            }
            Ok(StepDone::Abandoned) => Ok(()),
            // The server's own failure (its database away, say) is not the
            // step's: the step runs again after the base backoff, its
            // attempts as they were, in either mode. (Counted, a database
            // outage would spend a run's attempts and revert a value that
            // had passed its test.) One that lasts (a failure that is not
            // going away) counts after MAX_INTERRUPTIONS tries.
            Err(error) if interruptible => {
                self.interrupted(secret, &started, step, STEP_INTERRUPTED, attempt, &error)
                    .await
            }
            Err(error) => {
                let message = failure_text(&error);
                let mut next = started.clone();
                next.attempt = attempt;
                next.last_error = message.clone();
                next.updated_at = now;
                let retry_base = self.retry_base_millis();
                let mut entries = vec![history(step, "step_failed", attempt, "system", &message)];
                match planner::after_failure(
                    &next,
                    attempt,
                    now,
                    self.state.rotation.max_attempts.max(1),
                    retry_base,
                ) {
                    AfterFailure::RetryAt(at) => next.next_attempt_at = Some(at),
                    AfterFailure::Pause => {
                        next.phase = Phase::StepFailed;
                        next.operator_go = false;
                    }
                    AfterFailure::GiveUp => {
                        let reason =
                            format!("{step} failed {attempt} times; the last error: {message}");
                        self.begin_ending(&mut next, Outcome::Failed, &reason);
                        entries.push(history(step, "failed", attempt, "system", &reason));
                    }
                }
                // Not the error: a custom rotator's is what its program
                // printed, redacted only of the values as given, and the
                // audit log is kept (and shipped) for good. The run's
                // history has it, for whoever may describe the rotation.
                let event = AuditEvent {
                    outcome: "FAILED".to_owned(),
                    ..AuditEvent::system(
                        "rotation:StepRotation",
                        secret.name.as_str(),
                        &format!(
                            "run {}: {step} attempt {attempt} failed (the run's history has the \
                             error)",
                            run.id
                        ),
                    )
                };
                store.update_run(&mut next, &entries, Some(&event)).await?;
                self.publish("failed", secret, &next, Some(step), &message, "system");
                if next.phase == Phase::StepFailed {
                    self.notify_failed(secret, &next, Phase::StepFailed.as_str());
                }
                Ok(())
            }
        }
    }

    /// The effect of a step. Idempotent for the run's token.
    async fn effect(
        &self,
        secret: &SecretRecord,
        config: &crate::rotation::ConfigRecord,
        run: &RunRecord,
        step: Step,
    ) -> std::result::Result<StepDone, Error> {
        let store = &self.state.store;
        let current = self.open(secret, &run.current_at_start).await?;
        match step {
            Step::Create => {
                if store
                    .version(&secret.id, &VersionId::parse(&run.id).map_err(Error::from)?)
                    .await?
                    .is_some()
                {
                    // Made before a crash or a retry: find it, make no other.
                    return Ok(StepDone::Advanced(
                        "the pending version exists".to_owned(),
                        None,
                    ));
                }
                let rotator = self.rotator(&config.rotator, &config.settings).await?;
                let output = rotator
                    .run(&StepInput {
                        step,
                        revert: false,
                        secret_name: secret.name.as_str(),
                        secret_id: &secret.id,
                        token: &run.id,
                        current: current.as_ref(),
                        pending: None,
                        previous: None,
                        replacing: None,
                    })
                    .await
                    .map_err(|error| Error::FailedPrecondition(error.0))?;
                let value = output.new_value.ok_or_else(|| {
                    Error::FailedPrecondition("the rotator made no new value".to_owned())
                })?;
                // As a put is: a JSON value with a longer password may
                // pass the bound its CURRENT kept.
                if value.len() > MAX_VALUE_BYTES {
                    return Err(Error::FailedPrecondition(format!(
                        "the new value would be {} bytes; a value is at most {MAX_VALUE_BYTES}",
                        value.len()
                    )));
                }
                let version_id = VersionId::parse(&run.id).map_err(Error::from)?;
                let master = self
                    .state
                    .keyring
                    .for_encryption(store, &secret.key_name)
                    .await?;
                let version = NewVersion {
                    version_id: version_id.clone(),
                    created_at: now_millis(),
                    created_by: format!("rotation:{}", run.initiator),
                    sealed: crypto::seal_value(&master, &secret.id, &version_id, &value),
                };
                let pending = Stage::parse(Stage::PENDING).map_err(Error::from)?;
                let event = AuditEvent::system(
                    "secrets:PutSecretValue",
                    secret.name.as_str(),
                    &format!("run {}: pending version", run.id),
                );
                match store
                    .put_version(&secret.id, &version, &[pending], &event)
                    .await?
                {
                    PutOutcome::Added(_) | PutOutcome::VersionExists => {}
                }
                self.state.events.publish(
                    "version_added",
                    secret.name.as_str(),
                    Details {
                        version_id: run.id.clone(),
                        run_id: run.id.clone(),
                        step: step.to_proto(),
                        detail: "PENDING".to_owned(),
                        principal: "system".to_owned(),
                    },
                );
                Ok(StepDone::Advanced(output.log, None))
            }
            Step::Set | Step::Test => {
                let pending = self.open(secret, &run.id).await?.ok_or_else(|| {
                    Error::FailedPrecondition("the pending version is missing".to_owned())
                })?;
                let rotator = self.rotator(&config.rotator, &config.settings).await?;
                let previous_version = store
                    .version_at_stage(&secret.id, &Stage::previous())
                    .await?;
                let previous = match &previous_version {
                    Some(version) => self.open(secret, version.version_id.as_str()).await?,
                    None => None,
                };
                let output = rotator
                    .run(&StepInput {
                        step,
                        revert: false,
                        secret_name: secret.name.as_str(),
                        secret_id: &secret.id,
                        token: &run.id,
                        current: current.as_ref(),
                        pending: Some(&pending),
                        previous: previous.as_ref(),
                        replacing: None,
                    })
                    .await
                    .map_err(|error| Error::FailedPrecondition(error.0))?;
                let held = output.held.and_then(|held| match held {
                    Held::Current => Some(run.current_at_start.clone()),
                    Held::Previous => previous_version
                        .as_ref()
                        .map(|version| version.version_id.to_string()),
                    Held::Pending => Some(run.id.clone()),
                });
                Ok(StepDone::Advanced(output.log, held))
            }
            Step::Finish => {
                let now = now_millis();
                let mut ended = run.clone();
                ended.phase = Phase::Ended;
                ended.outcome = Some(Outcome::Succeeded);
                ended.ended_at = Some(now);
                ended.updated_at = now;
                ended.operator_go = false;
                let event = AuditEvent::system(
                    "rotation:StepRotation",
                    secret.name.as_str(),
                    &format!("run {}: finishSecret moved CURRENT to {}", run.id, run.id),
                );
                let finished = store
                    .finish_run(
                        &mut ended,
                        &[
                            history(step, "step_done", run.attempt + 1, "system", ""),
                            history(step, "finished", run.attempt + 1, "system", "CURRENT moved"),
                        ],
                        &event,
                    )
                    .await?;
                if !finished {
                    // CURRENT moved meanwhile: the planner abandons the run.
                    return Ok(StepDone::Abandoned);
                }
                self.publish(
                    "stages_moved",
                    secret,
                    &ended,
                    Some(step),
                    "CURRENT",
                    "system",
                );
                self.publish(
                    "finished",
                    secret,
                    &ended,
                    Some(step),
                    "succeeded",
                    "system",
                );
                Ok(StepDone::Finished)
            }
        }
    }

    /// Puts CURRENT back into the target system and tests it. A CURRENT
    /// written during the run (the put that abandoned it) is not
    /// installed: whoever may write a value need not be allowed to read
    /// it, and installing theirs would let them choose the target's
    /// password (logging in with the run's new one to set it). The target
    /// keeps it only if it takes it already; otherwise it gets back the
    /// value it held before the run, and the run needs attention.
    pub(super) async fn revert(
        &self,
        secret: &SecretRecord,
        rotator: &str,
        settings: &str,
        run: &RunRecord,
    ) -> Result<()> {
        let store = &self.state.store;
        let prepared = async {
            let now = store
                .version_at_stage(&secret.id, &Stage::current())
                .await?;
            let moved = now
                .as_ref()
                .is_some_and(|version| version.version_id.as_str() != run.current_at_start);
            let current = match &now {
                Some(version) => self.open(secret, version.version_id.as_str()).await?,
                None => None,
            };
            let at_start = if moved {
                self.open(secret, &run.current_at_start).await?
            } else {
                None
            };
            let previous = self.value_at(secret, &Stage::previous()).await?;
            let replacing = self.open(secret, &run.id).await?;
            let rotator = self.rotator(rotator, settings).await?;
            // What setSecret found the target taking, when it said (a
            // single database user): the value to put back.
            let held = store
                .history(&run.id)
                .await?
                .into_iter()
                .rev()
                .find(|entry| entry.event == TARGET_HELD)
                .map(|entry| entry.detail);
            let held = match held {
                Some(held) => Some((
                    now.as_ref().map(|version| version.version_id.to_string())
                        == Some(held.clone()),
                    held.clone(),
                    self.open(secret, &held).await?,
                )),
                None => None,
            };
            Ok::<_, Error>((moved, current, at_start, held, previous, replacing, rotator))
        }
        .await;
        let result = match prepared {
            // The server's own failure says nothing about the target: the
            // revert runs again after a backoff, a few times, recorded.
            Err(error)
                if self
                    .is_interruption(run, Step::Set, REVERT_INTERRUPTED, run.attempt, &error)
                    .await =>
            {
                return self
                    .interrupted(
                        secret,
                        run,
                        Step::Set,
                        REVERT_INTERRUPTED,
                        run.attempt,
                        &error,
                    )
                    .await;
            }
            Err(error) => Err(failure_text(&error)),
            Ok((moved, current, at_start, held, previous, replacing, rotator)) => {
                let input = |step, value| {
                    reverting(
                        secret,
                        run,
                        step,
                        value,
                        previous.as_ref(),
                        replacing.as_ref(),
                    )
                };
                let install = |value| {
                    let inputs = [input(Step::Set, value), input(Step::Test, value)];
                    install(&rotator, inputs)
                };
                let takes_current = async || {
                    rotator
                        .run(&input(Step::Test, current.as_ref()))
                        .await
                        .is_ok()
                };
                // A target that takes CURRENT already needs nothing put back.
                if held.is_some() && takes_current().await {
                    Ok(())
                } else if let Some((is_current, version, value)) = held {
                    // Only a value the target took: never one a writer
                    // chose (CURRENT when the run started, or since).
                    match value {
                        // setSecret found the new value taken already (an
                        // attempt before changed it and failed after):
                        // what the target held before is not known.
                        _ if version == run.id => Err(
                            "setSecret found the target taking the new value already (an attempt \
                             before changed it), so what it held before is not known and nothing \
                             was put back: the target holds PENDING's value; make it CURRENT, or \
                             put the value the target should hold"
                                .to_owned(),
                        ),
                        None => Err(format!(
                            "the value the target took before setSecret (version {version}) \
                             is gone, so nothing was put back"
                        )),
                        Some(value) => match install(Some(&value)).await {
                            Err(error) => Err(error),
                            Ok(()) if is_current => Ok(()),
                            Ok(()) => Err(format!(
                                "the target was put back to the value it took before setSecret \
                                 (version {version}), which is not CURRENT (a value written \
                                 since, or one the target did not take): check CURRENT, then put \
                                 the value the target holds, or rotate again"
                            )),
                        },
                    }
                } else if !moved {
                    install(current.as_ref()).await
                } else if takes_current().await {
                    Ok(())
                } else if at_start.is_none() {
                    Err(
                        "CURRENT was changed during the run, and the target does not take it; \
                         the value it held before the run is gone, so nothing was put back: \
                         put the value the target holds, or rotate again"
                            .to_owned(),
                    )
                } else {
                    match install(at_start.as_ref()).await {
                        Ok(()) => Err(format!(
                            "CURRENT was changed during the run, and the target does not take \
                             it: the target was put back to the value it held before the run \
                             (version {}), not to one written since (whose writer may not be \
                             allowed to read it); check CURRENT, then put the value the target \
                             holds or rotate again",
                            run.current_at_start
                        )),
                        Err(error) => Err(error),
                    }
                }
            }
        };
        let mut next = run.clone();
        next.updated_at = now_millis();
        let (entry, kind, detail) = match result {
            Ok(()) => {
                next.revert = Revert::Done;
                (
                    "reverted",
                    "reverted",
                    "the target holds CURRENT".to_owned(),
                )
            }
            Err(message) => {
                next.revert = Revert::Failed;
                next.last_error = message.clone();
                ("revert_failed", "needs_attention", message)
            }
        };
        // As a failed step's event: not what the rotator said.
        let event = AuditEvent::system(
            "rotation:Revert",
            secret.name.as_str(),
            &format!("run {}: {entry}", run.id),
        );
        store
            .update_run(
                &mut next,
                &[history(Step::Set, entry, run.attempt, "system", &detail)],
                Some(&event),
            )
            .await?;
        self.publish(kind, secret, &next, Some(Step::Set), &detail, "system");
        Ok(())
    }
}

/// The history entry in which setSecret says which version's value the
/// target took when it was changed (its detail).
const TARGET_HELD: &str = "target_held";

/// A revert's step `step`, putting `value` into the target.
fn reverting<'a>(
    secret: &'a SecretRecord,
    run: &'a RunRecord,
    step: Step,
    value: Option<&'a SecretValue>,
    previous: Option<&'a SecretValue>,
    replacing: Option<&'a SecretValue>,
) -> StepInput<'a> {
    StepInput {
        step,
        revert: true,
        secret_name: secret.name.as_str(),
        secret_id: &secret.id,
        token: &run.id,
        current: value,
        pending: value,
        previous,
        replacing,
    }
}

/// setSecret then testSecret of a revert, stopping at the first failure.
async fn install(rotator: &Rotator, inputs: [StepInput<'_>; 2]) -> Result<(), String> {
    for input in &inputs {
        rotator.run(input).await.map_err(|error| error.0)?;
    }
    Ok(())
}

/// How many times in a row the server's own failures may interrupt one
/// attempt of a step (or a revert) before it counts as failed: with the
/// base backoff of 30 s, five minutes.
const MAX_INTERRUPTIONS: usize = 10;
/// The history entries of interruptions.
const STEP_INTERRUPTED: &str = "step_interrupted";
const REVERT_INTERRUPTED: &str = "revert_interrupted";

impl Engine {
    /// The base backoff of retries, in milliseconds.
    fn retry_base_millis(&self) -> i64 {
        (self.state.rotation.retry_base_seconds as i64).max(1) * 1000
    }

    /// Whether `error` of `step`'s attempt `attempt` of `run` is an
    /// interruption: the server's own failure, recorded (as `event`) fewer
    /// than [`MAX_INTERRUPTIONS`] times for that attempt so far (none when
    /// the history cannot be read: the database away is one too).
    async fn is_interruption(
        &self,
        run: &RunRecord,
        step: Step,
        event: &str,
        attempt: u32,
        error: &Error,
    ) -> bool {
        if !error.is_servers_own() {
            return false;
        }
        let recorded = match self.state.store.history(&run.id).await {
            Ok(history) => history
                .iter()
                .filter(|entry| {
                    entry.step == step && entry.event == event && entry.attempt == attempt
                })
                .count(),
            Err(_) => 0,
        };
        recorded < MAX_INTERRUPTIONS
    }

    /// Records that the server's own `error` interrupted `step` (or its
    /// revert) of `run`, which runs again after the base backoff; audited,
    /// its text in the history (not as the step's error: nothing failed
    /// that an operator must act on, unless it lasts).
    async fn interrupted(
        &self,
        secret: &SecretRecord,
        run: &RunRecord,
        step: Step,
        event: &str,
        attempt: u32,
        error: &Error,
    ) -> Result<()> {
        tracing::warn!(%error, run = %run.id, %step, "the server's own failure interrupted a rotation step; it runs again");
        let now = now_millis();
        let mut next = run.clone();
        next.next_attempt_at = Some(now + self.retry_base_millis());
        next.updated_at = now;
        let detail = format!("{}; it runs again", failure_text(error));
        let audit = AuditEvent {
            outcome: "INTERRUPTED".to_owned(),
            ..AuditEvent::system(
                "rotation:StepRotation",
                secret.name.as_str(),
                &format!("run {}: {step}: {detail}", run.id),
            )
        };
        self.state
            .store
            .update_run(
                &mut next,
                &[history(step, event, attempt, "system", &detail)],
                Some(&audit),
            )
            .await
    }
}

/// How a step's effect went, when it did not fail.
enum StepDone {
    /// The step is done (its log; for setSecret, the version whose value
    /// the target took when it was changed); the run moves to the next.
    Advanced(String, Option<String>),
    /// finishSecret committed the end of the run.
    Finished,
    /// finishSecret found CURRENT moved.
    Abandoned,
}

/// What a step's failure says in the run's history, its last error and its
/// events (which DescribeRotation and Watch show): what a client would be
/// told of it (`Error::told`: the rotator's own words; for a failure of the
/// server itself a line that points to its log), NUL escaped (PostgreSQL's
/// text cannot hold one: the run's update failed, and the step ran again
/// every second).
fn failure_text(error: &Error) -> String {
    error.told().replace('\0', "\\0")
}
