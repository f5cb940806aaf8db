//! The core flow: create → get → put → CURRENT/PREVIOUS → custom labels →
//! PENDING → list with pages → versions, through the CLI and through gRPC.

use rekey_shared::proto::{self, Filter, FilterKey};
use rekey_tests::Installation;
use std::collections::BTreeMap;

/// Stage → version id, from `rekey describe --output json`.
fn stages(rekey: &rekey_tests::Rekey, name: &str) -> BTreeMap<String, String> {
    let described = rekey
        .run(&["describe", name, "--output", "json"])
        .ok()
        .json();
    let mut map = BTreeMap::new();
    for version in described["versions"].as_array().unwrap() {
        for stage in version["stages"].as_array().unwrap() {
            map.insert(
                stage.as_str().unwrap().to_owned(),
                version["version_id"].as_str().unwrap().to_owned(),
            );
        }
    }
    map
}

#[test]
fn the_core_flow_through_the_cli() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());

    let created = rekey
        .run_with_input(
            &[
                "create",
                "app/db",
                "--value-file",
                "-",
                "--description",
                "orders",
                "--output",
                "json",
            ],
            b"one",
        )
        .ok()
        .json();
    let v1 = created["version_id"].as_str().unwrap().to_owned();
    assert_eq!(rekey.run(&["get", "app/db"]).ok().stdout, "one\n");

    // A put without stages moves CURRENT; PREVIOUS follows.
    let put = rekey
        .run_with_input(&["put", "app/db", "--output", "json"], b"two")
        .ok()
        .json();
    let v2 = put["version_id"].as_str().unwrap().to_owned();
    assert_eq!(put["version_stages"], serde_json::json!(["CURRENT"]));
    assert_eq!(rekey.run(&["get", "app/db"]).ok().stdout, "two\n");
    assert_eq!(
        rekey
            .run(&["get", "app/db", "--stage", "PREVIOUS"])
            .ok()
            .stdout,
        "one\n"
    );
    assert_eq!(
        stages(&rekey, "app/db"),
        BTreeMap::from([
            ("CURRENT".into(), v2.clone()),
            ("PREVIOUS".into(), v1.clone())
        ])
    );

    // A PENDING put leaves CURRENT where it is.
    let pending = rekey
        .run_with_input(
            &["put", "app/db", "--stage", "PENDING", "--output", "json"],
            b"three",
        )
        .ok()
        .json();
    let v3 = pending["version_id"].as_str().unwrap().to_owned();
    assert_eq!(pending["version_stages"], serde_json::json!(["PENDING"]));
    assert_eq!(rekey.run(&["get", "app/db"]).ok().stdout, "two\n");
    assert_eq!(
        rekey
            .run(&["get", "app/db", "--stage", "PENDING"])
            .ok()
            .stdout,
        "three\n"
    );
    assert_eq!(
        rekey.run(&["get", "app/db", "--version", &v1]).ok().stdout,
        "one\n"
    );

    // A custom label is on one version at a time.
    rekey.run(&["stage", "app/db", "blue", "--to", &v1]).ok();
    assert_eq!(
        rekey.run(&["get", "app/db", "--stage", "blue"]).ok().stdout,
        "one\n"
    );
    rekey.run(&["stage", "app/db", "blue", "--to", &v2]).ok();
    assert_eq!(
        rekey.run(&["get", "app/db", "--stage", "blue"]).ok().stdout,
        "two\n"
    );
    assert_eq!(stages(&rekey, "app/db").get("blue"), Some(&v2));

    // Moving CURRENT by hand: PREVIOUS follows; a compare-and-swap removal.
    rekey.run(&["stage", "app/db", "CURRENT", "--to", &v3]).ok();
    let refused = rekey.run(&["stage", "app/db", "PENDING", "--from", &v1]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("FAILED_PRECONDITION"),
        "{}",
        refused.stderr
    );
    rekey
        .run(&["stage", "app/db", "PENDING", "--from", &v3])
        .ok();
    assert_eq!(
        stages(&rekey, "app/db"),
        BTreeMap::from([
            ("CURRENT".into(), v3.clone()),
            ("PREVIOUS".into(), v2.clone()),
            ("blue".into(), v2.clone()),
        ])
    );
    assert_eq!(rekey.run(&["get", "app/db"]).ok().stdout, "three\n");

    // v1 lost its last label: deprecated, listed only on request.
    let listed = rekey
        .run(&["versions", "app/db", "--output", "json"])
        .ok()
        .json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [v3.as_str(), v2.as_str()]);
    let all = rekey
        .run(&["versions", "app/db", "--all", "--output", "json"])
        .ok()
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(all[2]["version_id"], v1.as_str());
    assert_eq!(all[2]["stages"], serde_json::json!([]));
    assert_eq!(all[0]["created_by"], "admin");

    // Pages: the CLI follows them; names come sorted, none twice.
    for index in 0..7 {
        rekey
            .run(&["create", &format!("list/s{index}"), "--value", "x"])
            .ok();
    }
    let listed = rekey
        .run(&[
            "list",
            "--prefix",
            "list/",
            "--page-size",
            "3",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..7).map(|i| format!("list/s{i}")).collect();
    assert_eq!(names, expected);
    let text = rekey.run(&["list"]).ok().stdout;
    assert!(text.contains("app/db") && text.contains("orders"), "{text}");
}

#[tokio::test]
async fn the_core_flow_over_grpc() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;

    let created = client
        .create_secret(proto::CreateSecretRequest {
            name: "bin/key".into(),
            secret_binary: Some(vec![0, 1, 2, 255]),
            tags: vec![proto::Tag {
                key: "team".into(),
                value: "core".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let v1 = created.version_id.unwrap();
    assert!(created.secret_id.starts_with("bin/key-"));

    let read = client
        .get_secret_value(proto::GetSecretValueRequest {
            name: "bin/key".into(),
            version_id: Some(v1.clone()),
            version_stage: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.secret_binary, Some(vec![0, 1, 2, 255]));
    assert_eq!(read.secret_string, None);
    assert_eq!(read.version_stages, ["CURRENT"]);

    // A secret created without a value: its first put gets CURRENT even
    // when it asks for PENDING only.
    client
        .create_secret(proto::CreateSecretRequest {
            name: "empty/one".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let no_value = client
        .get_secret_value(proto::GetSecretValueRequest {
            name: "empty/one".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_value.code(), tonic::Code::NotFound);
    assert!(
        no_value.message().contains("no value yet"),
        "{}",
        no_value.message()
    );
    let first = client
        .put_secret_value(proto::PutSecretValueRequest {
            name: "empty/one".into(),
            secret_string: Some("first".into()),
            version_stages: vec!["PENDING".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.version_stages, ["CURRENT", "PENDING"]);

    // Pages over gRPC: tokens continue where the last page ended.
    for index in 0..5 {
        client
            .create_secret(proto::CreateSecretRequest {
                name: format!("paged/{index}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_secrets(proto::ListSecretsRequest {
                filters: vec![Filter {
                    key: FilterKey::Name as i32,
                    values: vec!["paged/".into()],
                }],
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.secrets.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["paged/0", "paged/1", "paged/2", "paged/3", "paged/4"]
    );
    assert_eq!(pages, 3);

    let described = client
        .describe_secret(proto::DescribeSecretRequest {
            name: "bin/key".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.key_name, "default");
    assert_eq!(described.tags[0].key, "team");
    assert_eq!(described.versions.len(), 1);
}
