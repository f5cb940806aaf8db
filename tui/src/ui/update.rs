//! Everything that happens to the UI becomes an [`Action`]; [`update`]
//! applies it to the [`App`] and returns the [`Effect`]s (server calls) to
//! perform. No I/O here: the backend performs effects and answers with more
//! actions.

use super::app::{
    App, Confirmable, Connection, Detail, Fetched, Mode, Revealed, RunSeen, SecretRow, View,
};
use rekey_shared::proto;
use std::time::{Duration, Instant};

/// Something the user did, or a server answer.
#[derive(Debug)]
pub enum Action {
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Open,
    Back,
    Quit,
    Refresh,
    Help,
    /// `/`, `:`: start typing.
    StartFilter,
    StartCommand,
    /// A character typed into the line being edited.
    Type(char),
    Erase,
    Submit,
    CycleSort,
    ToggleDeprecated,
    Reveal,
    Copy,
    Rotate {
        manual: bool,
    },
    Step,
    Approve,
    Reject,
    Retry,
    Cancel,
    ForceDelete,
    /// `y` / `n` at a confirmation.
    Confirm(bool),
    /// Time passes (hides revealed values).
    Tick(Instant),
    // ---- answers --------------------------------------------------------
    SecretsLoaded {
        /// Which load this answers (see `app::Loads`).
        issued: u64,
        /// A page to add, asked for before a reload asked for since.
        superseded: bool,
        rows: Vec<SecretRow>,
        next_page_token: String,
        append: bool,
        /// The filter and sort the page was asked for: an answer to an
        /// older request (typing moved on) is dropped.
        filter: String,
        sort: super::app::Sort,
    },
    DetailLoaded(u64, Box<Detail>),
    ApprovalsLoaded(u64, Vec<proto::RotationRun>),
    AuditLoaded(u64, Vec<proto::AuditEvent>),
    /// A value to show on the detail of the secret it is of.
    Revealed(Fetched),
    Done(String),
    Failed(String),
    Event(Box<proto::WatchEvent>),
    Connection(Connection),
}

/// A server call for the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    LoadSecrets {
        append: bool,
    },
    LoadDetail(String),
    LoadApprovals,
    LoadAudit,
    Reveal(String),
    Copy(String),
    Rotate {
        name: String,
        manual: bool,
    },
    /// The step the run (`run_id`, when one was on screen) waits at.
    Step {
        name: String,
        run_id: String,
    },
    Approve {
        name: String,
        seen: RunSeen,
        comment: String,
    },
    Reject {
        name: String,
        seen: RunSeen,
        comment: String,
    },
    Retry {
        name: String,
        run_id: String,
    },
    Cancel {
        name: String,
        run_id: String,
    },
    ForceDelete {
        name: String,
        secret_id: String,
    },
}

const PAGE: usize = 10;

/// The view names `:` accepts.
pub fn view_named(name: &str) -> Option<View> {
    match name.trim() {
        "secrets" | "s" | "list" => Some(View::Secrets),
        "approvals" | "a" => Some(View::Approvals),
        "audit" | "log" => Some(View::Audit),
        "run" | "rotation" | "r" => Some(View::Run),
        "detail" | "secret" | "d" => Some(View::Detail),
        _ => None,
    }
}

fn load_for(app: &App, view: View) -> Vec<Effect> {
    match view {
        View::Secrets => vec![Effect::LoadSecrets { append: false }],
        View::Detail | View::Run => app
            .detail
            .as_ref()
            .map(|detail| vec![Effect::LoadDetail(detail.metadata.name.clone())])
            .unwrap_or_default(),
        View::Approvals => vec![Effect::LoadApprovals],
        View::Audit => vec![Effect::LoadAudit],
    }
}

fn go(app: &mut App, view: View) -> Vec<Effect> {
    if app.view != view {
        app.back.push(app.view);
        app.view = view;
    }
    load_for(app, view)
}

fn move_selection(selected: &mut usize, len: usize, delta: isize) {
    if len == 0 {
        *selected = 0;
        return;
    }
    let target = (*selected as isize + delta).clamp(0, len as isize - 1);
    *selected = target as usize;
}

