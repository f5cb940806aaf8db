//! The root key from a passphrase (`rekeyd init --passphrase`): no root.key
//! anywhere, the server opens with the passphrase from the environment or a
//! file descriptor, refuses a wrong or missing one before it says it
//! listens, never writes the passphrase to a file or a log, and backs up and
//! restores with it.

use rekey_tests::{Server, binary, contains_bytes, text};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const PASSPHRASE: &str = "planted passphrase 0b7e-horse-battery";
const VALUE: &str = "passphrase-protected-value";

fn rekeyd_with(dir: &Path, env: &[(&str, &str)], args: &[&str], stdin: Stdio) -> Output {
    // setsid: no controlling terminal, so a missing passphrase cannot
    // turn into a prompt that waits forever.
    Command::new("setsid")
        .arg("-w")
        .arg(binary("rekeyd"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(stdin)
        .output()
        .unwrap()
}

fn passphrase_file(dir: &Path, passphrase: &str) -> std::fs::File {
    let path = dir.join("passphrase-input");
    std::fs::write(&path, format!("{passphrase}\n")).unwrap();
    std::fs::File::open(&path).unwrap()
}

fn every_file_lacks(dir: &Path, needle: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file()
            && !path.ends_with("passphrase-input")
            && !path.ends_with("passphrase.txt")
        {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains_bytes(&bytes, needle.as_bytes()),
                "{} holds the passphrase",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installation_opened_by_a_passphrase_from_env_or_fd() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("installation");
    let env = [("REKEY_ROOT_PASSPHRASE", PASSPHRASE)];
    let made = rekeyd_with(&dir, &env, &["init", "--passphrase"], Stdio::null());
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(!dir.join("root.key").exists());
    let config = std::fs::read_to_string(dir.join("rekeyd.toml")).unwrap();
    assert!(config.contains("[root_passphrase]"), "{config}");
    let short = rekeyd_with(
        &scratch.path().join("short"),
        &[("REKEY_ROOT_PASSPHRASE", "too short")],
        &["init", "--passphrase"],
        Stdio::null(),
    );
    assert_eq!(short.status.code(), Some(1));
    assert!(text(&short.stderr).contains("at least 12 characters"));

    // From the environment.
    let server = Server::start(&dir, &env);
    let admin = server.rekey(&dir.join("admin.pem"));
    admin.run(&["create", "pp/db", "--value", VALUE]).ok();
    let log = server.stop_for_log();
    assert!(!log.contains(PASSPHRASE));

    // From a file descriptor (standard input here).
    let server = Server::start_with(
        &dir,
        "127.0.0.1:0",
        &[],
        &["--passphrase-fd", "0"],
        passphrase_file(scratch.path(), PASSPHRASE).into(),
    );
    let got = server
        .rekey(&dir.join("admin.pem"))
        .run(&["get", "pp/db"])
        .ok();
    assert_eq!(got.stdout.trim_end(), VALUE);
    let log = server.stop_for_log();
    assert!(!log.contains(PASSPHRASE));

    // From a file (a systemd credential, say), which others may not read.
    let file = scratch.path().join("passphrase.txt");
    std::fs::write(&file, format!("{PASSPHRASE}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = rekeyd_with(
        &dir,
        &[],
        &[
            "--passphrase-file",
            file.to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
        Stdio::null(),
    );
    assert_eq!(loose.status.code(), Some(1));
    assert!(
        text(&loose.stderr).contains("can be read by other users"),
        "{}",
        text(&loose.stderr)
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start_with(
        &dir,
        "127.0.0.1:0",
        &[],
        &["--passphrase-file", file.to_str().unwrap()],
        Stdio::null(),
    );
    let got = server
        .rekey(&dir.join("admin.pem"))
        .run(&["get", "pp/db"])
        .ok();
    assert_eq!(got.stdout.trim_end(), VALUE);
    drop(server);

    // A wrong passphrase, and none at all: refused before listening.
    let wrong = rekeyd_with(
        &dir,
        &[],
        &["--passphrase-fd", "0", "serve", "--listen", "127.0.0.1:0"],
        passphrase_file(scratch.path(), "a wrong passphrase entirely").into(),
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("the passphrase does not open this installation"));
    assert!(!text(&wrong.stdout).contains("listening"));
    let none = rekeyd_with(
        &dir,
        &[],
        &["serve", "--listen", "127.0.0.1:0"],
        Stdio::null(),
    );
    assert_eq!(none.status.code(), Some(1));
    let said = text(&none.stderr);
    assert!(said.contains("--passphrase-fd N"), "{said}");
    assert!(said.contains("REKEY_ROOT_PASSPHRASE"), "{said}");
    assert!(!text(&none.stdout).contains("listening"));

    // A descriptor other than standard input stays open, and exec:
    // rotators' programs inherit it: a file there is refused, a pipe taken.
    let on_fd_3 = |redirect: &str| {
        Command::new("setsid")
            .args(["-w", "sh", "-c"])
            .arg(format!(
                "cat \"$3\" | exec \"$0\" --dir \"$1\" --passphrase-fd 3 audit verify-archive 3<{redirect}"
            ))
            .arg(binary("rekeyd"))
            .arg(&dir)
            .arg(scratch.path().join("passphrase-input"))
            .arg(scratch.path().join("passphrase-input"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    drop(passphrase_file(scratch.path(), PASSPHRASE));
    let file = on_fd_3("\"$2\"");
    assert_eq!(file.status.code(), Some(1), "{}", text(&file.stderr));
    assert!(
        text(&file.stderr).contains("file descriptor 3 is a file, which would stay open"),
        "{}",
        text(&file.stderr)
    );
    let pipe = on_fd_3("&0");
    assert!(pipe.status.success(), "{}", text(&pipe.stderr));

    // Backup and restore with the passphrase alone.
    let file = scratch.path().join("pp-backup.db");
    let backed_up = rekeyd_with(
        &dir,
        &env,
        &["backup", file.to_str().unwrap()],
        Stdio::null(),
    );
    assert!(backed_up.status.success(), "{}", text(&backed_up.stderr));
    let target = scratch.path().join("restored");
    let refused = rekeyd_with(
        &target,
        &[("REKEY_ROOT_PASSPHRASE", "a wrong passphrase entirely")],
        &["restore", file.to_str().unwrap()],
        Stdio::null(),
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("the passphrase does not open"));
    assert!(!target.exists());
    let restored = rekeyd_with(
        &target,
        &env,
        &["restore", file.to_str().unwrap()],
        Stdio::null(),
    );
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    assert!(!target.join("root.key").exists());
    let server = Server::start(&target, &env);
    let got = server
        .rekey(&dir.join("admin.pem"))
        .run(&["get", "pp/db"])
        .ok();
    assert_eq!(got.stdout.trim_end(), VALUE);
    drop(server);

    every_file_lacks(&dir, PASSPHRASE);
    every_file_lacks(&target, PASSPHRASE);
    assert!(!contains_bytes(
        &std::fs::read(&file).unwrap(),
        PASSPHRASE.as_bytes()
    ));
}

/// An init stopped at the passphrase prompt (Ctrl-C) has written nothing
/// yet, so a second init is not refused for the first one's files.
#[test]
fn an_init_stopped_at_the_passphrase_leaves_nothing_behind() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("installation");
    let mut waiting = Command::new(binary("rekeyd"))
        .arg("--dir")
        .arg(&dir)
        .args(["--passphrase-fd", "0", "init", "--passphrase"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Blocked reading the passphrase, on one of its threads: in `read`
    // (syscall 0 on x86-64) on a descriptor that is its standard input
    // (its own copy of 0: the same pipe).
    let process = format!("/proc/{}", waiting.id());
    let stdin = std::fs::read_link(format!("{process}/fd/0")).unwrap();
    rekey_tests::eventually("init to wait for its passphrase", || {
        std::fs::read_dir(format!("{process}/task"))
            .ok()?
            .find_map(|task| {
                let call = std::fs::read_to_string(task.ok()?.path().join("syscall")).ok()?;
                let mut fields = call.split_whitespace();
                let fd = (fields.next()? == "0")
                    .then(|| fields.next())??
                    .trim_start_matches("0x");
                let fd = i64::from_str_radix(fd, 16).ok()?;
                (std::fs::read_link(format!("{process}/fd/{fd}")).ok()? == stdin).then_some(())
            })
    });
    let pid = rustix::process::Pid::from_raw(waiting.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    waiting.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "init left {left:?}");
    let env = [("REKEY_ROOT_PASSPHRASE", PASSPHRASE)];
    let made = rekeyd_with(&dir, &env, &["init", "--passphrase"], Stdio::null());
    assert!(made.status.success(), "{}", text(&made.stderr));
}
