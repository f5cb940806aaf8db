//! Drawing: a pure function of the [`App`]. Works in 80×24 and up, with the
//! 16 basic colours, and without colour at all (`NO_COLOR`): state is always
//! in the words too, never in colour alone.

use super::app::{App, Confirmable, Connection, Mode, View, rotation_state};
use super::text;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use rekey_shared::proto;
use rekey_shared::time::format_timestamp;

fn color(app: &App, color: Color) -> Style {
    if app.plain {
        Style::default()
    } else {
        Style::default().fg(color)
    }
}

fn selected(app: &App) -> Style {
    if app.plain {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default().bg(Color::Blue).fg(Color::White)
    }
}

fn time(timestamp: &Option<prost_types::Timestamp>) -> String {
    timestamp
        .as_ref()
        .map(|t| {
            format_timestamp(t)
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_owned()
        })
        .unwrap_or_else(|| "-".to_owned())
}

fn age(app: &App, timestamp: &Option<prost_types::Timestamp>) -> String {
    let Some(at) = timestamp else {
        return "-".to_owned();
    };
    let seconds = (app.now_millis - rekey_shared::time::millis_from_timestamp(at)).max(0) / 1000;
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn render(app: &App, frame: &mut Frame) {
    let [header, body, input, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(app, frame, header);
    match app.view {
        View::Secrets => render_secrets(app, frame, body),
        View::Detail => render_detail(app, frame, body),
        View::Run => render_run(app, frame, body),
        View::Approvals => render_approvals(app, frame, body),
        View::Audit => render_audit(app, frame, body),
    }
    render_input(app, frame, input);
    render_footer(app, frame, footer);
    match &app.mode {
        Mode::Help => render_help(app, frame),
        Mode::Confirm(what) => render_confirm(app, frame, what),
        _ => {}
    }
    drop_bidirectional_overrides(frame);
}

/// Takes bidirectional overrides and isolates out of every cell drawn:
/// ratatui drops control characters, not these, and in what the server sent
/// (a description, a rotator's error) they would reorder what the screen
/// shows. (The CLI escapes them: `output::shown`.)
fn drop_bidirectional_overrides(frame: &mut Frame) {
    let bidirectional = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    for cell in frame.buffer_mut().content.iter_mut() {
        if cell.symbol().chars().any(bidirectional) {
            let kept: String = cell
                .symbol()
                .chars()
                .filter(|c| !bidirectional(*c))
                .collect();
            cell.set_symbol(if kept.is_empty() { " " } else { &kept });
        }
    }
}

fn render_header(app: &App, frame: &mut Frame, area: Rect) {
    let mut spans = vec![
        Span::styled(" rekey ", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw("· "),
        Span::styled(
            app.view.title(),
            Style::default().add_modifier(Modifier::BOLD),
        ),
    ];
    match app.view {
        View::Secrets => {
            spans.push(Span::raw(format!(
                "  {} shown{}  sort: {}",
                app.secrets.rows.len(),
                if app.secrets.next_page_token.is_empty() {
                    ""
                } else {
                    "+"
                },
                app.secrets.sort.label()
            )));
            if !app.secrets.filter.is_empty() {
                spans.push(Span::raw(format!("  filter: {}", app.secrets.filter)));
            }
        }
        View::Detail | View::Run => {
            if let Some(detail) = &app.detail {
                spans.push(Span::raw(format!("  {}", detail.metadata.name)));
            }
        }
        View::Approvals => spans.push(Span::raw(format!(
            "  {} waiting for you",
            app.approvals.len()
        ))),
        View::Audit => {
            if !app.audit_filter.is_empty() {
                spans.push(Span::raw(format!("  filter: {}", app.audit_filter)));
            }
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_input(app: &App, frame: &mut Frame, area: Rect) {
    let line = match &app.mode {
        Mode::Filter(text) => format!("/{text}▏"),
        Mode::Command(text) => format!(":{text}▏"),
        Mode::Comment {
            reject, text, name, ..
        } => format!(
            "{} {name}, comment: {text}▏  (Enter to send, Esc to drop)",
            if *reject { "Reject" } else { "Approve" }
        ),
        _ => match &app.message {
            Some(message) => message.text.clone(),
            None => text::hint(app.view).to_owned(),
        },
    };
    let style = match (&app.mode, &app.message) {
        (Mode::Normal, Some(message)) if message.error => {
            color(app, Color::Red).add_modifier(Modifier::BOLD)
        }
        (Mode::Normal, None) => color(app, Color::DarkGray),
        _ => Style::default(),
    };
    frame.render_widget(Paragraph::new(Span::styled(line, style)), area);
}

fn render_footer(app: &App, frame: &mut Frame, area: Rect) {
    let (connection, style) = match &app.connection {
        Connection::Connected => ("connected".to_owned(), color(app, Color::Green)),
        Connection::Connecting => ("connecting…".to_owned(), color(app, Color::Yellow)),
        Connection::Lost(reason) => (
            format!("connection lost, reconnecting: {reason}"),
            color(app, Color::Red),
        ),
    };
    let line = Line::from(vec![
        Span::styled(
            format!(" {} ", app.server),
            Style::default().add_modifier(Modifier::REVERSED),
        ),
        Span::raw(format!(" as {}  ", app.principal)),
        Span::styled(connection, style),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn table_state(selected: usize, len: usize) -> TableState {
    TableState::default().with_selected(if len == 0 { None } else { Some(selected) })
}

fn render_secrets(app: &App, frame: &mut Frame, area: Rect) {
    let rows: Vec<Row> = app
        .secrets
        .rows
        .iter()
        .map(|row| {
            let stages: Vec<String> = row
                .metadata
                .versions
                .iter()
                .flat_map(|v| v.stages.iter())
                .filter(|s| s.as_str() != "CURRENT" && s.as_str() != "PREVIOUS")
                .cloned()
                .collect();
            let state = rotation_state(row);
            let state_style = match state.as_str() {
                "failed" | "needs attention" => color(app, Color::Red),
                "awaiting approval" => color(app, Color::Yellow),
                s if s.starts_with("running") => color(app, Color::Cyan),
                _ => Style::default(),
            };
            let tags: Vec<String> = row
                .metadata
                .tags
                .iter()
                .map(|t| format!("{}={}", t.key, t.value))
                .collect();
            Row::new(vec![
                Cell::from(row.metadata.name.clone()),
                Cell::from(Span::styled(state, state_style)),
                Cell::from(
                    time(&row.metadata.next_rotation_at)
                        .chars()
                        .take(10)
                        .collect::<String>(),
                ),
                Cell::from(if stages.is_empty() {
                    "-".to_owned()
                } else {
                    stages.join(",")
                }),
                Cell::from(row.metadata.description.clone()),
                Cell::from(tags.join(" ")),
            ])
        })
        .collect();
    let empty = app.secrets.rows.is_empty();
    let table = Table::new(
        rows,
        // Fixed columns fit in 80 with room to spare; name and description
        // share the rest, so the layout never has to give anything up.
        [
            Constraint::Fill(2),
            Constraint::Length(17),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Fill(1),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new(["NAME", "ROTATION", "NEXT", "STAGES", "DESCRIPTION", "TAGS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected(app))
    .block(Block::default().borders(Borders::TOP));
    let mut state = table_state(app.secrets.selected, app.secrets.rows.len());
    frame.render_stateful_widget(table, area, &mut state);
    if empty {
        let text = if app.secrets.loading {
            "loading…"
        } else {
            "no secrets to show"
        };
        let inner = Rect {
            y: area.y + 2,
            height: 1,
            ..area
        };
        frame.render_widget(Paragraph::new(format!("  {text}")), inner);
    }
}

fn render_detail(app: &App, frame: &mut Frame, area: Rect) {
    let Some(detail) = &app.detail else {
        frame.render_widget(Paragraph::new("  loading…"), area);
        return;
    };
    let m = &detail.metadata;
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(m.name.clone(), bold),
            Span::raw(format!("  ({})", m.secret_id)),
        ]),
        Line::from(format!("description   {}", m.description)),
        Line::from(format!("master key    {}", m.key_name)),
        Line::from(format!(
            "created       {}   changed {}",
            time(&m.created_at),
            time(&m.changed_at)
        )),
        Line::from(format!(
            "tags          {}",
            m.tags
                .iter()
                .map(|t| format!("{}={}", t.key, t.value))
                .collect::<Vec<_>>()
                .join(" ")
        )),
    ];
    if m.deletion_date.is_some() {
        lines.push(Line::from(Span::styled(
            format!("scheduled for deletion on {}", time(&m.deletion_date)),
            color(app, Color::Red),
        )));
    }
    let value = match &detail.revealed {
        // Borrowed, not copied: a copy per frame would leave the value in
        // freed memory four times a second.
        Some(revealed) => Span::styled(revealed.value.as_str(), color(app, Color::Yellow)),
        None => Span::raw("•••••••• (v reveal, c copy)"),
    };
    lines.push(Line::from(vec![Span::raw("value         "), value]));
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(
        format!(
            "VERSIONS{}",
            if detail.show_deprecated {
                " (with deprecated)"
            } else {
                ""
            }
        ),
        bold,
    )));
    for version in detail
        .versions
        .iter()
        .filter(|v| detail.show_deprecated || !v.stages.is_empty())
    {
        lines.push(Line::from(format!(
            "  {:<36} {:<18} {}",
            version.version_id,
            if version.stages.is_empty() {
                "deprecated".to_owned()
            } else {
                version.stages.join(",")
            },
            time(&version.created_at)
        )));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled("ROTATION", bold)));
    match detail.rotation.as_ref().and_then(|r| r.config.as_ref()) {
        Some(config) => {
            lines.push(Line::from(format!(
                "  {} rotator, {}{}",
                config.rotator,
                if !config.enabled {
                    "disabled".to_owned()
                } else if config.schedule.is_empty() {
                    "on demand".to_owned()
                } else {
                    config.schedule.clone()
                },
                if config.approval_steps.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} approval(s) by {}",
                        config.approvals_required, config.approver_role
                    )
                }
            )));
            lines.push(Line::from(format!(
                "  last rotated {}   next {}",
                time(&config.last_rotated_at),
                time(&config.next_rotation_at)
            )));
        }
        None => lines.push(Line::from("  not configured")),
    }
    for run in detail.runs.iter().take(5) {
        lines.push(Line::from(format!(
            "  run {}  {:<20} {}",
            run.run_id.chars().take(8).collect::<String>(),
            run.state,
            time(&run.started_at)
        )));
    }
    let paragraph = Paragraph::new(lines)
        .block(Block::default().borders(Borders::TOP))
        .wrap(Wrap { trim: false })
        .scroll((detail.scroll, 0));
    frame.render_widget(paragraph, area);
}

fn step_name(step: i32) -> &'static str {
    match step {
        1 => "createSecret",
        2 => "setSecret",
        3 => "testSecret",
        4 => "finishSecret",
        _ => "-",
    }
}

fn render_run(app: &App, frame: &mut Frame, area: Rect) {
    let Some(run) = app.run() else {
        let text = if app.detail.is_some() {
            "  no rotation run yet: R starts one, M a manual one"
        } else {
            "  loading…"
        };
        frame.render_widget(
            Paragraph::new(text).block(Block::default().borders(Borders::TOP)),
            area,
        );
        return;
    };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{}  ", run.name), bold),
        Span::raw(format!(
            "{} run, started by {}, {} ago",
            if run.scheduled {
                "scheduled"
            } else if run.manual {
                "manual"
            } else {
                "automatic"
            },
            run.initiator,
            age(app, &run.started_at)
        )),
    ])];
    let state_style = match run.state.as_str() {
        "failed" | "needs_attention" | "step_failed" | "rejected" | "abandoned" => {
            color(app, Color::Red)
        }
        "awaiting_approval" | "waiting_for_operator" => color(app, Color::Yellow),
        "succeeded" => color(app, Color::Green),
        _ => color(app, Color::Cyan),
    };
    lines.push(Line::from(vec![
        Span::raw("state "),
        Span::styled(
            run.state.replace('_', " "),
            state_style.add_modifier(Modifier::BOLD),
        ),
        Span::raw(if run.end_reason.is_empty() {
            String::new()
        } else {
            format!("  ({})", run.end_reason)
        }),
    ]));
    lines.push(Line::from(""));
    for (index, step) in run.steps.iter().enumerate() {
        let marker = match step.state.as_str() {
            "done" => "[x]",
            "pending" => "[ ]",
            "running" => "[>]",
            "failed" | "needs_attention" => "[!]",
            "reverted" => "[<]",
            _ => "[?]",
        };
        let mut text = format!(
            "{marker} {} {:<13} {}",
            index + 1,
            step_name(step.step),
            step.state.replace('_', " ")
        );
        if step.approvals_required > 0 {
            text.push_str(&format!(
                " {}/{} approvals",
                step.approvals, step.approvals_required
            ));
        }
        if step.attempts > 0 && (step.attempts > 1 || !step.error.is_empty()) {
            text.push_str(&format!(", attempt {}", step.attempts));
        }
        let style = match step.state.as_str() {
            "done" => color(app, Color::Green),
            "failed" | "needs_attention" => color(app, Color::Red),
            "awaiting_approval" | "waiting_for_operator" => color(app, Color::Yellow),
            _ => Style::default(),
        };
        lines.push(Line::from(Span::styled(text, style)));
        if !step.error.is_empty() {
            lines.push(Line::from(Span::styled(
                format!("      {}", step.error),
                color(app, Color::Red),
            )));
        }
    }
    if !run.approvals.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled("APPROVALS", bold)));
        for approval in &run.approvals {
            lines.push(Line::from(format!(
                "  {} approved {} at {}{}",
                approval.principal,
                step_name(approval.step),
                time(&approval.at),
                if approval.comment.is_empty() {
                    String::new()
                } else {
                    format!(": {}", approval.comment)
                }
            )));
        }
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled("HISTORY", bold)));
    for entry in run.history.iter().rev().take(12) {
        lines.push(Line::from(format!(
            "  {}  {:<13} {:<17} {}{}",
            time(&entry.at).get(11..).unwrap_or_default(),
            step_name(entry.step),
            entry.event,
            entry.principal,
            if entry.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", entry.detail)
            }
        )));
    }
    let scroll = app.detail.as_ref().map_or(0, |d| d.scroll);
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::default().borders(Borders::TOP))
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        area,
    );
}

