//! The UI's I/O: performs effects as gRPC calls in their own tasks and
//! answers with actions; follows the Watch stream, reconnecting when it
//! drops.

use super::app::{App, Connection, Detail, Fetched, SecretRow, Sort};
use super::update::{Action, Effect};
use rekey_shared::proto::admin_client::AdminClient;
use rekey_shared::proto::rotation_client::RotationClient;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::watch_client::WatchClient;
use rekey_shared::proto::{self, Filter, FilterKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tonic::transport::Channel;
use zeroize::Zeroizing;

/// Secrets per page of the list.
pub(super) const PAGE: u32 = 100;

#[derive(Debug, Clone)]
pub struct Backend {
    channel: Channel,
    actions: UnboundedSender<Action>,
    /// Loads issued so far: each answer carries its number.
    issued: Arc<AtomicU64>,
    /// The number of the newest reload of the list (not a page added).
    last_reload: Arc<AtomicU64>,
}

fn message(status: &tonic::Status) -> String {
    crate::output::status_line(&rekey_shared::channel::dropped_call_is_unavailable(
        status.clone(),
    ))
}

impl Backend {
    pub fn new(channel: Channel, actions: UnboundedSender<Action>) -> Self {
        Self {
            channel,
            actions,
            issued: Arc::new(AtomicU64::new(0)),
            last_reload: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The number of a load issued now.
    fn issue(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn send(&self, action: Action) {
        let _ = self.actions.send(action);
    }

    /// Starts `effect`; what it needs of the state is read now.
    pub fn perform(&self, effect: Effect, app: &App) {
        let backend = self.clone();
        let copy = matches!(effect, Effect::Copy(_));
        match effect {
            Effect::LoadSecrets { append } => {
                let list = &app.secrets;
                let request = proto::ListSecretsRequest {
                    filters: if list.filter.is_empty() {
                        Vec::new()
                    } else {
                        vec![Filter {
                            key: FilterKey::All as i32,
                            values: vec![list.filter.clone()],
                        }]
                    },
                    page_size: PAGE,
                    page_token: if append {
                        list.next_page_token.clone()
                    } else {
                        String::new()
                    },
                    sort_by: match list.sort {
                        Sort::Name => proto::SortBy::Name,
                        Sort::Created => proto::SortBy::Created,
                        Sort::Changed => proto::SortBy::Changed,
                    } as i32,
                    sort_order: if list.descending {
                        proto::SortOrder::Desc
                    } else {
                        proto::SortOrder::Asc
                    } as i32,
                    include_planned_deletion: false,
                };
                let asked = (list.filter.clone(), list.sort);
                let issued = self.issue();
                if !append {
                    self.last_reload.fetch_max(issued, Ordering::Relaxed);
                }
                tokio::spawn(
                    async move { backend.load_secrets(issued, request, append, asked).await },
                );
            }
            Effect::LoadDetail(name) => {
                let issued = self.issue();
                tokio::spawn(async move { backend.load_detail(issued, name).await });
            }
            Effect::LoadApprovals => {
                let issued = self.issue();
                tokio::spawn(async move {
                    let result = RotationClient::new(backend.channel.clone())
                        .list_approvals(proto::ListApprovalsRequest {})
                        .await;
                    backend.send(match result {
                        Ok(response) => Action::ApprovalsLoaded(issued, response.into_inner().runs),
                        Err(status) => Action::Failed(message(&status)),
                    });
                });
            }
            Effect::LoadAudit => {
                let filter = app.audit_filter.clone();
                let issued = self.issue();
                tokio::spawn(async move { backend.load_audit(issued, filter).await });
            }
            Effect::Reveal(name) | Effect::Copy(name) => {
                tokio::spawn(async move {
                    let result = SecretsClient::new(backend.channel.clone())
                        .get_secret_value(proto::GetSecretValueRequest {
                            name: name.clone(),
                            ..Default::default()
                        })
                        .await;
                    backend.send(match result {
                        Ok(response) => {
                            let mut response = response.into_inner();
                            let binary = response.secret_binary.as_ref().map(Vec::len);
                            let value = Zeroizing::new(match (&response.secret_string, binary) {
                                (Some(text), _) => text.clone(),
                                (None, Some(length)) => {
                                    format!("({length} bytes of binary)")
                                }
                                _ => String::new(),
                            });
                            let is_text = response.secret_string.is_some();
                            rekey_shared::value::wipe_response(&mut response);
                            match (copy, is_text, binary) {
                                (true, false, Some(length)) => Action::Failed(format!(
                                    "{name} is binary ({length} bytes), which a clipboard \
                                     does not hold: rekey get {name} > FILE"
                                )),
                                (true, _, _) => Action::Done(clipboard(&value)),
                                (false, _, _) => Action::Revealed(Fetched { name, value }),
                            }
                        }
                        Err(status) => Action::Failed(message(&status)),
                    });
                });
            }
            other => {
                tokio::spawn(async move { backend.change(other).await });
            }
        }
    }

    async fn load_secrets(
        &self,
        issued: u64,
        request: proto::ListSecretsRequest,
        append: bool,
        asked: (String, Sort),
    ) {
        let page = match SecretsClient::new(self.channel.clone())
            .list_secrets(request)
            .await
        {
            Ok(page) => page.into_inner(),
            Err(status) => return self.send(Action::Failed(message(&status))),
        };
        // Each secret's active run, or else its newest, for the rotation
        // column and for what an approval from the list is given to.
        let mut runs: HashMap<String, proto::RotationRun> = HashMap::new();
        for active_only in [true, false] {
            if let Ok(response) = RotationClient::new(self.channel.clone())
                .list_rotation_runs(proto::ListRotationRunsRequest {
                    name: String::new(),
                    active_only,
                    limit: 1000,
                })
                .await
            {
                for run in response.into_inner().runs {
                    runs.entry(run.name.clone()).or_insert(run);
                }
            }
        }
        let rows = page
            .secrets
            .into_iter()
            .map(|metadata| SecretRow {
                run: runs.remove(&metadata.name),
                metadata,
            })
            .collect();
        self.send(Action::SecretsLoaded {
            issued,
            // A page added after the list it was asked for was reloaded
            // meanwhile: its token is of the list before.
            superseded: append && self.last_reload.load(Ordering::Relaxed) > issued,
            rows,
            next_page_token: page.next_page_token,
            append,
            filter: asked.0,
            sort: asked.1,
        });
    }

    async fn load_detail(&self, issued: u64, name: String) {
        let mut secrets = SecretsClient::new(self.channel.clone());
        let mut rotation = RotationClient::new(self.channel.clone());
        let metadata = match secrets
            .describe_secret(proto::DescribeSecretRequest { name: name.clone() })
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return self.send(Action::Failed(message(&status))),
        };
        let versions = secrets
            .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
                name: name.clone(),
                include_deprecated: true,
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .map(|response| response.into_inner().versions)
            .unwrap_or_default();
        let described = rotation
            .describe_rotation(proto::DescribeRotationRequest { name: name.clone() })
            .await
            .ok()
            .map(|response| response.into_inner());
        let runs = rotation
            .list_rotation_runs(proto::ListRotationRunsRequest {
                name,
                active_only: false,
                limit: 5,
            })
            .await
            .map(|response| response.into_inner().runs)
            .unwrap_or_default();
        self.send(Action::DetailLoaded(
            issued,
            Box::new(Detail {
                metadata,
                versions,
                rotation: described,
                runs,
                ..Detail::default()
            }),
        ));
    }

    async fn load_audit(&self, issued: u64, filter: String) {
        let (principal, resource) = match filter.strip_prefix("p:") {
            Some(principal) => (principal.to_owned(), String::new()),
            None => (String::new(), filter),
        };
        // The newest events: find the end, then read the last page.
        let mut admin = AdminClient::new(self.channel.clone());
        let mut events = Vec::new();
        let mut after_seq = 0;
        loop {
            match admin
                .query_audit(proto::QueryAuditRequest {
                    since: None,
                    principal: principal.clone(),
                    resource: resource.clone(),
                    after_seq,
                    limit: 1000,
                })
                .await
            {
                Ok(response) => {
                    let answer = response.into_inner();
                    let page = answer.events;
                    let Some(last) = page.last() else { break };
                    after_seq = last.seq;
                    let full = page.len() == 1000 || answer.more;
                    events.extend(page);
                    if events.len() > 2000 {
                        events.drain(..events.len() - 500);
                    }
                    if !full {
                        break;
                    }
                }
                Err(status) => return self.send(Action::Failed(message(&status))),
            }
        }
        events.reverse();
        events.truncate(500);
        self.send(Action::AuditLoaded(issued, events));
    }

    async fn change(&self, effect: Effect) {
        let mut rotation = RotationClient::new(self.channel.clone());
        let result = match &effect {
            Effect::Rotate { name, manual } => rotation
                .start_rotation(proto::StartRotationRequest {
                    name: name.clone(),
                    manual: *manual,
                })
                .await
                .map(|_| {
                    format!(
                        "rotation of {name} started{}",
                        if *manual {
                            " (manual: n runs each step)"
                        } else {
                            ""
                        }
                    )
                }),
            Effect::Step { name, run_id } => rotation
                .step_rotation(proto::StepRotationRequest {
                    name: name.clone(),
                    run_id: run_id.clone(),
                })
                .await
                .map(|run| format!("{name}: {}", run.into_inner().state.replace('_', " "))),
            Effect::Approve {
                name,
                seen,
                comment,
            } => rotation
                .approve_rotation(proto::ApproveRotationRequest {
                    name: name.clone(),
                    comment: comment.clone(),
                    reject: false,
                    run_id: seen.run_id.clone(),
                    step: seen.step,
                })
                .await
                .map(|_| format!("approved the waiting step of {name}")),
            Effect::Reject {
                name,
                seen,
                comment,
            } => rotation
                .approve_rotation(proto::ApproveRotationRequest {
                    name: name.clone(),
                    comment: comment.clone(),
                    reject: true,
                    run_id: seen.run_id.clone(),
                    step: seen.step,
                })
                .await
                .map(|_| format!("rejected the run of {name}")),
            Effect::Retry { name, run_id } => rotation
                .retry_rotation(proto::RetryRotationRequest {
                    name: name.clone(),
                    run_id: run_id.clone(),
                })
                .await
                .map(|_| format!("retried the failed step of {name}")),
            Effect::Cancel { name, run_id } => rotation
                .cancel_rotation(proto::CancelRotationRequest {
                    name: name.clone(),
                    run_id: run_id.clone(),
                })
                .await
                .map(|_| format!("cancelled the run of {name}")),
            Effect::ForceDelete { name, secret_id } => SecretsClient::new(self.channel.clone())
                .delete_secret(proto::DeleteSecretRequest {
                    name: name.clone(),
                    recovery_window_days: None,
                    force_delete_without_recovery: true,
                    secret_id: secret_id.clone(),
                })
                .await
                .map(|_| format!("deleted {name}")),
            _ => return,
        };
        self.send(match result {
            Ok(text) => Action::Done(text),
            Err(status) => Action::Failed(message(&status)),
        });
    }

    /// Follows Watch for as long as the UI runs; reconnects when it drops.
    pub async fn watch(self) {
        loop {
            match WatchClient::new(self.channel.clone())
                .watch(proto::WatchRequest {
                    prefix: String::new(),
                    names: Vec::new(),
                })
                .await
            {
                Ok(response) => {
                    self.send(Action::Connection(Connection::Connected));
                    let mut stream = response.into_inner();
                    let reason = loop {
                        match stream.message().await {
                            Ok(Some(event)) => self.send(Action::Event(Box::new(event))),
                            Ok(None) => break "the server closed the stream".to_owned(),
                            Err(status) => break message(&status),
                        }
                    };
                    self.send(Action::Connection(Connection::Lost(reason)));
                }
                Err(status) => self.send(Action::Connection(Connection::Lost(message(&status)))),
            }
            // Try again shortly; the state line says what happened.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Puts the value on the terminal's clipboard with OSC 52, which works over
/// SSH; returns the message to show.
fn clipboard(value: &str) -> String {
    use base64::Engine;
    use std::io::Write;
    let encoded =
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(value.as_bytes()));
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "\x1b]52;c;{}\x07", encoded.as_str());
    let _ = stdout.flush();
    "copied the value to the clipboard (OSC 52)".to_owned()
}
