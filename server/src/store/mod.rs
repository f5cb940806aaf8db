//! Storage: the one place that runs SQL. It keeps ciphertexts, never
//! plaintext, and enforces in transactions what must hold together: a new
//! version and its stage moves commit as one, a label is on at most one
//! version (a primary key), and a client request token names one version.
//!
//! It does no authorization and no cryptography; callers bring sealed
//! values, and a read of a value asks the caller's gate whether to go on
//! from the secret to its version. SQLite is the embedded backend (WAL, full fsync, secure_delete);
//! PostgreSQL serves several replicas on one database, its writers serialized
//! by one advisory lock so that the audit chain stays one chain. On both,
//! concurrent writes share a commit (`batch`), and so do the audit events
//! that stand alone (`group_commit`); nothing is reported before it is
//! durable.

mod anchor;
mod backend;
mod batch;
mod chain;
mod group_commit;
mod list;
mod migrate;
mod postgres;
mod read_cache;
mod rows;
mod sqlite;

pub use backend::Store;
pub use list::PageDetails;
pub use postgres::is_heartbeat;
pub use rows::{CA_CERTIFICATE, RevokeTarget};
pub use sqlite::{AuditQuery, CertificateRecord, MAX_TAGS, PolicyVersion, database_file};

use crate::crypto::SealedValue;
use rekey_shared::{KeyName, SecretName, Stage, VersionId};

/// How full the store's batches were, and how long its upkeep held the
/// writers, for the metrics.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Events per group commit of the audit events that stand alone.
    pub audit_events: crate::metrics::Histogram,
    /// Writers per committed write transaction.
    pub writers: crate::metrics::Histogram,
    /// Seconds each pause of the writers for upkeep lasted (SQLite's
    /// checkpoints; PostgreSQL has none).
    pub writer_pauses: crate::metrics::Histogram,
    /// Reads of values answered from memory, and those that went to the
    /// database (SQLite's read cache; PostgreSQL has none).
    pub read_cache_hits: std::sync::atomic::AtomicU64,
    pub read_cache_misses: std::sync::atomic::AtomicU64,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            audit_events: crate::metrics::Histogram::new(crate::metrics::BATCH_BUCKETS),
            writers: crate::metrics::Histogram::new(crate::metrics::BATCH_BUCKETS),
            writer_pauses: crate::metrics::Histogram::new(crate::metrics::DURATION_BUCKETS),
            read_cache_hits: Default::default(),
            read_cache_misses: Default::default(),
        }
    }
}

/// Whether a read of a value goes on from the secret to the version: the
/// caller's decision (the secret is not being deleted, the caller may use
/// its key), made between the two statements, so that no version is read
/// before it. The store does not authorize; it asks.
pub type Gate = Box<dyn FnOnce(&SecretRecord) -> bool + Send>;

/// What a read of a value found.
#[derive(Debug)]
pub enum ValueRead {
    NoSecret,
    /// The gate said no: no version was read.
    Stopped(SecretRecord),
    /// The secret, and the version asked for with its stages, if there is one.
    Read(SecretRecord, Option<(VersionRecord, Vec<Stage>)>),
}

/// A secret's metadata as stored.
#[derive(Debug, Clone)]
pub struct SecretRecord {
    pub id: String,
    pub name: SecretName,
    pub description: String,
    pub key_name: KeyName,
    pub tags: Vec<(String, String)>,
    pub created_at: i64,
    pub changed_at: i64,
    pub accessed_day: Option<i64>,
    pub deletion_date: Option<i64>,
}

/// One version with its sealed value.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub version_id: VersionId,
    pub created_at: i64,
    pub created_by: String,
    pub accessed_day: Option<i64>,
    pub sealed: SealedValue,
}

/// One version without its value, for listings.
#[derive(Debug, Clone)]
pub struct VersionSummary {
    pub version_id: VersionId,
    pub seq: i64,
    pub created_at: i64,
    pub created_by: String,
    pub accessed_day: Option<i64>,
    pub key_name: String,
    pub stages: Vec<Stage>,
}

/// A secret to create.
#[derive(Debug, Clone)]
pub struct NewSecret {
    pub id: String,
    pub name: SecretName,
    pub description: String,
    pub key_name: KeyName,
    pub tags: Vec<(String, String)>,
    pub created_at: i64,
}

