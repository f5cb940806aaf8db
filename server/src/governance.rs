//! Changes to who may do what. Every policy change goes through
//! [`apply_policy`], whether it comes from `rekey policy apply`, from
//! `rekeyd cert issue --role`, from `rekeyd init` or from `rekeyd policy
//! recover`: the document is checked, the lock-out rule applied, and the
//! new version stored with its audit event in one transaction.

use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::policy::{Decision, Effect, Policy, Role, Statement};
use crate::store::Store;

/// The policy in force and its version (an empty policy, version 0, when
/// none was ever applied: nobody may do anything).
pub async fn current_policy(store: &Store) -> Result<(Policy, i64)> {
    match store.current_policy().await? {
        None => Ok((Policy::default(), 0)),
        Some(stored) => {
            let policy = Policy::parse(&stored.document).map_err(|error| {
                Error::internal(&format!("stored policy version {}", stored.version), error)
            })?;
            Ok((policy, stored.version))
        }
    }
}

/// Checks `policy` and stores it as the version after `based_on`.
pub async fn apply_policy(
    store: &Store,
    policy: &Policy,
    by: &str,
    based_on: i64,
    event: &AuditEvent,
) -> Result<i64> {
    policy
        .check()
        .map_err(|error| Error::InvalidArgument(error.to_string()))?;
    policy
        .check_not_locked_out()
        .map_err(|error| Error::FailedPrecondition(error.to_string()))?;
    store
        .insert_policy(
            &policy.to_toml(),
            by,
            based_on,
            rekey_shared::time::now_millis(),
            event,
        )
        .await?
        .ok_or_else(|| {
            Error::FailedPrecondition(
                "the policy changed while this change was made; apply it again".to_owned(),
            )
        })
}

/// Changes the policy in force with `change` and applies the result.
pub async fn change_policy(
    store: &Store,
    by: &str,
    event: &AuditEvent,
    change: impl Fn(&mut Policy),
) -> Result<i64> {
    let (mut policy, version) = current_policy(store).await?;
    change(&mut policy);
    apply_policy(store, &policy, by, version, event).await
}

