//! Watch events across replicas: a watcher on one replica sees what
//! happens through the other; a lost, silent or killed connection, or a
//! replica killed before it sent its events, ends the Watch streams that
//! may have missed some (UNAVAILABLE), never a silent gap.

use super::replicated;
use rekey_tests::databases::StorageDatabase;
use rekey_tests::eventually;

/// A replica that loses its connection for the other replicas' events
/// ends its Watch streams (UNAVAILABLE) rather than leaving them open with
/// a silent gap: a caching client would serve what changed meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_listener_ends_the_watch_streams_of_its_replica() {
    let Some((database, installation, _state)) = replicated() else {
        return;
    };
    let a = installation.serve();
    let mut stream = a.watch(&installation.admin(), "").await.unwrap();
    // The replica's LISTEN connection is cut by the database.
    let cut = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    eventually("the replica to listen", || {
        let mut client = sqlx_count(&database.url, cut);
        (client.pop() == Some(1)).then_some(())
    });
    let ended = tokio::time::timeout(rekey_tests::DEADLINE, stream.message())
        .await
        .expect("the stream stayed open across the gap");
    let status = ended.expect_err("an event instead of the end");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
    // A stream opened at once, while the replica is not yet listening
    // again (it waits a second), missed whatever was sent meanwhile: it is
    // ended too once the replica listens again, with nothing changed (it
    // was ended only when the next event came, however long that took).
    let mut opened_in_the_gap = a.watch(&installation.admin(), "").await.unwrap();
    let ended = tokio::time::timeout(rekey_tests::DEADLINE, opened_in_the_gap.message())
        .await
        .expect("a stream opened in the gap stayed open");
    let status = ended.expect_err("an event instead of the end");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// A connection to the database that dies without a word (a firewall
/// forgets it: nothing more passes, and no reset comes) is found by its
/// silence: the replica hears not even its own heartbeats, takes it for
/// lost and ends its Watch streams. LISTEN waited on it for good, and the
/// streams stayed open and missed every other replica's events.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_for_events_ends_the_watch_streams() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((database, installation, _state)) = replicated() else {
        return;
    };
    // A proxy to the database that can stop passing anything on.
    let silent = Arc::new(AtomicBool::new(false));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let through = proxy.local_addr().unwrap();
    let target = target_of(&database.url);
    let passing = silent.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = proxy.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(&target).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)] {
                let silent = passing.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let Ok(read) = from.read(&mut buffer).await else {
                            return;
                        };
                        if read == 0 || silent.load(Ordering::SeqCst) {
                            // Keep both ends open, pass nothing on.
                            return std::future::pending().await;
                        }
                        if to.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    let url = database
        .url
        .replacen(&target_of(&database.url), &through.to_string(), 1);
    installation.edit_config(|table| {
        table.insert("database_url".into(), toml::Value::String(url));
    });
    let a = installation.serve();
    let mut stream = a.watch(&installation.admin(), "").await.unwrap();
    let listening = "SELECT pid FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    eventually("the replica to listen", || {
        (sqlx_count(&database.url, listening).pop() == Some(1)).then_some(())
    });
    silent.store(true, Ordering::SeqCst);
    let ended = tokio::time::timeout(rekey_tests::DEADLINE, stream.message())
        .await
        .expect("the stream stayed open on a silent connection");
    let status = ended.expect_err("an event instead of the end");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
    drop(a);
}

/// Returns once two replicas listen for each other's events on
/// `database`.
fn both_listen(database: &StorageDatabase) {
    let listening = "SELECT pid FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    eventually("both replicas to listen", || {
        (sqlx_count(&database.url, listening).pop() == Some(2)).then_some(())
    });
}

/// `host:port` of a database URL.
fn target_of(url: &str) -> String {
    url.split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// Runs `sql` (a SELECT of one column) on `url` and returns how many rows
/// it gave, in a runtime of its own (the test's is busy awaiting).
fn sqlx_count(url: &str, sql: &str) -> Vec<usize> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
                let rows = sqlx::query(&sql).fetch_all(&mut connection).await.unwrap();
                vec![rows.len()]
            })
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_on_one_replica_sees_changes_made_through_the_other() {
    let Some((database, installation, _state)) = replicated() else {
        return;
    };
    let (a, b) = (installation.serve(), installation.serve());
    // Both listen before the watch opens: a replica ends the streams
    // opened before its first LISTEN (they missed what came before).
    both_listen(&database);
    let admin = installation.admin();
    let mut events = crate::watch::watcher(&b.url, &admin, "seen/").await;
    let rekey = a.rekey(&admin);
    // The watcher's subscription is live once its stream answered; an event
    // of its own replica proves that before the test relies on it.
    b.rekey(&admin)
        .run(&["create", "seen/first", "--value", "v"])
        .ok();
    crate::watch::until(&mut events, "version_added").await;

    rekey.run(&["create", "seen/db", "--value", "v1"]).ok();
    let seen = crate::watch::until(&mut events, "version_added").await;
    assert_eq!(seen.last().unwrap().name, "seen/db");
    rekey
        .run(&["rotation", "configure", "seen/db", "--rotator", "password"])
        .ok();
    rekey.run(&["rotate", "seen/db", "--no-wait"]).ok();
    let seen = crate::watch::until(&mut events, "finished").await;
    let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"run_started"), "{kinds:?}");
    assert_eq!(seen.last().unwrap().detail, "succeeded");
    assert!(seen.iter().all(|e| e.name == "seen/db"), "{seen:?}");
}

/// A replica killed (no shutdown: its queued events never go out) is
/// heard to fall silent by the others, which end their Watch streams, as a
/// lost connection does: the events of its last changes may never have
/// reached them. Before, their streams stayed open, silently missing them.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_ends_the_watch_streams_of_the_others() {
    let Some((database, installation, _state)) = replicated() else {
        return;
    };
    let (a, b) = (installation.serve(), installation.serve());
    both_listen(&database);
    let admin = installation.admin();
    let mut stream = a.watch(&admin, "").await.unwrap();
    // A hears of B: B's change reaches A's stream.
    b.rekey(&admin)
        .run(&["create", "killed/x", "--value", "v"])
        .ok();
    let deadline = tokio::time::Instant::now() + rekey_tests::DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("B's event never reached A")
            .unwrap()
            .expect("A's stream ended before B was killed");
        if event.name == "killed/x" {
            break;
        }
    }
    b.kill();
    let ended = tokio::time::timeout(rekey_tests::DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("A's stream stayed open after B was killed");
    let status = ended.expect_err("the stream ended without an error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
    drop(a);
}
