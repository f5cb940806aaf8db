//! `rekey-shared`: what both `rekeyd` and `rekey` need to speak to each other.
//!
//! It owns the generated gRPC code of `proto/`, the domain types whose rules
//! both sides check (secret names, stages, version ids, values), the identity
//! file format, the mutual-TLS channel builder and the caching client. It must not hold server
//! policy or storage logic: anything here is visible to every client.

pub mod cache;
pub mod channel;
pub mod checkpoint;
pub mod identity;
pub mod mask;
pub mod names;
pub mod probe;
pub mod proto;
pub mod time;
pub mod value;

pub use names::{KeyName, NameError, SecretName, Stage, VersionId};
pub use value::SecretValue;
