//! Update (description, master key, value) and tags.

use rekey_shared::proto;
use rekey_tests::{Installation, rekeyd};
use tonic::Code;

#[test]
fn update_moves_a_secret_to_another_key_and_adds_values() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey
        .run(&["create", "up/db", "--value", "one", "--description", "old"])
        .ok();
    rekey.run(&["put", "up/db", "--value", "two"]).ok();

    rekey
        .run(&["update", "up/db", "--description", "new words"])
        .ok();
    let described = rekey
        .run(&["describe", "up/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["description"], "new words");
    assert_eq!(described["key_name"], "default");

    // A key made by another process while the server runs is found.
    let created = rekeyd(installation.dir(), &["keys", "create", "payments"]);
    assert!(created.status.success());
    rekey.run(&["update", "up/db", "--key", "payments"]).ok();
    let described = rekey
        .run(&["describe", "up/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["key_name"], "payments");
    let versions = rekey
        .run(&["versions", "up/db", "--all", "--output", "json"])
        .ok()
        .json();
    for version in versions.as_array().unwrap() {
        assert_eq!(version["key_name"], "payments", "{version}");
    }
    assert_eq!(rekey.run(&["get", "up/db"]).ok().stdout, "two\n");
    assert_eq!(
        rekey
            .run(&["get", "up/db", "--stage", "PREVIOUS"])
            .ok()
            .stdout,
        "one\n"
    );

    // A value through update is a new CURRENT version under the new key.
    let updated = rekey
        .run(&["update", "up/db", "--value", "three", "--output", "json"])
        .ok()
        .json();
    let current = rekey.run(&["get", "up/db", "--output", "json"]).ok().json();
    assert_eq!(current["version_id"], updated["version_id"]);
    assert_eq!(current["secret_string"], "three");
    assert_eq!(
        rekey
            .run(&["get", "up/db", "--stage", "PREVIOUS"])
            .ok()
            .stdout,
        "two\n"
    );

    let missing = rekey.run(&["update", "up/db", "--key", "nosuch"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("master key nosuch does not exist"),
        "{}",
        missing.stderr
    );
    let nothing = rekey.run(&["update", "up/db"]);
    assert!(
        nothing.stderr.contains("nothing to update"),
        "{}",
        nothing.stderr
    );
}

#[tokio::test]
async fn tags_are_added_replaced_and_removed() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "tag/me", "--tag", "env=dev"]).ok();
    rekey
        .run(&["tag", "tag/me", "env=prod", "team=core", "empty="])
        .ok();
    let described = rekey
        .run(&["describe", "tag/me", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        described["tags"],
        serde_json::json!({"env": "prod", "team": "core", "empty": ""})
    );
    rekey.run(&["untag", "tag/me", "team", "absent"]).ok();
    let described = rekey
        .run(&["describe", "tag/me", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        described["tags"],
        serde_json::json!({"env": "prod", "empty": ""})
    );

    let mut client = server.client(&installation.admin()).await;
    let too_many: Vec<proto::Tag> = (0..49)
        .map(|i| proto::Tag {
            key: format!("k{i}"),
            value: String::new(),
        })
        .collect();
    let refused = client
        .tag_resource(proto::TagResourceRequest {
            name: "tag/me".into(),
            tags: too_many,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("at most 50"),
        "{}",
        refused.message()
    );
    let described = rekey
        .run(&["describe", "tag/me", "--output", "json"])
        .ok()
        .json();
    assert_eq!(described["tags"].as_object().unwrap().len(), 2);
}

/// A read records the day it happened, on the secret and on the version
/// read, and nowhere else; a second read that day changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_records_its_day_on_the_secret_and_the_version() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "seen/db", "--value", "one"]).ok();
    rekey.run(&["put", "seen/db", "--value", "two"]).ok();
    let mut client = server.client(&installation.admin()).await;
    let describer = client.clone();
    let describe = || {
        let mut client = describer.clone();
        async move {
            client
                .describe_secret(proto::DescribeSecretRequest {
                    name: "seen/db".into(),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(describe().await.last_accessed_at.is_none());

    let millis_per_day = 86_400_000;
    let today = rekey_shared::time::now_millis() / millis_per_day * millis_per_day;
    for _ in 0..2 {
        client
            .get_secret_value(proto::GetSecretValueRequest {
                name: "seen/db".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let accessed = describe().await.last_accessed_at.unwrap();
    assert_eq!(accessed.seconds * 1000, today);
    let versions = client
        .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
            name: "seen/db".into(),
            include_deprecated: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let read: Vec<bool> = versions
        .iter()
        .map(|version| version.last_accessed_at.is_some())
        .collect();
    // Newest first: the CURRENT version was read, the first one was not.
    assert_eq!(read, [true, false]);
}
