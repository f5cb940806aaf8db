//! Bad input gets a clear message, the right gRPC code, and changes nothing
//! in the store.

use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::{self};
use rekey_tests::Installation;
use tonic::Code;
use tonic::transport::Channel;

/// Everything a client can see of the store: every secret with every
/// version and its stages.
async fn snapshot(client: &mut SecretsClient<Channel>) -> String {
    let mut text = String::new();
    let secrets = client
        .list_secrets(proto::ListSecretsRequest {
            include_planned_deletion: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secrets;
    for secret in secrets {
        let versions = client
            .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
                name: secret.name.clone(),
                include_deprecated: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .versions;
        text.push_str(&format!("{secret:?}\n"));
        for version in versions {
            text.push_str(&format!("  {} {:?}\n", version.version_id, version.stages));
        }
    }
    text
}

pub(crate) fn assert_status<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    fragment: &str,
) {
    let status = result.expect_err("the request should have been refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(fragment),
        "{:?} does not contain {fragment:?}",
        status.message()
    );
}

#[tokio::test]
async fn each_bad_request_is_refused_and_changes_nothing() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    for name in ["app/one", "app/two"] {
        client
            .create_secret(proto::CreateSecretRequest {
                name: name.into(),
                secret_string: Some("value".into()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let before = snapshot(&mut client).await;
    let create = |name: &str| proto::CreateSecretRequest {
        name: name.into(),
        secret_string: Some("v".into()),
        ..Default::default()
    };
    let put = |value: proto::PutSecretValueRequest| proto::PutSecretValueRequest {
        name: "app/one".into(),
        ..value
    };

    assert_status(
        client.create_secret(create("")).await,
        Code::InvalidArgument,
        "secret name is empty",
    );
    assert_status(
        client.create_secret(create(&"a".repeat(513))).await,
        Code::InvalidArgument,
        "513 characters long; it must be 1-512",
    );
    assert_status(
        client.create_secret(create("app/bad name")).await,
        Code::InvalidArgument,
        "contains ' '",
    );
    assert_status(
        client.create_secret(create("app/one")).await,
        Code::AlreadyExists,
        "secret app/one already exists",
    );
    assert_status(
        client
            .put_secret_value(put(proto::PutSecretValueRequest {
                secret_binary: Some(vec![7; 64 * 1024 + 1]),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
        "65537 bytes; the limit is 65536 bytes",
    );
    assert_status(
        client
            .put_secret_value(put(proto::PutSecretValueRequest {
                secret_string: Some("s".into()),
                secret_binary: Some(vec![1]),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
        "not both",
    );
    assert_status(
        client
            .put_secret_value(put(proto::PutSecretValueRequest::default()))
            .await,
        Code::InvalidArgument,
        "give a value",
    );
    assert_status(
        client
            .put_secret_value(put(proto::PutSecretValueRequest {
                secret_string: Some("s".into()),
                client_request_token: "short".into(),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
        "client request token",
    );
    assert_status(
        client
            .get_secret_value(proto::GetSecretValueRequest {
                name: "app/missing".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "secret app/missing does not exist",
    );
    let unknown_version = "00000000-0000-4000-8000-000000000000";
    assert_status(
        client
            .get_secret_value(proto::GetSecretValueRequest {
                name: "app/one".into(),
                version_id: Some(unknown_version.into()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "secret app/one has no version 00000000-0000-4000-8000-000000000000",
    );
    assert_status(
        client
            .get_secret_value(proto::GetSecretValueRequest {
                name: "app/one".into(),
                version_stage: Some("nosuch".into()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "no version with stage nosuch",
    );

    // A stage cannot move to a version of another secret.
    let other_version = client
        .describe_secret(proto::DescribeSecretRequest {
            name: "app/two".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions[0]
        .version_id
        .clone();
    assert_status(
        client
            .update_secret_version_stage(proto::UpdateSecretVersionStageRequest {
                name: "app/one".into(),
                version_stage: "CURRENT".into(),
                move_to_version_id: Some(other_version.clone()),
                remove_from_version_id: None,
            })
            .await,
        Code::NotFound,
        &format!("secret app/one has no version {other_version}"),
    );
    assert_status(
        client
            .update_secret_version_stage(proto::UpdateSecretVersionStageRequest {
                name: "app/one".into(),
                version_stage: "CURRENT".into(),
                move_to_version_id: None,
                remove_from_version_id: Some(other_version),
            })
            .await,
        Code::FailedPrecondition,
        "stage CURRENT of app/one is on version",
    );
    assert_status(
        client
            .list_secrets(proto::ListSecretsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page token is malformed",
    );
    assert_status(
        client
            .create_secret(proto::CreateSecretRequest {
                name: "app/three".into(),
                key_name: "nosuchkey".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "master key nosuchkey does not exist",
    );

    assert_eq!(snapshot(&mut client).await, before);
}

#[test]
fn the_cli_reports_errors_in_one_line_with_stable_exit_codes() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    let missing = rekey.run(&["get", "app/missing"]);
    assert_eq!(missing.code, 1);
    assert_eq!(
        missing.stderr,
        "rekey: secret app/missing does not exist (NOT_FOUND)\n"
    );
    assert_eq!(missing.stdout, "");
    let usage = rekey.run(&["get"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    // Usage errors that only the arguments' meaning shows are usage errors too.
    for args in [
        &["stage", "app/x", "CURRENT"][..],
        &["rotation", "configure", "app/x", "--approve", "bogus"],
    ] {
        let usage = rekey.run(args);
        assert_eq!(usage.code, 2, "{args:?}: {}", usage.stderr);
    }
    let too_big = rekey.run_with_input(
        &["create", "app/big", "--value-file", "-"],
        &vec![b'x'; 70_000],
    );
    assert_eq!(too_big.code, 1);
    assert!(
        too_big.stderr.contains("the limit is 65536 bytes"),
        "{}",
        too_big.stderr
    );
}

/// A reader that stops reading ends rekey quietly (exit 0, nothing on
/// standard error), as `rekey list | head -1` expects; it panicked.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "pipe/a", "--value", "v"]).ok();
    for args in [
        &["list"][..],
        &["get", "pipe/a", "--output", "json"],
        &["get", "pipe/a"],
    ] {
        let mut listing = rekey
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before rekey has connected, let alone written.
        drop(listing.stdout.take());
        let output = listing.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
    // Output that cannot be written (a full disk) is one line and exit 1,
    // not a panic's report.
    for args in [&["list"][..], &["get", "pipe/a", "--output", "json"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let output = rekey
            .command(args)
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("rekey: "), "{args:?}: {stderr}");
    }
}

/// A server address that is not https is refused before anything is
/// sent: tonic would connect to an http:// one without TLS, and a put's
/// value would go out in clear to whoever listens there.
#[test]
fn the_cli_refuses_an_address_that_is_not_https() {
    let installation = Installation::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let output = std::process::Command::new(rekey_tests::binary("rekey"))
        .env("REKEY_SERVER", format!("http://{address}"))
        .env("REKEY_IDENTITY", installation.admin())
        .args(["put", "app/x", "--value-file", "/dev/stdin"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a URL like https://host:port"),
        "{stderr}"
    );
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().map(drop).map_err(|error| error.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the client connected to the http:// address"
    );
}

#[tokio::test]
async fn lifecycle_tag_batch_and_password_requests_are_checked() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    client
        .create_secret(proto::CreateSecretRequest {
            name: "app/one".into(),
            description: "kept".into(),
            tags: vec![proto::Tag {
                key: "env".into(),
                value: "dev".into(),
            }],
            secret_string: Some("value".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = snapshot(&mut client).await;
    let delete = |days: Option<u32>, force: bool| proto::DeleteSecretRequest {
        name: "app/one".into(),
        recovery_window_days: days,
        force_delete_without_recovery: force,
        secret_id: String::new(),
    };
    for days in [0, 6, 31] {
        assert_status(
            client.delete_secret(delete(Some(days), false)).await,
            Code::InvalidArgument,
            &format!("a recovery window of {days} days is out of range; it must be 7-30 days"),
        );
    }
    assert_status(
        client.delete_secret(delete(Some(7), true)).await,
        Code::InvalidArgument,
        "a recovery window or force deletion, not both",
    );
    // Asked about another secret of that name (one deleted and created
    // again since): nothing is deleted.
    assert_status(
        client
            .delete_secret(proto::DeleteSecretRequest {
                secret_id: "an-earlier-secret".into(),
                ..delete(None, true)
            })
            .await,
        Code::FailedPrecondition,
        "app/one is no longer the secret an-earlier-secret that was asked about",
    );
    assert_status(
        client
            .restore_secret(proto::RestoreSecretRequest {
                name: "app/one".into(),
            })
            .await,
        Code::FailedPrecondition,
        "secret app/one is not scheduled for deletion",
    );
    let password = |length: u32| proto::GetRandomPasswordRequest {
        password_length: Some(length),
        ..Default::default()
    };
    for length in [0, 5000] {
        assert_status(
            client.get_random_password(password(length)).await,
            Code::InvalidArgument,
            &format!("password length {length} is out of range; it must be 1-4096"),
        );
    }
    assert_status(
        client
            .get_random_password(proto::GetRandomPasswordRequest {
                exclude_numbers: true,
                exclude_punctuation: true,
                exclude_uppercase: true,
                exclude_lowercase: true,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "every character is excluded",
    );
    assert_status(
        client
            .batch_get_secret_value(proto::BatchGetSecretValueRequest {
                names: (0..21).map(|i| format!("app/{i}")).collect(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "21 names given; a batch reads at most 20",
    );
    assert_status(
        client
            .tag_resource(proto::TagResourceRequest {
                name: "app/one".into(),
                tags: vec![proto::Tag {
                    key: "k".repeat(129),
                    value: String::new(),
                }],
            })
            .await,
        Code::InvalidArgument,
        "is 129 characters long; it must be 1-128",
    );
    assert_status(
        client
            .tag_resource(proto::TagResourceRequest {
                name: "app/one".into(),
                tags: vec![proto::Tag {
                    key: "k".into(),
                    value: "v".repeat(257),
                }],
            })
            .await,
        Code::InvalidArgument,
        "257 characters long; the limit is 256",
    );
    assert_status(
        client
            .update_secret(proto::UpdateSecretRequest {
                name: "app/one".into(),
                description: Some("d".repeat(2049)),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "description is 2049 characters long; the limit is 2048",
    );
    assert_status(
        client
            .list_secrets(proto::ListSecretsRequest {
                page_token: "c2VjcmV0czpub3BlOjE6eA".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page token",
    );
    assert_status(
        client
            .list_secrets(proto::ListSecretsRequest {
                filters: vec![proto::Filter {
                    key: proto::FilterKey::Name as i32,
                    values: vec![],
                }],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "a filter takes 1-10 values",
    );
    assert_eq!(snapshot(&mut client).await, before);
}

#[test]
fn the_cli_refuses_force_with_a_recovery_window() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "app/x", "--value", "v"]).ok();
    let both = rekey.run(&["delete", "app/x", "--force", "--recovery-days", "7"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let six = rekey.run(&["delete", "app/x", "--recovery-days", "6"]);
    assert_eq!(six.code, 1);
    assert!(
        six.stderr.contains("must be 7-30 days (INVALID_ARGUMENT)"),
        "{}",
        six.stderr
    );
    assert_eq!(rekey.run(&["get", "app/x"]).ok().stdout, "v\n");
    let password = rekey
        .run(&["password", "--length", "24", "--exclude-punctuation"])
        .ok();
    let generated = password.stdout.trim_end();
    assert_eq!(generated.len(), 24);
    assert!(
        generated.chars().all(|c| c.is_ascii_alphanumeric()),
        "{generated}"
    );
}

/// `rekey put` with no value named and nothing on standard input (cron's
/// `< /dev/null`) is refused and changes nothing; an empty value named as
/// such is stored.
#[test]
fn an_empty_standard_input_nobody_named_is_no_value() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "stdin/db", "--value", "kept"]).ok();
    let refused = rekey.run(&["put", "stdin/db"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("standard input is empty"),
        "{}",
        refused.stderr
    );
    assert_eq!(rekey.run(&["get", "stdin/db"]).ok().stdout, "kept\n");
    rekey
        .run_with_input(&["put", "stdin/db", "--value-file", "-"], b"")
        .ok();
    assert_eq!(rekey.run(&["get", "stdin/db"]).ok().stdout, "\n");
}

/// Key files others can read are refused, as `root.key` is: whoever reads
/// `ca.key` can issue themselves an admin identity, and `server.key` lets
/// them pass for the server.
#[test]
fn key_files_others_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let installation = Installation::new();
    let loosen = |name: &str, mode: u32| {
        std::fs::set_permissions(
            installation.dir().join(name),
            std::fs::Permissions::from_mode(mode),
        )
        .unwrap();
    };
    loosen("server.key", 0o644);
    let stderr = installation.refused_at_start();
    assert!(
        stderr.contains("server.key can be read by other users (mode 644)")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
    loosen("server.key", 0o600);
    loosen("ca.key", 0o640);
    let issued = rekey_tests::rekeyd(installation.dir(), &["cert", "issue", "carol"]);
    assert_eq!(issued.status.code(), Some(1));
    assert!(
        rekey_tests::text(&issued.stderr).contains("ca.key can be read by other users (mode 640)"),
        "{}",
        rekey_tests::text(&issued.stderr)
    );
    loosen("ca.key", 0o600);
    installation.serve();
}

/// A database moved aside (for a restore, say) is not served empty: with
/// no policy and no revocations, a revoked admin certificate would work
/// again after a `policy recover`.
#[test]
fn a_missing_database_is_refused_not_made_anew() {
    let installation = Installation::new();
    let database = installation.database();
    std::fs::rename(&database, database.with_extension("aside")).unwrap();
    let stderr = installation.refused_at_start();
    assert!(
        stderr.contains("does not exist") && stderr.contains("rekeyd restore"),
        "{stderr}"
    );
    assert!(!database.exists());
}

/// A Watch prefix no name can start with (a glob, a space) is refused
/// rather than given a stream that stays silent for good; an audit query
/// filter with a NUL is refused by name (PostgreSQL cannot take one: it
/// was an internal error there).
#[tokio::test]
async fn watch_prefixes_and_audit_filters_are_checked() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = installation.admin();
    for prefix in ["prod/*", "prod db", &"p".repeat(513)] {
        let status = server
            .watch(&admin, prefix)
            .await
            .expect_err("a prefix no name starts with");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status
                .message()
                .starts_with("the prefix is matched as the start of a name"),
            "{}",
            status.message()
        );
    }
    server.watch(&admin, "prod/").await.unwrap();
    let identity = rekey_shared::identity::Identity::load(&admin).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let mut audit = rekey_shared::proto::admin_client::AdminClient::new(channel);
    for (principal, resource) in [("a\0b", ""), ("", "a\0b")] {
        assert_status(
            audit
                .query_audit(proto::QueryAuditRequest {
                    principal: principal.into(),
                    resource: resource.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "filter contains a NUL character",
        );
    }
}
