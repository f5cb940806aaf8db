//! The UI's state: which view is open, what it shows, what the user is
//! typing. Plain data; `update` changes it, `render` draws it, neither does
//! I/O.

use rekey_shared::proto;
use std::time::Instant;
use zeroize::Zeroizing;

/// How long a revealed value stays on screen.
pub const REVEAL_SECONDS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    #[default]
    Secrets,
    Detail,
    Run,
    Approvals,
    Audit,
}

impl View {
    pub fn title(self) -> &'static str {
        match self {
            View::Secrets => "Secrets",
            View::Detail => "Secret",
            View::Run => "Rotation",
            View::Approvals => "Approvals",
            View::Audit => "Audit",
        }
    }
}

/// What a confirmation, once given, does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmable {
    Reveal(String),
    Copy(String),
    ForceDelete {
        name: String,
        /// The secret on screen when it was asked (its secret_id).
        secret_id: String,
    },
    Cancel {
        name: String,
        /// The run on screen when it was asked; empty when none was.
        run_id: String,
    },
    Reject {
        name: String,
        seen: RunSeen,
        comment: String,
    },
}

/// The run on screen and the step it waits at, which an approval (or a
/// rejection) is for: the server refuses it if the run has moved on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSeen {
    pub run_id: String,
    /// `RotationStep` as the run showed it; 0 when none was on screen.
    pub step: i32,
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// `/`: typing a filter.
    Filter(String),
    /// `:`: typing a view name.
    Command(String),
    /// Typing a comment for an approval or a rejection.
    Comment {
        name: String,
        /// The run on screen, which the approval is for.
        seen: RunSeen,
        reject: bool,
        text: String,
    },
    Confirm(Confirmable),
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Connection {
    #[default]
    Connecting,
    Connected,
    Lost(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Name,
    Created,
    Changed,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Name => Sort::Created,
            Sort::Created => Sort::Changed,
            Sort::Changed => Sort::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Created => "created",
            Sort::Changed => "changed",
        }
    }
}

/// One line of the secrets list.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRow {
    pub metadata: proto::SecretMetadata,
    /// The newest run of the secret, if any.
    pub run: Option<proto::RotationRun>,
}

#[derive(Debug, Clone, Default)]
pub struct SecretsList {
    pub rows: Vec<SecretRow>,
    pub selected: usize,
    pub filter: String,
    pub sort: Sort,
    pub descending: bool,
    /// More pages to fetch as the user scrolls.
    pub next_page_token: String,
    pub loading: bool,
}

/// A value the server sent to be shown, and the secret it is of.
pub struct Fetched {
    pub name: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fetched({}, <redacted>)", self.name)
    }
}

/// A value on screen for a moment.
pub struct Revealed {
    pub value: Zeroizing<String>,
    pub until: Instant,
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revealed(<redacted>)")
    }
}

#[derive(Debug, Default)]
pub struct Detail {
    pub metadata: proto::SecretMetadata,
    pub versions: Vec<proto::SecretVersion>,
    pub show_deprecated: bool,
    pub rotation: Option<proto::DescribeRotationResponse>,
    pub runs: Vec<proto::RotationRun>,
    pub revealed: Option<Revealed>,
    pub scroll: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

/// The newest answer shown of each kind of load. Loads run side by side
/// and may answer out of order (the first list load, and the reload when
/// the Watch stream opens or an event comes): an answer to a load issued
/// before the one shown is older than what is on screen, and is dropped.
#[derive(Debug, Default)]
pub struct Loads {
    pub secrets: Shown,
    pub detail: Shown,
    pub approvals: Shown,
    pub audit: Shown,
}

/// The number of the newest load of one kind shown (loads are numbered as
/// they are issued, from 1).
#[derive(Debug, Default)]
pub struct Shown(u64);

impl Shown {
    /// The number of the newest load shown.
    pub fn newest(&self) -> u64 {
        self.0
    }

