//! Batch reads: a secret that cannot be read is an entry in the error list,
//! and the call succeeds; each value given, and each entry the policy
//! refused, is an audit event of its own.

use rekey_shared::proto::{self, Filter, FilterKey};
use rekey_tests::Installation;

#[tokio::test]
async fn a_batch_reports_missing_and_deleted_secrets_among_good_ones() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    for name in ["b/one", "b/two", "b/gone"] {
        rekey
            .run(&["create", name, "--value", &format!("{name}-value")])
            .ok();
    }
    rekey.run(&["create", "b/empty"]).ok();
    rekey.run(&["delete", "b/gone"]).ok();

    let mut client = server.client(&installation.admin()).await;
    let batch = client
        .batch_get_secret_value(proto::BatchGetSecretValueRequest {
            names: [
                "b/one",
                "b/missing",
                "b/two",
                "b/gone",
                "b/empty",
                "bad name",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<(&str, &str)> = batch
        .secret_values
        .iter()
        .map(|v| (v.name.as_str(), v.secret_string.as_deref().unwrap()))
        .collect();
    assert_eq!(values, [("b/one", "b/one-value"), ("b/two", "b/two-value")]);
    let errors: Vec<(&str, &str)> = batch
        .errors
        .iter()
        .map(|e| (e.name.as_str(), e.code.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("b/missing", "NOT_FOUND"),
            ("b/gone", "FAILED_PRECONDITION"),
            ("b/empty", "NOT_FOUND"),
            ("bad name", "INVALID_ARGUMENT"),
        ]
    );
    assert!(batch.errors[1].message.contains("scheduled for deletion"));
    assert!(!batch.errors.iter().any(|e| e.message.contains("-value")));

    // By filter: scheduled secrets are not listed; pages of up to 20.
    let by_filter = client
        .batch_get_secret_value(proto::BatchGetSecretValueRequest {
            filters: vec![Filter {
                key: FilterKey::Name as i32,
                values: vec!["b/".into()],
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = by_filter
        .secret_values
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["b/one", "b/two"]);
    assert_eq!(by_filter.errors[0].name, "b/empty");

    // The log names each secret whose value a batch gave, under the
    // batch's request id, whether it was asked for by name or by filter.
    for name in ["b/one", "b/two"] {
        let given: Vec<serde_json::Value> = rekey
            .run(&["audit", "--resource", name, "--output", "json"])
            .ok()
            .stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .filter(|event: &serde_json::Value| event["detail"] == "given in a batch")
            .collect();
        assert_eq!(given.len(), 2, "{given:?}");
        for event in &given {
            assert_eq!(event["action"], "secrets:GetSecretValue");
            assert_eq!(event["resource"], name);
            assert_eq!(event["outcome"], "OK");
        }
    }
    let batches: Vec<serde_json::Value> = rekey
        .run(&["audit", "--output", "json"])
        .ok()
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| {
            event["detail"].as_str().unwrap().ends_with(" read, 1 not")
                || event["detail"].as_str().unwrap().ends_with(" read, 4 not")
        })
        .collect();
    assert_eq!(batches.len(), 2, "{batches:?}");
    let by_filter_event = &batches[1];
    assert_eq!(by_filter_event["resource"], "");
    let given_with_it = rekey
        .run(&["audit", "--resource", "b/", "--output", "json"])
        .ok()
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| {
            event["request_id"] == by_filter_event["request_id"]
                && event["detail"] == "given in a batch"
        })
        .count();
    assert_eq!(given_with_it, 2);

    // The CLI prints what it could read and exits 1 for the rest.
    let run = rekey.run(&["batch-get", "b/one", "b/missing"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "b/one: b/one-value\n");
    assert!(
        run.stderr
            .contains("b/missing: secret b/missing does not exist (NOT_FOUND)"),
        "{}",
        run.stderr
    );
}

/// Each name of a batch that the policy refused is a `deny` event of its
/// own, under the batch's request id, however long the batch's names are
/// together (the batch's own event cuts its list of names short).
#[tokio::test]
async fn each_refused_entry_is_recorded_as_denied() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let long = |index: usize| format!("p/{}-{index}", "x".repeat(200));
    for name in ["b/one".to_owned(), long(1), long(2), long(3)] {
        admin.run(&["create", &name, "--value", "v"]).ok();
    }
    admin
        .apply_policy(
            r#"
[roles.admin]
statements = [{ effect = "allow", actions = ["*"], resources = ["*"] }]

[roles.b-reader]
statements = [
  { effect = "allow", actions = ["secrets:GetSecretValue"], resources = ["b/*"] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:default"] },
]

[[bindings]]
principal = "admin"
roles = ["admin"]

[[bindings]]
principal = "prober"
roles = ["b-reader"]
"#,
        )
        .ok();
    let mut prober = server.client(&installation.issue("prober", &[])).await;
    let batch = prober
        .batch_get_secret_value(proto::BatchGetSecretValueRequest {
            names: vec!["b/one".into(), long(1), long(2), long(3)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.secret_values.len(), 1);
    assert_eq!(batch.errors.len(), 3);

    let events: Vec<serde_json::Value> = admin
        .run(&["audit", "--principal", "prober", "--output", "json"])
        .ok()
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let request_id = &events
        .iter()
        .find(|event| event["detail"] == "given in a batch")
        .expect("the value given")["request_id"];
    let denied: Vec<&str> = events
        .iter()
        .filter(|event| event["decision"] == "deny" && event["request_id"] == *request_id)
        .map(|event| {
            assert_eq!(event["outcome"], "PERMISSION_DENIED");
            assert_eq!(event["action"], "secrets:GetSecretValue");
            event["resource"].as_str().unwrap()
        })
        .collect();
    assert_eq!(denied, [long(1), long(2), long(3)]);
}
