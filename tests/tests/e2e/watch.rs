//! Watch: a full rotation's events arrive in order, and a watcher sees
//! nothing of secrets it may not watch.

use rekey_shared::proto::watch_client::WatchClient;
use rekey_shared::proto::{self, WatchEvent};
use rekey_tests::{DEADLINE, Installation};
use tokio::sync::mpsc;

pub(crate) async fn watcher(
    url: &str,
    identity: &std::path::Path,
    prefix: &str,
) -> mpsc::UnboundedReceiver<WatchEvent> {
    let identity = rekey_shared::identity::Identity::load(identity).unwrap();
    let channel = rekey_shared::channel::connect(url, &identity)
        .await
        .unwrap();
    let mut stream = WatchClient::new(channel)
        .watch(proto::WatchRequest {
            prefix: prefix.into(),
            names: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The events of w/a/db among `events`.
fn of_a_events(events: &[WatchEvent]) -> Vec<WatchEvent> {
    events
        .iter()
        .filter(|e| e.name == "w/a/db")
        .cloned()
        .collect()
}

/// Events until one of `kind` arrives (within the deadline).
pub(crate) async fn until(
    receiver: &mut mpsc::UnboundedReceiver<WatchEvent>,
    kind: &str,
) -> Vec<WatchEvent> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = receiver.recv().await {
            let done = event.kind == kind;
            seen.push(event);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} event; saw {seen:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_sees_a_rotation_in_order_and_nothing_it_may_not_see() {
    let installation = Installation::new();
    let limited = installation.issue("limited", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let policy = admin.run(&["policy", "get"]).ok().stdout;
    let policy = format!(
        "{policy}\n[roles.watch-a]\nstatements = [{{ effect = \"allow\", actions = [\"secrets:Watch\"], resources = [\"w/a/*\"] }}]\n\n[[bindings]]\nprincipal = \"limited\"\nroles = [\"watch-a\"]\n"
    );
    admin.apply_policy(&policy).ok();

    let mut everything = watcher(&server.url, &installation.admin(), "w/").await;
    let mut only_a = watcher(&server.url, &limited, "").await;
    // The streams are open once an event reaches them.
    admin.run(&["create", "w/a/db", "--value", "v1"]).ok();
    until(&mut everything, "version_added").await;
    until(&mut only_a, "version_added").await;

    admin.run(&["create", "w/b/db", "--value", "v1"]).ok();
    admin
        .run(&["rotation", "configure", "w/b/db", "--rotator", "password"])
        .ok();
    admin.run(&["rotate", "w/b/db"]).ok();
    admin
        .run(&["rotation", "configure", "w/a/db", "--rotator", "password"])
        .ok();
    let run = admin
        .run(&["rotate", "w/a/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(run["state"], "succeeded");

    let seen = until(&mut everything, "finished").await;
    let seen = [seen, until(&mut everything, "finished").await].concat();
    let of_a: Vec<(String, String)> = seen
        .iter()
        .filter(|e| e.name == "w/a/db")
        .map(|e| (e.kind.clone(), e.detail.clone()))
        .collect();
    let kinds: Vec<&str> = of_a.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "step_changed",
            "version_added",
            "step_changed",
            "step_changed",
            "step_changed",
            "step_changed",
            "step_changed",
            "step_changed",
            "stages_moved",
            "finished",
        ],
        "{of_a:?}"
    );
    assert!(
        seen.iter().any(|e| e.name == "w/b/db"),
        "the admin sees w/b too"
    );
    assert!(
        seen.iter()
            .all(|e| e.run_id.is_empty() || e.run_id == run["run_id"] || e.name == "w/b/db")
    );

    let limited_seen = until(&mut only_a, "finished").await;
    assert!(
        limited_seen.iter().all(|e| e.name == "w/a/db"),
        "{limited_seen:?}"
    );
    assert!(limited_seen.iter().any(|e| e.kind == "run_started"));
    // A rotation's state words go to every watcher; its free text (a
    // step's error, approvers' comments, reasons) only to one that may
    // describe the rotation.
    let state_words = |events: &[WatchEvent]| {
        events
            .iter()
            .filter(|e| e.kind == "step_changed")
            .map(|e| e.detail.clone())
            .collect::<Vec<_>>()
    };
    assert!(state_words(&limited_seen).contains(&"running".to_owned()));
    assert_eq!(state_words(&limited_seen), state_words(&of_a_events(&seen)));
    admin
        .run(&["create", "w/a/json", "--value", "not json"])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "w/a/json",
            "--rotator",
            "password",
            "--field",
            "password",
        ])
        .ok();
    admin.run(&["rotate", "w/a/json", "--no-wait"]).ok();
    let failed = |events: Vec<WatchEvent>| events.into_iter().last().unwrap().detail;
    let told = failed(until(&mut everything, "failed").await);
    assert!(told.contains("needs a JSON object"), "{told}");
    assert_eq!(failed(until(&mut only_a, "failed").await), "");
    // No event carries a value.
    let current = admin.run(&["get", "w/a/db"]).ok().stdout;
    for event in seen.iter().chain(&limited_seen) {
        assert!(!format!("{event:?}").contains(current.trim_end()));
    }
    // The CLI prints the same stream, one JSON object per line.
    let mut child = server
        .rekey(&installation.admin())
        .command(&["watch", "w/a/", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut got = None;
    while got.is_none() {
        // Poke until the watcher's stream is open and the event arrives.
        admin.run(&["tag", "w/a/db", "seen=yes"]).ok();
        if let Ok(line) = receiver.recv_timeout(std::time::Duration::from_millis(200)) {
            got = Some(line);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rekey watch printed nothing"
        );
    }
    let event: serde_json::Value = serde_json::from_str(&got.unwrap()).unwrap();
    assert_eq!(event["kind"], "secret_changed");
    assert_eq!(event["name"], "w/a/db");
    let _ = child.kill();
    let _ = child.wait();
}

/// A caller the policy lets watch nothing at all is refused, not given a
/// stream that stays silent (a caching client would take the silence for
/// no change); one that may watch some names gets the stream, filtered.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_is_refused_to_whom_the_policy_lets_watch_nothing() {
    let installation = rekey_tests::Installation::new();
    let nobody = installation.issue("nobody", &[]);
    let server = installation.serve();
    let refused = server.watch(&nobody, "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("nobody may not secrets:Watch"),
        "{refused:?}"
    );
}
