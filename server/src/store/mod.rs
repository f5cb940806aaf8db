//! Storage: the one place that runs SQL. It keeps ciphertexts, never
//! plaintext, and enforces in transactions what must hold together: a new
//! version and its stage moves commit as one, a label is on at most one
//! version (a primary key), and a client request token names one version.
//!
//! It does no authorization and no cryptography; callers bring sealed
//! values. SQLite is the embedded backend (WAL, full fsync, secure_delete).

mod migrate;
mod sqlite;

pub use sqlite::Store;

use crate::crypto::SealedValue;
use rekey_shared::{KeyName, SecretName, Stage, VersionId};

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

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The version was added and carries these stages.
    Added(Vec<Stage>),
    /// A version with this id exists already; nothing changed.
    VersionExists,
}

/// A page of secrets, ordered by name.
#[derive(Debug, Clone, Default)]
pub struct SecretQuery {
    /// Name prefixes; a secret matches when it starts with any of them.
    pub name_prefixes: Vec<String>,
    /// Name prefixes a secret must not start with.
    pub excluded_name_prefixes: Vec<String>,
    /// Only names after this one (the previous page's last).
    pub after_name: Option<String>,
    pub limit: u32,
}

/// A stored master-key version, still wrapped by the root key.
#[derive(Debug, Clone)]
pub struct WrappedMasterKey {
    pub name: String,
    pub version: u32,
    pub wrapped_material: Vec<u8>,
    pub created_at: i64,
}
