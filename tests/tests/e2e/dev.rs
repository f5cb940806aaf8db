//! A newcomer's path: `rekeyd dev` prints one line that connects `rekey` to
//! it, and with that line the demo secrets list and read.

use rekey_tests::{Rekey, binary, wait_for_line};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `rekeyd dev`, started with `environment`, and the client its export
/// line describes.
fn start_dev(environment: &[(&str, &str)]) -> (std::process::Child, Rekey) {
    try_start_dev(environment).expect("rekeyd dev printed no export line")
}

/// As [`start_dev`]; `None` when it printed no export line (it could not
/// listen where it was told, say).
fn try_start_dev(environment: &[(&str, &str)]) -> Option<(std::process::Child, Rekey)> {
    let mut child = Command::new(binary("rekeyd"))
        .arg("dev")
        .envs(environment.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_for_line(child.stdout.take().unwrap(), "export ");
    let Some(line) = line else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let mut server = None;
    let mut identity = None;
    for assignment in line.split_whitespace() {
        if let Some(value) = assignment.strip_prefix("REKEY_SERVER=") {
            server = Some(value.to_owned());
        }
        if let Some(value) = assignment.strip_prefix("REKEY_IDENTITY=") {
            identity = Some(PathBuf::from(value));
        }
    }
    let rekey = Rekey {
        server: server.expect("REKEY_SERVER in the line"),
        identity: identity.expect("REKEY_IDENTITY in the line"),
    };
    Some((child, rekey))
}

/// Also: the address comes from REKEY_LISTEN, as serve's does.
#[test]
fn rekeyd_dev_prints_a_line_that_connects_rekey() {
    // A free port, as far as one can tell before rekeyd binds it: another
    // test's server may take it in between, and then another is tried.
    let (address, (mut child, rekey)) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let address = format!("127.0.0.1:{port}");
            try_start_dev(&[("REKEY_LISTEN", &address)]).map(|started| (address, started))
        })
        .expect("rekeyd dev printed no export line on five free ports");
    assert_eq!(rekey.server, format!("https://{address}"));
    let listed = rekey.run(&["list"]);
    let read = rekey.run(&["get", "demo/api/payments"]);
    let field = rekey.run(&["get", "demo/db/orders", "--field", "username"]);
    let dir = rekey.identity.parent().unwrap().to_owned();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();

    let listed = listed.ok();
    assert!(
        listed.stdout.contains("demo/db/orders"),
        "{}",
        listed.stdout
    );
    assert_eq!(read.ok().stdout, "demo-payments-api-key\n");
    assert_eq!(field.ok().stdout, "orders\n");
    assert!(status.success(), "rekeyd dev exited with {status}");
    assert!(!dir.exists(), "rekeyd dev left {} behind", dir.display());
}

/// Closing the terminal (SIGHUP) removes the throwaway installation too.
#[test]
fn rekeyd_dev_cleans_up_when_its_terminal_closes() {
    let (mut child, rekey) = start_dev(&[]);
    let dir = rekey.identity.parent().unwrap().to_owned();
    assert!(dir.exists());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "rekeyd dev exited with {status}");
    assert!(!dir.exists(), "rekeyd dev left {} behind", dir.display());
}
