//! The terminal UI: `rekey` without a subcommand. The state ([`app`]), key
//! mapping ([`input`]), state changes ([`update`]) and drawing ([`render`])
//! are separate; only [`backend`] and this loop do I/O. The terminal is
//! restored on every exit, panics included.

pub mod app;
pub mod backend;
pub mod input;
pub mod render;
pub mod text;
pub mod update;

use app::App;
use crossterm::event::{Event, EventStream, KeyEventKind};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use update::{Action, update};

/// Restores the terminal when dropped.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        // From here on, a failure restores what was changed.
        let guard = Self;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(guard)
    }
}

fn restore() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Runs the UI on `channel` until the user quits.
pub async fn run(
    channel: Channel,
    server: &str,
    principal: &str,
    message: Option<String>,
) -> anyhow::Result<()> {
    let plain = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let mut app = App::new(server, principal, plain);
    app.now_millis = rekey_shared::time::now_millis();
    if let Some(message) = message {
        app.info(message);
    }
    let (sender, mut actions) = tokio::sync::mpsc::unbounded_channel();
    let backend = backend::Backend::new(channel, sender);
    let watcher = tokio::spawn(backend.clone().watch());
    backend.perform(update::Effect::LoadSecrets { append: false }, &app);

    // SIGTERM or SIGHUP (the SSH session gone) ends the UI, the terminal
    // restored, rather than kill it in raw mode.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let _guard = TerminalGuard::enter()?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    let mut keys = EventStream::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    while !app.quit {
        terminal.draw(|frame| render::render(&app, frame))?;
        let action = tokio::select! {
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => input::action_for(&app, key),
                Some(Ok(_)) => None,
                Some(Err(error)) => return Err(error.into()),
                None => Some(Action::Quit),
            },
            action = actions.recv() => action,
            _ = ticks.tick() => Some(Action::Tick(std::time::Instant::now())),
            // Whatever dialog is open (Quit would only close it).
            _ = terminate.recv() => {
                app.quit = true;
                None
            }
            _ = hangup.recv() => {
                app.quit = true;
                None
            }
        };
        if let Some(action) = action {
            // A message stays until the next key.
            if matches!(
                action,
                Action::Up | Action::Down | Action::Open | Action::Back
            ) {
                app.message = None;
            }
            for effect in update(&mut app, action) {
                backend.perform(effect, &app);
            }
        }
    }
    watcher.abort();
    Ok(())
}
