//! Rate limits per principal: over its burst a principal gets
//! RESOURCE_EXHAUSTED with a retry hint (message and
//! `grpc-retry-pushback-ms`), other principals go on, the principal is let
//! through again once the hint has passed, and a burst of refusals is one
//! audit event that counts the rest.

use rekey_shared::proto::GetSecretValueRequest;
use rekey_tests::{DEADLINE, Installation};
use std::time::{Duration, Instant};
use tonic::Code;

fn request() -> GetSecretValueRequest {
    GetSecretValueRequest {
        name: "limited/app".to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_limit_is_told_when_to_retry_and_others_go_on() {
    let installation = Installation::new();
    installation.edit_config(|table| {
        let limits: toml::Table = "requests_per_second = 2\nburst = 4\n".parse().unwrap();
        table.insert("rate_limit".into(), toml::Value::Table(limits));
    });
    let app = installation.issue("app", &["reader"]);
    let other = installation.issue("other", &["reader"]);
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "limited/app", "--value", "v"])
        .ok();

    let mut client = server.client(&app).await;
    let mut allowed = 0;
    let mut refusals = Vec::new();
    for _ in 0..20 {
        match client.get_secret_value(request()).await {
            Ok(_) => allowed += 1,
            Err(status) => refusals.push(status),
        }
    }
    // The burst, plus at most a token or two refilled while asking.
    assert!((4..=6).contains(&allowed), "{allowed} allowed");
    let refused = &refusals[0];
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("app made more than 2 requests per second (burst 4); retry in "),
        "{}",
        refused.message()
    );
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("grpc-retry-pushback-ms");
    assert!((1..=500).contains(&pushback), "{pushback} ms");

    // Another principal has a bucket of its own.
    let mut other_client = server.client(&other).await;
    other_client.get_secret_value(request()).await.unwrap();

    // After the hint, the principal is let through again.
    let start = Instant::now();
    loop {
        if client.get_secret_value(request()).await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "app was never let through again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(pushback / 2));

    // The CLI says so in one line.
    let run = server.rekey(&app).run(&["get", "limited/app"]);
    if run.code != 0 {
        assert!(
            run.stderr.contains("(RESOURCE_EXHAUSTED)"),
            "{}",
            run.stderr
        );
    }

    // One recorded refusal for the burst of them, not one per refusal.
    let log = server
        .rekey(&installation.admin())
        .run(&[
            "audit",
            "--principal",
            "app",
            "--limit",
            "1000",
            "--output",
            "json",
        ])
        .ok()
        .stdout;
    let recorded = log
        .lines()
        .filter(|line| line.contains("RESOURCE_EXHAUSTED"))
        .count();
    assert!(recorded >= 1, "{log}");
    assert!(
        recorded < refusals.len(),
        "{recorded} of {} recorded",
        refusals.len()
    );
}
