//! Client certificates of an installation: issue (with the registry entry
//! that `cert list` and revocation need), renew, revoke, list. These run in
//! `rekeyd` subcommands with local access to the installation, and are
//! audited as principal `rekeyd`.

use crate::audit::AuditEvent;
use crate::config::Loaded;
use crate::installation;
use crate::pki::{CertificateAuthority, IssuedCertificate, write_private};
use crate::store::{CertificateRecord, RevokeTarget};
use std::path::Path;

/// Issues a certificate for `principal`, records it, and writes its
/// identity file to `out` (mode 0600, never overwriting).
pub async fn issue(
    loaded: &Loaded,
    ca: &CertificateAuthority,
    principal: &str,
    days: i64,
    out: &Path,
) -> anyhow::Result<IssuedCertificate> {
    let issued = ca.issue_client(principal, days)?;
    let opened = installation::open(loaded).await?;
    let recorded = opened
        .store
        .record_certificate(
            &CertificateRecord {
                serial: issued.serial.clone(),
                principal: principal.to_owned(),
                issued_at: Some(rekey_shared::time::now_millis()),
                not_after: Some(issued.not_after.unix_timestamp() * 1000),
                revoked_at: None,
            },
            &AuditEvent::local(
                "certificates:Issue",
                principal,
                &format!("serial {}", issued.serial),
            ),
        )
        .await;
    opened.store.close().await;
    recorded.map_err(|error| anyhow::anyhow!("{error}"))?;
    write_private(out, &ca.identity(&issued).to_file_text(principal))?;
    Ok(issued)
}

/// Revokes every certificate of a principal, or one serial.
pub async fn revoke(loaded: &Loaded, target: RevokeTarget<'_>) -> anyhow::Result<Vec<String>> {
    let opened = installation::open(loaded).await?;
    let resource = match target {
        RevokeTarget::Named(name) => name.to_owned(),
        RevokeTarget::Serial(serial) | RevokeTarget::CaSerial(serial) => {
            format!("serial:{}", crate::principal::serial_hex(serial))
        }
    };
    let revoked = opened
        .store
        .revoke(
            target,
            rekey_shared::time::now_millis(),
            &AuditEvent::local("certificates:Revoke", &resource, ""),
        )
        .await;
    opened.store.close().await;
    revoked.map_err(|error| anyhow::anyhow!("{error}"))
}

/// Every certificate in the registry.
pub async fn list(loaded: &Loaded) -> anyhow::Result<Vec<CertificateRecord>> {
    let opened = installation::open(loaded).await?;
    let listed = opened.store.certificates().await;
    opened.store.close().await;
    listed.map_err(|error| anyhow::anyhow!("{error}"))
}

/// Checks a principal name for a new certificate: the principal rule's
/// characters, or a spiffe URI; never a reserved name.
pub fn check_principal(name: &str) -> anyhow::Result<()> {
    let is_spiffe = crate::principal::is_valid_spiffe_name(name);
    let valid_name = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !is_spiffe && !valid_name {
        anyhow::bail!(
            "principal {name:?} must be 1-128 characters of A-Z a-z 0-9 . _ @ - or a spiffe:// URI of printable ASCII without spaces"
        );
    }
    if crate::principal::RESERVED_PRINCIPALS.contains(&name) {
        anyhow::bail!("the name {name:?} is reserved for the server");
    }
    // Bound as written, a `*` would be a pattern that binds every principal
    // it matches.
    if name.contains('*') {
        anyhow::bail!(
            "principal {name:?} contains `*`, which a policy binding reads as a pattern; \
             name one principal (patterns are bound with rekey policy apply)"
        );
    }
    Ok(())
}