fn render_approvals(app: &App, frame: &mut Frame, area: Rect) {
    let rows: Vec<Row> = app
        .approvals
        .iter()
        .map(|run| {
            let step = run.steps.iter().find(|s| s.step == run.current_step);
            Row::new(vec![
                run.name.clone(),
                step_name(run.current_step).to_owned(),
                step.map(|s| format!("{}/{}", s.approvals, s.approvals_required))
                    .unwrap_or_default(),
                run.initiator.clone(),
                age(app, &run.updated_at),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(20),
            Constraint::Length(13),
            Constraint::Length(5),
            Constraint::Length(14),
            Constraint::Length(5),
        ],
    )
    .header(
        Row::new(["SECRET", "STEP", "OK", "INITIATOR", "AGE"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected(app))
    .block(Block::default().borders(Borders::TOP));
    let mut state = table_state(app.approvals_selected, app.approvals.len());
    frame.render_stateful_widget(table, area, &mut state);
    if app.approvals.is_empty() {
        frame.render_widget(
            Paragraph::new("  nothing waits for your approval"),
            Rect {
                y: area.y + 2,
                height: 1,
                ..area
            },
        );
    }
}

fn render_audit(app: &App, frame: &mut Frame, area: Rect) {
    let rows: Vec<Row> = app
        .audit
        .iter()
        .map(|event: &proto::AuditEvent| {
            let style = if event.decision == "deny" {
                color(app, Color::Red)
            } else {
                Style::default()
            };
            Row::new(vec![
                Cell::from(event.seq.to_string()),
                Cell::from(time(&event.time).get(5..).unwrap_or_default().to_owned()),
                Cell::from(event.principal.clone()),
                Cell::from(event.action.clone()),
                Cell::from(event.resource.clone()),
                Cell::from(Span::styled(
                    format!("{} {}", event.decision, event.outcome),
                    style,
                )),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Fill(3),
            Constraint::Fill(2),
            Constraint::Length(13),
        ],
    )
    .header(
        Row::new(["SEQ", "TIME", "PRINCIPAL", "ACTION", "RESOURCE", "RESULT"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected(app))
    .block(Block::default().borders(Borders::TOP));
    let mut state = table_state(app.audit_selected, app.audit.len());
    frame.render_stateful_widget(table, area, &mut state);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn render_help(app: &App, frame: &mut Frame) {
    let mut lines: Vec<Line> = text::keys(app.view)
        .iter()
        .chain(text::GLOBAL_KEYS)
        .map(|(key, what)| Line::from(format!(" {key:<14} {what}")))
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(" any key closes this help"));
    let area = centered(frame.area(), 76, lines.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" keys: {} ", app.view.title())),
        ),
        area,
    );
}

fn render_confirm(app: &App, frame: &mut Frame, what: &Confirmable) {
    let question = match what {
        Confirmable::Reveal(name) => format!("Show the value of {name} on screen?"),
        Confirmable::Copy(name) => format!("Copy the value of {name} to the clipboard?"),
        Confirmable::ForceDelete { name, .. } => {
            format!("Delete {name} and every version now? This cannot be undone.")
        }
        Confirmable::Cancel { name, run_id } if run_id.is_empty() => {
            format!("Cancel the rotation run of {name}?")
        }
        Confirmable::Cancel { name, run_id } => format!(
            "Cancel rotation run {} of {name}?",
            run_id.chars().take(8).collect::<String>()
        ),
        Confirmable::Reject { name, .. } => {
            format!("Reject the waiting step of {name}? The run is cancelled.")
        }
    };
    let area = centered(frame.area(), 70, 5);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(question),
            Line::from(""),
            Line::from("y: yes   any other key: no"),
        ])
        .wrap(Wrap { trim: true })
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" confirm ")
                .border_style(color(app, Color::Yellow)),
        ),
        area,
    );
}
