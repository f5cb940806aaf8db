//! The policy language: roles are lists of statements `{effect, actions,
//! resources}`; bindings give roles to principals (exact names or globs).
//! Deny by default; an explicit deny wins over any allow. In actions,
//! resources and principals `*` matches any run of characters, `/`
//! included.
//!
//! A policy document is TOML. [`Policy::parse`] refuses a malformed file
//! with the line and the reason, an unknown action, a binding to an unknown
//! role; [`Policy::parse_to_apply`] also refuses patterns that could match
//! nothing (`patterns`); [`Policy::check_not_locked_out`] refuses a policy
//! under which no principal could apply policy again. [`Policy::evaluate`] is a pure
//! function: no I/O, no clock.

mod glob;
mod patterns;

pub use glob::matches as glob_matches;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every action of the policy language, as DESIGN lists them.
pub const ACTIONS: &[&str] = &[
    "secrets:CreateSecret",
    "secrets:GetSecretValue",
    "secrets:PutSecretValue",
    "secrets:UpdateSecret",
    "secrets:DescribeSecret",
    "secrets:ListSecrets",
    "secrets:ListSecretVersionIds",
    "secrets:UpdateSecretVersionStage",
    "secrets:TagResource",
    "secrets:UntagResource",
    "secrets:DeleteSecret",
    "secrets:RestoreSecret",
    "secrets:Watch",
    "secrets:GetRandomPassword",
    "rotation:ConfigureRotation",
    "rotation:StartRotation",
    "rotation:StepRotation",
    "rotation:RetryRotation",
    "rotation:CancelRotation",
    "rotation:ApproveRotation",
    "rotation:DescribeRotation",
    "keys:Use",
    "keys:Manage",
    "policy:GetPolicy",
    "policy:ApplyPolicy",
    "audit:ReadAudit",
    "audit:VerifyAudit",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub effect: Effect,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// A principal name or a glob.
    pub principal: String,
    pub roles: Vec<String>,
}

/// A whole policy document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
}

/// The answer to "may P do A on R?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// An explicit deny statement of this role matched.
    DeniedBy(String),
    /// No allow statement matched.
    NotAllowed,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// A check's refusal, with where in a document it is.
struct Refusal {
    message: String,
    at: Option<Place>,
}

impl Refusal {
    /// The error, with the line of `text` (the document checked) it is on.
    fn in_document(self, text: &str) -> PolicyError {
        let line = self
            .at
            .and_then(|place| line_of(text, &place))
            .map(|line| format!("line {line}: "))
            .unwrap_or_default();
        PolicyError(format!("{line}{}", self.message))
    }
}

/// The first line holding `needle` at or after the `nth` (from 0) line
/// holding `anchor`.
struct Place {
    anchor: String,
    nth: usize,
    needle: String,
}

/// The line (from 1) of `place` in `text` (the anchor's own line if no
/// needle follows it).
fn line_of(text: &str, place: &Place) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // A header is a whole line; anything else is a part of one (not in a
    // comment either way).
    let holds_anchor = |line: &str| {
        let code = line.split('#').next().unwrap_or_default();
        if place.anchor.starts_with('[') {
            code.trim() == place.anchor
        } else {
            code.contains(&place.anchor)
        }
    };
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| holds_anchor(line))
        .nth(place.nth)?
        .0;
    let found = lines[start..]
        .iter()
        .position(|line| line.contains(&place.needle))
        .map_or(start, |offset| start + offset);
    Some(found + 1)
}

/// A role's name as a TOML table header writes it: bare when it can be.
fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

