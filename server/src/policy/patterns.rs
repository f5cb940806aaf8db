//! Whether a pattern of a policy could ever match: a resource some action
//! of its statement applies to, a principal some certificate could carry.
//! A pattern that cannot is a mistake (`"CN=ops-*"`, `"payments"` for a
//! key, `"prod/db "`), and a silent one: in a deny statement it denies
//! nothing, and the only binding of `admin` through it locks everyone out.
//! A policy applied from now on is refused for one; one stored before is
//! loaded as it is.

use super::glob;

/// What the resources of an action look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A secret's name.
    Secret,
    /// `key:NAME`.
    Key,
    /// `*` only: the action is about the whole server.
    Whole,
}

impl Kind {
    fn of(action: &str) -> Self {
        if action.starts_with("keys:") {
            Self::Key
        } else if action.starts_with("policy:")
            || action.starts_with("audit:")
            || action == "secrets:GetRandomPassword"
        {
            Self::Whole
        } else {
            Self::Secret
        }
    }

    fn could_match(self, pattern: &str) -> bool {
        match self {
            Self::Secret => could_match(pattern, "", |c| {
                c.is_ascii_alphanumeric() || b"/_+=.@-".contains(&c)
            }),
            Self::Key => could_match(pattern, "key:", |c| {
                c.is_ascii_alphanumeric() || b"_.-".contains(&c)
            }),
            Self::Whole => glob::matches(pattern, "*"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Secret => "secret names (letters, digits and /_+=.@-)",
            Self::Key => "key:NAME (keys:* actions)",
            Self::Whole => "* (policy:*, audit:* and secrets:GetRandomPassword)",
        }
    }
}

/// Whether `pattern` could match a resource that `action` (a known
/// action, not a pattern) applies to.
pub(super) fn could_name(action: &str, pattern: &str) -> bool {
    Kind::of(action).could_match(pattern)
}

/// Why `resource` matches no resource that the actions `actions` (patterns
/// of known actions) apply to, if it does not.
pub(super) fn resource_refusal(
    actions: &[String],
    known: &[&str],
    resource: &str,
) -> Option<String> {
    let mut kinds: Vec<Kind> = Vec::new();
    for action in known {
        let kind = Kind::of(action);
        if !kinds.contains(&kind) && actions.iter().any(|pattern| glob::matches(pattern, action)) {
            kinds.push(kind);
        }
    }
    if kinds.iter().any(|kind| kind.could_match(resource)) {
        return None;
    }
    let described: Vec<&str> = kinds.iter().map(|kind| kind.describe()).collect();
    Some(format!(
        "resource {resource:?} matches nothing its statement's actions apply to: {}",
        described.join("; ")
    ))
}

/// Whether a certificate could carry a name `pattern` matches: a common
/// name (letters, digits and `._@-`) or a `spiffe://` URI (printable
/// ASCII). An exact name must be one a certificate may carry (not a
/// reserved one).
pub(super) fn could_match_principal(pattern: &str) -> bool {
    if !pattern.contains('*') {
        return crate::principal::could_be_named(pattern);
    }
    could_match(pattern, "", |c| {
        c.is_ascii_alphanumeric() || b"._@-".contains(&c)
    }) || could_match(pattern, "spiffe://", |c| c.is_ascii_graphic())
}

/// Whether the glob `pattern` matches some text made of `prefix` and then
/// characters `allowed` accepts. The set of how far into such a text the
/// pattern could be, character by character: a position in `prefix`, or
/// past it.
fn could_match(pattern: &str, prefix: &str, allowed: impl Fn(u8) -> bool) -> bool {
    let prefix = prefix.as_bytes();
    let past = prefix.len();
    // states[s]: the pattern so far could have consumed s bytes of the
    // prefix (s == past: all of it, and then allowed characters).
    let mut states = vec![false; past + 1];
    states[0] = true;
    for c in pattern.bytes() {
        let mut next = vec![false; past + 1];
        for state in (0..=past).filter(|s| states[*s]) {
            if c == b'*' {
                // A run of characters: any of the prefix's rest, then any
                // allowed ones.
                next[state..].iter_mut().for_each(|reached| *reached = true);
            } else if state < past {
                if prefix[state] == c {
                    next[state + 1] = true;
                }
            } else if allowed(c) {
                next[past] = true;
            }
        }
        states = next;
    }
    states[past]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<&'static str> {
        super::super::ACTIONS.to_vec()
    }

    fn refused(actions: &[&str], resource: &str) -> bool {
        let actions: Vec<String> = actions.iter().map(|a| (*a).to_owned()).collect();
        resource_refusal(&actions, &known(), resource).is_some()
    }

    #[test]
    fn a_resource_must_be_one_its_actions_could_name() {
        assert!(!refused(&["*"], "*"));
        assert!(!refused(&["*"], "prod/*"));
        assert!(!refused(&["secrets:GetSecretValue"], "prod/db"));
        assert!(refused(&["secrets:GetSecretValue"], "prod/db "));
        assert!(refused(&["secrets:GetSecretValue"], "key:payments"));
        assert!(!refused(&["keys:Use"], "key:payments"));
        assert!(!refused(&["keys:*"], "k*"));
        assert!(!refused(&["keys:Use"], "*-payments"));
        assert!(refused(&["keys:Use"], "payments"));
        assert!(refused(&["keys:Manage"], "key:pay/ments"));
        assert!(!refused(&["policy:ApplyPolicy"], "*"));
        assert!(refused(&["policy:ApplyPolicy"], "prod/*"));
        assert!(!refused(&["secrets:*"], "*"));
        // Either kind will do for a statement of both.
        assert!(!refused(&["secrets:GetSecretValue", "keys:Use"], "key:a"));
        assert!(!refused(&["secrets:GetSecretValue", "keys:Use"], "a/b"));
    }

    #[test]
    fn a_principal_pattern_must_be_one_a_certificate_could_match() {
        for good in [
            "alice",
            "*",
            "ops-*",
            "spiffe://corp/ops/*",
            "spi*",
            "*/ops/*",
            "*@corp.example",
        ] {
            assert!(could_match_principal(good), "{good}");
        }
        for bad in [
            "CN=ops-*",
            "ops/*",
            "SPIFFE://corp/ops/*",
            "alice ",
            "system",
            "ops *",
            "spiffe://corp/\u{1b}*",
        ] {
            assert!(!could_match_principal(bad), "{bad}");
        }
    }
}
