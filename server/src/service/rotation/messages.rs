//! Rotation messages: configurations and password policies between the
//! API and the store, and a run's state in words.

use crate::password::PasswordPolicy;
use crate::rotation::planner::{Plan, Wait};
use crate::rotation::rotators::RotatorSettings;
use crate::rotation::{ConfigRecord, Outcome, Phase, Revert, RunRecord};
use rekey_shared::proto;
use rekey_shared::time::timestamp_from_millis;

pub fn policy_from(proto: Option<proto::PasswordPolicy>) -> PasswordPolicy {
    let defaults = PasswordPolicy::default();
    match proto {
        None => defaults,
        Some(policy) => PasswordPolicy {
            length: policy.length.unwrap_or(defaults.length),
            exclude_characters: policy.exclude_characters,
            exclude_numbers: policy.exclude_numbers,
            exclude_punctuation: policy.exclude_punctuation,
            exclude_uppercase: policy.exclude_uppercase,
            exclude_lowercase: policy.exclude_lowercase,
            include_space: policy.include_space,
            require_each_included_type: policy
                .require_each_included_type
                .unwrap_or(defaults.require_each_included_type),
        },
    }
}

pub fn policy_to(policy: &PasswordPolicy) -> proto::PasswordPolicy {
    proto::PasswordPolicy {
        length: Some(policy.length),
        exclude_characters: policy.exclude_characters.clone(),
        exclude_numbers: policy.exclude_numbers,
        exclude_punctuation: policy.exclude_punctuation,
        exclude_uppercase: policy.exclude_uppercase,
        exclude_lowercase: policy.exclude_lowercase,
        include_space: policy.include_space,
        require_each_included_type: Some(policy.require_each_included_type),
    }
}

pub fn config_message(name: &str, config: &ConfigRecord) -> proto::RotationConfig {
    let settings: RotatorSettings = serde_json::from_str(&config.settings).unwrap_or_default();
    proto::RotationConfig {
        name: name.to_owned(),
        rotator: config.rotator.clone(),
        schedule: config.schedule.clone(),
        window: config.window.clone(),
        approval_steps: config.approval_steps.iter().map(|s| s.to_proto()).collect(),
        approvals_required: config.approvals_required,
        approver_role: config.approver_role.clone(),
        approval_expiry: config.approval_expiry.clone(),
        password_policy: Some(policy_to(&settings.password_policy)),
        json_field: settings.json_field,
        admin_secret: settings.admin_secret,
        strategy: settings.strategy,
        enabled: config.enabled,
        configured_by: config.configured_by.clone(),
        configured_at: Some(timestamp_from_millis(config.configured_at)),
        next_rotation_at: config.next_rotation_at.map(timestamp_from_millis),
        last_rotated_at: config.last_rotated_at.map(timestamp_from_millis),
    }
}

/// The run's state as people read it.
pub fn state_name(run: &RunRecord, plan: &Plan) -> String {
    match run.phase {
        Phase::Ended => run.outcome.map_or("ended", Outcome::as_str).to_owned(),
        Phase::Ending if run.revert == Revert::Needed => "reverting".to_owned(),
        Phase::Ending => "ending".to_owned(),
        Phase::StepFailed => "step_failed".to_owned(),
        Phase::Running => match plan {
            Plan::Wait(Wait::Operator(_)) => "waiting_for_operator",
            Plan::Wait(Wait::Approval { .. }) | Plan::RequestApproval(_) => "awaiting_approval",
            Plan::Wait(Wait::RetryAt(_)) => "retry_wait",
            _ => "running",
        }
        .to_owned(),
    }
}
