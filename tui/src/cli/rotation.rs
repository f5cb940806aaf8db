//! Rotation commands: configure, rotate, step, approve, reject, retry,
//! cancel, show, history, runs, approvals; and watch.

use super::configure::{self, ConfigureArgs};
use crate::client::Connection;
use crate::output::{self, Format, shown};
use clap::Subcommand;
use rekey_shared::proto::rotation_client::RotationClient;
use rekey_shared::proto::{self, RotationStep};
use rekey_shared::time::format_timestamp;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Set how a secret rotates.
    Configure(Box<ConfigureArgs>),
    /// Run the step a manual run waits at.
    Step {
        name: String,
        /// Only if this run (the id `rotation show` gives) is still the active one.
        #[arg(long = "run", value_name = "RUN_ID", default_value = "")]
        run_id: String,
    },
    /// Run a failed step again now.
    Retry {
        name: String,
        /// Only if this run (the id `rotation show` gives) is still the active one.
        #[arg(long = "run", value_name = "RUN_ID", default_value = "")]
        run_id: String,
    },
    /// Cancel the active run (the target system is reverted if needed).
    Cancel {
        name: String,
        /// Only if this run (the id `rotation show` gives) is still the active one.
        #[arg(long = "run", value_name = "RUN_ID", default_value = "")]
        run_id: String,
    },
    /// The configuration and the newest run, step by step.
    Show { name: String },
    /// The runs of a secret, newest first, with their history.
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Runs of every secret you may see; those needing attention first.
    Runs {
        #[arg(long)]
        active: bool,
    },
}

fn step_name(step: i32) -> &'static str {
    match RotationStep::try_from(step) {
        Ok(RotationStep::CreateSecret) => "createSecret",
        Ok(RotationStep::SetSecret) => "setSecret",
        Ok(RotationStep::TestSecret) => "testSecret",
        Ok(RotationStep::FinishSecret) => "finishSecret",
        _ => "-",
    }
}

fn time(timestamp: &Option<prost_types::Timestamp>) -> String {
    timestamp
        .as_ref()
        .map(format_timestamp)
        .unwrap_or_else(|| "-".to_owned())
}

pub fn run_json(run: &proto::RotationRun) -> Value {
    json!({
        "run_id": run.run_id,
        "name": run.name,
        "version_id": run.version_id,
        "manual": run.manual,
        "scheduled": run.scheduled,
        "initiator": run.initiator,
        "state": run.state,
        "active": run.active,
        "current_step": step_name(run.current_step),
        "end_reason": run.end_reason,
        "started_at": time(&run.started_at),
        "ended_at": run.ended_at.as_ref().map(format_timestamp),
        "steps": run.steps.iter().map(|s| json!({
            "step": step_name(s.step),
            "state": s.state,
            "attempts": s.attempts,
            "error": s.error,
            "approvals": s.approvals,
            "approvals_required": s.approvals_required,
        })).collect::<Vec<_>>(),
        "approvals": run.approvals.iter().map(|a| json!({
            "step": step_name(a.step),
            "principal": a.principal,
            "at": time(&a.at),
            "comment": a.comment,
        })).collect::<Vec<_>>(),
        "history": run.history.iter().map(|h| json!({
            "at": time(&h.at),
            "step": step_name(h.step),
            "event": h.event,
            "attempt": h.attempt,
            "principal": h.principal,
            "detail": h.detail,
        })).collect::<Vec<_>>(),
    })
}

