//! Rotation: a run takes a secret from its CURRENT value to a new one in
//! four steps, each idempotent for the run's token (which becomes the new
//! version's id). What to do next is a pure function of the persisted run
//! and the clock ([`planner`]); the [`engine`] performs it and persists the
//! result before the next step, so a server killed at any point resumes
//! every run where it stopped. [`schedule`] parses `rate(...)` and
//! `cron(...)`; [`rotators`] talk to the systems whose credentials rotate.

pub mod database;
pub mod engine;
pub mod planner;
pub mod rotators;
pub mod schedule;

use std::fmt;

/// The four steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Create,
    Set,
    Test,
    Finish,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Create, Step::Set, Step::Test, Step::Finish];

    /// The name rotators and people know (AWS's).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "createSecret",
            Step::Set => "setSecret",
            Step::Test => "testSecret",
            Step::Finish => "finishSecret",
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| {
            step.as_str().eq_ignore_ascii_case(text)
                || step
                    .as_str()
                    .trim_end_matches("Secret")
                    .eq_ignore_ascii_case(text)
        })
    }

    pub fn next(self) -> Option<Step> {
        match self {
            Step::Create => Some(Step::Set),
            Step::Set => Some(Step::Test),
            Step::Test => Some(Step::Finish),
            Step::Finish => None,
        }
    }

    pub fn to_proto(self) -> i32 {
        use rekey_shared::proto::RotationStep;
        (match self {
            Step::Create => RotationStep::CreateSecret,
            Step::Set => RotationStep::SetSecret,
            Step::Test => RotationStep::TestSecret,
            Step::Finish => RotationStep::FinishSecret,
        }) as i32
    }

    pub fn from_proto(value: i32) -> Option<Step> {
        use rekey_shared::proto::RotationStep;
        match RotationStep::try_from(value).ok()? {
            RotationStep::CreateSecret => Some(Step::Create),
            RotationStep::SetSecret => Some(Step::Set),
            RotationStep::TestSecret => Some(Step::Test),
            RotationStep::FinishSecret => Some(Step::Finish),
            RotationStep::Unspecified => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Working through the steps (or waiting: for an operator, approvals, a
    /// retry time).
    Running,
    /// A step failed and the run waits for an operator: retry or cancel.
    StepFailed,
    /// Ending without success: reverting the target system if `setSecret`
    /// touched it, then removing PENDING.
    Ending,
    Ended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::StepFailed => "step_failed",
            Phase::Ending => "ending",
            Phase::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        [
            Phase::Running,
            Phase::StepFailed,
            Phase::Ending,
            Phase::Ended,
        ]
        .into_iter()
        .find(|phase| phase.as_str() == text)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Cancelled,
    Rejected,
    Abandoned,
    Failed,
    /// The revert of the target system failed: someone must look.
    NeedsAttention,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Cancelled => "cancelled",
            Outcome::Rejected => "rejected",
            Outcome::Abandoned => "abandoned",
            Outcome::Failed => "failed",
            Outcome::NeedsAttention => "needs_attention",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::Succeeded,
            Outcome::Cancelled,
            Outcome::Rejected,
            Outcome::Abandoned,
            Outcome::Failed,
            Outcome::NeedsAttention,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == text)
    }
}

/// Whether the target system must be put back when a run ends without
/// success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revert {
    /// `setSecret` never ran: nothing to put back.
    NotNeeded,
    Needed,
    Done,
    Failed,
}

impl Revert {
    pub fn as_str(self) -> &'static str {
        match self {
            Revert::NotNeeded => "not_needed",
            Revert::Needed => "needed",
            Revert::Done => "done",
            Revert::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Revert> {
        [
            Revert::NotNeeded,
            Revert::Needed,
            Revert::Done,
            Revert::Failed,
        ]
        .into_iter()
        .find(|revert| revert.as_str() == text)
    }
}

/// A scheduled run's claim of its due time: the schedule moves on from
/// `due_at` to `next` in the transaction that starts the run, so that
/// exactly one process starts it, and a process that dies before the run
/// is stored leaves the schedule due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleClaim {
    pub due_at: i64,
    pub next: Option<i64>,
}

/// A run as persisted: everything the planner decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run's token: also the new version's id.
    pub id: String,
    pub secret_id: String,
    pub manual: bool,
    pub scheduled: bool,
    /// Who started it; for a scheduled run, who last configured rotation.
    pub initiator: String,
    pub phase: Phase,
    pub step: Step,
    /// `setSecret` was started: the target may hold the pending value.
    pub set_applied: bool,
    /// Manual mode: an operator asked for the current step.
    pub operator_go: bool,
    /// Attempts of the current step so far.
    pub attempt: u32,
    pub next_attempt_at: Option<i64>,
    pub approval_requested_at: Option<i64>,
    /// The version CURRENT was on when the run started.
    pub current_at_start: String,
    pub outcome: Option<Outcome>,
    pub revert: Revert,
    pub end_reason: String,
    pub last_error: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub ended_at: Option<i64>,
    /// How many times the run's row was written when this was read (or
    /// last written through this record): a write of a run that someone
    /// else wrote meanwhile changes nothing (ABORTED).
    pub revision: i64,
}

/// The approval gates of a rotation configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gates {
    pub steps: Vec<Step>,
    pub required: u32,
    pub role: String,
    pub expiry_millis: i64,
}

impl Gates {
    pub fn gates(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }
}

/// A secret's rotation configuration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRecord {
    pub secret_id: String,
    /// `password`, `postgres`, `mysql` or `exec:NAME`.
    pub rotator: String,
    pub schedule: String,
    pub window: String,
    pub approval_steps: Vec<Step>,
    pub approvals_required: u32,
    pub approver_role: String,
    pub approval_expiry: String,
    /// JSON: password policy, JSON field, database settings.
    pub settings: String,
    pub enabled: bool,
    pub configured_by: String,
    pub configured_at: i64,
    pub next_rotation_at: Option<i64>,
    pub last_rotated_at: Option<i64>,
}

/// The default time an approval request stays open.
pub const DEFAULT_APPROVAL_EXPIRY: &str = "24h";

impl ConfigRecord {
    /// What a secret without a rotation configuration behaves as: no gates,
    /// no rotator (a run of it can only end).
    pub fn none(secret_id: &str) -> Self {
        Self {
            secret_id: secret_id.to_owned(),
            rotator: String::new(),
            schedule: String::new(),
            window: String::new(),
            approval_steps: Vec::new(),
            approvals_required: 0,
            approver_role: String::new(),
            approval_expiry: String::new(),
            settings: "{}".to_owned(),
            enabled: false,
            configured_by: String::new(),
            configured_at: 0,
            next_rotation_at: None,
            last_rotated_at: None,
        }
    }

    pub fn gates(&self) -> Gates {
        Gates {
            steps: self.approval_steps.clone(),
            required: self.approvals_required,
            role: self.approver_role.clone(),
            expiry_millis: schedule::parse_duration(if self.approval_expiry.is_empty() {
                DEFAULT_APPROVAL_EXPIRY
            } else {
                &self.approval_expiry
            })
            .unwrap_or(86_400_000),
        }
    }
}

/// One line of a run's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    pub at: i64,
    pub step: Step,
    pub event: String,
    pub attempt: u32,
    pub principal: String,
    pub detail: String,
}

/// One approval of one step of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub step: Step,
    pub principal: String,
    pub at: i64,
    pub comment: String,
}
