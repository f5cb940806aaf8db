//! Keys to actions: one table per mode, the same for every view where it
//! can be (arrows and vim keys move, Enter opens, Esc/q back, ? help).

use super::app::{App, Mode};
use super::update::Action;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub fn action_for(app: &App, key: KeyEvent) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    match &app.mode {
        Mode::Filter(_) | Mode::Command(_) | Mode::Comment { .. } => match key.code {
            KeyCode::Enter => Some(Action::Submit),
            KeyCode::Esc => Some(Action::Back),
            KeyCode::Backspace => Some(Action::Erase),
            KeyCode::Char(c) => Some(Action::Type(c)),
            _ => None,
        },
        Mode::Confirm(_) => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => Some(Action::Confirm(true)),
            _ => Some(Action::Confirm(false)),
        },
        Mode::Help => Some(Action::Back),
        Mode::Normal => match key.code {
            KeyCode::Up | KeyCode::Char('k') => Some(Action::Up),
            KeyCode::Down | KeyCode::Char('j') => Some(Action::Down),
            KeyCode::PageUp => Some(Action::PageUp),
            KeyCode::PageDown | KeyCode::Char(' ') => Some(Action::PageDown),
            KeyCode::Home | KeyCode::Char('g') => Some(Action::Top),
            KeyCode::End | KeyCode::Char('G') => Some(Action::Bottom),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => Some(Action::Open),
            KeyCode::Esc | KeyCode::Left | KeyCode::Char('h') | KeyCode::Char('q') => {
                Some(Action::Back)
            }
            KeyCode::Char('?') => Some(Action::Help),
            KeyCode::Char('/') => Some(Action::StartFilter),
            KeyCode::Char(':') => Some(Action::StartCommand),
            KeyCode::Char('r') => Some(Action::Refresh),
            KeyCode::Char('s') => Some(Action::CycleSort),
            KeyCode::Char('d') => Some(Action::ToggleDeprecated),
            KeyCode::Char('v') => Some(Action::Reveal),
            KeyCode::Char('c') => Some(Action::Copy),
            KeyCode::Char('R') => Some(Action::Rotate { manual: false }),
            KeyCode::Char('M') => Some(Action::Rotate { manual: true }),
            KeyCode::Char('n') => Some(Action::Step),
            KeyCode::Char('a') => Some(Action::Approve),
            KeyCode::Char('x') => Some(Action::Reject),
            KeyCode::Char('t') => Some(Action::Retry),
            KeyCode::Char('C') => Some(Action::Cancel),
            KeyCode::Char('D') => Some(Action::ForceDelete),
            _ => None,
        },
    }
}
