//! The signals that stop a command: SIGTERM and SIGINT, and SIGHUP where
//! asked (`rekeyd dev`: the terminal closed). `serve`, `dev` and `restore`
//! wait on them to end as they would on a failure (drain, clean up, take
//! back what they wrote) instead of dying where they stand.

use anyhow::Context;
use std::future::Future;

/// Completes on SIGTERM or SIGINT, and with `hangup` on SIGHUP too. The
/// handlers are installed when this is called, not when the future is
/// first polled: a signal that comes between the two is not the default
/// (death) but completes it.
pub fn stop(hangup: bool) -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut hung_up = if hangup {
        Some(signal(SignalKind::hangup()).context("handling SIGHUP")?)
    } else {
        None
    };
    Ok(async move {
        let hung_up = async {
            match &mut hung_up {
                Some(hung_up) => hung_up.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            _ = hung_up => {}
        }
    })
}
