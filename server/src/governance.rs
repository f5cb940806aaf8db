//! Changes to who may do what. Every policy change goes through
//! [`apply_policy`], whether it comes from `rekey policy apply`, from
//! `rekeyd cert issue --role`, from `rekeyd init` or from `rekeyd policy
//! recover`: the document is checked, the lock-out rule applied, and the
//! new version stored with its audit event in one transaction.

use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::policy::{Effect, Policy, Role, Statement};
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

/// Binds `principal` to `role`, which must exist.
pub async fn bind(store: &Store, principal: &str, role: &str, event: &AuditEvent) -> Result<i64> {
    let (policy, _) = current_policy(store).await?;
    if !policy.roles.contains_key(role) {
        return Err(Error::InvalidArgument(format!(
            "role {role:?} is not defined by the policy in force; roles are {}",
            policy.roles.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    change_policy(store, "rekeyd", event, |policy| {
        policy.bind(principal, role)
    })
    .await
}

/// The break-glass way back in: `principal` gets the `admin` role, which is
/// (re)defined as allowing everything. Roles with deny statements are taken
/// off every binding that matches `principal`, or they could still shut it
/// out; the audit event says so.
pub async fn recover(store: &Store, principal: &str, event: &AuditEvent) -> Result<i64> {
    change_policy(store, "rekeyd", event, |policy| {
        policy.roles.insert(
            "admin".to_owned(),
            Role {
                description: "Everything.".to_owned(),
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
        for binding in &mut policy.bindings {
            if crate::policy::glob_matches(&binding.principal, principal) {
                binding.roles.retain(|role| !denying.contains(role));
            }
        }
        policy.bindings.retain(|binding| !binding.roles.is_empty());
        policy.bind(principal, "admin");
    })
    .await
}
