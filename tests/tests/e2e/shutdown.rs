//! SIGTERM: the server stops taking connections, finishes the requests in
//! flight, commits what they wrote and exits cleanly; no write it
//! acknowledged is missing after a restart.

use rekey_shared::proto;
use rekey_tests::Installation;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_loses_no_acknowledged_write() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "drain/x", "--value", "v0"]).ok();

    let stopping = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..8 {
        let mut client = server.client(&installation.admin()).await;
        let stopping = stopping.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            // Until the server refuses: a bounded number of puts.
            for count in 0..5_000 {
                let put = client
                    .put_secret_value(proto::PutSecretValueRequest {
                        name: "drain/x".into(),
                        secret_string: Some(format!("v{count}")),
                        ..Default::default()
                    })
                    .await;
                match put {
                    Ok(response) => acknowledged.push(response.into_inner().version_id),
                    Err(status) => {
                        assert!(
                            stopping.load(Ordering::SeqCst),
                            "a put failed before the shutdown: {status}"
                        );
                        break;
                    }
                }
            }
            acknowledged
        }));
    }
    // Let the writers get going, then stop the server under them.
    rekey_tests::eventually("puts to land", || {
        let versions = admin
            .run(&["versions", "drain/x", "--all", "--output", "json"])
            .ok()
            .json();
        (versions.as_array().unwrap().len() > 20).then_some(())
    });
    stopping.store(true, Ordering::SeqCst);
    let status = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert!(status.success(), "rekeyd exited with {status}");
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }

    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let mut client = server.client(&installation.admin()).await;
    let mut stored = std::collections::HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
                name: "drain/x".into(),
                include_deprecated: true,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stored.extend(page.versions.into_iter().map(|version| version.version_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(!acknowledged.is_empty());
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    // Versions beyond the newest hundred are kept for a day, so every one
    // acknowledged must still be there.
    assert!(
        missing.is_empty(),
        "{} acknowledged puts are missing",
        missing.len()
    );
    admin.run(&["audit", "verify"]).ok();
}

#[test]
fn sigterm_right_after_the_listening_line_still_drains() {
    // The signal handlers are in place before the line is printed: a
    // SIGTERM at once (as a supervisor may send) is a clean exit, not death
    // by signal.
    let installation = Installation::new();
    for _ in 0..5 {
        let status = installation.serve().stop();
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}

/// A change whose client went away runs on in a task of its own, which the
/// drain of connections does not wait for: shutdown waits for it before it
/// closes the store, and it commits.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_a_change_whose_client_went_away() {
    use sqlx::Connection;
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "drain/gone", "--value", "one"]).ok();
    let url = format!("sqlite://{}", installation.database().display());
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    {
        let mut client = server.client(&installation.admin()).await;
        let mut put = tonic::Request::new(proto::PutSecretValueRequest {
            name: "drain/gone".into(),
            secret_string: Some("two".into()),
            ..Default::default()
        });
        put.set_timeout(std::time::Duration::from_secs(1));
        client.put_secret_value(put).await.unwrap_err();
    }
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    tokio::task::block_in_place(|| {
        rekey_tests::eventually("shutdown to wait for the put", || {
            server
                .log_text()
                .contains("waiting for changes still running")
                .then_some(())
        })
    });
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    assert!(tokio::task::block_in_place(|| server.stop()).success());

    let server = installation.serve();
    assert_eq!(
        server
            .rekey(&installation.admin())
            .run(&["get", "drain/gone"])
            .ok()
            .stdout,
        "two\n"
    );
}

/// On SIGTERM the health service says NOT_SERVING (to a balancer watching
/// it) while the server drains, for the server and each of its services.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_health_to_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let installation = Installation::new();
    let server = installation.serve();
    let identity = rekey_shared::identity::Identity::load(&installation.admin()).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let mut watches = Vec::new();
    for service in ["", "rekey.v1.Rotation"] {
        let mut watch = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
        watches.push((service, watch));
    }
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    for (service, mut watch) in watches {
        let next = watch.message().await.unwrap().unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32, "{service:?}");
    }
    assert!(tokio::task::block_in_place(|| server.stop()).success());
}
