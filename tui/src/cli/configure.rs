//! `rekey rotation configure`: the flags given, and only those, become the
//! request's update mask, so the command changes what it names and the
//! secret's configuration keeps the rest (its gates, its JSON field, its
//! password policy). `--approve none` removes the gates; `--schedule ''`
//! makes rotation on demand only; with no flags at all, a disabled
//! configuration is enabled again as it was.

use clap::Args;
use rekey_shared::proto::rotation_client::RotationClient;
use rekey_shared::proto::{self, RotationStep};
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct ConfigureArgs {
    pub name: String,
    /// password, postgres, mysql or exec:NAME.
    #[arg(long)]
    pub rotator: Option<String>,
    /// rate(N hours|days) or cron(min hour dom month dow year); '' for on
    /// demand only.
    #[arg(long)]
    pub schedule: Option<String>,
    /// How long after the scheduled time a run may still start (e.g. 2h).
    #[arg(long)]
    pub window: Option<String>,
    /// Steps that need approval: create, set, test, finish
    /// (comma-separated or repeated), or none.
    #[arg(
        long = "approve",
        value_name = "STEP[,STEP]|none",
        value_parser = approval_steps,
        action = clap::ArgAction::Append
    )]
    pub approve: Option<Vec<Steps>>,
    #[arg(long)]
    pub approvals: Option<u32>,
    #[arg(long)]
    pub approver_role: Option<String>,
    /// How long an approval request stays open (default 24h).
    #[arg(long)]
    pub approval_expiry: Option<String>,
    /// For a JSON value: the field that gets the new password.
    #[arg(long)]
    pub field: Option<String>,
    #[arg(long)]
    pub admin_secret: Option<String>,
    /// single or alternating (database rotators).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Turn rotation off (the configuration is kept).
    #[arg(long)]
    pub disable: bool,
    #[command(flatten)]
    pub password: PolicyArgs,
}

/// The password policy's fields, each changed only when given. A switch
/// given bare is on; `--exclude-numbers=false` turns it off again.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// 1-4096 characters (default 32).
    #[arg(long)]
    pub length: Option<u32>,
    #[arg(long, value_name = "CHARS")]
    pub exclude_characters: Option<String>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub exclude_numbers: Option<bool>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub exclude_punctuation: Option<bool>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub exclude_uppercase: Option<bool>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub exclude_lowercase: Option<bool>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub include_space: Option<bool>,
    /// Require one character of each included type (the default).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub require_each_type: Option<bool>,
    /// The same as --require-each-type=false.
    #[arg(long, conflicts_with = "require_each_type")]
    pub no_require_each_type: bool,
}

/// The steps `--approve` names; empty for `none`.
#[derive(Debug, Clone)]
pub struct Steps(pub Vec<i32>);

fn approval_steps(text: &str) -> Result<Steps, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Steps(Vec::new()));
    }
    text.split(',')
        .map(|step| parse_step(step).map_err(|error| error.to_string()))
        .collect::<Result<_, _>>()
        .map(Steps)
}

pub(super) fn parse_step(text: &str) -> anyhow::Result<i32> {
    let step = match text.trim().to_ascii_lowercase().trim_end_matches("secret") {
        "create" => RotationStep::CreateSecret,
        "set" => RotationStep::SetSecret,
        "test" => RotationStep::TestSecret,
        "finish" => RotationStep::FinishSecret,
        _ => anyhow::bail!("--approve {text:?}: steps are create, set, test, finish, or none"),
    };
    Ok(step as i32)
}

/// `request` laid over the secret's configuration as the server describes
/// it, still with its mask: a server that knows the mask applies it to what
/// it keeps (which a change made meanwhile may have moved on); one from
/// before the mask, which takes every request as the whole configuration,
/// gets the whole of it rather than drop the gates, the JSON field and the
/// password policy the flags left out. Sent as it is when the caller may
/// not describe the rotation, or it has nothing to lay over.
pub async fn whole(
    client: &mut RotationClient<Channel>,
    request: proto::ConfigureRotationRequest,
) -> anyhow::Result<proto::ConfigureRotationRequest> {
    let Some(mask) = request.update_mask.clone().filter(|_| !request.disable) else {
        return Ok(request);
    };
    let described = match client
        .describe_rotation(proto::DescribeRotationRequest {
            name: request.name.clone(),
        })
        .await
    {
        Ok(described) => described.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::NotFound
            ) =>
        {
            return Ok(request);
        }
        Err(status) => return Err(status.into()),
    };
    let mut whole = rekey_shared::mask::merged(described.config, request, &mask.paths)
        .map_err(|error| anyhow::anyhow!(error))?;
    whole.update_mask = Some(mask);
    Ok(whole)
}