fn config_json(config: &proto::RotationConfig) -> Value {
    json!({
        "name": config.name,
        "rotator": config.rotator,
        "schedule": config.schedule,
        "window": config.window,
        "approval_steps": config.approval_steps.iter().map(|s| step_name(*s)).collect::<Vec<_>>(),
        "approvals_required": config.approvals_required,
        "approver_role": config.approver_role,
        "approval_expiry": config.approval_expiry,
        "password_policy": config.password_policy.as_ref().map(|policy| json!({
            "length": policy.length,
            "exclude_characters": policy.exclude_characters,
            "exclude_numbers": policy.exclude_numbers,
            "exclude_punctuation": policy.exclude_punctuation,
            "exclude_uppercase": policy.exclude_uppercase,
            "exclude_lowercase": policy.exclude_lowercase,
            "include_space": policy.include_space,
            "require_each_included_type": policy.require_each_included_type,
        })),
        "json_field": config.json_field,
        "admin_secret": config.admin_secret,
        "strategy": config.strategy,
        "enabled": config.enabled,
        "configured_by": config.configured_by,
        "next_rotation_at": config.next_rotation_at.as_ref().map(format_timestamp),
        "last_rotated_at": config.last_rotated_at.as_ref().map(format_timestamp),
    })
}

pub fn print_run(run: &proto::RotationRun) {
    let how = match (run.scheduled, run.manual) {
        (true, _) => "scheduled",
        (false, true) => "manual",
        (false, false) => "automatic",
    };
    println!(
        "{}  run {}  {how}, started by {} at {}",
        run.name,
        run.run_id,
        shown(&run.initiator),
        time(&run.started_at)
    );
    println!(
        "state: {}{}",
        run.state,
        if run.end_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", shown(&run.end_reason))
        }
    );
    for (index, step) in run.steps.iter().enumerate() {
        let mut line = format!(
            "  {} {:<13} {}",
            index + 1,
            step_name(step.step),
            step.state.replace('_', " ")
        );
        if step.approvals_required > 0 {
            line.push_str(&format!(
                " ({}/{} approvals)",
                step.approvals, step.approvals_required
            ));
        }
        if step.attempts > 1 || !step.error.is_empty() {
            line.push_str(&format!(", attempt {}", step.attempts));
        }
        if !step.error.is_empty() {
            line.push_str(&format!(": {}", shown(&step.error)));
        }
        println!("{line}");
    }
    for approval in &run.approvals {
        println!(
            "  approved {} by {} at {}{}",
            step_name(approval.step),
            shown(&approval.principal),
            time(&approval.at),
            if approval.comment.is_empty() {
                String::new()
            } else {
                format!(": {}", shown(&approval.comment))
            }
        );
    }
}

fn print_history(run: &proto::RotationRun) {
    for entry in &run.history {
        println!(
            "  {}  {:<13} {:<17} attempt {}  {}{}",
            time(&entry.at),
            step_name(entry.step),
            entry.event,
            entry.attempt,
            shown(&entry.principal),
            if entry.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", shown(&entry.detail))
            }
        );
    }
}

fn finish_with(format: Format, run: &proto::RotationRun) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&run_json(run)),
        Format::Text => print_run(run),
    }
    match run.state.as_str() {
        "failed" | "needs_attention" | "rejected" | "abandoned" => {
            anyhow::bail!("the rotation of {} ended {}", run.name, run.state)
        }
        "retry_wait" => {
            let failed = run.steps.iter().find(|s| s.step == run.current_step);
            anyhow::bail!(
                "{} of {} failed ({}); the run retries at {}",
                step_name(run.current_step),
                run.name,
                failed.map(|s| s.error.as_str()).unwrap_or_default(),
                time(&run.next_attempt_at)
            )
        }
        _ => Ok(()),
    }
}

