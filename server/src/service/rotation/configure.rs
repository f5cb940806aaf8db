//! ConfigureRotation: which rotator, with which settings, on which
//! schedule, behind which approval gates, whole or only the fields its
//! update mask names (see `mask`); checked before it is kept (the
//! rotator available here, the admin secret readable by whoever configures
//! it, the database user pinned, the schedule able to come due), and
//! refused while a run under way would read what changes.

use super::RotationService;
use super::messages::{config_message, policy_from};
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::rotation::rotators::{Rotator, RotatorSettings};
use crate::rotation::{ConfigRecord, DEFAULT_APPROVAL_EXPIRY, Step, schedule};
use crate::service::context::RequestContext;
use rekey_shared::SecretName;
use rekey_shared::mask;
use rekey_shared::proto;
use rekey_shared::time::now_millis;

impl RotationService {
    pub(super) async fn configure(
        &self,
        context: &RequestContext,
        mut request: proto::ConfigureRotationRequest,
    ) -> Result<proto::RotationConfig> {
        context.set_resource(&request.name);
        let name = SecretName::parse(&request.name)?;
        self.authorize(context, Action::ConfigureRotation, &name)?;
        let secret = self.secret(&name).await?;
        let store = &self.state.store;
        let existing = store.rotation_config(&secret.id).await?;
        let now = now_millis();
        if request.disable {
            let mut config = existing.clone().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "secret {name} has no rotation configuration to disable"
                ))
            })?;
            config.enabled = false;
            config.next_rotation_at = None;
            config.configured_by = context.principal.to_string();
            config.configured_at = now;
            store
                .save_rotation_config(&config, existing.as_ref(), false, &context.change_event())
                .await?;
            context.recorded();
            return Ok(config_message(name.as_str(), &config));
        }
        // Gates given without a count need one approval each; a count of
        // 0 named (`--approvals 0`) is refused below.
        let count_named = request.approvals_required > 0
            || request
                .update_mask
                .as_ref()
                .is_some_and(|mask| mask.paths.iter().any(|path| path == "approvals_required"));
        if let Some(mask) = request.update_mask.take() {
            let configured = existing
                .as_ref()
                .map(|config| config_message(name.as_str(), config));
            request =
                mask::merged(configured, request, &mask.paths).map_err(Error::InvalidArgument)?;
        }
        let rotator = if request.rotator.is_empty() {
            existing
                .as_ref()
                .map(|config| config.rotator.clone())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{name} has no rotation configuration yet; give a rotator: password, \
                         postgres, mysql or exec:NAME"
                    ))
                })?
        } else {
            request.rotator.clone()
        };
        let mut settings = RotatorSettings {
            password_policy: policy_from(request.password_policy),
            json_field: request.json_field,
            admin_secret: request.admin_secret,
            strategy: request.strategy,
            user: String::new(),
            place: String::new(),
        };
        let checked = Rotator::from_config(&rotator, &settings, &self.state.rotation)
            .map_err(|error| Error::InvalidArgument(error.0))?;
        if let Rotator::Database(database) = &checked {
            crate::rotation::database::strong_enough(&database.policy)
                .map_err(|error| Error::InvalidArgument(error.0))?;
        }
        // Before anything here reads a value.
        let mut admin_record = None;
        if !settings.admin_secret.is_empty() {
            let admin = SecretName::parse(&settings.admin_secret)?;
            // Whoever configures an admin secret must be allowed to read it:
            // its value, and its master key.
            self.authorize(context, Action::GetSecretValue, &admin)?;
            let admin_secret = self.secret(&admin).await?;
            context.authorize(
                &self.state.authorizer,
                Action::KeysUse,
                &format!("key:{}", admin_secret.key_name),
            )?;
            admin_record = Some(admin_secret);
        }
        if let Rotator::Database(database) = &checked
            && checked.admin_secret(&settings).is_some()
        {
            // The user the admin may act on and where its passwords go,
            // from the value as it is now: not from what a later writer of
            // the value names.
            let current = self.engine.current_value(&secret).await?;
            let (named, place) =
                crate::rotation::database::pinned(current.as_ref(), database.dialect).map_err(
                    |error| {
                        Error::FailedPrecondition(format!(
                            "alternating users pin the database user the secret's CURRENT value \
                         names, and where it is, when rotation is configured: {error}"
                        ))
                    },
                )?;
            // Configured again the same way (a new schedule, say), the pin
            // stays: configuring is no way to take up whatever user a
            // writer of the value has named since.
            let pinned = existing
                .as_ref()
                .filter(|existing| existing.rotator == rotator)
                .and_then(|existing| {
                    serde_json::from_str::<RotatorSettings>(&existing.settings).ok()
                })
                .filter(|before| {
                    before.strategy == settings.strategy
                        && before.admin_secret == settings.admin_secret
                        && !before.user.is_empty()
                });
            if let Some(pinned) = &pinned
                && pinned.user != named
            {
                return Err(Error::FailedPrecondition(format!(
                    "rotation of {name} switches database user {}, but its CURRENT value \
                     names {named}: configuring again keeps the user; to switch to {named}, \
                     configure the single strategy first, then alternating users again",
                    pinned.user
                )));
            }
            // A configuration from before places were pinned sent them
            // where the admin logs in: that is its place, not whatever a
            // writer of the value may have named meanwhile.
            let pinned_place = match &pinned {
                Some(pinned) if pinned.place.is_empty() => {
                    let admin = match &admin_record {
                        Some(record) => self.engine.current_value(record).await?,
                        None => None,
                    };
                    let (_, admin_place) =
                        crate::rotation::database::pinned(admin.as_ref(), database.dialect)
                            .map_err(|error| {
                                Error::FailedPrecondition(format!(
                                    "the admin secret's place pins where this configuration, \
                                     from before places were pinned, sends passwords: {error}"
                                ))
                            })?;
                    Some(admin_place)
                }
                Some(pinned) => Some(pinned.place.clone()),
                None => None,
            };
            if let Some(pinned_place) = pinned_place
                && pinned_place != place
            {
                return Err(Error::FailedPrecondition(format!(
                    "rotation of {name} sends passwords to {pinned_place}, but its CURRENT value \
                     names {place}: configuring again keeps the place; to move to {place}, \
                     configure the single strategy first, then alternating users again"
                )));
            }
            settings.user = named;
            settings.place = place;
        }
        crate::password::generate(&settings.password_policy)
            .map_err(|error| Error::InvalidArgument(format!("password policy: {error}")))?;
        let parsed = if request.schedule.is_empty() {
            None
        } else {
            Some(schedule::parse_configured(&request.schedule).map_err(Error::InvalidArgument)?)
        };
        // A schedule that never comes due would look configured and never
        // rotate (a date that does not exist, a year long past).
        if let Some(schedule) = &parsed
            && schedule.next(None, now).is_none()
        {
            return Err(Error::InvalidArgument(format!(
                "schedule {:?} never comes due: no time in the next 10 years matches it",
                request.schedule
            )));
        }
        if !request.window.is_empty() {
            if parsed.is_none() {
                return Err(Error::InvalidArgument(
                    "a window needs a schedule".to_owned(),
                ));
            }
            schedule::parse_configured_duration(&request.window).map_err(Error::InvalidArgument)?;
        }
        let mut steps: Vec<Step> = request
            .approval_steps
            .iter()
            .map(|step| {
                Step::from_proto(*step)
                    .ok_or_else(|| Error::InvalidArgument(format!("unknown step {step}")))
            })
            .collect::<Result<_>>()?;
        // Each step once, in the order runs take them.
        steps.sort();
        steps.dedup();
        if request.approvals_required > MAX_APPROVALS {
            return Err(Error::InvalidArgument(format!(
                "{} approvals per step is more than the {MAX_APPROVALS} a gate may need",
                request.approvals_required
            )));
        }
        let (required, role) = if steps.is_empty() {
            if request.approvals_required > 0 {
                return Err(Error::InvalidArgument(
                    "approvals are required of no step: name the steps with --approve".to_owned(),
                ));
            }
            (0, String::new())
        } else {
            if request.approvals_required == 0 && !count_named {
                request.approvals_required = 1;
            }
            if request.approvals_required == 0 {
                return Err(Error::InvalidArgument(
                    "a gated step needs at least 1 approval; 0 is not allowed".to_owned(),
                ));
            }
            let role = if request.approver_role.is_empty() {
                "approver".to_owned()
            } else {
                request.approver_role.clone()
            };
            if !self.state.authorizer.policy().roles.contains_key(&role) {
                return Err(Error::InvalidArgument(format!(
                    "approver role {role:?} is not defined by the policy"
                )));
            }
            (request.approvals_required, role)
        };
        let expiry = if request.approval_expiry.is_empty() {
            DEFAULT_APPROVAL_EXPIRY.to_owned()
        } else {
            schedule::parse_configured_duration(&request.approval_expiry)
                .map_err(Error::InvalidArgument)?;
            request.approval_expiry.clone()
        };
        let last_rotated_at = existing.as_ref().and_then(|config| config.last_rotated_at);
        let config = ConfigRecord {
            secret_id: secret.id.clone(),
            rotator,
            schedule: request.schedule,
            window: request.window,
            approval_steps: steps,
            approvals_required: required,
            approver_role: role,
            approval_expiry: expiry,
            settings: serde_json::to_string(&settings).unwrap_or_else(|_| "{}".to_owned()),
            enabled: true,
            configured_by: context.principal.to_string(),
            configured_at: now,
            next_rotation_at: parsed.and_then(|schedule| schedule.next(last_rotated_at, now)),
            last_rotated_at,
        };
        // A run reads its rotator and gates from the configuration as it
        // goes: changing them under a run waiting for approval would let
        // whoever may configure (not approve) wave it through.
        let frozen = existing
            .as_ref()
            .is_some_and(|existing| changes_how_runs_go(existing, &config));
        if frozen && store.active_run(&secret.id).await?.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "a rotation of {name} is under way; its rotator and approval gates cannot change \
                 until it ends (wait, or rekey rotation cancel {name}); the schedule can"
            )));
        }
        store
            .save_rotation_config(&config, existing.as_ref(), frozen, &context.change_event())
            .await?;
        context.recorded();
        Ok(config_message(name.as_str(), &config))
    }
}

/// The most approvals one gated step may need: more could never be met by
/// any team that would configure them.
const MAX_APPROVALS: u32 = 100;

/// Whether `new` changes what a run under way reads of its configuration:
/// the rotator with its settings, and the approval gates.
fn changes_how_runs_go(old: &ConfigRecord, new: &ConfigRecord) -> bool {
    // As settings, not as text: one saved before a field was added lacks
    // it, and is the same configuration.
    let settings = |text: &str| serde_json::from_str::<RotatorSettings>(text).ok();
    let settings_changed = match (settings(&old.settings), settings(&new.settings)) {
        (Some(old), Some(new)) => old != new,
        _ => old.settings != new.settings,
    };
    old.rotator != new.rotator
        || settings_changed
        || old.approval_steps != new.approval_steps
        || old.approvals_required != new.approvals_required
        || old.approver_role != new.approver_role
        || old.approval_expiry != new.approval_expiry
}
