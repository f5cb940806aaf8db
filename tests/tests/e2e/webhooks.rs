//! Webhook notifications end to end: a real `rekeyd` calls a real HTTP
//! receiver in this test (which answers 500 to its first request and 200
//! afterwards) when a run waits for approval, when runs fail or wait after a
//! failed step, and because its certificate expires within the warning
//! days. Every call is signed with the secret from the secret file; none
//! carries a value. Bad webhook settings stop `rekeyd serve` at start.

use hmac::{Hmac, Mac};
use rekey_tests::{Installation, Rekey, binary, contains_bytes, eventually};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const HMAC_SECRET: &str = "whsec-5f0c9e2a7b1d4c8e93aa";
const PLANTED: &str = "planted-value-c41d7e0b";

/// One request the receiver got, and the status it answered.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP/1.1 receiver on a loopback port of its own.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Answers 500 to the first request and 200 to the others.
    fn start() -> Self {
        Self::answering(|index| if index == 0 { 500 } else { 200 })
    }

    /// Answers request number `index` (from 0) with `status(index)`.
    fn answering(status: fn(usize) -> u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/hooks/rekey?source=test",
            listener.local_addr().unwrap()
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let Some((path, headers, body)) = read_request(&stream) else {
                    continue;
                };
                // Recorded before it is answered: once rekeyd has its
                // answer, the test sees the call.
                let status = {
                    let mut record = record.lock().unwrap();
                    let status = status(record.len());
                    record.push(Received {
                        path,
                        headers,
                        body,
                        status,
                    });
                    status
                };
                let reason = if status == 200 { "OK" } else { "Error" };
                let answer = format!(
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = (&stream).write_all(answer.as_bytes());
            }
        });
        Self { url, received }
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The first delivered (200) call of `event` whose body satisfies `matches`.
    fn wait_for(&self, event: &str, matches: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("a delivered {event} webhook"), || {
            self.all()
                .into_iter()
                .filter(|call| call.status == 200 && call.header("x-rekey-event") == event)
                .map(|call| call.json())
                .find(|body| matches(body))
        })
    }
}

/// The request line's path, the headers (names in lower case) and the body.
type Request = (String, BTreeMap<String, String>, Vec<u8>);

fn read_request(stream: &std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(name.to_lowercase(), value.trim().to_owned());
    }
    let length = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

