//! Batch reads: a secret that cannot be read is an entry in the error list,
//! and the call succeeds.

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
