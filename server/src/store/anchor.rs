//! What both backends share of the archive anchor: its row, and the
//! checks made inside the transaction that removes archived events (the
//! statements stay per dialect).

use crate::audit::AuditAnchor;
use crate::error::{Error, Result};

/// `seq, mac, anchor_mac` as selected.
pub(super) type AnchorRow = (i64, Vec<u8>, Vec<u8>);

pub(super) fn anchor_of(row: Option<AnchorRow>) -> Option<AuditAnchor> {
    row.map(|(seq, mac, anchor_mac)| AuditAnchor {
        seq,
        mac,
        anchor_mac,
    })
}

/// Whether event `to.seq` (its MAC and the newest sequence number, as
/// read in the transaction) may become the anchor: it is still the event
/// that was archived, and it is not the newest, which appending needs.
pub(super) fn check_archivable(
    last: Option<(Vec<u8>, i64)>,
    from_seq: i64,
    to: &AuditAnchor,
) -> Result<()> {
    match last {
        _ if to.seq <= from_seq => Err(Error::Internal(format!(
            "archiving events through {} after the anchor at {from_seq}",
            to.seq
        ))),
        Some((mac, newest)) if mac == to.mac && newest > to.seq => Ok(()),
        Some((mac, _)) if mac == to.mac => Err(Error::FailedPrecondition(format!(
            "event {} is the newest audit event, which is never archived",
            to.seq
        ))),
        _ => Err(Error::Integrity(format!(
            "audit event {} changed or went away while it was archived; nothing was removed",
            to.seq
        ))),
    }
}

/// The events between the anchor and the last one archived were not all
/// there: the transaction is rolled back.
pub(super) fn gap(from_seq: i64, to_seq: i64, removed: u64) -> Error {
    Error::Integrity(format!(
        "audit events {} to {to_seq} are not all in the database ({removed} found); \
         nothing was removed: run `rekey audit verify`",
        from_seq + 1
    ))
}
