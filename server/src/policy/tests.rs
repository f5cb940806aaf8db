//! The policy language's rules, one at a time: parsing and its errors, the
//! evaluator, the lock-out check, the patterns of a policy to apply and the
//! default roles.

use super::*;

const POLICY: &str = r#"
[roles.app-reader]
statements = [
  { effect = "allow", actions = ["secrets:GetSecretValue", "secrets:DescribeSecret"], resources = ["app/*"] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:default"] },
]
[roles.no-payments]
statements = [{ effect = "deny", actions = ["secrets:*"], resources = ["app/payments/*"] }]
[roles.admin]
statements = [{ effect = "allow", actions = ["*"], resources = ["*"] }]

[[bindings]]
principal = "alice"
roles = ["app-reader"]
[[bindings]]
principal = "spiffe://corp/ci/*"
roles = ["app-reader", "no-payments"]
[[bindings]]
principal = "root"
roles = ["admin"]
"#;

#[test]
fn evaluation_table() {
    let policy = Policy::parse(POLICY).unwrap();
    use Decision::*;
    let cases: &[(&str, &str, &str, Decision)] = &[
        // allow
        ("alice", "secrets:GetSecretValue", "app/db", Allow),
        // `*` crosses `/`
        ("alice", "secrets:GetSecretValue", "app/db/eu/orders", Allow),
        // outside the resource
        ("alice", "secrets:GetSecretValue", "prod/db", NotAllowed),
        // action not granted
        ("alice", "secrets:PutSecretValue", "app/db", NotAllowed),
        // key permission: only the key named
        ("alice", "keys:Use", "key:default", Allow),
        ("alice", "keys:Use", "key:payments", NotAllowed),
        // no binding at all
        ("mallory", "secrets:GetSecretValue", "app/db", NotAllowed),
        // principal globs
        (
            "spiffe://corp/ci/deploy",
            "secrets:GetSecretValue",
            "app/db",
            Allow,
        ),
        (
            "spiffe://corp/other",
            "secrets:GetSecretValue",
            "app/db",
            NotAllowed,
        ),
        // deny over allow
        (
            "spiffe://corp/ci/deploy",
            "secrets:GetSecretValue",
            "app/payments/stripe",
            DeniedBy("no-payments".into()),
        ),
        (
            "alice",
            "secrets:GetSecretValue",
            "app/payments/stripe",
            Allow,
        ),
        ("root", "policy:ApplyPolicy", "*", Allow),
    ];
    for (principal, action, resource, expected) in cases {
        assert_eq!(
            &policy.evaluate(principal, action, resource),
            expected,
            "{principal} {action} {resource}"
        );
    }
}

#[test]
fn refusals_name_the_problem() {
    let malformed =
        "[roles.x]\nstatements = [{ effect = \"allow\", actions = [\"*\"] resources = [\"*\"] }]\n";
    let error = Policy::parse(malformed).unwrap_err().to_string();
    assert!(error.contains("line 2"), "{error}");
    let unknown = "[roles.x]\nstatements = [{ effect = \"allow\", actions = [\"secrets:GetSecretVlue\"], resources = [\"*\"] }]\n";
    let error = Policy::parse(unknown).unwrap_err().to_string();
    assert!(
        error.starts_with("line 2: ") && error.contains("unknown action \"secrets:GetSecretVlue\""),
        "{error}"
    );
    // In the role it is in, not another's line that names it too.
    let twice = "[roles.a]\nstatements = [{ effect = \"allow\", actions = [\"*\"], resources = [\"secrets:GetSecretVlue\"] }]\n\n[roles.b]\nstatements = [\n  { effect = \"allow\", resources = [\"*\"], actions = [\"secrets:GetSecretVlue\"] },\n]\n";
    let error = Policy::parse(twice).unwrap_err().to_string();
    assert!(error.starts_with("line 6: role \"b\""), "{error}");
    let effect = "[roles.x]\nstatements = [{ effect = \"maybe\", actions = [\"*\"], resources = [\"*\"] }]\n";
    let error = Policy::parse(effect).unwrap_err().to_string();
    assert!(
        error.contains("line 2") && error.contains("maybe"),
        "{error}"
    );
    let role = "[[bindings]]\nprincipal = \"a\"\nroles = [\"ghost\"]\n";
    let error = Policy::parse(role).unwrap_err().to_string();
    assert!(
        error.starts_with("line 3: ") && error.contains("role \"ghost\""),
        "{error}"
    );
    // The binding refused, not an earlier one of the same principal.
    let bindings = "[roles.reader]\nstatements = [{ effect = \"allow\", actions = [\"*\"], resources = [\"*\"] }]\n\n[[bindings]]\nprincipal = \"ci\"\nroles = [\"reader\"]\n\n[[bindings]]\nprincipal = \"deployer\"\nroles = [\"reader\"]\n\n[[bindings]]\nprincipal = \"ci\"\nroles = [\"deployer\"]\n";
    let error = Policy::parse(bindings).unwrap_err().to_string();
    assert!(error.starts_with("line 14: "), "{error}");
    // A comment that mentions a header is not one.
    let commented = format!("# [[bindings]] come last\n{bindings}");
    let error = Policy::parse(&commented).unwrap_err().to_string();
    assert!(error.starts_with("line 15: "), "{error}");
    let field = "[roles.x]\nstatment = []\n";
    assert!(
        Policy::parse(field)
            .unwrap_err()
            .to_string()
            .contains("line 2")
    );
}

#[test]
fn lock_out_is_refused() {
    let policy = Policy::parse(POLICY).unwrap();
    assert!(policy.check_not_locked_out().is_ok());
    let mut locked = policy.clone();
    locked
        .bindings
        .retain(|binding| binding.principal != "root");
    let error = locked.check_not_locked_out().unwrap_err().to_string();
    assert!(error.contains("lock everyone out"), "{error}");
    let mut denied = policy;
    denied.roles.insert(
        "no-policy".into(),
        Role {
            description: String::new(),
            statements: vec![Statement {
                effect: Effect::Deny,
                actions: vec!["policy:*".into()],
                resources: vec!["*".into()],
            }],
        },
    );
    denied.bind("root", "no-policy");
    assert!(denied.check_not_locked_out().is_err());

    // Admin bound only to names no certificate can carry.
    for name in [
        "system",
        "rekeyd",
        "ops team",
        "ops/team",
        "",
        "CN=ops-*",
        "ops/*",
        "SPIFFE://corp/ops/*",
    ] {
        let mut unnamed = locked.clone();
        unnamed.bind(name, "admin");
        assert!(unnamed.check_not_locked_out().is_err(), "{name:?}");
    }
    for name in ["ops", "spiffe://corp/ops", "spiffe://corp/ops/*"] {
        let mut named = locked.clone();
        named.bind(name, "admin");
        assert!(named.check_not_locked_out().is_ok(), "{name:?}");
    }
}

#[test]
fn allowed_somewhere_or_nowhere() {
    let policy = Policy::parse(POLICY).unwrap();
    assert!(policy.allows_somewhere("alice", "secrets:GetSecretValue"));
    assert!(!policy.allows_somewhere("alice", "secrets:Watch"));
    assert!(!policy.allows_somewhere("nobody", "secrets:GetSecretValue"));
    assert!(policy.allows_somewhere("root", "secrets:Watch"));
    // A deny of only some resources leaves the rest.
    assert!(policy.allows_somewhere("spiffe://corp/ci/x", "secrets:GetSecretValue"));
    assert!(!Policy::default().allows_somewhere("root", "secrets:Watch"));
}

#[test]
fn allowed_somewhere_counts_only_resources_the_action_could_name() {
    let policy = Policy::parse(
        r#"
[roles.keys-only]
statements = [{ effect = "allow", actions = ["*"], resources = ["key:*"] }]

[roles.all-stars-denied]
statements = [
  { effect = "allow", actions = ["secrets:*"], resources = ["prod/*"] },
  { effect = "deny", actions = ["secrets:Watch"], resources = ["**"] },
]

[[bindings]]
principal = "keeper"
roles = ["keys-only"]

[[bindings]]
principal = "quiet"
roles = ["all-stars-denied"]
"#,
    )
    .unwrap();
    // No secret's name holds a ':': a Watch would never hear of anything.
    assert!(!policy.allows_somewhere("keeper", "secrets:Watch"));
    assert!(policy.allows_somewhere("keeper", "keys:Manage"));
    assert!(!policy.allows_somewhere("quiet", "secrets:Watch"));
    assert!(policy.allows_somewhere("quiet", "secrets:GetSecretValue"));
}

#[test]
fn a_policy_to_apply_names_only_what_could_be_matched() {
    let with = |extra: &str| Policy::parse_to_apply(&format!("{POLICY}{extra}"));
    with("").unwrap();
    let deny = "\n[roles.no-payments-key]\nstatements = [\n  { effect = \"deny\", actions = [\"keys:Use\"], resources = [\"payments\"] },\n]\n";
    // Loaded as it is when stored; refused when applied.
    Policy::parse(&format!("{POLICY}{deny}")).unwrap();
    let error = with(deny).unwrap_err().to_string();
    let line = format!("{POLICY}{deny}")
        .lines()
        .position(|line| line.contains("\"payments\""))
        .unwrap()
        + 1;
    assert!(
        error.starts_with(&format!(
            "line {line}: role \"no-payments-key\": resource \"payments\""
        )),
        "{error}"
    );
    assert!(error.contains("key:NAME"), "{error}");
    let binding = "\n[[bindings]]\nprincipal = \"alice \"\nroles = [\"admin\"]\n";
    let error = with(binding).unwrap_err().to_string();
    assert!(
        error.contains("the binding of \"alice \" matches no name"),
        "{error}"
    );
}

#[test]
fn the_default_policy() {
    let policy = Policy::default_for("admin");
    policy.check().unwrap();
    policy.check_not_locked_out().unwrap();
    let reparsed = Policy::parse(&policy.to_toml()).unwrap();
    assert_eq!(reparsed, policy);
    assert!(
        policy
            .evaluate("admin", "secrets:GetSecretValue", "prod/db")
            .is_allowed()
    );
    policy
        .bindings
        .iter()
        .for_each(|b| assert_eq!(b.principal, "admin"));
    let mut with_roles = policy.clone();
    for role in ["operator", "approver", "reader"] {
        with_roles.bind(role, role);
    }
    let allowed =
        |who: &str, action: &str| with_roles.evaluate(who, action, "prod/db").is_allowed();
    assert!(!allowed("operator", "secrets:GetSecretValue"));
    assert!(allowed("operator", "secrets:PutSecretValue"));
    assert!(!allowed("operator", "rotation:ApproveRotation"));
    assert!(!allowed("approver", "secrets:GetSecretValue"));
    assert!(allowed("approver", "rotation:ApproveRotation"));
    assert!(allowed("reader", "secrets:GetSecretValue"));
    assert!(!allowed("reader", "secrets:PutSecretValue"));
}