    /// Whether the answer to load `issued` is newer than what is shown;
    /// if so it is what is shown from now on.
    pub fn fresh(&mut self, issued: u64) -> bool {
        if issued <= self.0 {
            return false;
        }
        self.0 = issued;
        true
    }
}

#[derive(Debug, Default)]
pub struct App {
    pub view: View,
    /// Where `q`/Esc go back to.
    pub back: Vec<View>,
    pub mode: Mode,
    pub server: String,
    pub principal: String,
    pub connection: Connection,
    pub secrets: SecretsList,
    /// The secret Detail and Run show.
    pub detail: Option<Detail>,
    /// The secret last opened: a detail that arrives for another (a late
    /// reload of the one before) is not shown in its place.
    pub detail_wanted: Option<String>,
    pub approvals: Vec<proto::RotationRun>,
    pub approvals_selected: usize,
    /// The newest load of each kind shown (see [`Loads`]).
    pub loads: Loads,
    pub audit: Vec<proto::AuditEvent>,
    pub audit_filter: String,
    pub audit_selected: usize,
    pub message: Option<Message>,
    /// Colours off (`NO_COLOR`).
    pub plain: bool,
    /// The wall clock (Unix millis) at the last tick: ages are relative to it.
    pub now_millis: i64,
    pub quit: bool,
}

impl App {
    pub fn new(server: &str, principal: &str, plain: bool) -> Self {
        Self {
            server: server.to_owned(),
            principal: principal.to_owned(),
            plain,
            ..Self::default()
        }
    }

    /// The id of the secret the current view is about, as it was loaded
    /// (empty where none is known).
    pub fn focused_secret_id(&self) -> String {
        match self.view {
            View::Secrets => self
                .secrets
                .rows
                .get(self.secrets.selected)
                .map(|row| row.metadata.secret_id.clone()),
            View::Detail | View::Run => self
                .detail
                .as_ref()
                .map(|detail| detail.metadata.secret_id.clone()),
            View::Approvals | View::Audit => None,
        }
        .unwrap_or_default()
    }

    /// The secret the current view is about.
    pub fn focused_name(&self) -> Option<String> {
        match self.view {
            View::Secrets => self
                .secrets
                .rows
                .get(self.secrets.selected)
                .map(|row| row.metadata.name.clone()),
            View::Detail | View::Run => self.detail.as_ref().map(|d| d.metadata.name.clone()),
            View::Approvals => self
                .approvals
                .get(self.approvals_selected)
                .map(|run| run.name.clone()),
            View::Audit => None,
        }
    }

    /// The run an approval given now is for: the one on screen (on the
    /// list of secrets, the selected row's, whose state it shows; empty
    /// where none is known).
    pub fn focused_run(&self) -> RunSeen {
        match self.view {
            View::Detail | View::Run => self.run(),
            View::Approvals => self.approvals.get(self.approvals_selected),
            View::Secrets => self
                .secrets
                .rows
                .get(self.secrets.selected)
                .and_then(|row| row.run.as_ref()),
            View::Audit => None,
        }
        .map(|run| RunSeen {
            run_id: run.run_id.clone(),
            step: run.current_step,
        })
        .unwrap_or_default()
    }

    /// The run the Run view shows.
    pub fn run(&self) -> Option<&proto::RotationRun> {
        self.detail
            .as_ref()
            .and_then(|detail| detail.rotation.as_ref())
            .and_then(|rotation| rotation.run.as_ref())
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            error: false,
        });
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            error: true,
        });
    }
}

/// A rotation state in a few words, for the list.
pub fn rotation_state(row: &SecretRow) -> String {
    match &row.run {
        Some(run) if run.active => match run.state.as_str() {
            "awaiting_approval" => "awaiting approval".to_owned(),
            "waiting_for_operator" | "running" | "retry_wait" => {
                format!("running at step {}", run.current_step)
            }
            "step_failed" => "failed".to_owned(),
            other => other.replace('_', " "),
        },
        Some(run) if matches!(run.state.as_str(), "failed" | "needs_attention") => {
            run.state.replace('_', " ")
        }
        _ if row.metadata.rotation_enabled => "enabled".to_owned(),
        _ => "off".to_owned(),
    }
}