/// Applies an action; returns the server calls it needs.
pub fn update(app: &mut App, action: Action) -> Vec<Effect> {
    // Typing modes take the keys first.
    match (&mut app.mode, &action) {
        (Mode::Filter(text) | Mode::Command(text), Action::Type(c)) => {
            text.push(*c);
            return filter_changed(app);
        }
        (Mode::Filter(text) | Mode::Command(text), Action::Erase) => {
            text.pop();
            return filter_changed(app);
        }
        (Mode::Comment { text, .. }, Action::Type(c)) => {
            text.push(*c);
            return Vec::new();
        }
        (Mode::Comment { text, .. }, Action::Erase) => {
            text.pop();
            return Vec::new();
        }
        (Mode::Help, _) if !matches!(action, Action::Tick(_)) && is_key(&action) => {
            app.mode = Mode::Normal;
            return Vec::new();
        }
        _ => {}
    }
    match action {
        Action::Quit => {
            if app.mode != Mode::Normal {
                app.mode = Mode::Normal;
            } else {
                app.quit = true;
            }
            Vec::new()
        }
        Action::Back => {
            if app.mode != Mode::Normal {
                if let Mode::Filter(_) = app.mode {
                    // Esc while filtering clears the filter.
                    app.mode = Mode::Normal;
                    return clear_filter(app);
                }
                app.mode = Mode::Normal;
                return Vec::new();
            }
            match app.back.pop() {
                Some(view) => {
                    app.view = view;
                    if let Some(detail) = &mut app.detail {
                        detail.revealed = None;
                    }
                    load_for(app, view)
                }
                None => {
                    app.quit = true;
                    Vec::new()
                }
            }
        }
        Action::Help => {
            app.mode = Mode::Help;
            Vec::new()
        }
        Action::Refresh => load_for(app, app.view),
        Action::Up
        | Action::Down
        | Action::PageUp
        | Action::PageDown
        | Action::Top
        | Action::Bottom => {
            let delta: isize = match action {
                Action::Up => -1,
                Action::Down => 1,
                Action::PageUp => -(PAGE as isize),
                Action::PageDown => PAGE as isize,
                Action::Top => isize::MIN / 2,
                _ => isize::MAX / 2,
            };
            navigate(app, delta)
        }
        Action::Open => match app.view {
            View::Secrets | View::Approvals => match app.focused_name() {
                Some(name) => {
                    let target = if app.view == View::Approvals {
                        View::Run
                    } else {
                        View::Detail
                    };
                    app.back.push(app.view);
                    app.view = target;
                    app.detail = None;
                    app.detail_wanted = Some(name.clone());
                    vec![Effect::LoadDetail(name)]
                }
                None => Vec::new(),
            },
            View::Detail => go(app, View::Run),
            _ => Vec::new(),
        },
        Action::StartFilter => {
            let current = match app.view {
                View::Audit => app.audit_filter.clone(),
                _ => app.secrets.filter.clone(),
            };
            if matches!(app.view, View::Secrets | View::Audit) {
                app.mode = Mode::Filter(current);
            }
            Vec::new()
        }
        Action::StartCommand => {
            app.mode = Mode::Command(String::new());
            Vec::new()
        }
        Action::Submit => submit(app),
        Action::CycleSort => {
            if app.view == View::Secrets {
                app.secrets.sort = app.secrets.sort.next();
                app.secrets.selected = 0;
                return vec![Effect::LoadSecrets { append: false }];
            }
            Vec::new()
        }
        Action::ToggleDeprecated => {
            if let Some(detail) = &mut app.detail {
                detail.show_deprecated = !detail.show_deprecated;
            }
            Vec::new()
        }
        Action::Reveal => confirm_for(app, Confirmable::Reveal),
        Action::Copy => confirm_for(app, Confirmable::Copy),
        // The secret on screen goes with it: one deleted and created again
        // under the name before `y` is another.
        Action::ForceDelete => {
            let secret_id = app.focused_secret_id();
            confirm_for(app, |name| Confirmable::ForceDelete { name, secret_id })
        }
        // The run on screen goes with the request: one that ended and
        // another that began meanwhile is not the one meant.
        Action::Cancel => {
            let run_id = app.focused_run().run_id;
            confirm_for(app, |name| Confirmable::Cancel { name, run_id })
        }
        Action::Rotate { manual } => with_name(app, |name| Effect::Rotate { name, manual }),
        Action::Step => {
            let run_id = app.focused_run().run_id;
            with_name(app, |name| Effect::Step { name, run_id })
        }
        Action::Retry => {
            let run_id = app.focused_run().run_id;
            with_name(app, |name| Effect::Retry { name, run_id })
        }
        Action::Approve | Action::Reject => {
            let seen = app.focused_run();
            match app.focused_name() {
                // Without the run on screen, an approval would go to
                // whichever run waits when it arrives.
                Some(name) if seen.run_id.is_empty() => {
                    app.error(format!(
                        "no rotation run of {name} is shown here; open it (Enter) to see the \
                         run an approval would be for"
                    ));
                }
                Some(name) => {
                    app.mode = Mode::Comment {
                        name,
                        seen,
                        reject: matches!(action, Action::Reject),
                        text: String::new(),
                    };
                }
                None => {}
            }
            Vec::new()
        }
        Action::Confirm(yes) => {
            let Mode::Confirm(what) = std::mem::take(&mut app.mode) else {
                return Vec::new();
            };
            if !yes {
                app.info("cancelled");
                return Vec::new();
            }
            vec![match what {
                Confirmable::Reveal(name) => Effect::Reveal(name),
                Confirmable::Copy(name) => Effect::Copy(name),
                Confirmable::ForceDelete { name, secret_id } => {
                    Effect::ForceDelete { name, secret_id }
                }
                Confirmable::Cancel { name, run_id } => Effect::Cancel { name, run_id },
                Confirmable::Reject {
                    name,
                    seen,
                    comment,
                } => Effect::Reject {
                    name,
                    seen,
                    comment,
                },
            }]
        }
        Action::Tick(now) => {
            app.now_millis = rekey_shared::time::now_millis();
            if let Some(detail) = &mut app.detail
                && detail
                    .revealed
                    .as_ref()
                    .is_some_and(|revealed| revealed.until <= now)
            {
                detail.revealed = None;
            }
            Vec::new()
        }
        Action::Type(_) | Action::Erase => Vec::new(),
        Action::SecretsLoaded {
            issued,
            superseded,
            rows,
            next_page_token,
            append,
            filter,
            sort,
        } => {
            let list = &mut app.secrets;
            // A reload is shown unless a newer reload is; a page added,
            // unless a reload was asked for after it (or shown since).
            let shown = if append {
                !superseded && issued > app.loads.secrets.newest()
            } else {
                app.loads.secrets.fresh(issued)
            };
            if filter != list.filter || sort != list.sort || !shown {
                return Vec::new();
            }
            // The selection stays on its secret while others come and go
            // (a key pressed next acts on the secret it was on).
            let selected = list
                .rows
                .get(list.selected)
                .map(|row| row.metadata.name.clone());
            if append {
                list.rows.extend(rows);
            } else {
                list.rows = rows;
            }
            list.next_page_token = next_page_token;
            list.loading = false;
            list.selected = selected
                .and_then(|name| list.rows.iter().position(|row| row.metadata.name == name))
                .unwrap_or(list.selected)
                .min(list.rows.len().saturating_sub(1));
            Vec::new()
        }
        Action::DetailLoaded(issued, mut detail) => {
            if app
                .detail_wanted
                .as_deref()
                .is_some_and(|wanted| wanted != detail.metadata.name)
                || !app.loads.detail.fresh(issued)
            {
                return Vec::new();
            }
            if let Some(old) = &mut app.detail
                && old.metadata.name == detail.metadata.name
            {
                detail.show_deprecated = old.show_deprecated;
                detail.revealed = old.revealed.take();
                detail.scroll = old.scroll;
            }
            app.detail = Some(*detail);
            Vec::new()
        }
        Action::ApprovalsLoaded(issued, runs) => {
            if !app.loads.approvals.fresh(issued) {
                return Vec::new();
            }
            // The selection stays on its run while others come and go.
            let selected = app
                .approvals
                .get(app.approvals_selected)
                .map(|run| run.run_id.clone());
            app.approvals = runs;
            app.approvals_selected = selected
                .and_then(|id| app.approvals.iter().position(|run| run.run_id == id))
                .unwrap_or(app.approvals_selected)
                .min(app.approvals.len().saturating_sub(1));
            Vec::new()
        }
        Action::AuditLoaded(issued, events) => {
            if !app.loads.audit.fresh(issued) {
                return Vec::new();
            }
            app.audit = events;
            app.audit_selected = app.audit_selected.min(app.audit.len().saturating_sub(1));
            Vec::new()
        }
        Action::Revealed(Fetched { name, value }) => {
            // Shown only on its own secret's detail, and only while it is
            // the one on screen: the user may have moved on meanwhile.
            match &mut app.detail {
                Some(detail) if detail.metadata.name == name && app.view == View::Detail => {
                    detail.revealed = Some(Revealed {
                        value,
                        until: Instant::now() + Duration::from_secs(super::app::REVEAL_SECONDS),
                    });
                }
                _ => app.info(format!("open {name} to see its value")),
            }
            Vec::new()
        }
        Action::Done(text) => {
            app.info(text);
            // As for a change seen live: a paged list is not reloaded
            // under the cursor.
            if secrets_paged(app) {
                Vec::new()
            } else {
                load_for(app, app.view)
            }
        }
        Action::Failed(text) => {
            app.error(text);
            app.secrets.loading = false;
            Vec::new()
        }
        Action::Event(event) => {
            // Live: reload what is on screen when it concerns it.
            let shown = app.focused_name();
            let relevant = match app.view {
                View::Secrets | View::Approvals | View::Audit => true,
                View::Detail | View::Run => shown.as_deref() == Some(event.name.as_str()),
            };
            // A list paged past its first page is not reloaded under the
            // cursor (a reload brings the first page back, and the
            // selection with it): `r` does it when the operator wants.
            if relevant && secrets_paged(app) {
                app.info(format!(
                    "{} changed; r reloads the list from its start",
                    event.name
                ));
                Vec::new()
            } else if relevant {
                load_for(app, app.view)
            } else {
                Vec::new()
            }
        }
        Action::Connection(state) => {
            let reconnected =
                state == Connection::Connected && app.connection != Connection::Connected;
            app.connection = state;
            if reconnected {
                load_for(app, app.view)
            } else {
                Vec::new()
            }
        }
    }
}

