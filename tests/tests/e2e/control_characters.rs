//! Control characters a client sends: refused where they would be stored
//! (descriptions, tags, filters), recorded escaped where a refused request
//! named them, and never a reason for another client's request to fail.
//! On PostgreSQL, whose text cannot hold a NUL, one event with a NUL used
//! to fail the commit of every event batched with it: other clients' reads
//! answered INTERNAL, and the request itself went unrecorded.

use rekey_shared::proto;
use rekey_tests::Installation;
use rekey_tests::databases::StorageDatabase;
use tonic::Code;

fn refused<T>(result: Result<tonic::Response<T>, tonic::Status>, fragment: &str) {
    let Err(status) = result else {
        panic!("the request should have been refused");
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains(fragment), "{}", status.message());
}

/// `recorded`: the refused name as the backend's audit log holds it
/// (escaped, `\0`, as PostgreSQL's text cannot hold a NUL, on both).
async fn nul_is_refused_and_fails_nobody_else(installation: &Installation, recorded: &str) {
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "nul/one", "--value", "v"]).ok();
    let client = server.client(&installation.admin()).await;

    // Reads and requests naming a NUL, at once, so that their events share
    // commits: every read answers, every bad request is refused.
    let mut tasks = Vec::new();
    for index in 0..120 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = if index % 3 == 0 { "x\0y" } else { "nul/one" };
            let result = client
                .get_secret_value(proto::GetSecretValueRequest {
                    name: name.into(),
                    ..Default::default()
                })
                .await;
            (name, result.map(drop).map_err(|status| status.code()))
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            ("nul/one", result) => assert_eq!(result, Ok(())),
            (_, result) => assert_eq!(result, Err(Code::InvalidArgument)),
        }
    }

    let mut client = client;
    refused(
        client
            .create_secret(proto::CreateSecretRequest {
                name: "nul/two".into(),
                description: "a\0b".into(),
                secret_string: Some("v".into()),
                ..Default::default()
            })
            .await,
        "description holds a control character (U+0000) at character 2",
    );
    refused(
        client
            .tag_resource(proto::TagResourceRequest {
                name: "nul/one".into(),
                tags: vec![proto::Tag {
                    key: "env".into(),
                    value: "\u{1b}]52;c;AAAA\u{7}".into(),
                }],
            })
            .await,
        "the value of tag \"env\" holds a control character (U+001B) at character 1",
    );
    refused(
        client
            .list_secrets(proto::ListSecretsRequest {
                filters: vec![proto::Filter {
                    key: proto::FilterKey::Name.into(),
                    values: vec!["nul\0".into()],
                }],
                ..Default::default()
            })
            .await,
        "a filter value holds a control character (U+0000) at character 4",
    );
    refused(
        client
            .untag_resource(proto::UntagResourceRequest {
                name: "nul/one".into(),
                tag_keys: (0..51).map(|index| format!("k{index}")).collect(),
            })
            .await,
        "51 tag keys given; a secret carries at most 50 tags",
    );
    refused(
        client
            .untag_resource(proto::UntagResourceRequest {
                name: "nul/one".into(),
                tag_keys: vec!["k\0".into()],
            })
            .await,
        "a tag key holds a control character (U+0000) at character 2",
    );
    // A description may hold new lines and tabs.
    client
        .create_secret(proto::CreateSecretRequest {
            name: "nul/three".into(),
            description: "first line\n\tsecond".into(),
            secret_string: Some("v".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    // Each refused read is recorded, its name escaped, and the log verifies.
    let events = admin
        .run(&["audit", "--limit", "1000", "--output", "json"])
        .ok()
        .stdout;
    let refused_reads = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| {
            event["action"] == "secrets:GetSecretValue" && event["outcome"] == "INVALID_ARGUMENT"
        })
        .map(|event| event["resource"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(refused_reads.len(), 40, "{events}");
    assert!(
        refused_reads.iter().all(|resource| resource == recorded),
        "{refused_reads:?}"
    );
    let verified = admin.run(&["audit", "verify"]).ok().stdout;
    assert!(verified.contains("verifies"), "{verified}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_nul_is_refused_and_fails_nobody_else() {
    nul_is_refused_and_fails_nobody_else(&Installation::new(), "x\\0y").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_nul_is_refused_and_fails_nobody_else() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    nul_is_refused_and_fails_nobody_else(&Installation::on_postgres(&database), "x\\0y").await;
}

/// A value is printed as it is to a pipe, but cannot steer the terminal it
/// is printed to (set its clipboard through OSC 52, say): there its control
/// characters are escaped, line ends kept, and a binary value is not
/// written. In batch-get's text output, a value's line ends cannot make a
/// line that seems another secret's.
#[test]
fn a_value_cannot_steer_the_terminal_it_is_printed_to() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    let value = "start\u{1b}]52;c;ZXZpbA==\u{7}end\nline2";
    rekey.run(&["create", "esc/a", "--value", value]).ok();
    assert_eq!(
        rekey.run(&["get", "esc/a"]).ok().stdout,
        format!("{value}\n")
    );
    // `script` runs it with a terminal as its standard output.
    let in_terminal = |args: &str| {
        let command = format!(
            "env REKEY_SERVER={} REKEY_IDENTITY={} {} {args}",
            rekey.server,
            rekey.identity.display(),
            rekey_tests::binary("rekey").display()
        );
        let output = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (output.status.code(), rekey_tests::text(&output.stdout))
    };
    let (code, shown) = in_terminal("get esc/a");
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(
        shown.contains("start\\u{1b}]52;c;ZXZpbA==\\u{7}end") && shown.contains("line2"),
        "{shown:?}"
    );
    let binary = installation.dir().join("binary");
    std::fs::write(&binary, b"\x1b[2J\x00\xff").unwrap();
    rekey
        .run(&[
            "create",
            "esc/bin",
            "--binary-file",
            binary.to_str().unwrap(),
        ])
        .ok();
    let (code, shown) = in_terminal("get esc/bin");
    assert_eq!(code, Some(1), "{shown:?}");
    assert!(!shown.contains("\u{1b}[2J"), "{shown:?}");
    assert!(shown.contains("not written to a terminal"), "{shown:?}");

    rekey
        .run(&["create", "esc/b", "--value", "x\nesc/a: forged"])
        .ok();
    let batch = rekey.run(&["batch-get", "esc/a", "esc/b"]).ok().stdout;
    assert_eq!(batch.lines().count(), 2, "{batch}");
    assert!(
        !batch.lines().any(|line| line == "esc/a: forged"),
        "{batch}"
    );
}
