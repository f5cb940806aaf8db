//! Access control with real identities of different roles.

use rekey_shared::proto::{self, Filter, FilterKey};
use rekey_tests::Installation;
use serde_json::json;

const POLICY: &str = r#"
[roles.admin]
statements = [{ effect = "allow", actions = ["*"], resources = ["*"] }]

[roles.app-reader]
statements = [
  { effect = "allow", actions = ["secrets:GetSecretValue", "secrets:DescribeSecret", "secrets:ListSecrets"], resources = ["app/*"] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:default"] },
]

[roles.no-payments]
statements = [{ effect = "deny", actions = ["secrets:*"], resources = ["app/payments/*"] }]

[roles.keyless]
statements = [
  { effect = "allow", actions = ["secrets:GetSecretValue", "secrets:DescribeSecret"], resources = ["app/*"] },
]

[[bindings]]
principal = "admin"
roles = ["admin"]

[[bindings]]
principal = "reader"
roles = ["app-reader"]

[[bindings]]
principal = "ci-*"
roles = ["app-reader", "no-payments"]

[[bindings]]
principal = "keyless"
roles = ["keyless"]
"#;

fn denied(run: &rekey_tests::Run) -> bool {
    run.code == 1 && run.stderr.contains("(PERMISSION_DENIED)")
}

#[tokio::test]
async fn roles_decide_who_reads_what() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    for name in ["app/db", "app/payments/stripe", "prod/db"] {
        admin
            .run(&["create", name, "--value", &format!("{name}-value")])
            .ok();
    }
    admin.apply_policy(POLICY).ok();
    let reader = server.rekey(&installation.issue("reader", &[]));
    let ci = server.rekey(&installation.issue("ci-deploy", &[]));
    let keyless = server.rekey(&installation.issue("keyless", &[]));
    let stranger = server.rekey(&installation.issue("stranger", &[]));

    // A reader reads app/* but not prod/*.
    assert_eq!(reader.run(&["get", "app/db"]).ok().stdout, "app/db-value\n");
    assert_eq!(
        reader.run(&["get", "app/payments/stripe"]).ok().stdout,
        "app/payments/stripe-value\n"
    );
    let refused = reader.run(&["get", "prod/db"]);
    assert!(denied(&refused), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("reader may not secrets:GetSecretValue on prod/db"),
        "{}",
        refused.stderr
    );
    // And may not write.
    assert!(denied(&reader.run(&["put", "app/db", "--value", "x"])));

    // A deny beats an allow (the glob binding gives both).
    assert_eq!(ci.run(&["get", "app/db"]).ok().stdout, "app/db-value\n");
    assert!(denied(&ci.run(&["get", "app/payments/stripe"])));

    // Without keys:Use on the secret's key, no value; metadata still.
    let no_key = keyless.run(&["get", "app/db"]);
    assert!(
        no_key
            .stderr
            .contains("keyless may not keys:Use on key:default"),
        "{}",
        no_key.stderr
    );
    keyless.run(&["describe", "app/db"]).ok();
    // Its event is of the read of app/db, saying what was denied.
    let events = admin
        .run(&["audit", "--principal", "keyless", "--output", "json"])
        .ok()
        .stdout;
    let refusal: serde_json::Value = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|event| event["decision"] == "deny")
        .expect("the refusal's event");
    assert_eq!(
        (&refusal["action"], &refusal["resource"], &refusal["detail"]),
        (
            &json!("secrets:GetSecretValue"),
            &json!("app/db"),
            &json!(
                "keys:Use on key:default: no statement allows it; keyless may not keys:Use on key:default"
            )
        ),
        "{refusal}"
    );

    // No binding at all: nothing.
    assert!(denied(&stranger.run(&["get", "app/db"])));
    assert!(denied(&stranger.run(&["describe", "app/db"])));

    // Lists and batch reads show only what the caller may see.
    let listed = ci.run(&["list", "--output", "json"]).ok().json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app/db"]);
    let listed = reader.run(&["list", "--output", "json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        stranger.run(&["list", "--output", "json"]).ok().json(),
        serde_json::json!([])
    );

    let mut ci_client = server
        .client(&installation.dir().join("ci-deploy.pem"))
        .await;
    let by_filter = ci_client
        .batch_get_secret_value(proto::BatchGetSecretValueRequest {
            filters: vec![Filter {
                key: FilterKey::All as i32,
                values: vec!["app/".into(), "prod/".into()],
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
    assert_eq!(names, ["app/db"]);
    assert!(by_filter.errors.is_empty(), "{:?}", by_filter.errors);
    let by_name = ci_client
        .batch_get_secret_value(proto::BatchGetSecretValueRequest {
            names: vec!["app/db".into(), "prod/db".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.secret_values.len(), 1);
    assert_eq!(by_name.errors[0].code, "PERMISSION_DENIED");
    assert!(!by_name.errors[0].message.contains("prod/db-value"));

    // The admin applies a stricter policy; the very next request obeys it.
    let stricter = POLICY.replace(
        "resources = [\"app/*\"] },\n  { effect = \"allow\", actions = [\"keys:Use\"]",
        "resources = [\"app/db\"] },\n  { effect = \"allow\", actions = [\"keys:Use\"]",
    );
    assert_ne!(stricter, POLICY);
    admin.apply_policy(&stricter).ok();
    assert!(denied(&reader.run(&["get", "app/payments/stripe"])));
    reader.run(&["get", "app/db"]).ok();
    let history = admin
        .run(&["policy", "history", "--output", "json"])
        .ok()
        .json();
    assert_eq!(history[0]["created_by"], "admin");
    assert_eq!(history.as_array().unwrap().len(), 3);
}

#[test]
fn the_default_roles() {
    let installation = Installation::new();
    let approver = installation.issue("approver-1", &["approver"]);
    let operator = installation.issue("operator-1", &["operator"]);
    let reader = installation.issue("reader-1", &["reader"]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "team/db", "--value", "v"]).ok();
    let (approver, operator, reader) = (
        server.rekey(&approver),
        server.rekey(&operator),
        server.rekey(&reader),
    );

    // An approver sees secrets but cannot read values.
    approver.run(&["describe", "team/db"]).ok();
    approver.run(&["list"]).ok();
    assert!(denied(&approver.run(&["get", "team/db"])));
    assert!(denied(&approver.run(&["put", "team/db", "--value", "x"])));
    // An operator changes secrets but cannot read values.
    operator.run(&["put", "team/db", "--value", "v2"]).ok();
    assert!(denied(&operator.run(&["get", "team/db"])));
    // A reader reads.
    assert_eq!(reader.run(&["get", "team/db"]).ok().stdout, "v2\n");
    assert!(denied(&reader.run(&["delete", "team/db"])));
    // Only the admin sees the policy.
    for who in [&approver, &operator, &reader] {
        assert!(denied(&who.run(&["policy", "get"])));
        assert!(denied(&who.run(&["audit"])));
    }
    let policy = admin.run(&["policy", "get"]).ok().stdout;
    assert!(policy.contains("principal = \"approver-1\""), "{policy}");
}

#[test]
fn bad_policies_are_refused_and_recover_gets_back_in() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let before = admin
        .run(&["policy", "get", "--output", "json"])
        .ok()
        .json();

    // Someone who may not apply policy is told so, malformed or not.
    let nobody = server.rekey(&installation.issue("nobody", &[]));
    let refused =
        nobody.apply_policy("[roles.x]\nstatements = [{ effect = \"allow\" actions = [] }]\n");
    assert!(
        refused.stderr.contains("(PERMISSION_DENIED)"),
        "{}",
        refused.stderr
    );
    let malformed =
        admin.apply_policy("[roles.x]\nstatements = [{ effect = \"allow\" actions = [] }]\n");
    assert_eq!(malformed.code, 1);
    assert!(
        malformed.stderr.contains("line 2") && malformed.stderr.contains("(INVALID_ARGUMENT)"),
        "{}",
        malformed.stderr
    );
    let unknown = admin.apply_policy(&POLICY.replace(
        "secrets:DescribeSecret\", \"secrets:ListSecrets\"]",
        "secrets:DescribeSecret\", \"secrets:ListSecret\"]",
    ));
    assert!(
        unknown
            .stderr
            .contains("unknown action \"secrets:ListSecret\""),
        "{}",
        unknown.stderr
    );
    // A deny that could match nothing would deny nothing.
    let typo = admin.apply_policy(&format!(
        "{POLICY}\n[roles.no-payments-key]\nstatements = [{{ effect = \"deny\", actions = [\"keys:Use\"], resources = [\"payments\"] }}]\n"
    ));
    assert!(
        typo.stderr
            .contains("resource \"payments\" matches nothing")
            && typo.stderr.contains("(INVALID_ARGUMENT)"),
        "{}",
        typo.stderr
    );
    let locked = admin.apply_policy(&POLICY.replace(
        "principal = \"admin\"\nroles = [\"admin\"]",
        "principal = \"admin\"\nroles = [\"app-reader\"]",
    ));
    assert!(
        locked.stderr.contains("lock everyone out")
            && locked.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        locked.stderr
    );
    assert_eq!(
        admin
            .run(&["policy", "get", "--output", "json"])
            .ok()
            .json(),
        before
    );

    // A policy that hands policy to someone else (who then loses their
    // certificate) locks the admin out; break glass from the installation.
    admin
        .apply_policy(&POLICY.replace("principal = \"admin\"", "principal = \"ops\""))
        .ok();
    assert!(denied(&admin.run(&["policy", "get"])));
    let recovered = rekey_tests::rekeyd(
        installation.dir(),
        &["policy", "recover", "--principal", "admin"],
    );
    assert!(
        recovered.status.success(),
        "{}",
        rekey_tests::text(&recovered.stderr)
    );
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    while admin.run(&["policy", "get"]).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "recover never took effect"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let audit = admin
        .run(&["audit", "--principal", "rekeyd", "--output", "json"])
        .ok()
        .stdout;
    assert!(audit.contains("policy:Recover"), "{audit}");

    // A policy this rekeyd cannot read (a newer one stored it, then was
    // rolled back): recovery replaces it, rather than failing on it as
    // the server does.
    server.stop();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(installation.execute_sql(&format!(
            "INSERT INTO policies (version, document, created_at, created_by)
             SELECT MAX(version) + 1, '{}', 0, 'newer' FROM policies",
            POLICY.replace("secrets:ListSecrets", "secrets:FromTheFuture")
        )));
    // Not without saying so: every other binding goes.
    let refused = rekey_tests::rekeyd(
        installation.dir(),
        &["policy", "recover", "--principal", "admin"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        rekey_tests::text(&refused.stderr).contains("--replace-unreadable"),
        "{}",
        rekey_tests::text(&refused.stderr)
    );
    let recovered = rekey_tests::rekeyd(
        installation.dir(),
        &[
            "policy",
            "recover",
            "--principal",
            "admin",
            "--replace-unreadable",
        ],
    );
    let said = rekey_tests::text(&recovered.stdout);
    assert!(
        recovered.status.success(),
        "{}",
        rekey_tests::text(&recovered.stderr)
    );
    assert!(said.contains("could not be read"), "{said}");
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["list"]).ok();
    let audit = admin
        .run(&["audit", "--principal", "rekeyd", "--output", "json"])
        .ok()
        .stdout;
    assert!(audit.contains("could not be read"), "{audit}");
}

/// Granting roles from the installation binds nothing it cannot back: an
/// unknown role among several, a CA key that is not there, or a name that
/// the policy would read as a pattern (`*` binds everyone it matches) leave
/// the policy as it was.
#[tokio::test(flavor = "multi_thread")]
async fn granting_roles_from_the_installation_binds_nothing_it_cannot_back() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let policy = || {
        admin
            .run(&["policy", "get", "--output", "json"])
            .ok()
            .json()
    };
    let before = policy();
    let out = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], says: &str| {
        let output = rekey_tests::rekeyd(installation.dir(), args);
        let stderr = rekey_tests::text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    let ci = out.path().join("ci.pem");
    let ci = ci.to_str().unwrap();
    refused(
        &[
            "cert", "issue", "ci", "--role", "reader", "--role", "typo", "--out", ci,
        ],
        "role \"typo\" is not defined",
    );
    refused(
        &[
            "cert",
            "issue",
            "spiffe://corp/*",
            "--role",
            "admin",
            "--out",
            ci,
        ],
        "which a policy binding reads as a pattern",
    );
    refused(
        &["policy", "recover", "--principal", "*"],
        "must be 1-128 characters",
    );
    refused(
        &["policy", "recover", "--principal", "spiffe://corp/*"],
        "which a policy binding reads as a pattern",
    );
    let key = installation.dir().join("ca.key");
    std::fs::rename(&key, out.path().join("ca.key")).unwrap();
    refused(
        &["cert", "issue", "ci", "--role", "admin", "--out", ci],
        "ca.key",
    );
    assert!(!std::path::Path::new(ci).exists());
    assert_eq!(policy(), before);
}

/// A reader's pages of a listing hold only what it may see, and their
/// tokens say nothing of what it may not: paging one at a time through
/// secrets it may not list tells it none of their names.
#[tokio::test(flavor = "multi_thread")]
async fn page_tokens_tell_nothing_of_what_the_caller_may_not_see() {
    use base64::Engine;
    let installation = Installation::new();
    let reader = installation.issue("reader", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.apply_policy(POLICY).ok();
    for name in ["app/a", "hidden/one", "hidden/two", "app/z"] {
        admin.run(&["create", name, "--value", "v"]).ok();
    }
    let mut client = server.client(&reader).await;
    let (mut token, mut seen, mut pages) = (String::new(), Vec::new(), 0);
    loop {
        let page = client
            .list_secrets(proto::ListSecretsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.secrets.into_iter().map(|secret| secret.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        pages += 1;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&decoded).contains("hidden"),
            "a page token names a hidden secret: {}",
            String::from_utf8_lossy(&decoded)
        );
    }
    assert_eq!(seen, ["app/a", "app/z"]);
    // A token follows a page of secrets the reader may see, never a
    // hidden one: the listing scans past what the reader may not see.
    assert_eq!(pages, 2);

    // A filter on a hidden name's prefix answers as one that matches
    // nothing: no secrets, and no token (a token used to come back exactly
    // when a hidden secret matched, so a prefix at a time spelled it out).
    for (prefix, page_size) in [("hidden/o", 1), ("hidden/x", 1), ("hidden/", 2), ("zzz", 1)] {
        let filters = vec![Filter {
            key: FilterKey::Name.into(),
            values: vec![prefix.into()],
        }];
        let listed = client
            .list_secrets(proto::ListSecretsRequest {
                page_size,
                filters: filters.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            listed.secrets.is_empty() && listed.next_page_token.is_empty(),
            "listing {prefix}: {listed:?}"
        );
        let batch = client
            .batch_get_secret_value(proto::BatchGetSecretValueRequest {
                filters,
                page_size,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            batch.secret_values.is_empty()
                && batch.errors.is_empty()
                && batch.next_page_token.is_empty(),
            "batch {prefix}: {batch:?}"
        );
    }
}

/// A policy saved with `policy get`, edited and applied after someone else
/// applied another version, is refused rather than undoing their change;
/// `--force` applies it anyway.
#[test]
fn an_edit_of_an_older_policy_version_is_refused_unless_forced() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let got = admin.run(&["policy", "get"]).ok().stdout;
    assert!(got.starts_with("# policy version "), "{got}");
    let edited = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        edited.path(),
        format!("{got}\n[roles.auditor]\nstatements = [{{ effect = \"allow\", actions = [\"audit:*\"], resources = [\"*\"] }}]\n"),
    )
    .unwrap();
    // Someone else applies a version meanwhile.
    admin.apply_policy(&got).ok();

    let path = edited.path().to_str().unwrap();
    let refused = admin.run(&["policy", "apply", path]);
    assert!(
        refused.stderr.contains("has been applied since")
            && refused.stderr.contains("(FAILED_PRECONDITION)"),
        "{}",
        refused.stderr
    );
    assert!(
        !admin
            .run(&["policy", "get"])
            .ok()
            .stdout
            .contains("auditor")
    );
    admin.run(&["policy", "apply", path, "--force"]).ok();
    assert!(
        admin
            .run(&["policy", "get"])
            .ok()
            .stdout
            .contains("auditor")
    );
}
