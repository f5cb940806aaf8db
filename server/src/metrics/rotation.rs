//! The rotation gauges, read from the store at each scrape so that every
//! replica reports the same numbers: runs by state (an active run's phase,
//! an ended run's outcome) and the runs waiting for a human approval, as
//! the planner sees them. When the store cannot answer, the gauges are left
//! out of that scrape (and the error logged) rather than reported as zero.

use super::exposition::Exposition;
use crate::error::Result;
use crate::rotation::engine::Engine;
use crate::rotation::planner::{Plan, Wait};
use crate::rotation::{Outcome, Phase};
use crate::service::AppState;

/// Every state, so a state with no runs shows 0 rather than nothing.
const STATES: [&str; 9] = [
    "running",
    "step_failed",
    "ending",
    "succeeded",
    "cancelled",
    "rejected",
    "abandoned",
    "failed",
    "needs_attention",
];

pub(super) async fn write(state: &AppState, engine: &Engine, page: &mut Exposition) {
    match runs_by_state(state).await {
        Ok(counts) => {
            page.family(
                "rekey_rotation_runs",
                "gauge",
                "Rotation runs by state: an active run's phase, an ended run's outcome.",
            );
            for (name, count) in STATES.iter().zip(counts) {
                page.sample("rekey_rotation_runs", &[("state", name)], count);
            }
        }
        Err(error) => tracing::error!(%error, "metrics: counting rotation runs failed"),
    }
    match approvals_waiting(state, engine).await {
        Ok(waiting) => {
            page.family(
                "rekey_approvals_waiting",
                "gauge",
                "Rotation runs waiting for a human approval.",
            );
            page.sample("rekey_approvals_waiting", &[], waiting);
        }
        Err(error) => tracing::error!(%error, "metrics: counting waiting approvals failed"),
    }
}

async fn runs_by_state(state: &AppState) -> Result<[i64; STATES.len()]> {
    let mut counts = [0; STATES.len()];
    for (phase, outcome, count) in state.store.rotation_run_counts().await? {
        let name = match (
            Phase::parse(&phase),
            outcome.as_deref().and_then(Outcome::parse),
        ) {
            (Some(Phase::Ended), Some(outcome)) => outcome.as_str(),
            (Some(Phase::Ended), None) | (None, _) => continue,
            (Some(phase), _) => phase.as_str(),
        };
        if let Some(index) = STATES.iter().position(|known| *known == name) {
            counts[index] += count;
        }
    }
    Ok(counts)
}

/// Only a running run whose approval was asked for can be waiting for
/// one; the planner says whether it still is (approvals may have come, or
/// it may now wait for its operator).
async fn approvals_waiting(state: &AppState, engine: &Engine) -> Result<u64> {
    let mut waiting = 0;
    for run in state.store.all_runs(true, 10_000).await? {
        if run.phase != Phase::Running || run.approval_requested_at.is_none() {
            continue;
        }
        let Some(secret) = state.store.secret_by_id(&run.secret_id).await? else {
            continue;
        };
        if let (Plan::Wait(Wait::Approval { .. }), _, _) = engine.plan_of(&secret, &run).await? {
            waiting += 1;
        }
    }
    Ok(waiting)
}
