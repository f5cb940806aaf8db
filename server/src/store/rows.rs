//! What both backends share in reading rows: the column lists of their
//! SELECTs and one decoder per record. A decoder reads columns through
//! [`Columns`], which each backend's row type implements, so a record is
//! decoded one way whichever database it came from. Counts and key versions
//! are BIGINT in PostgreSQL and INTEGER in SQLite: both read as `i64`.

use super::{SecretRecord, VersionRecord, WrappedMasterKey};
use crate::audit::{AuditEvent, StoredEvent};
use crate::crypto::{KeyRef, SealedValue};
use crate::error::{Error, Result};
use crate::rotation::{
    ApprovalRecord, ConfigRecord, HistoryRecord, Outcome, Phase, Revert, RunRecord, Step,
};
use rekey_shared::{KeyName, SecretName, Stage, VersionId};
use sqlx::Row;

pub(super) const SECRET_COLUMNS: &str =
    "id, name, description, key_name, created_at, changed_at, accessed_day, deletion_date";

pub(super) const VERSION_COLUMNS: &str = "v.version_id, v.created_at, v.created_by, \
     v.accessed_day, v.is_binary, v.ciphertext, v.wrapped_data_key, v.key_name, v.key_version";

pub(super) const RUN_COLUMNS: &str = "run_id, secret_id, manual, scheduled, initiator, phase, \
     step, set_applied, operator_go, attempt, next_attempt_at, approval_requested_at, \
     current_at_start, outcome, revert, end_reason, last_error, created_at, updated_at, ended_at";

/// The run's revision, beside [`RUN_COLUMNS`] in a query of `rotation_runs`.
pub(super) const RUN_REVISION: &str = "COALESCE((SELECT x.revision FROM rotation_run_revisions x \
     WHERE x.run_id = rotation_runs.run_id), 0) AS revision";

pub(super) const CONFIG_COLUMNS: &str = "secret_id, rotator, schedule, window_text, \
     approval_steps, approvals_required, approver_role, approval_expiry, settings, enabled, \
     configured_by, configured_at, next_rotation_at, last_rotated_at";

/// The column reads the decoders need. A missing column or a column of
/// another type is a programming error (the SELECTs above name them), and
/// panics as `sqlx::Row::get` does.
pub(super) trait Columns {
    fn text(&self, column: &str) -> String;
    fn maybe_text(&self, column: &str) -> Option<String>;
    fn integer(&self, column: &str) -> i64;
    fn maybe_integer(&self, column: &str) -> Option<i64>;
    fn bytes(&self, column: &str) -> Vec<u8>;
    fn flag(&self, column: &str) -> bool;

    /// A count or key version this process wrote from a `u32`.
    fn count(&self, column: &str) -> u32 {
        stored_count(self.integer(column))
    }
}

macro_rules! columns_of {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> String {
                self.maybe_text(column).unwrap_or_default()
            }
            fn maybe_text(&self, column: &str) -> Option<String> {
                // Text that is not UTF-8 (SQLite keeps what an edit of the
                // file wrote) is read lossily: what reads it (the audit
                // chain's MACs) finds it changed, rather than the process
                // panic.
                match self.try_get::<Option<String>, _>(column) {
                    Ok(text) => text,
                    Err(_) => self
                        .get::<Option<Vec<u8>>, _>(column)
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
                }
            }
            fn integer(&self, column: &str) -> i64 {
                self.get(column)
            }
            fn maybe_integer(&self, column: &str) -> Option<i64> {
                self.get(column)
            }
            fn bytes(&self, column: &str) -> Vec<u8> {
                self.get(column)
            }
            fn flag(&self, column: &str) -> bool {
                self.get(column)
            }
        }
    };
}

columns_of!(sqlx::sqlite::SqliteRow);
columns_of!(sqlx::postgres::PgRow);

