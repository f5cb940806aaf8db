//! A ConfigureRotation that names the fields it changes (its
//! `update_mask`): the request is laid over the configuration the secret
//! has, so that a new schedule does not drop the approval gates, the JSON
//! field or the password policy the caller did not mention. What comes out
//! is a whole request. The server lays it over what it keeps (and checks
//! the result as any configuration); `rekey rotation configure` lays it
//! over what it described first, so that a server from before the mask,
//! which takes any request as whole, gets the whole configuration too.

use crate::proto;

/// The fields a mask may name, besides `password_policy.FIELD`.
const PATHS: &[&str] = &[
    "rotator",
    "schedule",
    "window",
    "approval_steps",
    "approvals_required",
    "approver_role",
    "approval_expiry",
    "password_policy",
    "json_field",
    "admin_secret",
    "strategy",
];

/// The fields of the password policy a mask may name one by one.
const POLICY_PATHS: &[&str] = &[
    "length",
    "exclude_characters",
    "exclude_numbers",
    "exclude_punctuation",
    "exclude_uppercase",
    "exclude_lowercase",
    "include_space",
    "require_each_included_type",
];

/// `request`'s masked fields over `existing` (the secret's configuration,
/// or `None` for defaults), without a mask. An unknown path is refused,
/// naming it (the server answers INVALID_ARGUMENT).
pub fn merged(
    existing: Option<proto::RotationConfig>,
    request: proto::ConfigureRotationRequest,
    paths: &[String],
) -> Result<proto::ConfigureRotationRequest, String> {
    for path in paths {
        let known = match path.strip_prefix("password_policy.") {
            Some(field) => POLICY_PATHS.contains(&field),
            None => PATHS.contains(&path.as_str()),
        };
        if !known {
            return Err(format!(
                "update_mask names {path:?}, which is not a field of a rotation configuration \
                 (fields: {}, password_policy.FIELD)",
                PATHS.join(", ")
            ));
        }
    }
    let named = |field: &str| paths.iter().any(|path| path == field);
    let mut base = existing.map(base_request).unwrap_or_default();
    base.name = request.name;
    if named("rotator") {
        base.rotator = request.rotator;
    }
    if named("schedule") {
        base.schedule = request.schedule;
        // On demand only: no window to run in, unless the mask sets one
        // too (and is then refused).
        if base.schedule.is_empty() && !named("window") {
            base.window.clear();
        }
    }
    if named("window") {
        base.window = request.window;
    }
    if named("approval_steps") {
        base.approval_steps = request.approval_steps;
        // No gate left: nothing for approvals or an approver role to
        // apply to, unless the mask sets them too (approvals are then
        // refused; a role without a gate is dropped).
        if base.approval_steps.is_empty() {
            base.approvals_required = 0;
            base.approver_role.clear();
        }
    }
    if named("approvals_required") {
        base.approvals_required = request.approvals_required;
    }
    if named("approver_role") {
        base.approver_role = request.approver_role;
    }
    if named("approval_expiry") {
        base.approval_expiry = request.approval_expiry;
    }
    if named("json_field") {
        base.json_field = request.json_field;
    }
    if named("admin_secret") {
        base.admin_secret = request.admin_secret;
    }
    if named("strategy") {
        base.strategy = request.strategy;
    }
    // A field left unset (a length, whether each type is required) is the
    // server's default.
    base.password_policy = Some(merged_policy(
        base.password_policy.unwrap_or_default(),
        request.password_policy.unwrap_or_default(),
        named("password_policy"),
        |field| named(&format!("password_policy.{field}")),
    ));
    Ok(base)
}

/// The password policy: `given` whole when the mask names the policy,
/// otherwise `base` with the fields it names from `given`.
fn merged_policy(
    base: proto::PasswordPolicy,
    given: proto::PasswordPolicy,
    whole: bool,
    named: impl Fn(&str) -> bool,
) -> proto::PasswordPolicy {
    if whole {
        return given;
    }
    let mut policy = base;
    if named("length") {
        policy.length = given.length;
    }
    if named("exclude_characters") {
        policy.exclude_characters = given.exclude_characters;
    }
    if named("exclude_numbers") {
        policy.exclude_numbers = given.exclude_numbers;
    }
    if named("exclude_punctuation") {
        policy.exclude_punctuation = given.exclude_punctuation;
    }
    if named("exclude_uppercase") {
        policy.exclude_uppercase = given.exclude_uppercase;
    }
    if named("exclude_lowercase") {
        policy.exclude_lowercase = given.exclude_lowercase;
    }
    if named("include_space") {
        policy.include_space = given.include_space;
    }
    if named("require_each_included_type") {
        policy.require_each_included_type = given.require_each_included_type;
    }
    policy
}