/// Whether the list on screen is paged past its first page (a reload
/// would bring back only that).
fn secrets_paged(app: &App) -> bool {
    app.view == View::Secrets && app.secrets.rows.len() > super::backend::PAGE as usize
}

fn is_key(action: &Action) -> bool {
    !matches!(
        action,
        Action::SecretsLoaded { .. }
            | Action::DetailLoaded(..)
            | Action::ApprovalsLoaded(..)
            | Action::AuditLoaded(..)
            | Action::Revealed(_)
            | Action::Done(_)
            | Action::Failed(_)
            | Action::Event(_)
            | Action::Connection(_)
    )
}

fn with_name(app: &mut App, effect: impl FnOnce(String) -> Effect) -> Vec<Effect> {
    match app.focused_name() {
        Some(name) if app.view != View::Audit => vec![effect(name)],
        _ => Vec::new(),
    }
}

fn confirm_for(app: &mut App, what: impl FnOnce(String) -> Confirmable) -> Vec<Effect> {
    if let Some(name) = app.focused_name()
        && app.view != View::Audit
    {
        app.mode = Mode::Confirm(what(name));
    }
    Vec::new()
}

fn navigate(app: &mut App, delta: isize) -> Vec<Effect> {
    match app.view {
        View::Secrets => {
            let list = &mut app.secrets;
            move_selection(&mut list.selected, list.rows.len(), delta);
            // Fetch the next page before the user reaches the end.
            if !list.loading
                && !list.next_page_token.is_empty()
                && list.selected + PAGE * 2 >= list.rows.len()
            {
                list.loading = true;
                return vec![Effect::LoadSecrets { append: true }];
            }
        }
        View::Approvals => move_selection(&mut app.approvals_selected, app.approvals.len(), delta),
        View::Audit => move_selection(&mut app.audit_selected, app.audit.len(), delta),
        View::Detail | View::Run => {
            if let Some(detail) = &mut app.detail {
                detail.scroll =
                    (detail.scroll as isize + delta.clamp(-1000, 1000)).clamp(0, 1000) as u16;
            }
        }
    }
    Vec::new()
}