/// A version to add.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub version_id: VersionId,
    pub created_at: i64,
    pub created_by: String,
    pub sealed: SealedValue,
}

/// What UpdateSecret changes, each part optional, in one transaction.
#[derive(Debug, Clone, Copy)]
pub struct SecretUpdate<'a> {
    pub description: Option<&'a str>,
    /// The master key to move to, with every version's data key
    /// re-wrapped under it.
    pub new_key: Option<(&'a KeyName, &'a [Rewrapped])>,
    /// A version to add, which gets CURRENT (sealed under the new key when
    /// the secret moves).
    pub version: Option<&'a NewVersion>,
    pub now: i64,
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The version was added and carries these stages.
    Added(Vec<Stage>),
    /// A version with this id exists already; nothing changed.
    VersionExists,
}

/// Which secrets a listing returns, in which order, from where.
#[derive(Debug, Clone, Default)]
pub struct SecretQuery {
    /// All must match.
    pub filters: Vec<SecretFilter>,
    pub sort: SortKey,
    pub descending: bool,
    /// Continue after this position (the previous page's last secret).
    pub after: Option<Cursor>,
    /// Also list secrets scheduled for deletion.
    pub include_planned_deletion: bool,
    pub limit: u32,
}

/// One filter, AWS-style: the secret matches when any of `include` matches
/// (or `include` is empty) and none of `exclude` does. Every value is a
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFilter {
    pub field: FilterField,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterField {
    Name,
    TagKey,
    TagValue,
    Description,
    /// Name, tag keys, tag values or description.
    All,
    /// `KEY=VALUE-prefix`: a tag with exactly this key.
    Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Name,
    Created,
    Changed,
}

/// A position in a sorted listing: the sort value of the last secret seen
/// (unused when sorting by name) and its name, which breaks ties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub value: i64,
    pub name: String,
}

impl Cursor {
    /// The position just after `secret` in a listing sorted by `sort`.
    pub fn after(secret: &SecretRecord, sort: SortKey) -> Self {
        Self {
            value: match sort {
                SortKey::Name => 0,
                SortKey::Created => secret.created_at,
                SortKey::Changed => secret.changed_at,
            },
            name: secret.name.as_str().to_owned(),
        }
    }
}

/// How a secret leaves: at once, or at a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Now,
    At(i64),
}

/// A version's data key re-wrapped under another master key.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    pub version_id: VersionId,
    pub wrapped_data_key: Vec<u8>,
    /// The key it was wrapped under; the update checks it still is.
    pub from: crate::crypto::KeyRef,
    pub to: crate::crypto::KeyRef,
}

/// A stored master-key version, still wrapped by the root key.
#[derive(Debug, Clone)]
pub struct WrappedMasterKey {
    pub name: String,
    pub version: u32,
    pub wrapped_material: Vec<u8>,
    pub created_at: i64,
}

/// The refusal of a deletion while a rotation run of the secret is under
/// way: its setSecret may have changed the target, and only the run's end
/// (a cancel reverts) puts CURRENT back there; erased, the run and the
/// value the target may hold would be gone.
pub(super) fn run_under_way(name: &impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::FailedPrecondition(format!(
        "a rotation of {name} is under way; cancel it first (rekey rotation cancel {name}), or, \
         if it is already ending, wait for its end (rekey rotation show {name}): its setSecret \
         may have changed the target, and only the run's end puts CURRENT back there"
    ))
}

/// The refusal of a change to a secret scheduled for deletion (or erased)
/// after the request found it live.
pub(super) fn deleted_meanwhile() -> crate::error::Error {
    crate::error::Error::FailedPrecondition(
        "the secret was scheduled for deletion (or erased) meanwhile; restore it first to change it"
            .to_owned(),
    )
}

/// The refusal of a run whose CURRENT at its start (read before the
/// writers' lock) is no longer CURRENT when it is written: a put or a
/// stage move came first, and the run, started on the old value, would
/// be abandoned at once ("CURRENT moved during the run"), taking a
/// scheduled rotation's due time with it. ABORTED: started again, it
/// rotates from the new value (the scheduler tries again in a minute).
pub(super) fn current_moved() -> crate::error::Error {
    crate::error::Error::Aborted(
        "the secret's CURRENT version changed while the rotation was being started; start it again"
            .to_owned(),
    )
}
