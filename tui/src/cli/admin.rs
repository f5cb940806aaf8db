//! Admin commands: policy (get, apply, history) and the audit log (query,
//! verify).

use super::{AuditArgs, AuditCommand, PolicyCommand};
use crate::output::{self, Format, shown};
use rekey_shared::proto::admin_client::AdminClient;
use rekey_shared::proto::{self};
use rekey_shared::time::{format_timestamp, now_millis, timestamp_from_millis};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::transport::Channel;

type Client = AdminClient<Channel>;

pub async fn policy(
    client: &mut Client,
    format: Format,
    command: PolicyCommand,
) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Get => {
            let policy = client
                .get_policy(proto::GetPolicyRequest {})
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&policy_json(&policy, true)),
                Format::Text => {
                    println!(
                        "# policy version {} by {}",
                        policy.version,
                        shown(&policy.created_by)
                    );
                    print!("{}", output::shown_document(&policy.document));
                }
            }
        }
        PolicyCommand::Apply { file, force } => {
            let document = std::fs::read_to_string(&file)
                .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", file.display()))?;
            let based_on_version = if force { None } else { edited_from(&document) };
            let applied = client
                .apply_policy(proto::ApplyPolicyRequest {
                    document,
                    based_on_version,
                })
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&policy_json(&applied, false)),
                Format::Text => println!("policy version {} is in force", applied.version),
            }
        }
        PolicyCommand::History => {
            let history = client
                .list_policy_history(proto::ListPolicyHistoryRequest {})
                .await?
                .into_inner();
            match format {
                Format::Json => output::print_json(&Value::Array(
                    history
                        .versions
                        .iter()
                        .map(|v| policy_json(v, false))
                        .collect(),
                )),
                Format::Text => {
                    println!("{:>7}  {:<20}  BY", "VERSION", "APPLIED");
                    for version in &history.versions {
                        println!(
                            "{:>7}  {:<20}  {}",
                            version.version,
                            version
                                .created_at
                                .as_ref()
                                .map(format_timestamp)
                                .unwrap_or_default(),
                            shown(&version.created_by)
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn policy_json(policy: &proto::PolicyDocument, with_document: bool) -> Value {
    let mut value = json!({
        "version": policy.version,
        "created_at": policy.created_at.as_ref().map(format_timestamp),
        "created_by": policy.created_by,
    });
    if with_document {
        value["document"] = Value::String(policy.document.clone());
    }
    value
}

/// The version a document written by `policy get` was edited from: its
/// first line, `# policy version N by P`.
fn edited_from(document: &str) -> Option<i64> {
    document
        .lines()
        .next()?
        .strip_prefix("# policy version ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `2026-11-28T10:00:00Z`, or an age: `30m`, `12h`, `7d`, `90s`.
pub fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((time.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let mut chars = text.chars();
    let seconds: i64 = match chars.next_back() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => 0,
    };
    let number = chars.as_str();
    let millis = number
        .parse::<i64>()
        .ok()
        .filter(|count| seconds > 0 && *count >= 0)
        .and_then(|count| count.checked_mul(seconds * 1000));
    match millis {
        Some(millis) => Ok(now_millis().saturating_sub(millis)),
        None => anyhow::bail!(
            "--since {text:?} is neither RFC 3339 (2026-11-28T10:00:00Z) nor an age like 30m, 12h, 7d"
        ),
    }
}

pub async fn audit(client: &mut Client, format: Format, args: AuditArgs) -> anyhow::Result<()> {
    if let Some(AuditCommand::Verify { checkpoint }) = args.verify {
        return verify(client, format, checkpoint.as_deref()).await;
    }
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let query = |after_seq, limit| proto::QueryAuditRequest {
        since: since.map(timestamp_from_millis),
        principal: args.principal.clone().unwrap_or_default(),
        resource: args.resource.clone().unwrap_or_default(),
        after_seq,
        limit,
    };
    let mut after_seq = 0;
    let mut events = Vec::new();
    while events.len() < args.limit as usize {
        let want = (args.limit as usize - events.len()).min(1000) as u32;
        let answer = client
            .query_audit(query(after_seq, want))
            .await?
            .into_inner();
        let page = answer.events;
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        // A page the server ended early for its size says so.
        let full = page.len() as u32 == want || answer.more;
        events.extend(page);
        if !full {
            break;
        }
    }
    print_events(format, &events);
    if !args.follow {
        return Ok(());
    }
    // What follows comes in order after the last event printed. Each poll
    // is a request of its own, and so an event of its own in the log.
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let page = client
            .query_audit(query(after_seq, 1000))
            .await?
            .into_inner()
            .events;
        if let Some(last) = page.last() {
            after_seq = last.seq;
        }
        print_events(format, &page);
    }
}

fn print_events(format: Format, events: &[proto::AuditEvent]) {
    match format {
        Format::Json => {
            // One object per line, for shipping to a log system.
            for event in events {
                println!("{}", event_json(event));
            }
        }
        Format::Text => {
            for event in events {
                println!(
                    "{:>6} {} {:<20} {:<32} {:<28} {:<6} {}{}",
                    event.seq,
                    event
                        .time
                        .as_ref()
                        .map(format_timestamp)
                        .unwrap_or_default(),
                    shown(&event.principal),
                    shown(&event.action),
                    shown(&event.resource),
                    event.decision,
                    event.outcome,
                    if event.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", shown(&event.detail))
                    }
                );
            }
        }
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

fn event_json(event: &proto::AuditEvent) -> Value {
    json!({
        "seq": event.seq,
        "time": event.time.as_ref().map(format_timestamp),
        "principal": event.principal,
        "peer": event.peer,
        "action": event.action,
        "resource": event.resource,
        "decision": event.decision,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "detail": event.detail,
    })
}

async fn verify(
    client: &mut Client,
    format: Format,
    checkpoint: Option<&str>,
) -> anyhow::Result<()> {
    let (checkpoint_seq, checkpoint_mac) = match checkpoint {
        None => (0, Vec::new()),
        Some(text) => parse_checkpoint(text)?,
    };
    let verdict = client
        .verify_audit(proto::VerifyAuditRequest {
            checkpoint_seq,
            checkpoint_mac,
        })
        .await?
        .into_inner();
    let head: String = verdict
        .head_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match format {
        Format::Json => output::print_json(&json!({
            "ok": verdict.ok,
            "events": verdict.events,
            "head_seq": verdict.head_seq,
            "head_mac": head,
            "finding": verdict.finding,
            "first_bad_seq": verdict.first_bad_seq,
            "first_seq": verdict.first_seq,
        })),
        Format::Text if verdict.ok && verdict.first_seq > 1 => println!(
            "the audit log verifies: events {} to {} ({} events; events up to {} are archived, \
             `rekeyd audit verify-archive` checks them), head {}:{head}",
            verdict.first_seq,
            verdict.head_seq,
            verdict.events,
            verdict.first_seq - 1,
            verdict.head_seq
        ),
        Format::Text if verdict.ok => println!(
            "the audit log verifies: {} events, head {}:{head}",
            verdict.events, verdict.head_seq
        ),
        Format::Text => {}
    }
    if verdict.ok {
        Ok(())
    } else {
        anyhow::bail!("the audit log does not verify: {}", verdict.finding)
    }
}

fn parse_checkpoint(text: &str) -> anyhow::Result<(i64, Vec<u8>)> {
    rekey_shared::checkpoint::parse(text).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_dates_and_ages() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1000);
        let hour_ago = parse_since("1h").unwrap();
        assert!((now_millis() - hour_ago - 3_600_000).abs() < 5_000);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("5x").is_err());
        for odd in ["5é", "é", "", "9999999999999999d"] {
            assert!(parse_since(odd).is_err(), "{odd:?}");
        }
    }
}
