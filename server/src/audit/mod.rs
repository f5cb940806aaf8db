//! The audit log: one event per request, allowed or denied, and per system
//! action; never a value, password or key. Events form a chain: each
//! event's MAC covers its sequence number, its fields and the previous
//! event's MAC, under a key derived from the root key (HKDF-SHA256), so an
//! edit of the table without the root key is detected. The server logs
//! checkpoints (sequence and head MAC), so a cut-off tail is detected too.
//!
//! Old events may be archived (`crate::retention`): they leave the table
//! for files, and an anchor row keeps the sequence number and MAC of the
//! last one archived, itself under a MAC of the audit key ([`AuditAnchor`]),
//! so the chain in the database goes on verifying from there and nobody
//! without the root key can move the anchor to hide removed events.
//!
//! This module computes and verifies MACs; the store appends events in the
//! same transaction as the change they describe.

mod verify;

#[cfg(test)]
pub(crate) use verify::tests::chain as test_chain;
pub use verify::{
    Finding, Verdict, Verification, verify, verify_from, verify_store, verify_store_against_own,
};

use crate::crypto::RootKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The MAC before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit event, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    pub time: i64,
    pub principal: String,
    pub peer: String,
    pub action: String,
    pub resource: String,
    /// `allow`, `deny`, or `none` for requests refused before a decision.
    pub decision: String,
    /// `OK` or the gRPC code name of the error.
    pub outcome: String,
    pub request_id: String,
    /// Short text: why a request was denied or failed. Never a value.
    pub detail: String,
}

/// The longest detail an event keeps, in characters.
pub const MAX_DETAIL_CHARS: usize = 2_000;
/// The longest of an event's other texts, in characters.
pub const MAX_TEXT_CHARS: usize = 600;

/// An event as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: AuditEvent,
    pub mac: Vec<u8>,
}

impl AuditEvent {
    /// An event of the server's own doing (purges, schedules).
    pub fn system(action: &str, resource: &str, detail: &str) -> Self {
        Self {
            time: rekey_shared::time::now_millis(),
            principal: "system".to_owned(),
            peer: String::new(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            decision: "allow".to_owned(),
            outcome: "OK".to_owned(),
            request_id: String::new(),
            detail: detail.to_owned(),
        }
    }

    /// An event of an operator with local access to the installation
    /// (`rekeyd` subcommands), recorded as principal `rekeyd`.
    pub fn local(action: &str, resource: &str, detail: &str) -> Self {
        Self {
            principal: "rekeyd".to_owned(),
            peer: "local".to_owned(),
            ..Self::system(action, resource, detail)
        }
    }

    /// The event as it is stored (and its MAC made): each text cut to its
    /// bound ([`MAX_DETAIL_CHARS`] for the detail, [`MAX_TEXT_CHARS`] for
    /// the others), so that no request, however long what it sends, makes
    /// an event too large for a page of QueryAudit (or fills the disk
    /// faster than its own size); and a NUL, which a client can send in a
    /// name and a rotator can print, written `\0`, as PostgreSQL's text can
    /// hold it (one such event would otherwise fail the commit of every
    /// event batched with it, and go unrecorded itself). Borrowed when
    /// nothing needs either.
    pub fn storable(&self) -> std::borrow::Cow<'_, AuditEvent> {
        let texts = [
            &self.principal,
            &self.peer,
            &self.action,
            &self.resource,
            &self.decision,
            &self.outcome,
            &self.request_id,
        ];
        let fits = |text: &str, bound: usize| text.len() <= bound && !text.contains('\0');
        if texts.iter().all(|text| fits(text, MAX_TEXT_CHARS))
            && fits(&self.detail, MAX_DETAIL_CHARS)
        {
            return std::borrow::Cow::Borrowed(self);
        }
        let clean = |text: &str, bound: usize| {
            let mut clean: String = text
                .chars()
                .take(bound)
                .collect::<String>()
                .replace('\0', "\\0");
            if text.chars().nth(bound).is_some() {
                clean.push_str(&format!(
                    "… (cut at {bound} of {} characters)",
                    text.chars().count()
                ));
            }
            clean
        };
        let text = |text: &str| clean(text, MAX_TEXT_CHARS);
        std::borrow::Cow::Owned(AuditEvent {
            time: self.time,
            principal: text(&self.principal),
            peer: text(&self.peer),
            action: text(&self.action),
            resource: text(&self.resource),
            decision: text(&self.decision),
            outcome: text(&self.outcome),
            request_id: text(&self.request_id),
            detail: clean(&self.detail, MAX_DETAIL_CHARS),
        })
    }
}

