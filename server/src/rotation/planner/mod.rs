//! What a run does next: a pure function of the persisted run, its approval
//! gates, the approvals it holds, where CURRENT is, and the clock. No I/O.
//! The engine performs the answer and persists the result; then asks again.

use super::{Gates, Outcome, Phase, Revert, RunRecord, Step};

/// What the engine should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run this step.
    Execute(Step),
    /// Record that this gated step now waits for approval (once).
    RequestApproval(Step),
    /// Start ending without success; the engine persists the phase change.
    BeginEnding {
        outcome: Outcome,
        reason: String,
    },
    /// Put CURRENT back into the target system and test it.
    Revert,
    /// Remove PENDING and mark the run ended with this outcome.
    End(Outcome),
    Wait(Wait),
}

impl Plan {
    /// The step that waits for an approval now, if any.
    pub fn awaited_approval(&self) -> Option<Step> {
        match self {
            Plan::Wait(Wait::Approval { step, .. }) | Plan::RequestApproval(step) => Some(*step),
            _ => None,
        }
    }
}

/// Why nothing happens now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Manual mode: `rotation step` runs it.
    Operator(Step),
    Approval {
        step: Step,
        have: u32,
        need: u32,
    },
    /// An automatic retry, after a backoff.
    RetryAt(i64),
    /// A step failed; an operator retries or cancels.
    StepFailed(Step),
    /// The run has ended.
    Ended,
}

/// What the planner decides from besides the run itself.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub gates: &'a Gates,
    /// Principals who approved the current step and still may (the engine
    /// re-checks their permission before asking).
    pub approvals: &'a [String],
    /// The version CURRENT is on now.
    pub current_version: Option<&'a str>,
    pub now: i64,
}

/// Approvals that count for `run`: one per principal, never the
/// initiator's.
pub fn counted_approvals(run: &RunRecord, approvals: &[String]) -> u32 {
    let mut counted: Vec<&String> = approvals
        .iter()
        .filter(|principal| **principal != run.initiator)
        .collect();
    counted.sort();
    counted.dedup();
    counted.len() as u32
}

pub fn plan(run: &RunRecord, inputs: &Inputs<'_>) -> Plan {
    match run.phase {
        Phase::Ended => return Plan::Wait(Wait::Ended),
        Phase::Ending => {
            let outcome = run.outcome.unwrap_or(Outcome::Failed);
            return match run.revert {
                // After a revert the server's own failure interrupted.
                Revert::Needed if run.next_attempt_at.is_some_and(|at| at > inputs.now) => {
                    Plan::Wait(Wait::RetryAt(run.next_attempt_at.unwrap_or_default()))
                }
                Revert::Needed => Plan::Revert,
                Revert::Failed => Plan::End(Outcome::NeedsAttention),
                Revert::NotNeeded | Revert::Done => Plan::End(outcome),
            };
        }
        Phase::Running | Phase::StepFailed => {}
    }
    if inputs.current_version != Some(run.current_at_start.as_str()) {
        return Plan::BeginEnding {
            outcome: Outcome::Abandoned,
            reason: format!(
                "CURRENT moved to version {} during the run",
                inputs.current_version.unwrap_or("none")
            ),
        };
    }
    if run.phase == Phase::StepFailed {
        return Plan::Wait(Wait::StepFailed(run.step));
    }
    let step = run.step;
    if inputs.gates.gates(step) {
        let have = counted_approvals(run, inputs.approvals);
        let need = inputs.gates.required.max(1);
        if have < need {
            return match run.approval_requested_at {
                None => Plan::RequestApproval(step),
                Some(requested)
                    if inputs.now > requested.saturating_add(inputs.gates.expiry_millis) =>
                {
                    Plan::BeginEnding {
                        outcome: Outcome::Failed,
                        reason: format!(
                            "the approval request for {step} expired with {have} of {need} approvals"
                        ),
                    }
                }
                Some(_) => Plan::Wait(Wait::Approval { step, have, need }),
            };
        }
    }
    if run.manual && !run.operator_go {
        return Plan::Wait(Wait::Operator(step));
    }
    if let Some(at) = run.next_attempt_at
        && at > inputs.now
    {
        return Plan::Wait(Wait::RetryAt(at));
    }
    Plan::Execute(step)
}

/// What follows a failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Automatic mode: try again at this time.
    RetryAt(i64),
    /// Wait for an operator (manual mode).
    Pause,
    /// Automatic retries are spent: end the run as failed.
    GiveUp,
}

/// `attempt` counts the failed attempts so far, this one included.
pub fn after_failure(
    run: &RunRecord,
    attempt: u32,
    now: i64,
    max_attempts: u32,
    backoff_base_millis: i64,
) -> AfterFailure {
    if run.manual {
        return AfterFailure::Pause;
    }
    if attempt >= max_attempts {
        return AfterFailure::GiveUp;
    }
    let factor = 1i64 << attempt.saturating_sub(1).min(20);
    AfterFailure::RetryAt(now + backoff_base_millis.saturating_mul(factor))
}

/// The revert decision when a run starts ending.
pub fn revert_for(run: &RunRecord) -> Revert {
    if run.set_applied {
        Revert::Needed
    } else {
        Revert::NotNeeded
    }
}

#[cfg(test)]
pub(crate) mod tests;
