//! End-to-end tests of rekey: real `rekeyd` processes, real mutual TLS, real
//! SQLite files and a real PostgreSQL database, driven by the real `rekey` binary and by gRPC clients.
//! One test binary with a module per area keeps link time down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod audit_log;
mod backup;
mod backup_edits;
mod bad_input;
mod batch;
mod bench_smoke;
mod bounds;
mod cache;
mod control_characters;
mod crash;
mod crls;
mod databases;
mod dev;
mod idempotency;
mod keys;
mod leaks;
mod lifecycle;
mod listing;
mod metadata;
mod metrics;
mod passphrase;
mod python_client;
mod rate_limit;
mod read_cache;
mod replicas;
mod retention;
mod revocation;
mod rotation;
mod run_command;
mod secrets_flow;
mod shutdown;
mod storage;
mod tls;
mod tui;
mod versions;
mod watch;
mod webhooks;