/// The request: what the flags give, and a mask naming exactly those.
pub fn request(mut args: ConfigureArgs) -> proto::ConfigureRotationRequest {
    let mut paths = Vec::new();
    let mut given = |path: &str, value: Option<String>| {
        if value.is_some() {
            paths.push(path.to_owned());
        }
        value.unwrap_or_default()
    };
    let rotator = given("rotator", args.rotator);
    let schedule = given("schedule", args.schedule);
    let window = given("window", args.window);
    let approver_role = given("approver_role", args.approver_role);
    let approval_expiry = given("approval_expiry", args.approval_expiry);
    let json_field = given("json_field", args.field);
    let admin_secret = given("admin_secret", args.admin_secret);
    let strategy = given("strategy", args.strategy);
    let exclude_characters = given(
        "password_policy.exclude_characters",
        args.password.exclude_characters.take(),
    );
    let mut given = |path: &str, value: bool| {
        if value {
            paths.push(path.to_owned());
        }
    };
    given("approval_steps", args.approve.is_some());
    given("approvals_required", args.approvals.is_some());
    given("password_policy.length", args.password.length.is_some());
    let policy = &args.password;
    let switches = [
        ("exclude_numbers", policy.exclude_numbers),
        ("exclude_punctuation", policy.exclude_punctuation),
        ("exclude_uppercase", policy.exclude_uppercase),
        ("exclude_lowercase", policy.exclude_lowercase),
        ("include_space", policy.include_space),
    ];
    for (field, value) in switches {
        given(&format!("password_policy.{field}"), value.is_some());
    }
    let require_each = match (policy.require_each_type, policy.no_require_each_type) {
        (_, true) => Some(false),
        (value, false) => value,
    };
    given(
        "password_policy.require_each_included_type",
        require_each.is_some(),
    );
    proto::ConfigureRotationRequest {
        name: args.name,
        rotator,
        schedule,
        window,
        approval_steps: args
            .approve
            .map(|given| given.into_iter().flat_map(|steps| steps.0).collect())
            .unwrap_or_default(),
        approvals_required: args.approvals.unwrap_or_default(),
        approver_role,
        approval_expiry,
        password_policy: Some(proto::PasswordPolicy {
            length: policy.length,
            exclude_characters,
            exclude_numbers: policy.exclude_numbers.unwrap_or_default(),
            exclude_punctuation: policy.exclude_punctuation.unwrap_or_default(),
            exclude_uppercase: policy.exclude_uppercase.unwrap_or_default(),
            exclude_lowercase: policy.exclude_lowercase.unwrap_or_default(),
            include_space: policy.include_space.unwrap_or_default(),
            require_each_included_type: require_each,
        }),
        json_field,
        admin_secret,
        strategy,
        disable: args.disable,
        update_mask: Some(prost_types::FieldMask { paths }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        args: ConfigureArgs,
    }

    fn request_of(flags: &[&str]) -> proto::ConfigureRotationRequest {
        let mut argv = vec!["configure", "app/db"];
        argv.extend_from_slice(flags);
        request(Command::try_parse_from(argv).unwrap().args)
    }

    fn paths(request: &proto::ConfigureRotationRequest) -> Vec<&str> {
        let mask = request.update_mask.as_ref().unwrap();
        mask.paths.iter().map(String::as_str).collect()
    }

    #[test]
    fn only_the_flags_given_are_in_the_mask() {
        let request = request_of(&["--schedule", "rate(7 days)", "--exclude-numbers"]);
        assert_eq!(
            paths(&request),
            ["schedule", "password_policy.exclude_numbers"]
        );
        assert!(request.password_policy.unwrap().exclude_numbers);
        assert!(paths(&request_of(&[])).is_empty());
    }

    #[test]
    fn gates_are_removed_by_name_and_switches_turned_off() {
        let request = request_of(&[
            "--approve",
            "none",
            "--schedule",
            "",
            "--include-space=false",
            "--no-require-each-type",
        ]);
        assert_eq!(
            paths(&request),
            [
                "schedule",
                "approval_steps",
                "password_policy.include_space",
                "password_policy.require_each_included_type"
            ]
        );
        assert!(request.approval_steps.is_empty());
        let policy = request.password_policy.unwrap();
        assert!(!policy.include_space);
        assert_eq!(policy.require_each_included_type, Some(false));
        let gated = request_of(&["--approve", "set,finish", "--approvals", "2"]);
        assert_eq!(paths(&gated), ["approval_steps", "approvals_required"]);
        assert_eq!(gated.approval_steps, [2, 4]);
        // Repeated, as it was taken before the mask.
        let repeated = request_of(&["--approve", "set", "--approve", "finish"]);
        assert_eq!(repeated.approval_steps, [2, 4]);
    }
}
