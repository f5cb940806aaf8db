//! The caching client of `rekey-shared`: a value read twice is read from
//! the server once, and a change reaches it through the Watch stream long
//! before its time to live runs out; a call the connection drops is
//! UNAVAILABLE, as gRPC says, whatever tonic made of it.

use rekey_shared::cache::CachingClient;
use rekey_shared::identity::Identity;
use rekey_shared::proto::GetSecretValueRequest;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::{DEADLINE, Installation, Rekey, Server};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn reads_of(admin: &Rekey, name: &str) -> usize {
    admin
        .run(&[
            "audit",
            "--resource",
            name,
            "--output",
            "json",
            "--limit",
            "10000",
        ])
        .ok()
        .stdout
        .lines()
        .filter(|line| line.contains("secrets:GetSecretValue"))
        .count()
}

/// Reads `name` until a second read adds no audit event: from then on the
/// cache follows the stream and holds the value.
async fn until_read_from_memory(cache: &CachingClient, admin: &Rekey, name: &str, value: &[u8]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let first = cache.get(name).await.unwrap();
        let after_first = reads_of(admin, name);
        let second = cache.get(name).await.unwrap();
        assert_eq!(first.as_bytes(), value);
        assert!(second.same_as(&first));
        if reads_of(admin, name) == after_first {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the second read never came from memory"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A caching client (time to live: an hour) as the admin of `server`, and
/// the admin's CLI, with `name` created holding `value`.
async fn cache_of(
    installation: &Installation,
    server: &Server,
    name: &str,
    value: &str,
) -> (CachingClient, Rekey) {
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", name, "--value", value]).ok();
    let identity = Identity::load(&installation.admin()).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    (
        CachingClient::new(channel, Duration::from_secs(3600)),
        admin,
    )
}

/// Once `ready` says the stream is open, the first read is kept and the
/// second comes from memory (no second audit event).
#[tokio::test(flavor = "multi_thread")]
async fn after_ready_the_second_read_comes_from_memory() {
    let installation = Installation::new();
    let server = installation.serve();
    let (cache, admin) = cache_of(&installation, &server, "ready/db", "v-ready").await;
    assert!(cache.ready(DEADLINE).await);
    cache.get("ready/db").await.unwrap();
    cache.get("ready/db").await.unwrap();
    assert_eq!(reads_of(&admin, "ready/db"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_reads_are_served_from_memory_until_the_secret_changes() {
    let installation = Installation::new();
    let server = installation.serve();
    let (cache, admin) = cache_of(&installation, &server, "cached/db", "first-7c1d").await;

    // Once the stream is followed, a second read stays in memory.
    until_read_from_memory(&cache, &admin, "cached/db", b"first-7c1d").await;

    // A change drops the entry; the next read has the new value.
    admin
        .run(&["put", "cached/db", "--value", "second-52ab"])
        .ok();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if cache.get("cached/db").await.unwrap().as_bytes() == b"second-52ab" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Unknown secrets are the server's error, not a cached one.
    let missing = cache.get("cached/missing").await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_stale_is_served_while_the_stream_is_down() {
    let installation = Installation::new();
    let server = installation.serve();
    let (cache, admin) = cache_of(&installation, &server, "cached/down", "old-41e2").await;
    until_read_from_memory(&cache, &admin, "cached/down", b"old-41e2").await;

    // The server goes away: no answer from memory, an error instead.
    let address = server.url.strip_prefix("https://").unwrap().to_owned();
    server.kill();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match cache.get("cached/down").await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                break;
            }
            Ok(value) => assert_eq!(value.as_bytes(), b"old-41e2"),
        }
        assert!(
            Instant::now() < deadline,
            "a dead server's value was still served"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Back on the same address, changed before the stream is followed
    // again: the old value never comes back.
    let server = Server::start_on(installation.dir(), &address, &[]);
    let admin = server.rekey(&installation.admin());
    admin
        .run(&["put", "cached/down", "--value", "new-9a07"])
        .ok();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(value) = cache.get("cached/down").await {
            assert_eq!(value.as_bytes(), b"new-9a07", "a stale value was served");
            break;
        }
        assert!(Instant::now() < deadline, "the cache never reconnected");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        cache.get("cached/down").await.unwrap().as_bytes(),
        b"new-9a07"
    );
}

/// Forwards each connection to `target` until `drop_next` is set; then the
/// next bytes a client sends are not forwarded and its connection closes,
/// as when the server goes away between a request and its answer.
async fn dropping_proxy(target: String) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let drop_next = Arc::new(AtomicBool::new(false));
    let armed = drop_next.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(&target).await.unwrap();
            tokio::spawn(forward(client, upstream, armed.clone()));
        }
    });
    (format!("https://{address}"), drop_next)
}

/// Copies bytes both ways until either side closes, or the client sends
/// some once `armed` is set; both connections close as this returns.
async fn forward(mut client: TcpStream, mut upstream: TcpStream, armed: Arc<AtomicBool>) {
    let (mut from_client, mut from_server) = ([0u8; 16384], [0u8; 16384]);
    loop {
        let copied = tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(n) if n > 0 && !armed.load(Ordering::SeqCst) => {
                    upstream.write_all(&from_client[..n]).await
                }
                _ => return,
            },
            read = upstream.read(&mut from_server) => match read {
                Ok(n) if n > 0 => client.write_all(&from_server[..n]).await,
                _ => return,
            },
        };
        if copied.is_err() {
            return;
        }
    }
}

