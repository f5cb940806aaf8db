//! The terminal UI end to end: the real `rekey` in tmux against a real
//! `rekeyd`. An operator lists, filters, opens a secret and runs a manual
//! rotation; an approver in a second window approves the gated step; the
//! operator's window shows the approval arrive without a key press, and the
//! operator runs the remaining steps. Every wait polls `capture-pane` with a
//! deadline.

use rekey_tests::{Installation, binary, eventually};
use std::path::Path;
use std::process::Command;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        // Not a skip: a test that passes without running proves nothing
        // (.ci/run installs tmux).
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "tmux is not installed: the terminal UI tests drive rekey in it (apt-get install tmux)"
        );
        Self {
            socket: format!(
                "rekey-{}",
                rekey_shared::VersionId::random().as_str()[..8].to_owned()
            ),
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Opens `rekey` as `identity` in a new window named `name`.
    fn open(&self, name: &str, server: &str, identity: &Path, first: bool) {
        let command = format!(
            "env REKEY_SERVER={server} REKEY_IDENTITY={} NO_COLOR=1 {}",
            identity.display(),
            binary("rekey").display()
        );
        if first {
            self.tmux(&[
                "new-session",
                "-d",
                "-s",
                "rk",
                "-n",
                name,
                "-x",
                "100",
                "-y",
                "30",
                &command,
            ]);
        } else {
            self.tmux(&["new-window", "-t", "rk", "-n", name, &command]);
        }
    }

    fn keys(&self, window: &str, keys: &[&str]) {
        let target = format!("rk:{window}");
        let mut args = vec!["send-keys", "-t", target.as_str()];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    fn screen(&self, window: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &format!("rk:{window}")])
    }

    /// Waits until the window shows all of `texts`.
    fn wait_for(&self, window: &str, texts: &[&str]) -> String {
        self.wait_for_but_not(window, texts, &[])
    }

    /// Waits until the window shows all of `texts` and none of `absent`;
    /// a timeout shows the screen as it was last seen.
    fn wait_for_but_not(&self, window: &str, texts: &[&str], absent: &[&str]) -> String {
        let mut last = String::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(
                &format!("{window} to show {texts:?} without {absent:?}"),
                || {
                    let screen = self.screen(window);
                    let shown = texts.iter().all(|text| screen.contains(text))
                        && !absent.iter().any(|text| screen.contains(text));
                    last.clone_from(&screen);
                    shown.then_some(screen)
                },
            )
        }));
        found.unwrap_or_else(|_| panic!("the screen of {window} was last:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn an_operator_and_an_approver_rotate_a_secret_in_the_terminal_ui() {
    let tmux = Tmux::new();
    let installation = Installation::new();
    let bob = installation.issue("bob", &["approver"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    for name in ["tui/app/db", "tui/app/cache", "other/thing"] {
        admin
            .run(&["create", name, "--value", "v1", "--description", "demo"])
            .ok();
    }
    admin
        .run(&[
            "rotation",
            "configure",
            "tui/app/db",
            "--rotator",
            "password",
            "--approve",
            "set",
            "--approvals",
            "1",
        ])
        .ok();
    let before = admin
        .run(&["get", "tui/app/db", "--output", "json"])
        .ok()
        .json();

    tmux.open("operator", &server.url, &installation.admin(), true);
    tmux.wait_for("operator", &["tui/app/db", "other/thing", "connected"]);

    // Filter as you type.
    tmux.keys(
        "operator",
        &["/", "t", "u", "i", "/", "a", "p", "p", "/", "d", "Enter"],
    );
    tmux.wait_for_but_not(
        "operator",
        &["filter: tui/app/d", "tui/app/db"],
        &["other/thing", "tui/app/cache"],
    );

    // Open the secret, then its rotation, and start a manual run.
    tmux.keys("operator", &["Enter"]);
    tmux.wait_for("operator", &["tui/app/db-", "VERSIONS", "CURRENT"]);
    tmux.keys("operator", &["Enter"]);
    tmux.wait_for("operator", &["no rotation run yet"]);
    tmux.keys("operator", &["M"]);
    tmux.wait_for(
        "operator",
        &[
            "manual run, started by admin",
            "createSecret  waiting for operator",
        ],
    );
    tmux.keys("operator", &["n"]);
    tmux.wait_for(
        "operator",
        &["createSecret  done", "setSecret     awaiting approval 0/1"],
    );

    // The approver, in a second window.
    tmux.open("approver", &server.url, &bob, false);
    tmux.wait_for("approver", &["as bob", "connected"]);
    tmux.keys(
        "approver",
        &[":", "a", "p", "p", "r", "o", "v", "a", "l", "s", "Enter"],
    );
    tmux.wait_for(
        "approver",
        &["1 waiting for you", "tui/app/db", "setSecret"],
    );
    tmux.keys("approver", &["a"]);
    tmux.wait_for("approver", &["Approve tui/app/db, comment:"]);
    tmux.keys("approver", &["l", "g", "t", "m", "Enter"]);
    tmux.wait_for("approver", &["approved the waiting step of tui/app/db"]);

    // The operator's window shows it without a key press.
    let shown = tmux.wait_for(
        "operator",
        &[
            "bob approved setSecret",
            "setSecret     waiting for operator",
        ],
    );
    assert!(shown.contains("lgtm"), "{shown}");

    // The operator runs the remaining steps to the end.
    tmux.keys("operator", &["n"]);
    tmux.wait_for(
        "operator",
        &["setSecret     done", "testSecret    waiting for operator"],
    );
    tmux.keys("operator", &["n"]);
    tmux.wait_for("operator", &["finishSecret  waiting for operator"]);
    tmux.keys("operator", &["n"]);
    tmux.wait_for("operator", &["state succeeded"]);

    let after = admin
        .run(&["get", "tui/app/db", "--output", "json"])
        .ok()
        .json();
    assert_ne!(after["version_id"], before["version_id"]);
    let previous = admin
        .run(&[
            "get",
            "tui/app/db",
            "--stage",
            "PREVIOUS",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(previous["version_id"], before["version_id"]);

    // q backs out to the list and quits; the terminal is given back.
    tmux.keys("operator", &["q", "q", "q", "q"]);
    eventually("the operator's rekey to quit", || {
        let windows = tmux.tmux(&["list-windows", "-t", "rk"]);
        (!windows.contains("operator")).then_some(())
    });
}

/// The demo is its own installation whatever the shell says: a
/// REKEY_DATABASE_URL and REKEY_ROOT_KEY_FILE left there for a real one
/// are not used (the demo wrote its approver, policy and audit event into
/// that database, and served it).
#[test]
fn rekey_demo_shows_the_demo_and_cleans_up_when_it_quits() {
    let elsewhere = tempfile::tempdir().unwrap();
    let database = elsewhere.path().join("real.db");
    let environment = format!(
        "REKEY_DATABASE_URL=sqlite://{}?mode=rwc REKEY_ROOT_KEY_FILE={}",
        database.display(),
        elsewhere.path().join("root.key").display()
    );
    demo_ends_clean(&environment, |tmux| tmux.keys("demo", &["q"]));
    let left: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// SIGTERM (or SIGHUP, the SSH session gone) ends the UI as `q` does, a
/// dialog open or not: the terminal restored and the demo's directory
/// removed; it killed rekey.
#[test]
fn rekey_demo_ends_clean_on_sigterm() {
    demo_ends_clean("", |tmux| {
        tmux.keys("demo", &["?"]);
        tmux.wait_for("demo", &["any key closes this help"]);
        let pid: i32 = tmux
            .tmux(&["list-panes", "-t", "rk:demo", "-F", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    });
}

/// Starts `rekey demo` (with `environment`, as `env` takes it), waits for its screen, ends it with `quit`, and
/// checks that it quit and removed its directory.
fn demo_ends_clean(environment: &str, quit: impl Fn(&Tmux)) {
    let tmux = Tmux::new();
    let command = format!(
        "env NO_COLOR=1 {environment} {} demo",
        binary("rekey").display()
    );
    tmux.tmux(&[
        "new-session",
        "-d",
        "-s",
        "rk",
        "-n",
        "demo",
        "-x",
        "200",
        "-y",
        "30",
        &command,
    ]);
    let screen = tmux.wait_for(
        "demo",
        &["demo/db/orders", "awaiting approval", "failed", "connected"],
    );
    // The message line names the approver's identity inside the demo's directory.
    let identity = screen
        .split_whitespace()
        .find(|word| word.ends_with("approver.pem"))
        .unwrap_or_else(|| panic!("no approver identity shown:\n{screen}"))
        .to_owned();
    let dir = Path::new(&identity).parent().unwrap().to_owned();
    assert!(dir.exists());
    quit(&tmux);
    eventually("rekey demo to quit", || {
        let sessions = Command::new("tmux")
            .arg("-L")
            .arg(&tmux.socket)
            .arg("list-windows")
            .output()
            .unwrap();
        // The last window closing ends the tmux server too.
        (!sessions.status.success() || !String::from_utf8_lossy(&sessions.stdout).contains("demo"))
            .then_some(())
    });
    eventually("the demo directory to be removed", || {
        (!dir.exists()).then_some(())
    });
}

#[test]
fn the_ui_says_when_the_connection_drops_and_reconnects() {
    let tmux = Tmux::new();
    let installation = Installation::new();
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "conn/one", "--value", "v"])
        .ok();
    let address = server.url.trim_start_matches("https://").to_owned();
    tmux.open("ui", &server.url, &installation.admin(), true);
    tmux.wait_for("ui", &["conn/one", "connected"]);

    // The server goes away: the status bar says so.
    assert!(server.stop().success());
    tmux.wait_for("ui", &["connection lost, reconnecting"]);

    // It comes back on the same address: the UI reconnects and reloads.
    let server = rekey_tests::Server::start_on(installation.dir(), &address, &[]);
    server
        .rekey(&installation.admin())
        .run(&["create", "conn/two", "--value", "v"])
        .ok();
    tmux.wait_for_but_not("ui", &["conn/two", "connected"], &["connection lost"]);
}
