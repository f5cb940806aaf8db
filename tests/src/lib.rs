//! The harness of the end-to-end tests: real installations made by
//! `rekeyd init`, real `rekeyd` processes on loopback ports they bound
//! themselves, the real `rekey` binary, and gRPC clients over mutual TLS.
//!
//! Nothing here sleeps for a fixed time: a server is ready when it printed
//! the address it bound, and every wait polls with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the test's failure report

pub mod databases;
pub mod password_catcher;

use rekey_shared::identity::Identity;
use rekey_shared::proto::secrets_client::SecretsClient;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long a server may take to start or stop.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A binary of this workspace, from the target directory the tests run in.
/// `cargo test --workspace` (and nextest) builds `rekeyd` and `rekey` first.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; build it first with `cargo build --workspace`",
        path.display()
    );
    path
}

/// An installation made by `rekeyd init` in a temporary directory.
#[derive(Debug)]
pub struct Installation {
    dir: TempDir,
}

impl Default for Installation {
    fn default() -> Self {
        Self::new()
    }
}

impl Installation {
    pub fn new() -> Self {
        Self::init(&[])
    }

    /// An installation whose data lives in `database` (PostgreSQL), shared
    /// by every server started on it: replicas.
    pub fn on_postgres(database: &databases::StorageDatabase) -> Self {
        Self::init(&["--database-url", &database.url])
    }

    fn init(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-")
            .tempdir()
            .unwrap();
        let output = rekeyd(dir.path(), &[&["init"], args].concat());
        assert!(
            output.status.success(),
            "rekeyd init failed: {}",
            text(&output.stderr)
        );
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` on the installation's SQLite database on a connection of
    /// its own, beside a running server (as an operator's tool would).
    pub async fn execute_sql(&self, sql: &str) {
        use sqlx::Connection;
        let url = format!("sqlite://{}", self.database().display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(sql).execute(&mut db).await.unwrap();
        db.close().await.unwrap();
    }

    pub fn admin(&self) -> PathBuf {
        self.dir().join("admin.pem")
    }

    pub fn database(&self) -> PathBuf {
        self.dir().join("rekey.db")
    }

    /// `rekeyd cert issue NAME --role ROLE...`, returning the identity file.
    pub fn issue(&self, name: &str, roles: &[&str]) -> PathBuf {
        let out = self.dir().join(format!("{name}.pem"));
        let mut args = vec!["cert", "issue", name, "--out", out.to_str().unwrap()];
        for role in roles {
            args.extend(["--role", role]);
        }
        let output = rekeyd(self.dir(), &args);
        assert!(
            output.status.success(),
            "cert issue failed: {}",
            text(&output.stderr)
        );
        out
    }

    /// Changes the installation's configuration with `change`.
    pub fn edit_config(&self, change: impl FnOnce(&mut toml::Table)) {
        let path = self.dir().join("rekeyd.toml");
        let mut table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        change(&mut table);
        std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    }

    /// Configures the test rotator as `exec:fixture`, keeping its state in
    /// `state` (see `src/bin/test-rotator.rs`). Automatic runs retry a failed
    /// step once, a second later.
    pub fn configure_fixture_rotator(&self, state: &Path) {
        let rotator = binary("test-rotator");
        self.edit_config(|table| {
            let rotation: toml::Table = format!(
                "max_attempts = 2\nretry_base_seconds = 1\n[exec.fixture]\ncommand = {:?}\nargs = [{:?}]\ntimeout_seconds = 3\n",
                rotator.display().to_string(),
                state.display().to_string()
            )
            .parse()
            .unwrap();
            table.insert("rotation".into(), toml::Value::Table(rotation));
        });
    }

    /// Automatic runs fail after one attempt (no backoff to wait for).
    pub fn no_retries(&self) {
        self.edit_config(|table| {
            let rotation = table
                .entry("rotation")
                .or_insert_with(|| toml::Value::Table(Default::default()));
            rotation
                .as_table_mut()
                .expect("[rotation] is a table")
                .insert("max_attempts".into(), 1.into());
        });
    }

    /// Runs `rekeyd serve`, which must refuse to start (exit 1); what it
    /// printed to standard error.
    pub fn refused_at_start(&self) -> String {
        refused_at_start(self.dir())
    }

    /// Starts `rekeyd serve` on a free loopback port.
    pub fn serve(&self) -> Server {
        Server::start(self.dir(), &[])
    }
}

/// Runs `rekeyd --dir DIR serve`, which must refuse to start (exit 1);
/// what it printed to standard error.
pub fn refused_at_start(dir: &Path) -> String {
    let mut serving = Command::new(binary("rekeyd"))
        .arg("--dir")
        .arg(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("REKEY_METRICS_LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("rekeyd to refuse to start", || serving.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serving.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// `rekeyd --dir TARGET restore FILE --root-key-file KEY`.
pub fn restore(target: &Path, file: &Path, root_key: &Path) -> Output {
    rekeyd(
        target,
        &[
            "restore",
            file.to_str().unwrap(),
            "--root-key-file",
            root_key.to_str().unwrap(),
        ],
    )
}

/// Runs `rekeyd --dir DIR ARGS` to completion.
pub fn rekeyd(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary("rekeyd"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `rekeyd serve`. Its log (standard error) goes to a file that
/// tests can read. Killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
    /// `http://ADDR/metrics`, when the server serves metrics.
    pub metrics: Option<String>,
    pub log: PathBuf,
    _log_dir: TempDir,
}

impl Server {
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(dir, "127.0.0.1:0", env)
    }

