//! `rekey`, the client of the rekey secrets manager: a scriptable command
//! line (and, in a later release, a terminal UI when run without a
//! subcommand). It talks to `rekeyd` over mutual TLS with an identity file.

pub mod cli;
pub mod client;
pub mod demo;
pub mod input;
pub mod output;
pub mod ui;
