//! Rate limits per principal: over its burst a principal gets
//! RESOURCE_EXHAUSTED with a retry hint (message and
//! `grpc-retry-pushback-ms`), other principals go on, the principal is let
//! through again once the hint has passed, and a burst of refusals is one
//! audit event that counts the rest; counts the audit log refused are
//! written by a later sweep.

use rekey_shared::proto::GetSecretValueRequest;
use rekey_tests::{DEADLINE, Installation, Server, eventually};
use std::time::{Duration, Instant};
use tonic::Code;

fn request() -> GetSecretValueRequest {
    GetSecretValueRequest {
        name: "limited/app".to_owned(),
        ..Default::default()
    }
}

/// An installation where each principal may make `per_second` requests a
/// second, `burst` at once.
fn limited(per_second: u32, burst: u32) -> Installation {
    let installation = Installation::new();
    installation.edit_config(|table| {
        let limits: toml::Table = format!("requests_per_second = {per_second}\nburst = {burst}\n")
            .parse()
            .unwrap();
        table.insert("rate_limit".into(), toml::Value::Table(limits));
    });
    installation
}

/// `installation` served, with the secret the tests read.
fn serve_limited(installation: &Installation) -> Server {
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "limited/app", "--value", "v"])
        .ok();
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_limit_is_told_when_to_retry_and_others_go_on() {
    let installation = limited(2, 4);
    let app = installation.issue("app", &["reader"]);
    let other = installation.issue("other", &["reader"]);
    let server = serve_limited(&installation);

    let mut client = server.client(&app).await;
    let mut allowed = 0;
    let mut refusals = Vec::new();
    let asking = Instant::now();
    for _ in 0..20 {
        match client.get_secret_value(request()).await {
            Ok(_) => allowed += 1,
            Err(status) => refusals.push(status),
        }
    }
    // The burst, plus the tokens refilled (2 a second) while asking.
    let refilled = (asking.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        (4..=5 + refilled).contains(&allowed),
        "{allowed} allowed, {refilled} refilled"
    );
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
    let mut refused_while_waiting = 0;
    loop {
        if client.get_secret_value(request()).await.is_ok() {
            break;
        }
        refused_while_waiting += 1;
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

    // Fewer events than refusals, but every refusal is counted in one: by
    // itself, in a later refusal's "N more", or in the sweep's summary.
    let more_refusals = usize::from(run.code != 0) + refused_while_waiting;
    let admin = server.rekey(&installation.admin());
    let accounted = |events: &[serde_json::Value]| -> usize {
        events
            .iter()
            .filter(|event| event["outcome"] == "RESOURCE_EXHAUSTED")
            .map(|event| {
                let detail = event["detail"].as_str().unwrap_or_default();
                let number = |text: &str| -> usize {
                    text.split_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                };
                if event["action"] == "rate_limit" {
                    number(detail)
                } else {
                    1 + detail
                        .split("over the rate limit; ")
                        .nth(1)
                        .map_or(0, number)
                }
            })
            .sum()
    };
    let events = eventually("every refusal to be accounted for", || {
        // The admin has a limit of its own too: a refused ask asks again.
        let run = admin.run(&[
            "audit",
            "--principal",
            "app",
            "--limit",
            "1000",
            "--output",
            "json",
        ]);
        if run.code != 0 {
            assert!(run.stderr.contains("RESOURCE_EXHAUSTED"), "{}", run.stderr);
            return None;
        }
        let events: Vec<serde_json::Value> = run
            .stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (accounted(&events) >= refusals.len() + more_refusals).then_some(events)
    });
    let recorded = events
        .iter()
        .filter(|event| event["outcome"] == "RESOURCE_EXHAUSTED")
        .count();
    assert!(
        recorded < refusals.len(),
        "{recorded} of {} recorded",
        refusals.len()
    );
    assert_eq!(accounted(&events), refusals.len() + more_refusals);
    // A limit, not the policy's decision: recorded one by one or swept,
    // a refusal says decision none.
    assert!(
        events
            .iter()
            .filter(|event| event["outcome"] == "RESOURCE_EXHAUSTED")
            .all(|event| event["decision"] == "none"),
        "{events:?}"
    );
}

/// Refusals the sweep could not write (the audit log refused them) are
/// counted again and written by a later sweep: none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_the_sweep_could_not_write_are_written_later() {
    let installation = limited(1, 1);
    let app = installation.issue("app", &["reader"]);
    let server = serve_limited(&installation);
    let mut client = server.client(&app).await;
    client.get_secret_value(request()).await.unwrap();

    installation
        .execute_sql(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
        )
        .await;
    // The first refusal is recorded by itself, and its event fails: it is
    // counted for the sweep, as the rest within its second are.
    let mut left_to_the_sweep = 0;
    let first = Instant::now();
    for _ in 0..5 {
        let refused = client.get_secret_value(request()).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        left_to_the_sweep += 1;
    }
    assert!(
        first.elapsed() < Duration::from_secs(1),
        "the refusals took a second"
    );
    tokio::task::block_in_place(|| {
        eventually("a sweep that could not write", || {
            server
                .log_text()
                .contains("cannot record rate-limit refusals; counted again")
                .then_some(())
        })
    });
    installation.execute_sql("DROP TRIGGER refuse_audit").await;

    let admin = server.rekey(&installation.admin());
    let counted = tokio::task::block_in_place(|| {
        eventually("the sweep's event", || {
            // The admin has a limit of its own too: a refused ask asks again.
            let run = admin.run(&["audit", "--principal", "app", "--output", "json"]);
            if run.code != 0 {
                return None;
            }
            let counted: u64 = run
                .stdout
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .filter(|event| event["action"] == "rate_limit")
                .map(|event| {
                    let detail = event["detail"].as_str().unwrap().to_owned();
                    detail
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum();
            (counted > 0).then_some(counted)
        })
    });
    assert_eq!(counted, left_to_the_sweep);
}

/// A batch of reads costs what its reads would one by one (each is an
/// audit event of its own): with a burst of 30, one batch of 20 goes
/// through and the next is refused, where each had cost one request.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_costs_what_its_reads_would() {
    let installation = limited(1, 30);
    let app = installation.issue("app", &[]);
    let server = serve_limited(&installation);
    let mut client = server.client(&app).await;
    let batch = || rekey_shared::proto::BatchGetSecretValueRequest {
        names: (0..20).map(|i| format!("limited/n{i}")).collect(),
        ..Default::default()
    };
    // Refused by the policy, each entry: an audit event apiece all the same.
    let first = client.batch_get_secret_value(batch()).await.unwrap();
    assert_eq!(first.into_inner().errors.len(), 20);
    let second = client
        .batch_get_secret_value(batch())
        .await
        .expect_err("a second batch within the burst of 30");
    assert_eq!(
        second.code(),
        Code::ResourceExhausted,
        "{}",
        second.message()
    );
}