    /// Starts on a given address (to come back on the same port). Metrics
    /// are served on a free loopback port unless `env` says otherwise.
    pub fn start_on(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(dir, listen, env, &[], Stdio::null())
    }

    /// Starts with more flags before `serve` and a given standard input.
    pub fn start_with(
        dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
        flags: &[&str],
        stdin: Stdio,
    ) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("rekeyd.log");
        let mut child = Command::new(binary("rekeyd"))
            .arg("--dir")
            .arg(dir)
            .args(flags)
            .args(["serve", "--listen", listen])
            .env("REKEY_METRICS_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let (url, metrics) = wait_for_start(child.stdout.take().unwrap()).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "rekeyd did not report its address: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Self {
            child,
            url,
            metrics,
            log,
            _log_dir: log_dir,
        }
    }

    /// Sends SIGTERM and waits for a clean exit. It blocks the thread: an
    /// async test that calls it needs the multi-threaded runtime, so that
    /// its open connections can still answer the server's goodbye.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    /// SIGTERM, then the exit status once it exited.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rekeyd did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL): no drain, no cleanup.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the server (as [`Server::stop`], asserting a clean exit) and
    /// gives its whole log, the lines it wrote at shutdown too: what a
    /// check that nothing leaked must read.
    pub fn stop_for_log(mut self) -> String {
        let status = self.terminate();
        assert!(status.success(), "rekeyd exited {status}");
        self.log_text()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `rekey` binary pointed at this server as `identity`.
    pub fn rekey(&self, identity: &Path) -> Rekey {
        Rekey {
            server: self.url.clone(),
            identity: identity.to_owned(),
        }
    }

    /// A gRPC client of the Secrets service as `identity`.
    pub async fn client(&self, identity: &Path) -> SecretsClient<Channel> {
        let identity = Identity::load(identity).unwrap();
        SecretsClient::new(
            rekey_shared::channel::connect(&self.url, &identity)
                .await
                .unwrap(),
        )
    }

    /// A Watch of the names under `prefix` as `identity`, on a connection
    /// of its own: the stream, or the server's refusal.
    pub async fn watch(
        &self,
        identity: &Path,
        prefix: &str,
    ) -> Result<tonic::Streaming<rekey_shared::proto::WatchEvent>, tonic::Status> {
        let identity = Identity::load(identity).unwrap();
        let channel = rekey_shared::channel::connect(&self.url, &identity)
            .await
            .unwrap();
        rekey_shared::proto::watch_client::WatchClient::new(channel)
            .watch(rekey_shared::proto::WatchRequest {
                prefix: prefix.to_owned(),
                names: Vec::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines from `stream` until one starts with `prefix`, within
/// [`DEADLINE`]; returns the rest of that line. Later lines are drained so
/// the process never blocks on a full pipe.
pub fn wait_for_line(stream: impl std::io::Read + Send + 'static, prefix: &str) -> Option<String> {
    let (sender, receiver) = mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.trim_start().strip_prefix(&prefix) {
                let _ = sender.send(rest.trim().to_owned());
                sent = true;
            }
        }
    });
    receiver.recv_timeout(DEADLINE).ok()
}

/// Reads `rekeyd`'s start-up lines until `rekeyd listening on URL`, within
/// [`DEADLINE`]; returns the URL and the metrics URL, which comes on a line
/// of its own before it when metrics are on. Later lines are drained.
pub fn wait_for_start(
    stream: impl std::io::Read + Send + 'static,
) -> Option<(String, Option<String>)> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut metrics = None;
        let mut sent = false;
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            if let Some(url) = line.trim().strip_prefix("rekeyd metrics on ") {
                metrics = Some(url.to_owned());
            } else if let Some(url) = line.trim().strip_prefix("rekeyd listening on ") {
                let _ = sender.send((url.to_owned(), metrics.take()));
                sent = true;
            }
        }
    });
    receiver.recv_timeout(DEADLINE).ok()
}