impl Policy {
    /// Parses and checks a TOML document.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|error| {
            let position = error
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            PolicyError(format!(
                "the policy is not valid: {position}{}",
                error.message()
            ))
        })?;
        policy
            .check_located(text)
            .map_err(|refusal| refusal.in_document(text))?;
        Ok(policy)
    }

    /// Parses a document to be applied: as [`Self::parse`], and every
    /// resource must be one its statement's actions could name, every
    /// binding's principal one a certificate could carry. (Policies stored
    /// before these checks load all the same.)
    pub fn parse_to_apply(text: &str) -> Result<Self, PolicyError> {
        let policy = Self::parse(text)?;
        policy
            .check_patterns()
            .map_err(|refusal| refusal.in_document(text))?;
        Ok(policy)
    }

    /// See [`Self::parse_to_apply`].
    fn check_patterns(&self) -> Result<(), Refusal> {
        for (name, role) in &self.roles {
            for statement in &role.statements {
                for resource in &statement.resources {
                    if let Some(reason) =
                        patterns::resource_refusal(&statement.actions, ACTIONS, resource)
                    {
                        return Err(Refusal {
                            message: format!("role {name:?}: {reason}"),
                            at: Some(Place {
                                anchor: format!("[roles.{}]", toml_key(name)),
                                nth: 0,
                                needle: format!("{resource:?}"),
                            }),
                        });
                    }
                }
            }
        }
        for binding in &self.bindings {
            if !patterns::could_match_principal(&binding.principal) {
                return Err(Refusal {
                    message: format!(
                        "the binding of {:?} matches no name a client certificate can carry: a \
                         common name (letters, digits and ._@-) or a spiffe:// URI (printable \
                         ASCII), and not a reserved name (system, rekeyd)",
                        binding.principal
                    ),
                    at: Some(Place {
                        anchor: format!("{:?}", binding.principal),
                        nth: 0,
                        needle: format!("{:?}", binding.principal),
                    }),
                });
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Every action pattern names at least one known action; every binding
    /// names roles that exist; nothing is empty.
    pub fn check(&self) -> Result<(), PolicyError> {
        self.check_located("")
            .map_err(|refusal| PolicyError(refusal.message))
    }

    /// As [`Self::check`], saying where in `text` (the document this
    /// policy was parsed from) a refusal is.
    fn check_located(&self, text: &str) -> Result<(), Refusal> {
        // A binding is found by its `[[bindings]]` header when each has
        // one, else by its principal's first mention.
        let headers = text
            .lines()
            .filter(|line| line.split('#').next().unwrap_or_default().trim() == "[[bindings]]")
            .count();
        let binding_at = |index: usize, principal: &str, needle: String| {
            if headers == self.bindings.len() {
                Place {
                    anchor: "[[bindings]]".to_owned(),
                    nth: index,
                    needle,
                }
            } else {
                Place {
                    anchor: format!("{principal:?}"),
                    nth: 0,
                    needle,
                }
            }
        };
        for (name, role) in &self.roles {
            let header = format!("[roles.{}]", toml_key(name));
            for statement in &role.statements {
                if statement.actions.is_empty() || statement.resources.is_empty() {
                    return Err(Refusal {
                        message: format!(
                            "role {name:?}: every statement needs actions and resources"
                        ),
                        at: Some(Place {
                            anchor: header,
                            nth: 0,
                            needle: "statements".to_owned(),
                        }),
                    });
                }
                for action in &statement.actions {
                    if !ACTIONS.iter().any(|known| glob::matches(action, known)) {
                        return Err(Refusal {
                            message: format!(
                                "role {name:?}: unknown action {action:?}; actions are {}",
                                ACTIONS.join(", ")
                            ),
                            at: Some(Place {
                                anchor: header,
                                nth: 0,
                                needle: format!("{action:?}"),
                            }),
                        });
                    }
                }
            }
        }
        for (index, binding) in self.bindings.iter().enumerate() {
            if binding.principal.is_empty() {
                return Err(Refusal {
                    message: "a binding has an empty principal".to_owned(),
                    at: Some(binding_at(index, "", "principal".to_owned())),
                });
            }
            for role in &binding.roles {
                if !self.roles.contains_key(role) {
                    return Err(Refusal {
                        message: format!(
                            "the binding of {:?} names role {role:?}, which the policy does not \
                             define",
                            binding.principal
                        ),
                        at: Some(binding_at(index, &binding.principal, format!("{role:?}"))),
                    });
                }
            }
        }
        Ok(())
    }

    /// The roles bound to `principal`, each once.
    fn roles_of<'a>(&'a self, principal: &str) -> Vec<(&'a str, &'a Role)> {
        let mut names: Vec<&str> = self
            .bindings
            .iter()
            .filter(|binding| glob::matches(&binding.principal, principal))
            .flat_map(|binding| binding.roles.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| self.roles.get(name).map(|role| (name, role)))
            .collect()
    }

    /// Whether a binding gives `principal` the role `role`.
    pub fn has_role(&self, principal: &str, role: &str) -> bool {
        self.roles_of(principal)
            .iter()
            .any(|(name, _)| *name == role)
    }

    /// May `principal` perform `action` on `resource`? Deny by default; a
    /// matching deny wins over any allow.
    pub fn evaluate(&self, principal: &str, action: &str, resource: &str) -> Decision {
        let mut allowed = false;
        for (name, role) in self.roles_of(principal) {
            for statement in &role.statements {
                let applies = statement.actions.iter().any(|a| glob::matches(a, action))
                    && statement
                        .resources
                        .iter()
                        .any(|r| glob::matches(r, resource));
                if !applies {
                    continue;
                }
                match statement.effect {
                    Effect::Deny => return Decision::DeniedBy(name.to_owned()),
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::NotAllowed
        }
    }

    /// Whether `principal` may perform `action` on anything at all, as the
    /// statements alone tell: an allow statement of its roles names the
    /// action with a resource the action could apply to (not `key:*` for
    /// a secret's action), and no deny statement names it on every
    /// resource (`*`, `**`).
    pub fn allows_somewhere(&self, principal: &str, action: &str) -> bool {
        let mut allowed = false;
        for (_, role) in self.roles_of(principal) {
            for statement in &role.statements {
                if !statement.actions.iter().any(|a| glob::matches(a, action)) {
                    continue;
                }
                let resources = &statement.resources;
                match statement.effect {
                    Effect::Deny if resources.iter().any(|r| r.bytes().all(|c| c == b'*')) => {
                        return false;
                    }
                    Effect::Deny => {}
                    Effect::Allow => {
                        allowed |= resources.iter().any(|r| patterns::could_name(action, r));
                    }
                }
            }
        }
        allowed
    }

    /// Refuses a policy under which no bound principal may apply policy:
    /// the way back in would be `rekeyd policy recover` only. A binding of
    /// a name or glob no certificate can carry (reserved, or not a
    /// principal at all) counts for nothing; one of a glob counts as its
    /// own text.
    pub fn check_not_locked_out(&self) -> Result<(), PolicyError> {
        let someone = self.bindings.iter().any(|binding| {
            patterns::could_match_principal(&binding.principal)
                && self
                    .evaluate(&binding.principal, "policy:ApplyPolicy", "*")
                    .is_allowed()
        });
        if someone {
            Ok(())
        } else {
            Err(PolicyError(
                "this policy leaves no principal able to apply policy (policy:ApplyPolicy on *); \
                 it would lock everyone out"
                    .to_owned(),
            ))
        }
    }

    /// The policy `rekeyd init` writes: the four default roles, and the
    /// admin identity bound to `admin`.
    pub fn default_for(admin: &str) -> Self {
        let mut policy = Self::parse(DEFAULT_ROLES).unwrap_or_default();
        policy.bind(admin, "admin");
        policy
    }

    /// Adds `role` to the roles of exactly `principal`.
    pub fn bind(&mut self, principal: &str, role: &str) {
        match self
            .bindings
            .iter_mut()
            .find(|binding| binding.principal == principal)
        {
            Some(binding) => {
                if !binding.roles.iter().any(|r| r == role) {
                    binding.roles.push(role.to_owned());
                }
            }
            None => self.bindings.push(Binding {
                principal: principal.to_owned(),
                roles: vec![role.to_owned()],
            }),
        }
    }
}

/// The default roles, as DESIGN describes them.
pub const DEFAULT_ROLES: &str = r#"
[roles.admin]
description = "Everything."
statements = [{ effect = "allow", actions = ["*"], resources = ["*"] }]

[roles.operator]
description = "All secret and rotation actions but reading values and approving."
statements = [
  { effect = "allow", resources = ["*"], actions = [
    "secrets:CreateSecret", "secrets:PutSecretValue", "secrets:UpdateSecret",
    "secrets:DescribeSecret", "secrets:ListSecrets", "secrets:ListSecretVersionIds",
    "secrets:UpdateSecretVersionStage", "secrets:TagResource", "secrets:UntagResource",
    "secrets:DeleteSecret", "secrets:RestoreSecret", "secrets:Watch",
    "secrets:GetRandomPassword",
    "rotation:ConfigureRotation", "rotation:StartRotation", "rotation:StepRotation",
    "rotation:RetryRotation", "rotation:CancelRotation", "rotation:DescribeRotation",
  ] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:*"] },
]

[roles.approver]
description = "Sees secrets and rotations, approves or rejects rotation steps; reads no values."
statements = [
  { effect = "allow", resources = ["*"], actions = [
    "secrets:DescribeSecret", "secrets:ListSecrets", "secrets:Watch",
    "rotation:DescribeRotation", "rotation:ApproveRotation",
  ] },
]

[roles.reader]
description = "Reads values."
statements = [
  { effect = "allow", resources = ["*"], actions = [
    "secrets:GetSecretValue", "secrets:DescribeSecret", "secrets:ListSecrets",
    "secrets:ListSecretVersionIds", "secrets:Watch",
  ] },
  { effect = "allow", actions = ["keys:Use"], resources = ["key:*"] },
]
"#;

#[cfg(test)]
mod tests;
