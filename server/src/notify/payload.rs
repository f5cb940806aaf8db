//! What a notification says: the JSON body of a webhook call and its
//! signature. A body names secrets, runs, steps, principals, files and
//! times; never a value, nor a rotator's error text (which may quote what
//! a target system answered): the receiver is pointed at the command that
//! shows the details to someone allowed to see them.

use crate::config::NotificationKind;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::path::Path;
use zeroize::Zeroizing;

/// One notification, before it is addressed to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    /// A rotation run reached a step that waits for approvals.
    ApprovalRequested {
        secret: String,
        run_id: String,
        step: String,
        /// Who started the run (who cannot approve it).
        initiator: String,
        approvals_required: u32,
        /// Empty: any principal allowed `rotation:ApproveRotation`.
        approver_role: String,
    },
    /// A rotation run ended failed or needing attention, or a step failed
    /// and the run waits for an operator.
    RunFailed {
        secret: String,
        run_id: String,
        step: String,
        /// `failed`, `needs_attention` (the target system could not be put
        /// back) or `step_failed` (a manual run waits: retry or cancel).
        state: String,
        attempts: u32,
        initiator: String,
    },
    /// A certificate the server uses expires within the warning days.
    CertificateExpiring {
        /// `server` (the TLS certificate it presents) or `client_ca` (the
        /// CA client certificates must chain to).
        certificate: String,
        file: String,
        subject: String,
        not_after: String,
        /// Negative once it has expired.
        days_left: i64,
    },
}

impl Notice {
    pub fn kind(&self) -> NotificationKind {
        match self {
            Notice::ApprovalRequested { .. } => NotificationKind::ApprovalRequested,
            Notice::RunFailed { .. } => NotificationKind::RunFailed,
            Notice::CertificateExpiring { .. } => NotificationKind::CertificateExpiring,
        }
    }

    /// What a person receiving it does next.
    fn hint(&self) -> String {
        match self {
            Notice::ApprovalRequested { secret, .. } => {
                format!(
                    "rekey rotation show {secret}; then rekey approve {secret} or rekey reject {secret}"
                )
            }
            Notice::RunFailed { secret, .. } => {
                format!(
                    "rekey rotation show {secret}; then rekey rotation retry or cancel {secret}"
                )
            }
            Notice::CertificateExpiring { .. } => {
                "replace the certificate file and restart rekeyd".to_owned()
            }
        }
    }

    /// The JSON body: the notice, its delivery id (also the
    /// `X-Rekey-Delivery` header; in the body, under the signature, so
    /// that a replayed call cannot pass as another delivery), when it was
    /// raised and the hint.
    pub fn body(&self, delivery: &str, at_millis: i64) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(flatten)]
            notice: &'a Notice,
            delivery: &'a str,
            at: String,
            hint: String,
        }
        serde_json::to_vec(&Body {
            notice: self,
            delivery,
            at: rekey_shared::time::format_millis(at_millis),
            hint: self.hint(),
        })
        .unwrap_or_default()
    }
}

/// A webhook's HMAC key, in zeroizing memory; never shown.
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The shortest secret accepted.
const MINIMUM_SECRET_BYTES: usize = 16;

impl WebhookSecret {
    /// Reads a secret file (its contents without surrounding white space),
    /// refusing one that other users can read, as the root key is.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = crate::pki::read_private(path, "webhook secret file")?;
        let secret = bytes.trim_ascii();
        anyhow::ensure!(
            secret.len() >= MINIMUM_SECRET_BYTES,
            "webhook secret file {} holds {} bytes; it needs at least {MINIMUM_SECRET_BYTES} \
             (make one with `(umask 077; head -c 32 /dev/urandom | base64 > {})`)",
            path.display(),
            secret.len(),
            path.display()
        );
        Ok(Self(Zeroizing::new(secret.to_vec())))
    }

    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        signature(&self.0, timestamp, body)
    }
}

/// `X-Rekey-Signature`: `sha256=` and the hex HMAC-SHA256 of
/// `TIMESTAMP.BODY` under the webhook's secret. The timestamp is signed
/// too, so that a receiver can refuse a replayed call.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently, with Python's hmac module and openssl:
        // hmac.new(b"Jefe", b"1700000000.{}", "sha256").hexdigest()
        assert_eq!(
            signature(b"Jefe", 1_700_000_000, b"{}"),
            "sha256=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
    }

    #[test]
    fn bodies_carry_names_and_the_hint_but_no_error_text() {
        let notice = Notice::RunFailed {
            secret: "prod/db".to_owned(),
            run_id: "r1".to_owned(),
            step: "testSecret".to_owned(),
            state: "failed".to_owned(),
            attempts: 2,
            initiator: "alice".to_owned(),
        };
        let body: serde_json::Value = serde_json::from_slice(&notice.body("d-1", 0)).unwrap();
        assert_eq!(body["event"], "run_failed");
        assert_eq!(body["delivery"], "d-1");
        assert_eq!(body["secret"], "prod/db");
        assert_eq!(body["at"], "1970-01-01T00:00:00Z");
        assert!(
            body["hint"]
                .as_str()
                .unwrap()
                .contains("rekey rotation show prod/db")
        );
        assert_eq!(notice.kind(), NotificationKind::RunFailed);
    }
}