fn filter_changed(app: &mut App) -> Vec<Effect> {
    match &app.mode {
        Mode::Filter(text) => match app.view {
            View::Audit => {
                app.audit_filter = text.clone();
                vec![Effect::LoadAudit]
            }
            _ => {
                app.secrets.filter = text.clone();
                app.secrets.selected = 0;
                vec![Effect::LoadSecrets { append: false }]
            }
        },
        _ => Vec::new(),
    }
}

fn clear_filter(app: &mut App) -> Vec<Effect> {
    match app.view {
        View::Audit => {
            app.audit_filter.clear();
            vec![Effect::LoadAudit]
        }
        _ => {
            app.secrets.filter.clear();
            vec![Effect::LoadSecrets { append: false }]
        }
    }
}

fn submit(app: &mut App) -> Vec<Effect> {
    match std::mem::take(&mut app.mode) {
        Mode::Filter(_) => Vec::new(),
        Mode::Command(text) => match view_named(&text) {
            Some(view @ (View::Detail | View::Run)) if app.detail.is_none() => {
                app.error(format!(
                    "open a secret first to see its {}",
                    view.title().to_lowercase()
                ));
                Vec::new()
            }
            Some(view) => go(app, view),
            None => {
                app.error(format!(
                    ":{text} is not a view; try :secrets, :approvals, :audit, :run"
                ));
                Vec::new()
            }
        },
        Mode::Comment {
            name,
            seen,
            reject,
            text,
        } => {
            if reject {
                if text.trim().is_empty() {
                    app.error("a rejection needs a comment");
                    return Vec::new();
                }
                app.mode = Mode::Confirm(Confirmable::Reject {
                    name,
                    seen,
                    comment: text,
                });
                Vec::new()
            } else {
                vec![Effect::Approve {
                    name,
                    seen,
                    comment: text,
                }]
            }
        }
        other => {
            app.mode = other;
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests;