/// A count or key version this process wrote from a `u32`, read back.
pub(super) fn stored_count(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// A row read where a stored string must parse; a failure means the
/// database was edited by hand.
pub(super) fn stored<T>(
    parsed: std::result::Result<T, rekey_shared::NameError>,
    what: &str,
) -> Result<T> {
    parsed.map_err(|error| Error::internal(&format!("stored {what} is malformed"), error))
}

/// The stages of a version as the read statement aggregates them
/// (comma-separated; labels cannot hold a comma), sorted.
pub(super) fn stage_list(text: Option<String>) -> Result<Vec<Stage>> {
    let mut stages = text
        .iter()
        .flat_map(|text| text.split(','))
        .map(|stage| stored(Stage::parse(stage), "stage"))
        .collect::<Result<Vec<_>>>()?;
    stages.sort();
    Ok(stages)
}

pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn malformed(what: &str, text: &str) -> Error {
    Error::internal("stored rotation data", format!("{what} {text:?}"))
}

fn step(text: &str) -> Result<Step> {
    Step::parse(text).ok_or_else(|| malformed("step", text))
}

pub(super) fn secret_row(row: &impl Columns) -> Result<SecretRecord> {
    Ok(SecretRecord {
        id: row.text("id"),
        name: stored(SecretName::parse(&row.text("name")), "secret name")?,
        description: row.text("description"),
        key_name: stored(KeyName::parse(&row.text("key_name")), "key name")?,
        tags: Vec::new(),
        created_at: row.integer("created_at"),
        changed_at: row.integer("changed_at"),
        accessed_day: row.maybe_integer("accessed_day"),
        deletion_date: row.maybe_integer("deletion_date"),
    })
}

pub(super) fn version_row(row: &impl Columns) -> Result<VersionRecord> {
    Ok(VersionRecord {
        version_id: stored(VersionId::parse(&row.text("version_id")), "version id")?,
        created_at: row.integer("created_at"),
        created_by: row.text("created_by"),
        accessed_day: row.maybe_integer("accessed_day"),
        sealed: SealedValue {
            is_binary: row.flag("is_binary"),
            ciphertext: row.bytes("ciphertext"),
            wrapped_data_key: row.bytes("wrapped_data_key"),
            key: KeyRef {
                name: stored(KeyName::parse(&row.text("key_name")), "key name")?,
                version: row.count("key_version"),
            },
        },
    })
}

pub(super) fn master_key_row(row: &impl Columns) -> Result<WrappedMasterKey> {
    Ok(WrappedMasterKey {
        name: row.text("name"),
        version: row.count("version"),
        wrapped_material: row.bytes("wrapped_material"),
        created_at: row.integer("created_at"),
    })
}

pub(super) fn event_row(row: &impl Columns) -> StoredEvent {
    StoredEvent {
        seq: row.integer("seq"),
        mac: row.bytes("mac"),
        event: AuditEvent {
            time: row.integer("time"),
            principal: row.text("principal"),
            peer: row.text("peer"),
            action: row.text("action"),
            resource: row.text("resource"),
            decision: row.text("decision"),
            outcome: row.text("outcome"),
            request_id: row.text("request_id"),
            detail: row.text("detail"),
        },
    }
}

pub(super) fn run_row(row: &impl Columns) -> Result<RunRecord> {
    let phase = row.text("phase");
    let revert = row.text("revert");
    Ok(RunRecord {
        id: row.text("run_id"),
        secret_id: row.text("secret_id"),
        manual: row.flag("manual"),
        scheduled: row.flag("scheduled"),
        initiator: row.text("initiator"),
        phase: Phase::parse(&phase).ok_or_else(|| malformed("phase", &phase))?,
        step: step(&row.text("step"))?,
        set_applied: row.flag("set_applied"),
        operator_go: row.flag("operator_go"),
        attempt: row.count("attempt"),
        next_attempt_at: row.maybe_integer("next_attempt_at"),
        approval_requested_at: row.maybe_integer("approval_requested_at"),
        current_at_start: row.text("current_at_start"),
        outcome: match row.maybe_text("outcome") {
            Some(text) => Some(Outcome::parse(&text).ok_or_else(|| malformed("outcome", &text))?),
            None => None,
        },
        revert: Revert::parse(&revert).ok_or_else(|| malformed("revert", &revert))?,
        end_reason: row.text("end_reason"),
        last_error: row.text("last_error"),
        created_at: row.integer("created_at"),
        updated_at: row.integer("updated_at"),
        ended_at: row.maybe_integer("ended_at"),
        revision: row.integer("revision"),
    })
}

pub(super) fn config_row(row: &impl Columns) -> Result<ConfigRecord> {
    Ok(ConfigRecord {
        secret_id: row.text("secret_id"),
        rotator: row.text("rotator"),
        schedule: row.text("schedule"),
        window: row.text("window_text"),
        approval_steps: row
            .text("approval_steps")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(step)
            .collect::<Result<_>>()?,
        approvals_required: row.count("approvals_required"),
        approver_role: row.text("approver_role"),
        approval_expiry: row.text("approval_expiry"),
        settings: row.text("settings"),
        enabled: row.flag("enabled"),
        configured_by: row.text("configured_by"),
        configured_at: row.integer("configured_at"),
        next_rotation_at: row.maybe_integer("next_rotation_at"),
        last_rotated_at: row.maybe_integer("last_rotated_at"),
    })
}

pub(super) fn history_row(row: &impl Columns) -> Result<HistoryRecord> {
    Ok(HistoryRecord {
        at: row.integer("at"),
        step: step(&row.text("step"))?,
        event: row.text("event"),
        attempt: row.count("attempt"),
        principal: row.text("principal"),
        detail: row.text("detail"),
    })
}

pub(super) fn approval_row(row: &impl Columns) -> Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        step: step(&row.text("step"))?,
        principal: row.text("principal"),
        at: row.integer("at"),
        comment: row.text("comment"),
    })
}