/// Where the chain in the database starts once older events were archived:
/// the last archived event's sequence number and MAC, and `anchor_mac`,
/// the audit key's MAC over both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAnchor {
    pub seq: i64,
    pub mac: Vec<u8>,
    pub anchor_mac: Vec<u8>,
}

/// The key that chains events, derived from the root key.
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

impl AuditKey {
    pub fn derive(root: &RootKey) -> Self {
        Self(root.derive_subkey(b"rekey/audit-chain/v1"))
    }

    /// The MAC of event `seq`, chained to `previous`.
    pub fn mac(&self, seq: i64, previous: &[u8], event: &AuditEvent) -> Vec<u8> {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_ref()).expect("HMAC key");
        mac.update(&(previous.len() as u32).to_be_bytes());
        mac.update(previous);
        mac.update(&seq.to_be_bytes());
        mac.update(&event.time.to_be_bytes());
        for field in [
            &event.principal,
            &event.peer,
            &event.action,
            &event.resource,
            &event.decision,
            &event.outcome,
            &event.request_id,
            &event.detail,
        ] {
            mac.update(&(field.len() as u32).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `mac` is the MAC of event `seq` chained to `previous`
    /// (compared in constant time).
    pub fn verifies(&self, seq: i64, previous: &[u8], event: &AuditEvent, mac: &[u8]) -> bool {
        constant_time_eq(&self.mac(seq, previous, event), mac)
    }

    /// The anchor after event `seq` with MAC `mac`, sealed by this key. Its
    /// input is domain-separated from the events' MACs.
    pub fn anchor(&self, seq: i64, mac: &[u8]) -> AuditAnchor {
        AuditAnchor {
            seq,
            mac: mac.to_vec(),
            anchor_mac: self.anchor_mac(seq, mac),
        }
    }

    fn anchor_mac(&self, seq: i64, mac: &[u8]) -> Vec<u8> {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length
        let mut hmac = Hmac::<Sha256>::new_from_slice(self.0.as_ref()).expect("HMAC key");
        hmac.update(b"rekey/audit-anchor/v1");
        hmac.update(&seq.to_be_bytes());
        hmac.update(&(mac.len() as u32).to_be_bytes());
        hmac.update(mac);
        hmac.finalize().into_bytes().to_vec()
    }

    /// Whether `anchor` was sealed by this key (compared in constant time).
    pub fn anchor_verifies(&self, anchor: &AuditAnchor) -> bool {
        constant_time_eq(
            &self.anchor_mac(anchor.seq, &anchor.mac),
            &anchor.anchor_mac,
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored as given while it fits; otherwise each text cut to its bound,
    /// saying so, and NUL written `\0`.
    #[test]
    fn events_are_stored_within_their_bounds() {
        let event = AuditEvent::system("secrets:TagResource", "a/b", "short");
        assert!(matches!(event.storable(), std::borrow::Cow::Borrowed(_)));
        let mut long = event.clone();
        long.detail = "é".repeat(5_000);
        long.request_id = "r".repeat(700);
        long.resource = "a\0b".to_owned();
        let stored = long.storable();
        assert!(stored.detail.starts_with(&"é".repeat(MAX_DETAIL_CHARS)));
        assert!(
            stored
                .detail
                .ends_with("… (cut at 2000 of 5000 characters)")
        );
        assert_eq!(
            stored.request_id,
            format!("{}… (cut at 600 of 700 characters)", "r".repeat(600))
        );
        assert_eq!(stored.resource, "a\\0b");
        assert_eq!(stored.principal, event.principal);
    }
}
