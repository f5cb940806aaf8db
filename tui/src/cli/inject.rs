//! `rekey run`: starts a command with secret values in its environment,
//! read before it starts, and passes its exit status through. It never
//! prints a value; a secret that cannot be read stops it before the
//! command starts. With `--watch` it follows the secrets' change events
//! and, when a value the command got has changed, stops the command
//! (SIGTERM) and starts it again with the new values; a watch the server
//! dropped is opened again while the command runs on. A value that can no
//! longer be read (deleted, access revoked) stops the command and `rekey
//! run` with it. SIGTERM, SIGINT, SIGHUP and SIGQUIT to `rekey run` go on
//! to the command.

use crate::client::Connection;
use rekey_shared::identity::Identity;
use rekey_shared::proto;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::watch_client::WatchClient;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use zeroize::Zeroizing;

/// `VAR=NAME[#FIELD]`: the variable, the secret, and a field of its JSON
/// value.
#[derive(Debug, Clone)]
pub struct EnvSpec {
    variable: String,
    name: String,
    field: Option<String>,
}

/// Parses `VAR=NAME[#FIELD]` (for the flag parser).
pub fn parse_env(spec: &str) -> Result<EnvSpec, String> {
    let (variable, secret) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not VAR=NAME[#FIELD]"))?;
    let valid = variable
        .chars()
        .enumerate()
        .all(|(index, c)| c == '_' || c.is_ascii_alphabetic() || (index > 0 && c.is_ascii_digit()));
    if variable.is_empty() || !valid {
        return Err(format!(
            "{variable:?} is not a variable name (letters, digits, _; not starting with a digit)"
        ));
    }
    let (name, field) = match secret.split_once('#') {
        Some((name, field)) => (name, Some(field.to_owned())),
        None => (secret, None),
    };
    if name.is_empty() {
        return Err(format!("{spec:?} names no secret"));
    }
    Ok(EnvSpec {
        variable: variable.to_owned(),
        name: name.to_owned(),
        field,
    })
}

/// The text a variable gets: the value, or one field of its JSON.
fn pick(
    response: &proto::GetSecretValueResponse,
    field: Option<&str>,
) -> anyhow::Result<Zeroizing<String>> {
    let text = response.secret_string.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "{} is a binary value; an environment variable needs text",
            response.name
        )
    })?;
    let Some(field) = field else {
        return Ok(Zeroizing::new(text.to_owned()));
    };
    let mut document: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| anyhow::anyhow!("the value of {} is not JSON", response.name))?;
    let picked = document.get(field).map(|picked| {
        Zeroizing::new(match picked {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    });
    crate::output::wipe_json(&mut document);
    picked.ok_or_else(|| {
        anyhow::anyhow!("the JSON value of {} has no field {field:?}", response.name)
    })
}

/// The values `specs` name, as the command's environment gets them.
async fn read_values(
    client: &mut SecretsClient<Channel>,
    specs: &[EnvSpec],
) -> anyhow::Result<Vec<(String, Zeroizing<String>)>> {
    let mut values = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut response = client
            .get_secret_value(proto::GetSecretValueRequest {
                name: spec.name.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let picked = pick(&response, spec.field.as_deref());
        rekey_shared::value::wipe_response(&mut response);
        values.push((spec.variable.clone(), picked?));
    }
    Ok(values)
}

/// What the watch tells the supervisor: read the values again, or the
/// server ended the watch because the caller's certificate is no longer
/// good (revoked, expired): the command must not keep values it got under
/// it.
#[derive(Debug)]
enum Change {
    Changed,
    Refused(String),
}

/// Change events of the secrets `specs` name, merged (events carry no
/// values; the receiver reads them again). A stream that ends (the server
/// restarted, the connection dropped) is opened again, with pauses of up
/// to 5 seconds between tries, and once it is back the receiver is told
/// too, for what changed while it was away; the command runs on meanwhile.
async fn changes(
    connection: &Connection,
    specs: &[EnvSpec],
) -> anyhow::Result<mpsc::UnboundedReceiver<Change>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let channel = connection.channel().await?;
    let prober = Prober {
        server: connection.server.clone(),
        identity: Arc::new(connection.identity()?),
    };
    // One stream for up to as many secrets as a Watch may name: a stream
    // per secret would pass a connection's bound on calls at once (200),
    // and each counts toward the principal's open streams.
    for chunk in names.chunks(NAMES_PER_WATCH) {
        let chunk: Vec<String> = chunk.iter().map(|name| (*name).to_owned()).collect();
        let stream = watch(&channel, &chunk).await?;
        tokio::spawn(follow(
            channel.clone(),
            prober.clone(),
            chunk,
            stream,
            sender.clone(),
        ));
    }
    Ok(receiver)
}

/// The most secrets one Watch may name.
const NAMES_PER_WATCH: usize = 100;

async fn watch(
    channel: &Channel,
    names: &[String],
) -> Result<tonic::Streaming<proto::WatchEvent>, tonic::Status> {
    Ok(WatchClient::new(channel.clone())
        .watch(proto::WatchRequest {
            // For a server that does not know `names` yet: the start they
            // share (events of others are left out below).
            prefix: shared_start(names),
            names: names.to_vec(),
        })
        .await?
        .into_inner())
}

/// The longest start all of `names` share.
fn shared_start(names: &[String]) -> String {
    let Some(first) = names.first() else {
        return String::new();
    };
    let mut start = first.as_str();
    for name in &names[1..] {
        let shared = start
            .char_indices()
            .zip(name.chars())
            .find(|((_, a), b)| a != b)
            .map_or(start.len().min(name.len()), |((at, _), _)| at);
        start = &start[..shared];
    }
    start.to_owned()
}

/// How a stream's secrets are named in what `rekey run` says of it.
fn label(names: &[String]) -> String {
    match names {
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
        [] => String::new(),
    }
}

/// Whether the server refused the caller (its certificate revoked or
/// expired, or the policy), as against not answering.
fn refused(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// Where to ask whether a server that does not answer in fact refuses
/// this client's certificate at the TLS handshake (after a restart, say),
/// which tonic reports as a connection that closed.
#[derive(Clone)]
struct Prober {
    server: String,
    identity: Arc<Identity>,
}

impl Prober {
    /// Why the server refuses the certificate, if it does.
    async fn refusal(&self) -> Option<String> {
        let alert = rekey_shared::probe::certificate_refused(&self.server, &self.identity).await?;
        Some(format!(
            "the server refused this client's certificate at the TLS handshake ({alert:?})"
        ))
    }
}

/// Passes on the change events of `names` until the receiver is gone; a
/// watch the server ended as UNAUTHENTICATED or PERMISSION_DENIED is the
/// end (the certificate is revoked or expired), any other end is followed
/// by a new watch.
async fn follow(
    channel: Channel,
    prober: Prober,
    names: Vec<String>,
    mut stream: tonic::Streaming<proto::WatchEvent>,
    sender: mpsc::UnboundedSender<Change>,
) {
    let name = label(&names);
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    let mut pause = FIRST_PAUSE;
    loop {
        let ended = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if names.contains(&event.name) && sender.send(Change::Changed).is_err() {
                        return;
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        if let Some(status) = ended
            && refused(&status)
        {
            let _ = sender.send(Change::Refused(format!(
                "the server ended the watch of {name}: {}",
                crate::output::status_line(&status)
            )));
            return;
        }
        eprintln!("rekey: the watch of {name} ended; watching again when the server answers");
        stream = loop {
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            match watch(&channel, &names).await {
                Ok(stream) => break stream,
                // Refused (not unreachable): the certificate was revoked or
                // expired meanwhile.
                Err(status) if refused(&status) => {
                    let _ = sender.send(Change::Refused(format!(
                        "the server refused to watch {name} again: {}",
                        crate::output::status_line(&status)
                    )));
                    return;
                }
                // Not answering, as tonic tells it (UNAVAILABLE, or a
                // connection that closed: CANCELLED, UNKNOWN).
                Err(_) => {
                    if let Some(refusal) = prober.refusal().await {
                        let _ = sender.send(Change::Refused(format!(
                            "the server refused to watch {name} again: {refusal}"
                        )));
                        return;
                    }
                }
            }
        };
        pause = FIRST_PAUSE;
        eprintln!("rekey: watching {name} again");
        if sender.send(Change::Changed).is_err() {
            return;
        }
    }
}

fn spawn(
    command: &[String],
    values: &[(String, Zeroizing<String>)],
) -> anyhow::Result<tokio::process::Child> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("give a command after --"))?;
    tokio::process::Command::new(program)
        .args(arguments)
        .envs(
            values
                .iter()
                .map(|(variable, value)| (variable, value.as_str())),
        )
        .spawn()
        .map_err(|error| anyhow::anyhow!("cannot start {program}: {error}"))
}

/// Sends `signal` to `child`, if it still runs.
fn forward(child: &tokio::process::Child, signal: rustix::process::Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Sends SIGTERM to `child` and waits for it to end.
async fn stop(child: &mut tokio::process::Child) -> anyhow::Result<std::process::ExitStatus> {
    forward(child, rustix::process::Signal::TERM);
    Ok(child.wait().await?)
}

/// Whether `signal` came from the terminal's keyboard (Ctrl-C, Ctrl-\\),
/// which sends it to every process of the foreground group: the command,
/// in `rekey run`'s group, has it already, and a second would be another
/// Ctrl-C to it (terraform ends at once on two, say).
fn from_the_terminal(signal: rustix::process::Signal) -> bool {
    use rustix::process::Signal;
    if !matches!(signal, Signal::INT | Signal::QUIT) {
        return false;
    }
    std::fs::File::open("/dev/tty")
        .ok()
        .and_then(|tty| rustix::termios::tcgetpgrp(&tty).ok())
        .is_some_and(|foreground| foreground == rustix::process::getpgrp())
}

/// The signals `rekey run` passes on to its command, which decides what
/// they mean (SIGINT may cancel a query rather than end the program).
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Taken before the command starts: one arriving later is its.
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal, as the command is to get it.
    async fn next(&mut self) -> rustix::process::Signal {
        use rustix::process::Signal;
        tokio::select! {
            _ = self.terminate.recv() => Signal::TERM,
            _ = self.interrupt.recv() => Signal::INT,
            _ = self.hangup.recv() => Signal::HUP,
            _ = self.quit.recv() => Signal::QUIT,
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Reads every value, then runs `command` with them and returns its exit
/// code (128 + the signal for a command a signal ended); with `watch`,
/// again with new values whenever one of them changes. It never returns
/// with the command still running: an error stops the command first.
pub async fn run(
    connection: &Connection,
    specs: Vec<EnvSpec>,
    command: Vec<String>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = connection.secrets().await?;
    let changed = if watch {
        Some(changes(connection, &specs).await?)
    } else {
        None
    };
    let values = read_values(&mut client, &specs).await?;
    let mut signals = Signals::listen()?;
    let mut child = spawn(&command, &values)?;
    // Without a watch nothing compares them again: wiped now, not kept
    // for the command's whole life (std's own copies, made to start it,
    // are freed unwiped: nothing here reaches them).
    let kept = if changed.is_some() {
        values
    } else {
        drop(values);
        Vec::new()
    };
    let outcome = supervise(
        &mut child,
        &mut signals,
        &mut client,
        &specs,
        &command,
        kept,
        changed,
    )
    .await;
    if outcome.is_err() {
        let _ = stop(&mut child).await;
    }
    outcome
}

/// Whether a failed read leaves the values as they were (the command keeps
/// them until the server answers): anything but an answer that the secret
/// is gone or no longer the caller's to read (NOT_FOUND, PERMISSION_DENIED,
/// UNAUTHENTICATED, INVALID_ARGUMENT, FAILED_PRECONDITION). A server that
/// cannot be reached, a database that fails over, a rate limit or an
/// internal error do not stop a running program.
fn unreachable(error: &anyhow::Error) -> bool {
    error.downcast_ref::<tonic::Status>().is_some_and(|status| {
        !matches!(
            status.code(),
            tonic::Code::NotFound
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
        )
    })
}

async fn supervise(
    child: &mut tokio::process::Child,
    signals: &mut Signals,
    client: &mut SecretsClient<Channel>,
    specs: &[EnvSpec],
    command: &[String],
    mut values: Vec<(String, Zeroizing<String>)>,
    mut changed: Option<mpsc::UnboundedReceiver<Change>>,
) -> anyhow::Result<ExitCode> {
    // A change whose values could not be read yet (the server away, the
    // rate limit) is read again then, with a growing pause: no other
    // event may come for it.
    let mut again: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let change = async {
            match changed.as_mut() {
                Some(receiver) => receiver.recv().await,
                None => std::future::pending().await,
            }
        };
        let retry = async {
            match again {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => return Ok(exit_code(status?)),
            // Its exit code is `rekey run`'s, whenever it comes.
            signal = signals.next() => {
                if !from_the_terminal(signal) {
                    forward(child, signal);
                }
                continue;
            }
            event = change => {
                match event {
                    None => anyhow::bail!("the watch of the secrets stopped"),
                    Some(Change::Refused(why)) => anyhow::bail!("{why}; the command was stopped"),
                    Some(Change::Changed) => {}
                }
            }
            () = retry => {}
        }
        let now = match read_values(client, specs).await {
            Ok(now) => now,
            Err(error) if unreachable(&error) => {
                let pause = again.map_or(RETRY_FIRST, |(_, pause)| (pause * 2).min(RETRY_MOST));
                eprintln!(
                    "rekey: cannot read the values again ({error}); the command keeps its \
                     values, and they are read again in {}s",
                    pause.as_secs()
                );
                again = Some((tokio::time::Instant::now() + pause, pause));
                continue;
            }
            Err(error) => return Err(error),
        };
        again = None;
        let same = now
            .iter()
            .zip(&values)
            .all(|(a, b)| a.1.as_str() == b.1.as_str());
        if !same {
            stop(child).await?;
            values = now;
            *child = spawn(command, &values)?;
        }
    }
}

/// The pauses before a change's values are read again after a failure:
/// the first, doubled each time up to the most.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_of_several_secrets_asks_an_older_server_for_their_shared_start() {
        let names = |list: &[&str]| {
            list.iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(shared_start(&names(&["app/db"])), "app/db");
        assert_eq!(
            shared_start(&names(&["app/db", "app/dc", "app/d"])),
            "app/d"
        );
        assert_eq!(shared_start(&names(&["app/db", "other"])), "");
        assert_eq!(label(&names(&["a", "b", "c"])), "a and 2 more");
        assert_eq!(label(&names(&["a"])), "a");
    }

    #[test]
    fn only_an_answer_about_the_secret_stops_the_command() {
        let failed = |code| unreachable(&anyhow::Error::new(tonic::Status::new(code, "x")));
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Internal,
            tonic::Code::Aborted,
            tonic::Code::ResourceExhausted,
            tonic::Code::DataLoss,
            tonic::Code::Cancelled,
            tonic::Code::Unknown,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(failed(code), "{code:?} stopped the command");
        }
        for code in [
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition,
        ] {
            assert!(!failed(code), "{code:?} left the command running");
        }
        assert!(!unreachable(&anyhow::anyhow!("not a status")));
    }
}