/// Why a version's insert added no row, from a row of what its
/// transaction sees (`present`, `key_name`, `deleted`): the version is there already (a retry), its master-key
/// version was retired, the secret was scheduled for deletion or moved to
/// another master key since the value was sealed, or the secret is gone.
pub(super) fn version_refusal(row: &impl Columns, key: &KeyRef, version_id: &VersionId) -> Error {
    if row.integer("present") > 0 {
        return Error::AlreadyExists(format!("version {version_id} already exists"));
    }
    match row.maybe_text("key_name") {
        None => Error::NotFound("the secret was deleted meanwhile".to_owned()),
        Some(_) if row.integer("deleted") > 0 => Error::FailedPrecondition(
            "the secret was scheduled for deletion meanwhile; restore it first (rekey restore)"
                .to_owned(),
        ),
        Some(moved) if moved != key.name.as_str() => Error::Aborted(format!(
            "the secret was moved to master key {moved} while this value was sealed under {}; \
             try again",
            key.name
        )),
        Some(_) => Error::FailedPrecondition(format!(
            "master key {} version {} was retired meanwhile; try again",
            key.name, key.version
        )),
    }
}

/// The schedule times of a stored configuration, as
/// `(configured_at, next_rotation_at, last_rotated_at)`.
pub(super) type ConfigTimes = (i64, Option<i64>, Option<i64>);

/// Why a configuration may not be saved over what its transaction finds:
/// the stored row is not the one the request read (a run ended, a schedule
/// was claimed, or someone configured it meanwhile: saving would put back
/// the old times, and a rotation could run again at once), or the save
/// changes how runs go (`frozen`) and a run started meanwhile.
pub(super) fn config_save_refusal(
    stored: Option<ConfigTimes>,
    read: Option<&ConfigRecord>,
    run_under_way: bool,
) -> Option<Error> {
    let read = read.map(|config| {
        (
            config.configured_at,
            config.next_rotation_at,
            config.last_rotated_at,
        )
    });
    if stored != read {
        return Some(Error::Aborted(
            "the rotation changed while this configuration was being saved (a run ended, a \
             schedule came due, or someone configured it); look at it again (rekey rotation \
             show) and retry"
                .to_owned(),
        ));
    }
    run_under_way.then(|| {
        Error::FailedPrecondition(
            "a rotation run started while this configuration was being saved; its rotator and \
             approval gates cannot change until it ends"
                .to_owned(),
        )
    })
}