/// Binds `principal` to `roles`, which must all exist, in one policy
/// version: an unknown role changes nothing.
pub async fn bind(
    store: &Store,
    principal: &str,
    roles: &[String],
    event: &AuditEvent,
) -> Result<i64> {
    let (mut policy, version) = current_policy(store).await?;
    if let Some(role) = roles.iter().find(|role| !policy.roles.contains_key(*role)) {
        return Err(Error::InvalidArgument(format!(
            "role {role:?} is not defined by the policy in force; roles are {}",
            policy.roles.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    for role in roles {
        policy.bind(principal, role);
    }
    apply_policy(store, &policy, "rekeyd", version, event).await
}

/// What `recover` did.
#[derive(Debug)]
pub struct Recovered {
    pub version: i64,
    /// The allow-everything role it was bound to.
    pub role: String,
    /// Roles with deny statements taken off the principal's own binding.
    pub unbound: Vec<String>,
    /// Why the policy stored before was replaced whole (this rekeyd could
    /// not read it), if it was.
    pub unreadable: Option<String>,
}

/// The role `recover` binds: allows everything. A role of its own, so that
/// a recovery widens nobody else's (redefining `admin` would have widened
/// everyone bound to it).
pub const BREAK_GLASS_ROLE: &str = "break-glass";

/// The break-glass way back in: `principal` gets the [`BREAK_GLASS_ROLE`],
/// (re)defined as allowing everything. Roles with deny statements are taken
/// off the principal's own binding, and the audit event names them. Those
/// bound through a glob that matches it stay, since they bind others too:
/// if one of them denies it policy, nothing is changed and the error says
/// so.
pub async fn recover(
    store: &Store,
    principal: &str,
    replace_unreadable: bool,
) -> Result<Recovered> {
    // A stored policy this rekeyd cannot read (a newer one wrote it, then
    // was rolled back) is replaced by one that binds the principal alone:
    // recovery is the way back in, and it must not fail on what it mends.
    let (mut policy, based_on, unreadable) = match store.current_policy().await? {
        None => (Policy::default(), 0, None),
        Some(stored) => match Policy::parse(&stored.document) {
            Ok(policy) => (policy, stored.version, None),
            Err(error) if !replace_unreadable => {
                return Err(Error::FailedPrecondition(format!(
                    "policy version {} cannot be read by this rekeyd ({error}); recovering \
                     replaces it by a policy that binds {principal} alone, every other binding \
                     gone: run a rekeyd that reads it, or give --replace-unreadable",
                    stored.version
                )));
            }
            Err(error) => (
                Policy::default(),
                stored.version,
                Some(format!(
                    "policy version {} could not be read ({error}) and was replaced",
                    stored.version
                )),
            ),
        },
    };
    let (role, unbound) = break_glass(&mut policy, principal)?;
    let mut detail = format!("break-glass: {principal} bound to {role}");
    if let Some(unreadable) = &unreadable {
        detail.push_str(&format!("; {unreadable}"));
    }
    if !unbound.is_empty() {
        detail.push_str(&format!(
            "; roles with deny statements taken off its binding: {}",
            unbound.join(", ")
        ));
    }
    let event = AuditEvent::local("policy:Recover", "*", &detail);
    let version = apply_policy(store, &policy, "rekeyd", based_on, &event).await?;
    Ok(Recovered {
        version,
        role,
        unbound,
        unreadable,
    })
}

/// `recover`'s change to `policy`: the role it bound `principal` to, and
/// the roles it took off `principal`'s own binding.
fn break_glass(policy: &mut Policy, principal: &str) -> Result<(String, Vec<String>)> {
    // A pattern would be bound as one: everyone it matches let in.
    crate::certificates::check_principal(principal)
        .map_err(|error| Error::InvalidArgument(error.to_string()))?;
    // A role of that name bound to anyone else is left alone: another name
    // is taken (break-glass-2, ...).
    let bound_to_others = |role: &str| {
        policy.bindings.iter().any(|binding| {
            binding.principal != principal && binding.roles.iter().any(|r| r == role)
        })
    };
    let role_name = std::iter::once(BREAK_GLASS_ROLE.to_owned())
        .chain((2..).map(|n| format!("{BREAK_GLASS_ROLE}-{n}")))
        .find(|name| !bound_to_others(name))
        .unwrap_or_else(|| BREAK_GLASS_ROLE.to_owned());
    policy.roles.insert(
        role_name.clone(),
        Role {
            description: "Everything: bound by rekeyd policy recover.".to_owned(),
            statements: vec![Statement {
                effect: Effect::Allow,
                actions: vec!["*".to_owned()],
                resources: vec!["*".to_owned()],
            }],
        },
    );
    let denying: Vec<String> = policy
        .roles
        .iter()
        .filter(|(_, role)| role.statements.iter().any(|s| s.effect == Effect::Deny))
        .map(|(name, _)| name.clone())
        .collect();
    let mut unbound = Vec::new();
    for binding in &mut policy.bindings {
        if binding.principal == principal {
            let (denies, keeps) = binding
                .roles
                .drain(..)
                .partition(|role| denying.contains(role));
            unbound.extend::<Vec<String>>(denies);
            binding.roles = keeps;
        }
    }
    policy.bindings.retain(|binding| !binding.roles.is_empty());
    policy.bind(principal, &role_name);
    for action in ["policy:ApplyPolicy", "policy:GetPolicy"] {
        if let Decision::DeniedBy(role) = policy.evaluate(principal, action, "*") {
            let pattern = policy
                .bindings
                .iter()
                .find(|binding| {
                    binding.roles.contains(&role)
                        && crate::policy::glob_matches(&binding.principal, principal)
                })
                .map_or("*", |binding| binding.principal.as_str());
            return Err(Error::FailedPrecondition(format!(
                "role {role:?} denies {principal} {action} through the binding of {pattern:?}, \
                 which binds other principals too, so recovering as {principal} would not get \
                 back in; recover as a principal that {pattern:?} does not match \
                 (rekeyd policy recover --principal NAME, then rekeyd cert issue NAME)"
            )));
        }
    }
    Ok((role_name, unbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[roles.reader]
statements = [{ effect = "allow", actions = ["secrets:GetSecretValue"], resources = ["*"] }]
[roles.no-payments]
statements = [{ effect = "deny", actions = ["secrets:*"], resources = ["app/payments/*"] }]
[roles.no-policy]
statements = [{ effect = "deny", actions = ["policy:*"], resources = ["*"] }]
[roles.ops]
statements = [{ effect = "allow", actions = ["policy:*"], resources = ["*"] }]

[[bindings]]
principal = "*"
roles = ["reader", "no-payments"]
[[bindings]]
principal = "admin"
roles = ["reader", "no-policy"]
[[bindings]]
principal = "ops"
roles = ["ops"]
"#;

    #[test]
    fn break_glass_frees_only_the_principal_it_names() {
        let mut policy = Policy::parse(POLICY).unwrap();
        let (_, unbound) = break_glass(&mut policy, "admin").unwrap();
        assert_eq!(unbound, ["no-policy"]);
        assert!(
            policy
                .evaluate("admin", "policy:ApplyPolicy", "*")
                .is_allowed()
        );
        // The deny bound to everyone still binds everyone, admin too.
        for principal in ["bob", "admin"] {
            assert!(
                policy
                    .evaluate(principal, "secrets:GetSecretValue", "app/db")
                    .is_allowed()
            );
            assert_eq!(
                policy.evaluate(principal, "secrets:GetSecretValue", "app/payments/x"),
                Decision::DeniedBy("no-payments".into()),
                "{principal}"
            );
        }
        // Nobody else is widened: the role of that name is untouched.
        assert!(
            !policy
                .evaluate("bob", "policy:ApplyPolicy", "*")
                .is_allowed()
        );
    }

    #[test]
    fn break_glass_names_one_principal_not_a_pattern() {
        for pattern in ["*", "team-*", "spiffe://corp/*", "rekeyd", ""] {
            let mut policy = Policy::parse(POLICY).unwrap();
            let error = break_glass(&mut policy, pattern).unwrap_err();
            assert!(
                matches!(error, Error::InvalidArgument(_)),
                "{pattern}: {error}"
            );
            assert_eq!(policy.to_toml(), Policy::parse(POLICY).unwrap().to_toml());
            assert!(
                !policy
                    .evaluate("bob", "policy:ApplyPolicy", "*")
                    .is_allowed()
            );
        }
    }

    #[test]
    fn break_glass_widens_nobody_else() {
        let narrowed = POLICY.replace(
            "[roles.ops]",
            "[roles.admin]\nstatements = [{ effect = \"allow\", actions = [\"secrets:*\"], resources = [\"app/*\"] }]\n[roles.ops]",
        ) + "[[bindings]]\nprincipal = \"spiffe://corp/teams/*\"\nroles = [\"admin\"]\n";
        let mut policy = Policy::parse(&narrowed).unwrap();
        break_glass(&mut policy, "ops").unwrap();
        // A role already named break-glass, bound to others, is left alone.
        let mut taken = Policy::parse(
            &(narrowed
                .replace("[roles.admin]", "[roles.break-glass]")
                .replace("roles = [\"admin\"]\n", "roles = [\"break-glass\"]\n")),
        )
        .unwrap();
        let (role, _) = break_glass(&mut taken, "ops").unwrap();
        assert_eq!(role, "break-glass-2");
        assert!(
            !taken
                .evaluate("spiffe://corp/teams/x", "policy:ApplyPolicy", "*")
                .is_allowed()
        );
        assert!(
            policy
                .evaluate("ops", "secrets:GetSecretValue", "prod/db")
                .is_allowed()
        );
        let team = "spiffe://corp/teams/x";
        assert!(
            !policy
                .evaluate(team, "secrets:PutSecretValue", "prod/db")
                .is_allowed()
        );
        assert!(
            !policy
                .evaluate(team, "policy:ApplyPolicy", "*")
                .is_allowed()
        );
    }

    #[test]
    fn break_glass_refuses_when_a_shared_binding_denies_policy() {
        let mut policy = Policy::parse(&POLICY.replace(
            "roles = [\"reader\", \"no-payments\"]",
            "roles = [\"reader\", \"no-policy\"]",
        ))
        .unwrap();
        let error = break_glass(&mut policy, "admin").unwrap_err().to_string();
        assert!(
            error.contains("\"no-policy\" denies admin policy:ApplyPolicy")
                && error.contains("binding of \"*\""),
            "{error}"
        );
    }
}
