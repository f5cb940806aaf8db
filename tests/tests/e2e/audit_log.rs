//! The audit log: one event per request, allowed or denied; a chain that
//! `rekey audit verify` checks, naming the first altered, removed or
//! inserted event and a cut-off tail.

use rekey_shared::proto::GetSecretValueRequest;
use rekey_tests::{Installation, Rekey, eventually, metric, rekeyd};
use sqlx::{Connection, SqliteConnection};

const HITS: &str = "rekey_read_cache_total{result=\"hit\"}";

fn verify(admin: &Rekey) -> rekey_tests::Run {
    admin.run(&["audit", "verify"])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_is_one_event_and_tampering_is_named() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let bob = server.rekey(&bob);
    admin.run(&["create", "a/x", "--value", "v"]).ok();
    admin.run(&["get", "a/x"]).ok();
    let _ = bob.run(&["get", "a/x"]);
    let _ = admin.run(&["get", "a/missing"]);

    let events = admin.run(&["audit", "--output", "json"]).ok().stdout;
    let events: Vec<serde_json::Value> = events
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let requests: Vec<(&str, &str, &str, &str, &str)> = events
        .iter()
        .filter(|e| e["principal"] != "rekeyd")
        .map(|e| {
            (
                e["principal"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["resource"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        requests,
        [
            ("admin", "secrets:CreateSecret", "a/x", "allow", "OK"),
            ("admin", "secrets:GetSecretValue", "a/x", "allow", "OK"),
            (
                "bob",
                "secrets:GetSecretValue",
                "a/x",
                "deny",
                "PERMISSION_DENIED"
            ),
            (
                "admin",
                "secrets:GetSecretValue",
                "a/missing",
                "allow",
                "NOT_FOUND"
            ),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| !e["request_id"].as_str().unwrap().is_empty() || e["principal"] == "rekeyd")
    );
    let filtered = admin
        .run(&["audit", "--principal", "bob", "--output", "json"])
        .ok()
        .stdout;
    assert_eq!(filtered.lines().count(), 1);
    let by_resource = admin
        .run(&["audit", "--resource", "a/m", "--output", "json"])
        .ok()
        .stdout;
    assert_eq!(by_resource.lines().count(), 1);

    // Untouched, it verifies.
    let ok = verify(&admin).ok();
    assert!(
        ok.stdout.contains("the audit log verifies"),
        "{}",
        ok.stdout
    );

    // A field changed.
    installation
        .execute_sql("UPDATE audit_events SET principal = 'mallory' WHERE seq = 3")
        .await;
    let altered = verify(&admin);
    assert_eq!(altered.code, 1);
    assert!(
        altered.stderr.contains("event 3 was altered"),
        "{}",
        altered.stderr
    );
    installation
        .execute_sql("UPDATE audit_events SET principal = 'rekeyd' WHERE seq = 3")
        .await;
    verify(&admin).ok();

    // A row removed.
    installation
        .execute_sql("DELETE FROM audit_events WHERE seq = 4")
        .await;
    let removed = verify(&admin);
    assert!(
        removed.stderr.contains("event 4 was removed"),
        "{}",
        removed.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_tail_is_detected() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    for index in 0..5 {
        admin.run(&["create", &format!("t/{index}")]).ok();
    }
    let before = admin
        .run(&["audit", "verify", "--output", "json"])
        .ok()
        .json();
    let head = before["head_seq"].as_i64().unwrap();
    let checkpoint = format!("{head}:{}", before["head_mac"].as_str().unwrap());

    installation
        .execute_sql(&format!(
            "DELETE FROM audit_events WHERE seq > {}",
            head - 3
        ))
        .await;
    // The server knows the newest event it wrote: it appends nothing over
    // the cut (which would reuse the removed numbers), so it answers
    // nothing (fail-closed), and its log says why.
    let cut = verify(&admin);
    assert_eq!(cut.code, 1);
    assert!(
        cut.stderr.contains("the audit log cannot be written"),
        "{}",
        cut.stderr
    );
    // A change is refused alike (it was DATA_LOSS, with the log's text).
    let change = admin.run(&["create", "cut/x", "--value", "v"]);
    assert!(
        change.stderr.contains("the audit log cannot be written")
            && change.stderr.contains("(INTERNAL)"),
        "{}",
        change.stderr
    );
    assert!(
        server.log_text().contains(&format!(
            "the audit log in the database ends at event {}, behind event",
            head - 3
        )),
        "{}",
        server.log_text()
    );
    // Restarted, it knows only what the table holds; a checkpoint from the
    // log still finds the cut.
    assert!(tokio::task::block_in_place(|| server.stop()).success());
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let against = admin
        .run(&[
            "audit",
            "verify",
            "--checkpoint",
            &checkpoint,
            "--output",
            "json",
        ])
        .json();
    assert_eq!(against["ok"], false, "{against}");
    // An inserted event at the end does not verify either.
    installation.execute_sql("INSERT INTO audit_events (seq, time, principal, peer, action, resource, decision, outcome, request_id, detail, mac)
         SELECT MAX(seq) + 1, 0, 'mallory', '', 'x', 'y', 'allow', 'OK', '', '', zeroblob(32) FROM audit_events",
    )
    .await;
    let inserted = admin.run(&["audit", "verify", "--output", "json"]).json();
    assert_eq!(inserted["ok"], false);
}

/// Reads that arrive together share audit commits: every one of them still
/// has its own event, the chain stays whole across the batches, and no
/// answer leaves before its event is durable (the next test).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reads_each_get_an_event_in_one_chain() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "g/x", "--value", "v"]).ok();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client(&installation.admin()).await);
    }
    let tasks: Vec<_> = (0..64)
        .map(|index| {
            let mut client = clients[index % clients.len()].clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    client
                        .get_secret_value(GetSecretValueRequest {
                            name: "g/x".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let events = admin
        .run(&[
            "audit",
            "--resource",
            "g/x",
            "--output",
            "json",
            "--limit",
            "10000",
        ])
        .ok()
        .stdout;
    let reads: Vec<serde_json::Value> = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["action"] == "secrets:GetSecretValue")
        .collect();
    assert_eq!(reads.len(), 320);
    let request_ids: std::collections::HashSet<&str> = reads
        .iter()
        .map(|event| event["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(request_ids.len(), 320, "every read has an event of its own");
    verify(&admin).ok();
}

/// Fail-closed: when the audit log refuses the events, the reads that
/// waited for them are not answered, and none of their values leaves,
/// though the server has the value in memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_whose_event_cannot_be_written_is_not_answered() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&["create", "g/planted", "--value", "planted-value-5d1e"])
        .ok();
    // The first read of the day records it; the second is kept in memory.
    for _ in 0..2 {
        admin.run(&["get", "g/planted"]).ok();
    }
    let hits = metric(&server, HITS);
    installation
        .execute_sql(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
        )
        .await;
    let mut client = server.client(&installation.admin()).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .get_secret_value(GetSecretValueRequest {
                        name: "g/planted".into(),
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        let status = task.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(
            status.message(),
            "the audit log cannot be written, so the request was not answered"
        );
    }

    assert_eq!(
        metric(&server, HITS),
        hits + 16.0,
        "the refused reads were answered from memory"
    );

    installation.execute_sql("DROP TRIGGER refuse_audit").await;
    let answer = client
        .get_secret_value(GetSecretValueRequest {
            name: "g/planted".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.secret_string.as_deref(), Some("planted-value-5d1e"));
    assert!(!server.log_text().contains("planted-value-5d1e"));
}

/// An UpdateSecret whose new version cannot be stored changes nothing:
/// not the description, not the master key (the secret's and every data
/// key's), and its one event says it failed.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_fails_changes_nothing() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin
        .run(&[
            "create",
            "g/update",
            "--value",
            "one",
            "--description",
            "old",
        ])
        .ok();
    assert!(
        rekeyd(installation.dir(), &["keys", "create", "other"])
            .status
            .success()
    );
    installation
        .execute_sql(
            "CREATE TRIGGER refuse_versions BEFORE INSERT ON versions
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
        )
        .await;
    let failed = admin.run(&[
        "update",
        "g/update",
        "--description",
        "new",
        "--key",
        "other",
        "--value",
        "two",
    ]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("(INTERNAL)"), "{}", failed.stderr);

    let described = admin
        .run(&["describe", "g/update", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["description"], "old", "{described}");
    assert_eq!(described["key_name"], "default", "{described}");
    let versions = admin
        .run(&["versions", "g/update", "--all", "--output", "json"])
        .ok()
        .json();
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["key_name"], "default", "{versions:?}");
    assert_eq!(admin.run(&["get", "g/update"]).ok().stdout, "one\n");

    let events: Vec<serde_json::Value> = admin
        .run(&["audit", "--resource", "g/update", "--output", "json"])
        .ok()
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| event["action"] == "secrets:UpdateSecret")
        .collect();
    let outcomes: Vec<&str> = events
        .iter()
        .map(|event| event["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["INTERNAL"], "{events:?}");

    installation
        .execute_sql("DROP TRIGGER refuse_versions")
        .await;
    admin
        .run(&[
            "update",
            "g/update",
            "--description",
            "new",
            "--key",
            "other",
            "--value",
            "two",
        ])
        .ok();
    let described = admin
        .run(&["describe", "g/update", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["description"], "new", "{described}");
    assert_eq!(described["key_name"], "other", "{described}");
    assert_eq!(admin.run(&["get", "g/update"]).ok().stdout, "two\n");
}

/// A read dropped before its handler ended (its deadline passed while the
/// database was locked, so its event could not be written) still leaves an
/// event: `CANCELLED`. A change whose client went away runs to its end: it
/// commits with its own event once the lock is gone, and watchers hear of
/// it (a change dropped mid-commit used to reach no watcher).
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_read_is_recorded_and_an_abandoned_change_runs_to_its_end() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "g/abandoned", "--value", "one"]).ok();
    let mut client = server.client(&installation.admin()).await;
    let mut watch = server.watch(&installation.admin(), "g/").await.unwrap();
    let url = format!("sqlite://{}", installation.database().display());
    let mut lock = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let mut get = tonic::Request::new(rekey_shared::proto::GetSecretValueRequest {
        name: "g/abandoned".into(),
        ..Default::default()
    });
    get.set_timeout(std::time::Duration::from_secs(1));
    let mut put = tonic::Request::new(rekey_shared::proto::PutSecretValueRequest {
        name: "g/abandoned".into(),
        secret_string: Some("two".into()),
        ..Default::default()
    });
    put.set_timeout(std::time::Duration::from_secs(1));
    let gone = |status: tonic::Status| {
        assert!(
            matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ),
            "{status:?}"
        );
    };
    gone(client.get_secret_value(get).await.unwrap_err());
    gone(client.put_secret_value(put).await.unwrap_err());
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();

    let event = |action: &'static str| {
        eventually(&format!("the abandoned {action}'s event"), || {
            admin
                .run(&["audit", "--resource", "g/abandoned", "--output", "json"])
                .ok()
                .stdout
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .find(|event| event["action"] == action)
        })
    };
    let (read, change) = tokio::task::block_in_place(|| {
        (
            event("secrets:GetSecretValue"),
            event("secrets:PutSecretValue"),
        )
    });
    assert_eq!(read["outcome"], "CANCELLED", "{read}");
    assert_eq!(read["decision"], "allow", "{read}");
    assert_eq!(change["outcome"], "OK", "{change}");
    assert_eq!(admin.run(&["get", "g/abandoned"]).ok().stdout, "two\n");
    let heard = tokio::time::timeout(rekey_tests::DEADLINE, watch.message())
        .await
        .expect("no watch event for the abandoned put")
        .unwrap()
        .unwrap();
    assert_eq!(heard.kind, "version_added", "{heard:?}");
    assert_eq!(heard.name, "g/abandoned");
}

/// `rekey audit --follow --output json`: the log so far, then each new
/// event as one JSON line, as it is written.
#[test]
fn audit_follow_prints_new_events_as_json_lines() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let mut follower = admin
        .command(&["audit", "--follow", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let until = |what: &str, matches: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = received
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} line"));
            if matches(&event) {
                return event;
            }
        }
    };
    // The log so far: init's own events.
    until("first", &|event| event["principal"] == "rekeyd");
    admin.run(&["create", "followed/x"]).ok();
    let created = until("new event", &|event| event["resource"] == "followed/x");
    assert_eq!(created["action"], "secrets:CreateSecret");
    assert_eq!(created["outcome"], "OK");
    follower.kill().unwrap();
    follower.wait().unwrap();
}

/// A name with terminal control sequences, refused and recorded as sent,
/// reaches an operator's terminal escaped, never as sequences; a
/// description or tag with them is refused (they were stored before).
#[tokio::test(flavor = "multi_thread")]
async fn what_clients_sent_cannot_steer_an_operators_terminal() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let hostile = "x\u{1b}]52;c;aGk=\u{7}\r\u{1b}[2K";
    let mut client = server.client(&installation.admin()).await;
    let refused = client
        .get_secret_value(GetSecretValueRequest {
            name: hostile.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    for (description, value) in [(hostile, "v"), ("d", hostile)] {
        let refused = client
            .create_secret(rekey_shared::proto::CreateSecretRequest {
                name: "t/described".into(),
                description: description.into(),
                tags: vec![rekey_shared::proto::Tag {
                    key: "k".into(),
                    value: value.into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("(U+001B) at character 2"),
            "{}",
            refused.message()
        );
    }
    admin.run(&["create", "t/described", "--value", "v"]).ok();

    let audit = admin.run(&["audit"]).ok().stdout;
    assert!(
        audit.contains("x\\u{1b}]52;c;aGk=\\u{7}\\u{d}\\u{1b}[2K"),
        "{audit}"
    );
    for shown in [
        audit,
        admin.run(&["describe", "t/described"]).ok().stdout,
        admin.run(&["list"]).ok().stdout,
    ] {
        assert!(!shown.contains(['\u{1b}', '\u{7}', '\r']), "{shown:?}");
    }
}

/// A request tonic answers before its handler runs (a body that does not
/// decode, a method the service does not have) is audited all the same:
/// action `request`, the path as the resource, the status as the outcome;
/// such events are written at most once a second per principal, counting
/// the rest. Health is not audited.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_answered_before_its_handler_is_audited() {
    use rekey_shared::proto::ListSecretsRequest;
    let installation = Installation::new();
    let bob = installation.issue("bob", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let identity = rekey_shared::identity::Identity::load(&bob).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    // A ListSecretsRequest's field 2 is a number; GetSecretValueRequest's
    // is text: the body does not decode as the RPC's request.
    let send = |path: &'static str| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await.unwrap();
            grpc.unary::<_, ListSecretsRequest, _>(
                tonic::Request::new(ListSecretsRequest {
                    page_size: 5,
                    ..Default::default()
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err()
        }
    };
    let undecodable = send("/rekey.v1.Secrets/GetSecretValue").await;
    assert_eq!(undecodable.code(), tonic::Code::Internal, "{undecodable:?}");
    let events = |resource: &str| -> Vec<serde_json::Value> {
        admin
            .run(&["audit", "--principal", "bob", "--output", "json"])
            .ok()
            .stdout
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["resource"] == resource)
            .collect()
    };
    let recorded = eventually("the undecodable request's event", || {
        events("/rekey.v1.Secrets/GetSecretValue").pop()
    });
    assert_eq!(recorded["action"], "request", "{recorded}");
    assert_eq!(recorded["outcome"], "INTERNAL", "{recorded}");
    assert!(
        recorded["detail"].as_str().unwrap().contains("decode"),
        "{recorded}"
    );
    // More within the second after it are counted, in the next one
    // recorded or in the sweep's event: every one is accounted for.
    let mut sent = 1;
    let unknown = eventually("an unknown method's event", || {
        let status = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(send("/rekey.v1.Secrets/Nothing"))
        });
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        sent += 1;
        events("/rekey.v1.Secrets/Nothing").pop()
    });
    assert_eq!(unknown["outcome"], "UNIMPLEMENTED", "{unknown}");
    let accounted = || -> u64 {
        let events: Vec<serde_json::Value> = admin
            .run(&["audit", "--principal", "bob", "--output", "json"])
            .ok()
            .stdout
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["action"] == "request")
            .collect();
        rekey_tests::refusals_accounted(&events)
    };
    tokio::task::block_in_place(|| {
        eventually(
            "every request answered before its handler accounted for",
            || (accounted() == sent).then_some(()),
        )
    });
    // Health answers are not requests of the API: no event. (A read's
    // event, written before its answer, marks how far the log has come.)
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let _ = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    let _ = rekey_shared::proto::secrets_client::SecretsClient::new(channel.clone())
        .get_secret_value(rekey_shared::proto::GetSecretValueRequest {
            name: "marker/after-health".into(),
            ..Default::default()
        })
        .await;
    let all = admin
        .run(&["audit", "--principal", "bob", "--output", "json"])
        .ok()
        .stdout;
    assert!(all.contains("marker/after-health"), "{all}");
    assert!(!all.contains("grpc.health"), "{all}");
}