/// What `rekeyd cert revoke` names: a principal (or the serial of a
/// certificate in the registry), or, with `--serial`, a serial of any
/// certificate, also one another CA issued.
#[derive(Debug, Clone, Copy)]
pub enum RevokeTarget<'a> {
    Named(&'a str),
    Serial(&'a str),
    /// The serial of a CA certificate (an intermediate's) another CA
    /// issued: it refuses every client that sends that certificate.
    CaSerial(&'a str),
}

impl RevokeTarget<'_> {
    pub fn text(&self) -> &str {
        match self {
            Self::Named(text) | Self::Serial(text) | Self::CaSerial(text) => text,
        }
    }
}

/// The principal a revoked CA certificate's serial is recorded under (no
/// principal can be spelled with parentheses): serials are unique per
/// issuer only, so those of the CA certificates a client sends are checked
/// against these alone, not against every leaf's.
pub const CA_CERTIFICATE: &str = "(CA certificate)";

/// What a revocation does: the serials it revokes, and whether the one
/// serial must first be recorded (a certificate not issued here).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RevocationPlan {
    pub revoke: Vec<String>,
    pub record: bool,
    /// The principal it is recorded under: none, or [`CA_CERTIFICATE`].
    pub record_as: &'static str,
}

impl RevocationPlan {
    /// `event`, saying which serials the revocation revokes.
    pub(super) fn event(&self, event: &AuditEvent) -> AuditEvent {
        AuditEvent {
            detail: format!("revoked {}", self.revoke.join(", ")),
            ..event.clone()
        }
    }
}

