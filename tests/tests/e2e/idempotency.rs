//! Client request tokens: the same token with the same value is the same
//! version; with another value it is refused and nothing changes (an
//! update that would also have changed the description included).

use rekey_shared::proto;
use rekey_tests::Installation;

const TOKEN: &str = "0d6f1f3e-2b7c-4a59-9c1e-6f2b8d7a1c55";

async fn version_count(
    client: &mut rekey_shared::proto::secrets_client::SecretsClient<tonic::transport::Channel>,
    name: &str,
) -> usize {
    client
        .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
            name: name.into(),
            include_deprecated: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .len()
}

fn put(value: &str) -> proto::PutSecretValueRequest {
    proto::PutSecretValueRequest {
        name: "idem/one".into(),
        client_request_token: TOKEN.into(),
        secret_string: Some(value.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_token_names_one_version() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    client
        .create_secret(proto::CreateSecretRequest {
            name: "idem/one".into(),
            secret_string: Some("initial".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let first = client
        .put_secret_value(put("A"))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .put_secret_value(put("A"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.version_id, TOKEN);
    assert_eq!(second.version_id, TOKEN);
    assert_eq!(second.version_stages, ["CURRENT"]);
    assert_eq!(version_count(&mut client, "idem/one").await, 2);

    let conflict = client.put_secret_value(put("B")).await.unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    assert!(
        conflict.message().contains(TOKEN) && conflict.message().contains("different value"),
        "{}",
        conflict.message()
    );
    assert_eq!(version_count(&mut client, "idem/one").await, 2);
    let current = client
        .get_secret_value(proto::GetSecretValueRequest {
            name: "idem/one".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.secret_string.as_deref(), Some("A"));
    assert_eq!(current.version_id, TOKEN);

    // The same bytes as binary are another value.
    let mut binary = put("A");
    binary.secret_string = None;
    binary.secret_binary = Some(b"A".to_vec());
    let conflict = client.put_secret_value(binary).await.unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);

    // An update that also puts a value under the used token is refused
    // before its description changes.
    let conflict = client
        .update_secret(proto::UpdateSecretRequest {
            name: "idem/one".into(),
            description: Some("changed with the value".into()),
            client_request_token: TOKEN.into(),
            secret_string: Some("B".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    let described = client
        .describe_secret(proto::DescribeSecretRequest {
            name: "idem/one".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.description, "");
    assert_eq!(version_count(&mut client, "idem/one").await, 2);

    // The same value under the token: a retry, answered with the version;
    // the description it brings is set.
    let retried = client
        .update_secret(proto::UpdateSecretRequest {
            name: "idem/one".into(),
            description: Some("set by a retry".into()),
            client_request_token: TOKEN.into(),
            secret_string: Some("A".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.version_id.as_deref(), Some(TOKEN));
    let described = client
        .describe_secret(proto::DescribeSecretRequest {
            name: "idem/one".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.description, "set by a retry");
    assert_eq!(version_count(&mut client, "idem/one").await, 2);
}

#[tokio::test]
async fn a_retried_create_is_answered_as_the_first() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    let create = |value: &str| proto::CreateSecretRequest {
        name: "idem/created".into(),
        client_request_token: TOKEN.into(),
        secret_string: Some(value.into()),
        ..Default::default()
    };
    let first = client
        .create_secret(create("v"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_secret(create("v"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.secret_id, again.secret_id);
    assert_eq!(again.version_id.as_deref(), Some(TOKEN));

    let other = client.create_secret(create("w")).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists);
    assert_eq!(version_count(&mut client, "idem/created").await, 1);

    // A creator who may use only key:default cannot learn, by retrying
    // with a version's id as the token, whether a guess is the value of a
    // secret under another key: the same answer either way.
    let output = rekey_tests::rekeyd(installation.dir(), &["keys", "create", "payments"]);
    assert!(
        output.status.success(),
        "{}",
        rekey_tests::text(&output.stderr)
    );
    let guarded = client
        .create_secret(proto::CreateSecretRequest {
            name: "idem/guarded".into(),
            key_name: "payments".into(),
            secret_string: Some("1234".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version_id
        .unwrap();
    let admin = server.rekey(&installation.admin());
    admin
        .apply_policy(
            r#"
[roles.admin]
statements = [{ effect = "allow", actions = ["*"], resources = ["*"] }]

[roles.creator]
statements = [
  { effect = "allow", actions = ["secrets:CreateSecret", "secrets:DescribeSecret"], resources = ["idem/*"] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:default"] },
]

[[bindings]]
principal = "admin"
roles = ["admin"]

[[bindings]]
principal = "creator"
roles = ["creator"]
"#,
        )
        .ok();
    let mut creator = server.client(&installation.issue("creator", &[])).await;
    for guess in ["1234", "0000"] {
        let answer = creator
            .create_secret(proto::CreateSecretRequest {
                name: "idem/guarded".into(),
                client_request_token: guarded.clone(),
                secret_string: Some(guess.into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(answer.code(), tonic::Code::AlreadyExists, "{guess}");
        assert_eq!(answer.message(), "secret idem/guarded already exists");
    }

    // Without a token a second create is simply a name already taken.
    let mut untokened = create("v");
    untokened.client_request_token.clear();
    let taken = client.create_secret(untokened).await.unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists);
    assert!(
        taken.message().contains("already exists"),
        "{}",
        taken.message()
    );
}

#[test]
fn the_cli_retries_safely_with_a_token() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "idem/cli", "--value", "x"]).ok();
    let args = [
        "put",
        "idem/cli",
        "--token",
        TOKEN,
        "--value-file",
        "-",
        "--output",
        "json",
    ];
    let one = rekey.run_with_input(&args, b"same").ok().json();
    let two = rekey.run_with_input(&args, b"same").ok().json();
    assert_eq!(one["version_id"], two["version_id"]);
    let refused = rekey.run_with_input(&args, b"different");
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("(ALREADY_EXISTS)"),
        "{}",
        refused.stderr
    );
}

/// A writer who may not read values (the default operator role) learns
/// nothing from reusing another's version id as its token: the same answer
/// for the right value and a wrong one. Its own retries still work.
#[tokio::test]
async fn a_writer_who_may_not_read_learns_nothing_from_a_token() {
    let installation = Installation::new();
    let operator = installation.issue("operator-1", &["operator"]);
    let server = installation.serve();
    let mut admin = server.client(&installation.admin()).await;
    let mut operator = server.client(&operator).await;
    let guarded = |token: &str, value: &str| proto::PutSecretValueRequest {
        name: "idem/pin".into(),
        client_request_token: token.into(),
        secret_string: Some(value.into()),
        ..Default::default()
    };
    admin
        .create_secret(proto::CreateSecretRequest {
            name: "idem/pin".into(),
            secret_string: Some("0000".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let admins = "11111111-1111-4111-8111-111111111111";
    admin
        .put_secret_value(guarded(admins, "4711"))
        .await
        .unwrap();
    let mut answers = Vec::new();
    for guess in ["4711", "1234"] {
        let status = operator
            .put_secret_value(guarded(admins, guess))
            .await
            .unwrap_err();
        answers.push((status.code(), status.message().to_owned()));
    }
    assert_eq!(
        answers[0], answers[1],
        "the answers tell the guesses apart: {answers:?}"
    );
    assert_eq!(answers[0].0, tonic::Code::AlreadyExists, "{answers:?}");

    let own = "22222222-2222-4222-8222-222222222222";
    let first = operator
        .put_secret_value(guarded(own, "operator's"))
        .await
        .unwrap()
        .into_inner();
    let again = operator
        .put_secret_value(guarded(own, "operator's"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.version_id, again.version_id);
}

/// Retries that arrive together (a client that gave up on its first call
/// while it was still being written) are each answered as the first: the
/// later ones found the first's version in a write batch not yet durable,
/// could not read it back, and got INTERNAL ("a version vanished") or, for
/// a create, ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread")]
async fn retries_that_arrive_together_are_each_answered_as_the_first() {
    let installation = Installation::new();
    let server = installation.serve();
    let client = server.client(&installation.admin()).await;
    let creates: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .create_secret(proto::CreateSecretRequest {
                        name: "idem/together".into(),
                        client_request_token: TOKEN.into(),
                        secret_string: Some("same".into()),
                        ..Default::default()
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for create in creates {
        let created = create.await.unwrap().unwrap();
        assert_eq!(created.version_id.as_deref(), Some(TOKEN));
        ids.push(created.secret_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");

    let put = "7c2e9a41-5d3b-4f08-b6a1-2e9d4c7f8a30";
    let puts: Vec<_> = (0..32)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .put_secret_value(proto::PutSecretValueRequest {
                        name: "idem/together".into(),
                        client_request_token: put.into(),
                        secret_string: Some("next".into()),
                        ..Default::default()
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    for answer in puts {
        assert_eq!(answer.await.unwrap().unwrap().version_id, put);
    }
    let mut client = client;
    assert_eq!(version_count(&mut client, "idem/together").await, 2);
}
