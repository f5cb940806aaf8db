//! The events that stand alone (a read's, a refusal's), committed on a
//! connection of their own. Through sqlx, a group commit of them is four
//! round trips to the pool's worker thread (begin, the chain's head, the
//! insert, commit) and a hand-off to the batch's committer; here it is one
//! job on one thread (`threads`), in one `BEGIN IMMEDIATE` transaction
//! with full fsync, as the pool's. What keeps the chain one is SQLite's
//! write lock: every appender (this connection, the write batch, another
//! process) reads the chain's head inside its `BEGIN IMMEDIATE`
//! transaction. It runs only while the write batch has no transaction
//! open and its writers wait (`Writer::join_or_lock`), so that the two do
//! not wait on each other's lock.

use super::super::chain::{AuditChain, HEAD_AND_KNOWN_SQL, INSERT_EVENTS};
use super::threads::{Jobs, Threads};
use super::{BUSY_TIMEOUT, WRITER_PRAGMAS};
use crate::audit::AuditEvent;
use crate::error::Result;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, LazyLock};

#[derive(Debug)]
pub(super) struct EventWriter {
    thread: Threads,
    chain: Arc<AuditChain>,
}

impl EventWriter {
    /// A connection to the database file at `path` (which must exist and
    /// have its schema) that appends to `chain`.
    pub(super) fn open(path: &Path, chain: Arc<AuditChain>) -> Result<Self> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the pool's connections.
        connection.busy_timeout(BUSY_TIMEOUT)?;
        for (name, value) in WRITER_PRAGMAS {
            connection.pragma_update(None, name, value)?;
        }
        Ok(Self {
            thread: Threads::start("rekey-audit", vec![connection], Jobs::Apart)?,
            chain,
        })
    }

    /// Appends `events` to the chain in one transaction; durable when this
    /// returns `Ok`. The caller holds the writers' lock with no batch open.
    pub(super) async fn append(&self, events: Vec<AuditEvent>) -> Result<()> {
        let chain = self.chain.clone();
        self.thread
            .run(move |connection| append(connection, &chain, &events))
            .await
    }

    /// Ends the thread and closes its connection.
    pub(super) async fn close(&self) {
        self.thread.close().await;
    }
}

fn append(connection: &mut Connection, chain: &AuditChain, events: &[AuditEvent]) -> Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let known = chain.known_seq();
    let row = transaction
        .prepare_cached(HEAD_AND_KNOWN_SQL)?
        .query_row([known], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let head = chain.head_read(known, row)?;
    let events: Vec<_> = events.iter().map(AuditEvent::storable).collect();
    let links = chain.link(head, events.iter().map(AsRef::as_ref))?;
    {
        static INSERT: LazyLock<String> = LazyLock::new(|| {
            format!("{INSERT_EVENTS} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")
        });
        let mut insert = transaction.prepare_cached(&INSERT)?;
        for (event, (seq, mac)) in events.iter().zip(&links) {
            insert.execute(params![
                seq,
                event.time,
                event.principal,
                event.peer,
                event.action,
                event.resource,
                event.decision,
                event.outcome,
                event.request_id,
                event.detail,
                mac,
            ])?;
        }
    }
    transaction.commit()?;
    chain.committed(&links);
    Ok(())
}
