//! Certificates revoked while the server runs: refused on the next request
//! of a connection opened before (and the refusal audited), and at the next
//! handshake. Also the registry (`cert list`) and renewal.

use rekey_shared::proto;
use rekey_tests::{DEADLINE, Installation, eventually, rekeyd, text};
use sqlx::Connection;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused_on_an_open_connection() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["reader"]);
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "r/x", "--value", "v"])
        .ok();

    // One connection, opened and used before the revocation.
    let mut client = server.client(&bob).await;
    let read = |client: &mut rekey_shared::proto::secrets_client::SecretsClient<_>| {
        let mut client = client.clone();
        async move {
            client
                .get_secret_value(proto::GetSecretValueRequest {
                    name: "r/x".into(),
                    ..Default::default()
                })
                .await
        }
    };
    read(&mut client).await.unwrap();

    let revoked = rekeyd(installation.dir(), &["cert", "revoke", "bob"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));

    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        match read(&mut client).await {
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the revoked certificate still works"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("was revoked"),
        "{}",
        status.message()
    );
    // More on the same connection at once: refused alike, and recorded at
    // most once a second (a flood costs no write each).
    for _ in 0..10 {
        let again = read(&mut client).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::Unauthenticated);
    }
    // No handler ran, and the refusal is audited all the same.
    let admin = server.rekey(&installation.admin());
    let refusals = || {
        admin
            .run(&["audit", "--principal", "bob", "--output", "json"])
            .ok()
            .stdout
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["action"] == "authenticate")
            .collect::<Vec<_>>()
    };
    let refusal = tokio::task::block_in_place(|| {
        eventually("the refusal's audit event", || {
            refusals().into_iter().next()
        })
    });
    // Each of the 11 is accounted for: a recorded one, or in the count of
    // one recorded after it, or in the sweep's event of what was left.
    let events = tokio::task::block_in_place(|| {
        eventually("every refusal to be accounted for", || {
            let events = refusals();
            (rekey_tests::refusals_accounted(&events) == 11).then_some(events)
        })
    });
    let recorded = events
        .iter()
        .filter(|event| {
            !event["detail"]
                .as_str()
                .unwrap()
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .count();
    assert!(
        (1..=2).contains(&recorded),
        "{recorded} of 11 refusals recorded one by one"
    );
    assert_eq!(refusal["resource"], "/rekey.v1.Secrets/GetSecretValue");
    assert_eq!(refusal["decision"], "deny");
    assert_eq!(refusal["outcome"], "UNAUTHENTICATED");
    assert!(
        refusal["detail"].as_str().unwrap().contains("was revoked"),
        "{refusal}"
    );

    // A new connection fails at the handshake.
    let identity = rekey_shared::identity::Identity::load(&bob).unwrap();
    let fresh = match rekey_shared::channel::connect(&server.url, &identity).await {
        Err(_) => None,
        Ok(channel) => Some(
            rekey_shared::proto::secrets_client::SecretsClient::new(channel)
                .list_secrets(proto::ListSecretsRequest::default())
                .await
                .unwrap_err(),
        ),
    };
    if let Some(status) = fresh {
        assert_ne!(
            status.code(),
            tonic::Code::Unauthenticated,
            "refused after, not at, the handshake"
        );
    }
    // ... and the server said why, in its TLS alert, which the CLI tells
    // (it said the server was unavailable).
    assert_eq!(
        rekey_shared::probe::certificate_refused(&server.url, &identity).await,
        Some(rustls::AlertDescription::CertificateRevoked)
    );
    let told = tokio::task::block_in_place(|| server.rekey(&bob).run(&["list"]));
    assert_eq!(told.code, 1);
    assert!(
        told.stderr.contains(
            "refuses this client's certificate at the TLS handshake (CertificateRevoked)"
        ) && told.stderr.contains("(UNAUTHENTICATED)"),
        "{}",
        told.stderr
    );
    // An identity it accepts is told apart.
    let admin = rekey_shared::identity::Identity::load(&installation.admin()).unwrap();
    assert_eq!(
        rekey_shared::probe::certificate_refused(&server.url, &admin).await,
        None
    );
    // The admin is unaffected.
    server
        .rekey(&installation.admin())
        .run(&["get", "r/x"])
        .ok();

    let listed = text(&rekeyd(installation.dir(), &["cert", "list"]).stdout);
    let bob_line = listed.lines().find(|line| line.contains(" bob ")).unwrap();
    assert!(bob_line.ends_with("revoked"), "{listed}");
    let admin_line = listed
        .lines()
        .find(|line| line.contains(" admin "))
        .unwrap();
    assert!(admin_line.ends_with("valid"), "{listed}");
}

/// A Watch stream opened before its certificate was revoked ends with
/// UNAUTHENTICATED, whether or not an event comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_loses_its_open_watch() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["reader"]);
    let server = installation.serve();
    let mut stream = server.watch(&bob, "").await.unwrap();
    let revoked = rekeyd(installation.dir(), &["cert", "revoke", "bob"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let ended = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the stream of a revoked certificate stays open");
    let status = ended.expect_err("a revoked certificate's stream got an event");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("was revoked"), "{status:?}");
}

#[test]
fn renewal_issues_a_working_certificate_and_revocation_names_what_it_did() {
    let installation = Installation::new();
    let carol = installation.issue("carol", &["reader"]);
    // A validity of no days (or too many) is refused before anything is
    // replaced.
    let before = std::fs::read(&carol).unwrap();
    for days in ["--days=0", "--days=-1", "--days=100000"] {
        let refused = rekeyd(
            installation.dir(),
            &[
                "cert",
                "renew",
                "carol",
                "--out",
                carol.to_str().unwrap(),
                days,
            ],
        );
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
        assert!(
            text(&refused.stderr).contains("--days"),
            "{}",
            text(&refused.stderr)
        );
    }
    assert_eq!(std::fs::read(&carol).unwrap(), before);
    // Renewing writes only over the identity it renews: not over the root
    // key (a mistyped --out), nor over another principal's identity.
    let root_key = installation.dir().join("root.key");
    let admin_pem = installation.admin();
    for (out, reason) in [
        (&root_key, "is not an identity file of carol"),
        (&admin_pem, "is the identity of admin, not of carol"),
    ] {
        let kept = std::fs::read(out).unwrap();
        let refused = rekeyd(
            installation.dir(),
            &["cert", "renew", "carol", "--out", out.to_str().unwrap()],
        );
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
        assert!(
            text(&refused.stderr).contains(reason),
            "{}",
            text(&refused.stderr)
        );
        assert_eq!(std::fs::read(out).unwrap(), kept);
    }
    // An identity of carol's that cannot be used as it is (readable by
    // others here) is one renewing mends: it is written over.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&carol, std::fs::Permissions::from_mode(0o644)).unwrap();
    let renewed = rekeyd(
        installation.dir(),
        &["cert", "renew", "carol", "--out", carol.to_str().unwrap()],
    );
    assert!(renewed.status.success(), "{}", text(&renewed.stderr));
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "c/x", "--value", "v"])
        .ok();
    assert_eq!(server.rekey(&carol).run(&["get", "c/x"]).ok().stdout, "v\n");
    let listed = text(&rekeyd(installation.dir(), &["cert", "list"]).stdout);
    assert_eq!(
        listed
            .lines()
            .filter(|line| line.contains(" carol "))
            .count(),
        2,
        "{listed}"
    );

    let unknown = rekeyd(installation.dir(), &["cert", "revoke", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no certificate was issued here to nobody"));
    // A name the registry does not know is not taken for a serial, even
    // when it reads as one (a principal of another CA would seem revoked
    // and work on); a serial of another CA is given as one.
    let hex_name = rekeyd(installation.dir(), &["cert", "revoke", "0a1b2c"]);
    assert_eq!(hex_name.status.code(), Some(1));
    assert!(
        text(&hex_name.stderr).contains("rekeyd cert revoke --serial SERIAL"),
        "{}",
        text(&hex_name.stderr)
    );
    let serial = rekeyd(
        installation.dir(),
        &["cert", "revoke", "--serial", "0a:1b:2c"],
    );
    assert!(
        serial.status.success(),
        "a foreign serial is recorded: {}",
        text(&serial.stderr)
    );
    let again = rekeyd(
        installation.dir(),
        &["cert", "revoke", "--serial", "0A1B2C"],
    );
    assert!(
        text(&again.stderr).contains("already revoked"),
        "{}",
        text(&again.stderr)
    );
    let not_hex = rekeyd(installation.dir(), &["cert", "revoke", "--serial", "carol"]);
    assert!(
        text(&not_hex.stderr).contains("is not a serial number"),
        "{}",
        text(&not_hex.stderr)
    );
    // A principal whose name is another certificate's serial is ambiguous.
    let carol_serial = listed
        .lines()
        .find(|line| line.contains(" carol "))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_owned();
    installation.issue(&carol_serial, &["reader"]);
    let ambiguous = rekeyd(installation.dir(), &["cert", "revoke", &carol_serial]);
    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(
        text(&ambiguous.stderr).contains("is a principal and the serial of another certificate"),
        "{}",
        text(&ambiguous.stderr)
    );
    let reserved = rekeyd(installation.dir(), &["cert", "issue", "system"]);
    assert!(text(&reserved.stderr).contains("reserved"));

    // The audit events say what each revocation revoked.
    let carol_serials: Vec<&str> = listed
        .lines()
        .filter(|line| line.contains(" carol "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let by_name = rekeyd(installation.dir(), &["cert", "revoke", "carol"]);
    assert!(by_name.status.success(), "{}", text(&by_name.stderr));
    let events: Vec<serde_json::Value> = server
        .rekey(&installation.admin())
        .run(&["audit", "--principal", "rekeyd", "--output", "json"])
        .ok()
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| event["action"] == "certificates:Revoke")
        .collect();
    let detail_of = |resource: &str| {
        events
            .iter()
            .find(|event| event["resource"] == resource)
            .map(|event| event["detail"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no revocation of {resource}: {events:?}"))
    };
    assert_eq!(detail_of("serial:0a1b2c"), "revoked 0a1b2c");
    let carol = detail_of("carol");
    for serial in carol_serials {
        assert!(carol.contains(serial), "{serial}: {carol}");
    }
}

/// A policy version this server cannot read (a newer `rekeyd` beside it may
/// write one, with an action this one does not know) does not hold up the
/// revocations loaded after it, and is not met by going on with the policy
/// it replaced: the server refuses every request until it can read the one
/// in force.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_this_server_cannot_read_holds_up_no_revocation() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["reader"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "r/x", "--value", "v"]).ok();
    let mut client = server.client(&bob).await;
    let request = || proto::GetSecretValueRequest {
        name: "r/x".into(),
        ..Default::default()
    };
    client.get_secret_value(request()).await.unwrap();
    let mut watch = server.watch(&installation.admin(), "r/").await.unwrap();

    let url = format!("sqlite://{}", installation.database().display());
    let mut database = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO policies (version, document, created_at, created_by)
         SELECT version + 1, document || char(10) || 'from_the_future = true', created_at, 'newer'
         FROM policies ORDER BY version DESC LIMIT 1",
    )
    .execute(&mut database)
    .await
    .unwrap();
    let revoked = rekeyd(installation.dir(), &["cert", "revoke", "bob"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));

    let status = tokio::task::block_in_place(|| {
        eventually("bob's revocation to take effect", || {
            let mut client = client.clone();
            let result = tokio::runtime::Handle::current()
                .block_on(async move { client.get_secret_value(request()).await });
            // Refused for the policy (PERMISSION_DENIED) until the
            // revocation is loaded.
            result
                .err()
                .filter(|status| status.code() == tonic::Code::Unauthenticated)
        })
    });
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("was revoked"), "{status:?}");
    // An open Watch stream ends (its events would all be held back).
    let ended = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("the watch went on under a policy the server cannot read");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    // Watching again is refused, not answered with a silent stream.
    let again = server.watch(&installation.admin(), "r/").await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::PermissionDenied, "{again:?}");
    // The admin, whom both policies allow, is refused too.
    let refused = admin.run(&["get", "r/x"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("PERMISSION_DENIED"),
        "{}",
        refused.stderr
    );
    rekey_tests::eventually("the refusal of the policy to be logged", || {
        server
            .log_text()
            .contains("refuses every request until a policy it can read is applied")
            .then_some(())
    });
    assert!(
        server
            .log_text()
            .contains("refuses every request until a policy it can read is applied"),
        "{}",
        server.log_text()
    );
}

/// Health and reflection, on a connection opened before the revocation,
/// refuse the revoked certificate as every other service does.
#[tokio::test(flavor = "multi_thread")]
async fn health_refuses_a_revoked_certificate_on_an_open_connection() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["reader"]);
    let server = installation.serve();
    let identity = rekey_shared::identity::Identity::load(&bob).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(check()).await.unwrap();
    let revoked = rekeyd(installation.dir(), &["cert", "revoke", "bob"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        match health.check(check()).await {
            Ok(_) => assert!(Instant::now() < deadline, "health still answers bob"),
            Err(status) => break status,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}