/// Plans a revocation of `target` (whose text as a serial is `serial`)
/// from the registry rows it may concern: (serial, principal, revoked).
/// A name that is a principal and another certificate's serial is refused
/// as ambiguous; a name the registry does not know is refused, not taken
/// for a serial (a principal of another CA would seem revoked and work on).
pub(super) fn plan_revocation(
    target: RevokeTarget<'_>,
    serial: &str,
    rows: &[(String, String, bool)],
) -> Result<RevocationPlan> {
    let chosen: Vec<&(String, String, bool)> = match target {
        RevokeTarget::Named(name) => {
            let by_name: Vec<_> = rows.iter().filter(|row| row.1 == name).collect();
            let by_serial: Vec<_> = rows
                .iter()
                .filter(|row| row.0 == serial && row.1 != name)
                .collect();
            // Ambiguous only where both readings would revoke something.
            let live = |rows: &[&(String, String, bool)]| rows.iter().any(|row| !row.2);
            let (by_name, by_serial) = match (live(&by_name), live(&by_serial)) {
                (true, false) => (by_name, Vec::new()),
                (false, true) => (Vec::new(), by_serial),
                _ => (by_name, by_serial),
            };
            match (by_name.is_empty(), by_serial.is_empty()) {
                (false, false) => {
                    return Err(Error::FailedPrecondition(format!(
                        "{name} is a principal and the serial of another certificate; give \
                         --serial {name} to revoke that serial"
                    )));
                }
                (false, true) => by_name,
                (true, false) => by_serial,
                (true, true) => {
                    return Err(Error::NotFound(format!(
                        "no certificate was issued here to {name} or with that serial; revoke a \
                         certificate of another CA by its serial: rekeyd cert revoke --serial SERIAL"
                    )));
                }
            }
        }
        RevokeTarget::Serial(text) | RevokeTarget::CaSerial(text) => {
            if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::InvalidArgument(format!(
                    "{text:?} is not a serial number (hexadecimal, as rekeyd cert list or openssl \
                     x509 -serial prints it)"
                )));
            }
            let ca = matches!(target, RevokeTarget::CaSerial(_));
            let known: Vec<_> = rows.iter().filter(|row| row.0 == serial).collect();
            if known.is_empty() {
                return Ok(RevocationPlan {
                    revoke: vec![serial.to_owned()],
                    record: true,
                    record_as: if ca { CA_CERTIFICATE } else { "" },
                });
            }
            // One row per serial: a serial is a client certificate's or a
            // CA certificate's here, not both (two CAs' certificates of one
            // serial cannot be revoked apart yet).
            let recorded_as_ca = known.iter().any(|row| row.1 == CA_CERTIFICATE);
            match (ca, recorded_as_ca) {
                (true, false) => {
                    return Err(Error::FailedPrecondition(format!(
                        "serial {serial} is recorded already, as a client certificate's; a CA \
                         certificate of the same serial cannot be revoked beside it"
                    )));
                }
                (false, true) => {
                    return Err(Error::FailedPrecondition(format!(
                        "serial {serial} is recorded already, as a CA certificate's (--ca); a \
                         client certificate of the same serial cannot be revoked beside it"
                    )));
                }
                _ => known,
            }
        }
    };
    let revoke: Vec<String> = chosen
        .iter()
        .filter(|row| !row.2)
        .map(|row| row.0.clone())
        .collect();
    if revoke.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "every certificate of {} is already revoked",
            target.text()
        )));
    }
    Ok(RevocationPlan {
        revoke,
        record: false,
        record_as: "",
    })
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    fn row(serial: &str, principal: &str, revoked: bool) -> (String, String, bool) {
        (serial.to_owned(), principal.to_owned(), revoked)
    }

    #[test]
    fn a_revocation_revokes_what_its_target_names_and_nothing_it_might_mean() {
        let plan = |target, serial: &str, rows: &[_]| plan_revocation(target, serial, rows);
        let alice = [row("0a", "alice", false), row("0b", "alice", true)];
        assert_eq!(
            plan(RevokeTarget::Named("alice"), "alice", &alice).unwrap(),
            RevocationPlan {
                revoke: vec!["0a".into()],
                record: false,
                record_as: ""
            }
        );
        // A serial issued here, by name.
        assert_eq!(
            plan(RevokeTarget::Named("0a"), "0a", &alice)
                .unwrap()
                .revoke,
            ["0a"]
        );
        // Unknown, though it reads as hex: refused, not recorded.
        assert!(matches!(
            plan(RevokeTarget::Named("beef"), "beef", &[]),
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            plan(RevokeTarget::Serial("beef"), "beef", &[]).unwrap(),
            RevocationPlan {
                revoke: vec!["beef".into()],
                record: true,
                record_as: ""
            }
        );
        // A CA certificate's serial is recorded as one, and only if nothing
        // recorded it as a client certificate's.
        assert_eq!(
            plan(RevokeTarget::CaSerial("beef"), "beef", &[]).unwrap(),
            RevocationPlan {
                revoke: vec!["beef".into()],
                record: true,
                record_as: CA_CERTIFICATE
            }
        );
        assert!(matches!(
            plan(RevokeTarget::CaSerial("0a"), "0a", &alice),
            Err(Error::FailedPrecondition(_))
        ));
        // Recorded as a CA certificate's: again with --ca, already revoked;
        // as a client certificate's, refused, not said to be revoked.
        let ca = [row("0d", CA_CERTIFICATE, true)];
        let again = plan(RevokeTarget::CaSerial("0d"), "0d", &ca).unwrap_err();
        assert!(again.to_string().contains("already revoked"), "{again}");
        let leaf = plan(RevokeTarget::Serial("0d"), "0d", &ca).unwrap_err();
        assert!(leaf.to_string().contains("as a CA certificate's"), "{leaf}");
        // A principal named as another certificate's serial.
        let both = [row("0c", "0a", false), row("0a", "alice", false)];
        assert!(matches!(
            plan(RevokeTarget::Named("0a"), "0a", &both),
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(
            plan(RevokeTarget::Serial("0a"), "0a", &both)
                .unwrap()
                .revoke,
            ["0a"]
        );
        assert!(matches!(
            plan(RevokeTarget::Serial("0b"), "0b", &alice),
            Err(Error::FailedPrecondition(_))
        ));
        // A serial revoked before does not make a principal of that name
        // ambiguous.
        let cafe = [row("cafe", "", true), row("0a", "cafe", false)];
        assert_eq!(
            plan(RevokeTarget::Named("cafe"), "cafe", &cafe)
                .unwrap()
                .revoke,
            ["0a"]
        );
        assert!(matches!(
            plan(RevokeTarget::Serial("nope"), "nope", &[]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