/// The `rekey` binary with a server and an identity.
#[derive(Debug, Clone)]
pub struct Rekey {
    pub server: String,
    pub identity: PathBuf,
}

/// What a `rekey` run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "rekey failed: {}", self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("rekey printed no JSON ({error}): {}", self.stdout))
    }
}

impl Rekey {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("rekey"));
        command
            .args(args)
            .env("REKEY_SERVER", &self.server)
            .env("REKEY_IDENTITY", &self.identity)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
        }
    }

    /// Applies `policy` (a TOML document) as the policy's new version,
    /// through `rekey policy apply` on a file of its own.
    pub fn apply_policy(&self, policy: &str) -> Run {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), policy).unwrap();
        self.run(&["policy", "apply", file.path().to_str().unwrap()])
    }

    /// Applies a policy in which `admin` may do everything and `principal`
    /// what `statements` (a TOML array's items) allow.
    pub fn apply_policy_for(&self, principal: &str, statements: &str) -> Run {
        self.apply_policy(&format!(
            r#"
[roles.admin]
statements = [{{ effect = "allow", actions = ["*"], resources = ["*"] }}]

[roles.under-test]
statements = [{statements}]

[[bindings]]
principal = "admin"
roles = ["admin"]

[[bindings]]
principal = "{principal}"
roles = ["under-test"]
"#
        ))
    }

    /// Runs with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
        }
    }
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`] with
/// `what`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The value of one series (`name{labels}`) on `server`'s metrics page;
/// 0 when the page has none of those labels yet. A metric the page does
/// not declare at all (renamed, dropped) fails the test rather than read
/// as 0.
pub fn metric(server: &Server, series: &str) -> f64 {
    let url = server
        .metrics
        .as_deref()
        .expect("the server printed its metrics address");
    let (status, _, page) = http_get(url, "/metrics");
    assert_eq!(status, 200, "{page}");
    let name = series.split('{').next().unwrap_or(series);
    let family = ["_bucket", "_count", "_sum", "_total"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|family| page.contains(&format!("# TYPE {family} ")))
        .unwrap_or(name);
    assert!(
        page.contains(&format!("# TYPE {family} ")),
        "the metrics page declares no {family}:\n{page}"
    );
    page.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One plain HTTP/1.1 GET of `path` from the server of `metrics_url`
/// (`http://ADDR/metrics`): the status code, the headers (names in
/// lower case) and the body.
pub fn http_get(
    metrics_url: &str,
    path: &str,
) -> (u16, std::collections::HashMap<String, String>, String) {
    let address = metrics_url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a metrics URL: {metrics_url}"));
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status.parse().unwrap(), headers, body.to_owned())
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// How many refusals the audit events `events` account for: one for each
/// recorded refusal, plus the count of those left out that it carries
/// ("…; N more refused since…"), plus the count of a sweep's event ("N more
/// refused after the last recorded refusal…", which stands for no request
/// of its own).
pub fn refusals_accounted(events: &[serde_json::Value]) -> u64 {
    events
        .iter()
        .map(|event| {
            let detail = event["detail"].as_str().unwrap_or_default();
            let counted = detail.find(" more refused").map_or(0, |end| {
                detail[..end]
                    .rsplit(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|digits| digits.parse::<u64>().ok())
                    .unwrap_or(0)
            });
            let swept = detail.starts_with(|c: char| c.is_ascii_digit());
            counted + u64::from(!swept)
        })
        .sum()
}