/// A configuration as the whole request that would make it again.
fn base_request(config: proto::RotationConfig) -> proto::ConfigureRotationRequest {
    proto::ConfigureRotationRequest {
        name: config.name,
        rotator: config.rotator,
        schedule: config.schedule,
        window: config.window,
        approval_steps: config.approval_steps,
        approvals_required: config.approvals_required,
        approver_role: config.approver_role,
        approval_expiry: config.approval_expiry,
        password_policy: config.password_policy,
        json_field: config.json_field,
        admin_secret: config.admin_secret,
        strategy: config.strategy,
        disable: false,
        update_mask: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gated() -> proto::RotationConfig {
        proto::RotationConfig {
            name: "app/db".to_owned(),
            rotator: "password".to_owned(),
            schedule: "rate(30 days)".to_owned(),
            approval_steps: vec![proto::RotationStep::SetSecret as i32],
            approvals_required: 2,
            approver_role: "approver".to_owned(),
            approval_expiry: "24h".to_owned(),
            json_field: "password".to_owned(),
            password_policy: Some(proto::PasswordPolicy {
                length: Some(40),
                exclude_characters: "'\"".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn request() -> proto::ConfigureRotationRequest {
        proto::ConfigureRotationRequest {
            name: "app/db".to_owned(),
            ..Default::default()
        }
    }

    fn paths(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|path| (*path).to_owned()).collect()
    }

    #[test]
    fn what_the_mask_does_not_name_is_kept() {
        let merged = merged(
            Some(gated()),
            proto::ConfigureRotationRequest {
                schedule: "rate(7 days)".to_owned(),
                json_field: "ignored, not named".to_owned(),
                password_policy: Some(proto::PasswordPolicy {
                    length: Some(64),
                    ..Default::default()
                }),
                ..request()
            },
            &paths(&["schedule", "password_policy.length"]),
        )
        .unwrap();
        assert_eq!(merged.schedule, "rate(7 days)");
        assert_eq!(merged.rotator, "password");
        assert_eq!(merged.approvals_required, 2);
        assert_eq!(merged.approval_steps.len(), 1);
        assert_eq!(merged.json_field, "password");
        let policy = merged.password_policy.unwrap();
        assert_eq!(policy.length, Some(64));
        assert_eq!(policy.exclude_characters, "'\"");
    }

    #[test]
    fn clearing_the_gates_clears_what_applied_to_them() {
        let merged = merged(Some(gated()), request(), &paths(&["approval_steps"])).unwrap();
        assert!(merged.approval_steps.is_empty());
        assert_eq!(merged.approvals_required, 0);
        assert_eq!(merged.approver_role, "");
        assert_eq!(merged.schedule, "rate(30 days)");
    }

    /// On demand only: the window goes with the schedule (it was kept,
    /// and the configuration refused for a window without a schedule).
    #[test]
    fn clearing_the_schedule_clears_its_window() {
        let windowed = proto::RotationConfig {
            window: "2h".to_owned(),
            ..gated()
        };
        let merged = merged(Some(windowed), request(), &paths(&["schedule"])).unwrap();
        assert_eq!((merged.schedule.as_str(), merged.window.as_str()), ("", ""));
    }

    #[test]
    fn without_a_configuration_the_defaults_are_the_base() {
        let merged = merged(
            None,
            proto::ConfigureRotationRequest {
                rotator: "password".to_owned(),
                ..request()
            },
            &paths(&["rotator"]),
        )
        .unwrap();
        assert_eq!(merged.rotator, "password");
        assert_eq!(merged.schedule, "");
        // Unset: the server's default.
        assert_eq!(merged.password_policy.unwrap().length, None);
    }

    #[test]
    fn an_unknown_path_is_refused_by_name() {
        for path in ["enabled", "password_policy.colour", "password_policy.", ""] {
            let error = merged(Some(gated()), request(), &paths(&[path])).unwrap_err();
            assert!(error.contains(&format!("{path:?}")), "{path:?}: {error}");
        }
    }
}