/// A call whose connection closes before the answer: tonic says UNKNOWN
/// (or CANCELLED, when hyper still had the request queued); the caching
/// client, the CLI and the terminal UI say UNAVAILABLE, the code to retry
/// on.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_the_connection_drops_is_unavailable() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&["create", "cached/dropped", "--value", "v-5b21"])
        .ok();
    let target = server.url.strip_prefix("https://").unwrap().to_owned();
    let (url, drop_next) = dropping_proxy(target).await;
    let identity = Identity::load(&installation.admin()).unwrap();
    let channel = rekey_shared::channel::connect(&url, &identity)
        .await
        .unwrap();
    let mut client = SecretsClient::new(channel);
    let request = || GetSecretValueRequest {
        name: "cached/dropped".to_owned(),
        ..Default::default()
    };
    client.get_secret_value(request()).await.unwrap();

    drop_next.store(true, Ordering::SeqCst);
    let status = client.get_secret_value(request()).await.unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
        "tonic's own code for a dropped call changed: {status:?}"
    );
    let status = rekey_shared::channel::dropped_call_is_unavailable(status);
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("closed before it answered"),
        "{status:?}"
    );
}

/// A caching client the policy lets watch nothing asks for its Watch again
/// less and less often: every refusal is an audit event.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_watch_is_asked_for_less_and_less_often() {
    let installation = Installation::new();
    let reader = installation.issue("reader-only", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .apply_policy(&format!(
            "{}\n[roles.values]\nstatements = [{{ effect = \"allow\", actions = [\"secrets:GetSecretValue\", \"keys:Use\"], resources = [\"*\"] }}]\n[[bindings]]\nprincipal = \"reader-only\"\nroles = [\"values\"]\n",
            admin.run(&["policy", "get"]).ok().stdout.lines().skip(1).collect::<Vec<_>>().join("\n")
        ))
        .ok();
    let identity = Identity::load(&reader).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let cache = CachingClient::new(channel, Duration::from_secs(3600));
    let refusals = || {
        admin
            .run(&["audit", "--principal", "reader-only", "--output", "json"])
            .ok()
            .stdout
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["action"] == "secrets:Watch" && event["decision"] == "deny")
            .map(|event| event["time"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let times = tokio::task::block_in_place(|| {
        rekey_tests::eventually("three refused watches", || {
            let times = refusals();
            (times.len() >= 3).then_some(times)
        })
    });
    let at = |text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let (first, second) = (at(&times[1]) - at(&times[0]), at(&times[2]) - at(&times[1]));
    assert!(
        second > first + Duration::from_millis(500),
        "refusals {times:?} came no less often"
    );
    drop(cache);
}

/// A policy that takes reading away ends the Watch streams, so a caching
/// client drops what it kept and asks again, and is refused: it served the
/// value from memory until its time to live ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_takes_reading_away_empties_the_cache() {
    let installation = Installation::new();
    let app = installation.issue("app", &["reader"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    // The same policy with app an approver (watches, reads no value).
    let policy = admin.run(&["policy", "get"]).ok().stdout;
    let bound = "principal = \"app\"\nroles = [\"reader\"]";
    assert!(policy.contains(bound), "{policy}");
    let taken = policy.replace(bound, "principal = \"app\"\nroles = [\"approver\"]");
    admin
        .run(&["create", "taken/db", "--value", "v-taken"])
        .ok();
    let identity = Identity::load(&app).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let cache = CachingClient::new(channel, Duration::from_secs(3600));
    until_read_from_memory(&cache, &admin, "taken/db", b"v-taken").await;

    admin.apply_policy(&taken).ok();
    let deadline = Instant::now() + DEADLINE;
    let refused = loop {
        match cache.get("taken/db").await {
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the value was still served from memory"
            ),
            Err(status) => break status,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

/// A secret the caller may read but not watch is not kept: no change of
/// it would ever reach the stream, and a changed value was served from
/// memory until its time to live ran out. One it may watch still is.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_the_caller_may_not_watch_is_not_kept() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "app/x", "--value", "v1"]).ok();
    admin.run(&["create", "other/y", "--value", "w1"]).ok();
    admin
        .apply_policy_for(
            "app",
            r#"
  { effect = "allow", actions = ["secrets:GetSecretValue"], resources = ["app/*", "other/*"] },
  { effect = "allow", actions = ["secrets:Watch"], resources = ["other/*"] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:default"] },
"#,
        )
        .ok();
    let app = Identity::load(&installation.issue("app", &[])).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &app)
        .await
        .unwrap();
    let cache = CachingClient::new(channel, Duration::from_secs(3600));
    assert!(cache.ready(DEADLINE).await);
    assert_eq!(cache.get("app/x").await.unwrap().as_bytes(), b"v1");
    admin.run(&["put", "app/x", "--value", "v2"]).ok();
    assert_eq!(cache.get("app/x").await.unwrap().as_bytes(), b"v2");
    until_read_from_memory(&cache, &admin, "other/y", b"w1").await;
}