fn write_secret_file(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn configure_webhook(installation: &Installation, extra: &str, url: &str) {
    installation.edit_config(|table| {
        let notifications: toml::Table =
            format!("{extra}\n[[webhooks]]\nurl = {url:?}\nsecret_file = \"webhook.secret\"\n")
                .parse()
                .unwrap();
        table.insert("notifications".into(), toml::Value::Table(notifications));
    });
}

fn show(rekey: &Rekey, name: &str) -> Value {
    rekey
        .run(&["rotation", "show", name, "--output", "json"])
        .ok()
        .json()
}

fn wait_for_state(rekey: &Rekey, name: &str, state: &str) -> Value {
    eventually(&format!("run of {name} in state {state}"), || {
        let shown = show(rekey, name);
        (shown["run"]["state"] == state).then_some(shown)
    })
}

fn expected_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn webhooks_announce_approvals_failures_and_expiring_certificates() {
    let installation = Installation::new();
    let state = installation.dir().join("rotator-state");
    std::fs::create_dir_all(&state).unwrap();
    installation.configure_fixture_rotator(&state);
    write_secret_file(
        &installation.dir().join("webhook.secret"),
        &format!("{HMAC_SECRET}\n"),
        0o600,
    );
    let receiver = Receiver::start();
    // The server certificate of `rekeyd init` is valid for 825 days.
    configure_webhook(
        &installation,
        "certificate_warning_days = 1000\nretry_base_milliseconds = 50",
        &receiver.url,
    );
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());

    // The certificate check at start: the first call, answered 500 and
    // retried with the same delivery id.
    let certificate = receiver.wait_for("certificate_expiring", |body| {
        body["certificate"] == "server"
    });
    assert!(
        certificate["file"]
            .as_str()
            .unwrap()
            .ends_with("server.pem"),
        "{certificate}"
    );
    let days_left = certificate["days_left"].as_i64().unwrap();
    assert!((820..=825).contains(&days_left), "{certificate}");
    assert_eq!(certificate["subject"], "CN=rekeyd", "{certificate}");

    // A run reaching a gated step asks for approval.
    admin.run(&["create", "hook/db", "--value", PLANTED]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "hook/db",
            "--rotator",
            "exec:fixture",
            "--approve",
            "set",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "hook/db", "--no-wait"]).ok();
    let waiting = wait_for_state(&admin, "hook/db", "awaiting_approval");
    let run_id = waiting["run"]["run_id"].as_str().unwrap().to_owned();
    let pending = admin
        .run(&["get", "hook/db", "--stage", "PENDING"])
        .ok()
        .stdout;
    let pending = pending.trim_end().to_owned();
    assert!(pending.starts_with("rotated-"), "{pending}");
    let approval = receiver.wait_for("approval_requested", |body| body["run_id"] == run_id);
    assert_eq!(approval["secret"], "hook/db", "{approval}");
    assert_eq!(approval["step"], "setSecret", "{approval}");
    assert_eq!(approval["initiator"], "admin", "{approval}");
    assert_eq!(approval["approvals_required"], 1, "{approval}");
    assert!(
        approval["hint"]
            .as_str()
            .unwrap()
            .contains("rekey approve hook/db"),
        "{approval}"
    );
    admin.run(&["rotation", "cancel", "hook/db"]).ok();
    wait_for_state(&admin, "hook/db", "cancelled");

    // An automatic run whose step keeps failing ends failed (the rotator
    // prints CURRENT to its standard error as it fails).
    admin
        .run(&[
            "rotation",
            "configure",
            "hook/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    std::fs::write(state.join("fail-createSecret"), "").unwrap();
    admin.run(&["rotate", "hook/db", "--no-wait"]).ok();
    let failed_run = wait_for_state(&admin, "hook/db", "failed");
    let failed_id = failed_run["run"]["run_id"].as_str().unwrap().to_owned();
    let failed = receiver.wait_for("run_failed", |body| body["run_id"] == failed_id);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["step"], "createSecret", "{failed}");
    assert_eq!(failed["attempts"], 2, "{failed}");

    // A manual run waits for its operator after a failed step.
    admin.run(&["rotate", "hook/db", "--manual"]).ok();
    let _ = admin.run(&["rotation", "step", "hook/db"]);
    let paused = wait_for_state(&admin, "hook/db", "step_failed");
    let paused_id = paused["run"]["run_id"].as_str().unwrap().to_owned();
    let attention = receiver.wait_for("run_failed", |body| body["run_id"] == paused_id);
    assert_eq!(attention["state"], "step_failed", "{attention}");
    assert_eq!(attention["secret"], "hook/db", "{attention}");
    admin.run(&["rotation", "cancel", "hook/db"]).ok();

    let calls = receiver.all();
    // The first call was answered 500 and retried: same delivery, same body.
    let first = &calls[0];
    assert_eq!(first.status, 500);
    let retried = calls[1..]
        .iter()
        .find(|call| call.header("x-rekey-delivery") == first.header("x-rekey-delivery"))
        .expect("the first delivery was retried");
    assert_eq!(retried.status, 200);
    assert_eq!(retried.body, first.body);
    // Only the server certificate is within the warning days (the CA is
    // valid for ten years); the check queued everything before any run.
    assert!(
        !calls
            .iter()
            .any(|call| call.json()["certificate"] == "client_ca"),
        "the CA is not expiring"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for call in &calls {
        assert_eq!(call.path, "/hooks/rekey?source=test");
        assert_eq!(call.header("content-type"), "application/json");
        assert_eq!(call.header("x-rekey-event"), call.json()["event"]);
        assert!(!call.header("x-rekey-delivery").is_empty());
        // Signed with the body: a replay cannot pass as another delivery.
        assert_eq!(call.header("x-rekey-delivery"), call.json()["delivery"]);
        let timestamp = call.header("x-rekey-timestamp");
        assert!(
            (now - timestamp.parse::<i64>().unwrap()).abs() < 300,
            "{timestamp}"
        );
        assert_eq!(
            call.header("x-rekey-signature"),
            expected_signature(timestamp, &call.body),
            "the signature verifies with the secret"
        );
        let headers = format!("{:?}", call.headers);
        for leak in [PLANTED, pending.as_str(), HMAC_SECRET] {
            assert!(
                !contains_bytes(&call.body, leak.as_bytes()) && !headers.contains(leak),
                "a webhook call carries {leak}: {}",
                String::from_utf8_lossy(&call.body)
            );
        }
    }
    let log = server.log_text();
    assert!(
        log.contains("webhook delivery failed; retrying") && log.contains("500"),
        "{log}"
    );
    assert!(log.contains("webhook delivered"), "{log}");
    for leak in [PLANTED, pending.as_str(), HMAC_SECRET] {
        assert!(!log.contains(leak), "the log shows {leak}");
    }
}

/// Runs `rekeyd serve` until it exits (within the deadline): its exit code
/// and standard error.
fn serve_until_exit(installation: &Installation) -> (Option<i32>, String) {
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let errors = installation.dir().join("serve.err");
    let mut child = Killed(
        Command::new(binary("rekeyd"))
            .arg("--dir")
            .arg(installation.dir())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = eventually("rekeyd serve to refuse its configuration", || {
        child.0.try_wait().unwrap()
    });
    (status.code(), std::fs::read_to_string(errors).unwrap())
}

#[test]
fn bad_webhook_settings_stop_the_server_at_start() {
    let installation = Installation::new();
    let secret_file = installation.dir().join("webhook.secret");
    write_secret_file(&secret_file, HMAC_SECRET, 0o644);
    configure_webhook(&installation, "", "https://hooks.example.com/rekey");
    let (code, stderr) = serve_until_exit(&installation);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("notifications.webhooks[0].secret_file")
            && stderr.contains(&secret_file.display().to_string())
            && stderr.contains("can be read by other users (mode 644)")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains(HMAC_SECRET), "{stderr}");

    write_secret_file(&secret_file, HMAC_SECRET, 0o600);
    configure_webhook(&installation, "", "ftp://hooks.example.com/rekey");
    let (code, stderr) = serve_until_exit(&installation);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("notifications.webhooks[0].url")
            && stderr.contains("\"ftp://hooks.example.com/…\"")
            && stderr.contains("must start with http:// or https://"),
        "{stderr}"
    );
    // Only the origin: a path may carry a token.
    assert!(!stderr.contains("/rekey"), "{stderr}");

    std::fs::remove_file(&secret_file).unwrap();
    configure_webhook(&installation, "", "https://hooks.example.com/rekey");
    let (code, stderr) = serve_until_exit(&installation);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("reading webhook secret file") && stderr.contains("webhook.secret"),
        "{stderr}"
    );
}

#[test]
fn a_stopping_server_tries_each_queued_delivery_once_more() {
    let installation = Installation::new();
    write_secret_file(
        &installation.dir().join("webhook.secret"),
        HMAC_SECRET,
        0o600,
    );
    let receiver = Receiver::answering(|_| 503);
    // The retry after the first 503 would come a minute later.
    configure_webhook(
        &installation,
        "certificate_warning_days = 1000\nretry_base_milliseconds = 60000",
        &receiver.url,
    );
    let server = installation.serve();
    eventually("the first attempt", || {
        (!receiver.all().is_empty()).then_some(())
    });
    // Serving (so SIGTERM is handled, not fatal) and still no retry.
    server.rekey(&installation.admin()).run(&["list"]).ok();
    assert_eq!(receiver.all().len(), 1, "no retry within the minute");
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let calls = receiver.all();
    assert_eq!(calls.len(), 2, "one attempt, then one more at shutdown");
    assert_eq!(
        calls[0].header("x-rekey-delivery"),
        calls[1].header("x-rekey-delivery")
    );
    assert_eq!(calls[0].body, calls[1].body);
}