pub async fn command(
    connection: &Connection,
    format: Format,
    command: RotationCommand,
) -> anyhow::Result<()> {
    let mut client = connection.rotation().await?;
    match command {
        RotationCommand::Configure(args) => {
            let request = configure::whole(&mut client, configure::request(*args)).await?;
            let config = client.configure_rotation(request).await?.into_inner();
            match format {
                Format::Json => output::print_json(&config_json(&config)),
                Format::Text if !config.enabled => {
                    println!("rotation of {} is disabled", config.name)
                }
                Format::Text => println!(
                    "{} rotates with {}{}",
                    config.name,
                    config.rotator,
                    match &config.next_rotation_at {
                        Some(next) => format!("; next rotation {}", format_timestamp(next)),
                        None => "; on demand".to_owned(),
                    }
                ),
            }
            Ok(())
        }
        RotationCommand::Step { name, run_id } => {
            let run = client
                .step_rotation(proto::StepRotationRequest { name, run_id })
                .await?
                .into_inner();
            finish_with(format, &run)
        }
        RotationCommand::Retry { name, run_id } => {
            let run = client
                .retry_rotation(proto::RetryRotationRequest { name, run_id })
                .await?
                .into_inner();
            finish_with(format, &run)
        }
        RotationCommand::Cancel { name, run_id } => {
            let run = client
                .cancel_rotation(proto::CancelRotationRequest { name, run_id })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&run_json(&run)),
                Format::Text => print_run(&run),
            }
            Ok(())
        }
        RotationCommand::Show { name } => {
            let described = client
                .describe_rotation(proto::DescribeRotationRequest { name: name.clone() })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "config": described.config.as_ref().map(config_json),
                    "run": described.run.as_ref().map(run_json),
                })),
                Format::Text => {
                    match &described.config {
                        Some(config) => println!(
                            "{name}: {} rotator, {}, next rotation {}, last rotated {}",
                            config.rotator,
                            if config.enabled {
                                if config.schedule.is_empty() {
                                    "on demand".to_owned()
                                } else {
                                    config.schedule.clone()
                                }
                            } else {
                                "disabled".to_owned()
                            },
                            time(&config.next_rotation_at),
                            time(&config.last_rotated_at)
                        ),
                        None => println!("{name}: rotation is not configured"),
                    }
                    match &described.run {
                        Some(run) => print_run(run),
                        None => println!("no run yet"),
                    }
                }
            }
            Ok(())
        }
        RotationCommand::History { name, limit } => {
            let runs = client
                .list_rotation_runs(proto::ListRotationRunsRequest {
                    name,
                    active_only: false,
                    limit,
                })
                .await?
                .into_inner();
            say_left_out(&runs);
            let runs = runs.runs;
            match format {
                Format::Json => {
                    output::print_json(&Value::Array(runs.iter().map(run_json).collect()))
                }
                Format::Text => {
                    for run in &runs {
                        print_run(run);
                        print_history(run);
                    }
                }
            }
            Ok(())
        }
        RotationCommand::Runs { active } => {
            let runs = client
                .list_rotation_runs(proto::ListRotationRunsRequest {
                    name: String::new(),
                    active_only: active,
                    limit: 0,
                })
                .await?
                .into_inner();
            say_left_out(&runs);
            let runs = runs.runs;
            match format {
                Format::Json => {
                    output::print_json(&Value::Array(runs.iter().map(run_json).collect()))
                }
                Format::Text => {
                    println!(
                        "{:<40} {:<22} {:<14} {:<20} INITIATOR",
                        "SECRET", "STATE", "STEP", "STARTED"
                    );
                    for run in &runs {
                        println!(
                            "{:<40} {:<22} {:<14} {:<20} {}",
                            run.name,
                            run.state,
                            step_name(run.current_step),
                            time(&run.started_at),
                            shown(&run.initiator)
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

pub async fn rotate(
    connection: &Connection,
    format: Format,
    name: String,
    manual: bool,
    no_wait: bool,
) -> anyhow::Result<()> {
    let mut client = connection.rotation().await?;
    let mut run = client
        .start_rotation(proto::StartRotationRequest {
            name: name.clone(),
            manual,
        })
        .await?
        .into_inner();
    if !manual && !no_wait {
        // Wait while the run works; stop at anything that waits for people.
        let deadline = Instant::now() + Duration::from_secs(600);
        while run.active
            && matches!(run.state.as_str(), "running" | "reverting" | "ending")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            run = this_run(&mut client, &name, run).await?;
        }
        if run.active && matches!(run.state.as_str(), "running" | "reverting" | "ending") {
            anyhow::bail!(
                "the rotation of {name} is still {} after 10 minutes; `rekey rotation show {name}` follows it",
                run.state
            );
        }
    }
    finish_with(format, &run)?;
    // Stopped by someone: what a script waiting on it must not take for done.
    if run.state == "cancelled" {
        anyhow::bail!(
            "the rotation of {name} was cancelled{}",
            if run.end_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", shown(&run.end_reason))
            }
        );
    }
    Ok(())
}

/// `run` as it stands now: the secret's run shown is another once `run`
/// ended and the next began, so then it is looked for among the secret's
/// runs.
async fn this_run(
    client: &mut RotationClient<Channel>,
    name: &str,
    run: proto::RotationRun,
) -> anyhow::Result<proto::RotationRun> {
    let shown = client
        .describe_rotation(proto::DescribeRotationRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .run;
    match shown {
        Some(shown) if shown.run_id == run.run_id => Ok(shown),
        _ => Ok(client
            .list_rotation_runs(proto::ListRotationRunsRequest {
                name: name.to_owned(),
                active_only: false,
                limit: 100,
            })
            .await?
            .into_inner()
            .runs
            .into_iter()
            .find(|listed| listed.run_id == run.run_id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "run {} of {name} ended and is no longer among its newest runs",
                    run.run_id
                )
            })?),
    }
}

/// Approves (or rejects) the step a run waits at; `seen` is the run and the
/// step (0: any) the approver means, which the server checks.
pub async fn approve(
    connection: &Connection,
    format: Format,
    name: String,
    seen: (String, i32),
    comment: String,
    reject: bool,
) -> anyhow::Result<()> {
    let (run_id, step) = seen;
    let run = connection
        .rotation()
        .await?
        .approve_rotation(proto::ApproveRotationRequest {
            name,
            comment,
            reject,
            run_id,
            step,
        })
        .await?
        .into_inner();
    match format {
        Format::Json => output::print_json(&run_json(&run)),
        Format::Text => print_run(&run),
    }
    Ok(())
}

pub async fn approvals(connection: &Connection, format: Format) -> anyhow::Result<()> {
    let runs = connection
        .rotation()
        .await?
        .list_approvals(proto::ListApprovalsRequest {})
        .await?
        .into_inner()
        .runs;
    match format {
        Format::Json => output::print_json(&Value::Array(runs.iter().map(run_json).collect())),
        Format::Text => {
            println!(
                "{:<40} {:<14} {:<20} {:<10} INITIATOR",
                "SECRET", "STEP", "WAITING SINCE", "APPROVALS"
            );
            for run in &runs {
                let step = run.steps.iter().find(|s| s.step == run.current_step);
                println!(
                    "{:<40} {:<14} {:<20} {:<10} {}",
                    run.name,
                    step_name(run.current_step),
                    time(&run.updated_at),
                    step.map(|s| format!("{}/{}", s.approvals, s.approvals_required))
                        .unwrap_or_default(),
                    shown(&run.initiator)
                );
            }
        }
    }
    Ok(())
}

pub async fn watch(connection: &Connection, format: Format, prefix: String) -> anyhow::Result<()> {
    use rekey_shared::proto::watch_client::WatchClient;
    let mut client = WatchClient::new(connection.channel().await?);
    let mut stream = client
        .watch(proto::WatchRequest {
            prefix,
            names: Vec::new(),
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        match format {
            Format::Json => println!(
                "{}",
                json!({
                    "at": time(&event.at),
                    "kind": event.kind,
                    "name": event.name,
                    "version_id": event.version_id,
                    "run_id": event.run_id,
                    "step": step_name(event.step),
                    "detail": event.detail,
                    "principal": event.principal,
                })
            ),
            Format::Text => println!(
                "{} {:<18} {} {}{}{}",
                time(&event.at),
                event.kind,
                event.name,
                if event.step != 0 {
                    format!("{} ", step_name(event.step))
                } else {
                    String::new()
                },
                shown(&event.detail),
                if event.principal.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", shown(&event.principal))
                }
            ),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// Tells standard error when the server left runs out of a list for its
/// size: what is printed is not all there is.
fn say_left_out(answer: &proto::ListRotationRunsResponse) {
    if answer.more {
        eprintln!(
            "rekey: the server left older runs out for the answer's size; ask for one \
             secret's, fewer at a time (rekey rotation history NAME --limit N)"
        );
    }
}
