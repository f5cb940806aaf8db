//! Bounds a client meets: a long input gets a short error and a bounded
//! audit event; a page holds no more than a client takes in one message;
//! a page token goes only with the listing that made it.

use super::bad_input::assert_status;
use rekey_shared::proto;
use rekey_tests::Installation;
use tonic::Code;

/// An error repeats what it refuses, and the audit event keeps the error:
/// a long input (here a tag key of 600,000 control characters, each quoted
/// as six, from a caller allowed nothing, refused before its decision; and
/// a schedule of a million characters) gets its status with a message of
/// bounded length, not a protocol error for a header too large, and its
/// event is bounded too, so that a page of the audit log still reaches a
/// client (tonic's 4 MiB).
#[tokio::test]
async fn a_long_input_gets_a_short_error_and_a_bounded_event() {
    use rekey_shared::proto::admin_client::AdminClient;
    use rekey_shared::proto::rotation_client::RotationClient;
    let installation = Installation::new();
    let nobody = installation.issue("nobody", &[]);
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    client
        .create_secret(proto::CreateSecretRequest {
            name: "long/input".into(),
            secret_string: Some("v".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stranger = server.client(&nobody).await;
    let status = stranger
        .tag_resource(proto::TagResourceRequest {
            name: "long/input".into(),
            tags: vec![proto::Tag {
                key: "\u{1}".repeat(600_000),
                value: "v".into(),
            }],
        })
        .await
        .expect_err("a 600,000-character tag key was taken");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status
            .message()
            .contains("(600000 characters) is 600000 characters long")
            && status.message().len() < 400,
        "{}",
        status.message()
    );
    let identity = rekey_shared::identity::Identity::load(&installation.admin()).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let status = RotationClient::new(channel.clone())
        .configure_rotation(proto::ConfigureRotationRequest {
            name: "long/input".into(),
            rotator: "password".into(),
            schedule: "x".repeat(1_000_000),
            ..Default::default()
        })
        .await
        .expect_err("a schedule of a million characters was taken");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("… (cut at 1000 of "),
        "{}",
        status.message()
    );
    let events = AdminClient::new(channel)
        .query_audit(proto::QueryAuditRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("a page of the audit log")
        .into_inner()
        .events;
    let refused: Vec<_> = events
        .iter()
        .filter(|event| event.outcome == "INVALID_ARGUMENT")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for event in refused {
        assert!(
            event.detail.chars().count() <= 2_100,
            "{}",
            event.detail.len()
        );
    }
}

/// Events each within their bounds can add up to more than a client takes
/// in one message (4 MiB) in a page of 1000 (here refusals of a schedule
/// of 1000 four-byte characters, which the error quotes, on a secret of
/// the longest name): the server ends the page early, saying there is more, and
/// `rekey audit` reads on.
#[tokio::test]
async fn a_page_of_events_too_large_for_a_client_ends_early() {
    use rekey_shared::proto::rotation_client::RotationClient;
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    let name = "n".repeat(512);
    client
        .create_secret(proto::CreateSecretRequest {
            name: name.clone(),
            secret_string: Some("v".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let identity = rekey_shared::identity::Identity::load(&installation.admin()).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let refusals = 1100;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..refusals {
        let mut rotation = RotationClient::new(channel.clone());
        let name = name.clone();
        calls.spawn(async move {
            rotation
                .configure_rotation(proto::ConfigureRotationRequest {
                    name,
                    rotator: "password".into(),
                    schedule: "𝄞".repeat(1000),
                    ..Default::default()
                })
                .await
                .expect_err("not a schedule")
        });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap().code(), tonic::Code::InvalidArgument);
    }
    let admin = server.rekey(&installation.admin());
    let printed = admin
        .run(&["audit", "--limit", "5000", "--output", "json"])
        .ok()
        .stdout;
    let refused = printed
        .lines()
        .filter(|line| line.contains("\"INVALID_ARGUMENT\""))
        .count();
    assert_eq!(refused, refusals);
}

/// Tags and labels within their bounds can add up to more than a client
/// takes in one message (4 MiB) in a page of 100: the page ends early for
/// its size, with a token, and the pages after it hold the rest, each
/// secret once. `rekey list` reads them all.
#[tokio::test]
async fn a_page_too_large_for_a_client_ends_early() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    // 50 tags of 128 + 256 four-byte characters: about 77 KB a secret, and
    // 4.6 MB for the 60.
    let tags: Vec<proto::Tag> = (0..50)
        .map(|i| proto::Tag {
            key: format!("{i:02}{}", "𝄞".repeat(126)),
            value: "𝄞".repeat(256),
        })
        .collect();
    let count = 60;
    for i in 0..count {
        client
            .create_secret(proto::CreateSecretRequest {
                name: format!("big/{i:03}"),
                tags: tags.clone(),
                secret_string: Some("v".into()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (mut names, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = client
            .list_secrets(proto::ListSecretsRequest {
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("a page a client can take")
            .into_inner();
        pages += 1;
        names.extend(page.secrets.into_iter().map(|secret| secret.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(pages > 1, "one page of {} secrets", names.len());
    let expected: Vec<String> = (0..count).map(|i| format!("big/{i:03}")).collect();
    assert_eq!(names, expected);
    let listed = server
        .rekey(&installation.admin())
        .run(&["list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), count);
}

/// A page token goes with the listing that made it: one of another
/// secret's versions, or of a listing with other filters, would skip what
/// this one holds before its position, and is refused.
#[tokio::test]
async fn a_page_token_of_another_listing_is_refused() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    for name in ["tok/a", "tok/b"] {
        client
            .create_secret(proto::CreateSecretRequest {
                name: name.into(),
                secret_string: Some("1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        for value in ["2", "3"] {
            client
                .put_secret_value(proto::PutSecretValueRequest {
                    name: name.into(),
                    secret_string: Some(value.into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let versions = |name: &str, token: String| proto::ListSecretVersionIdsRequest {
        name: name.into(),
        page_size: 1,
        page_token: token,
        include_deprecated: true,
    };
    let token = client
        .list_secret_version_ids(versions("tok/a", String::new()))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    client
        .list_secret_version_ids(versions("tok/a", token.clone()))
        .await
        .unwrap();
    assert_status(
        client
            .list_secret_version_ids(versions("tok/b", token))
            .await,
        Code::InvalidArgument,
        "of another listing",
    );
    let listing = |prefix: &str, token: String| proto::ListSecretsRequest {
        filters: vec![proto::Filter {
            key: proto::FilterKey::Name as i32,
            values: vec![prefix.into()],
        }],
        page_size: 1,
        page_token: token,
        ..Default::default()
    };
    let token = client
        .list_secrets(listing("tok/", String::new()))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert_status(
        client.list_secrets(listing("tok/b", token)).await,
        Code::InvalidArgument,
        "of another listing",
    );
}
