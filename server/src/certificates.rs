//! Client certificates of an installation: issue (with the registry entry
//! that `cert list` and revocation need), renew, revoke, list; and the
//! server's own, renewed. These run in
//! `rekeyd` subcommands with local access to the installation, and are
//! audited as principal `rekeyd`.

use crate::audit::AuditEvent;
use crate::config::Loaded;
use crate::installation;
use crate::pki::{CertificateAuthority, IssuedCertificate, write_private};
use crate::store::{CertificateRecord, RevokeTarget};
use anyhow::Context;
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
    let issuer = crate::pki::subject_of(&ca.certificate_pem)?;
    let opened = installation::open(loaded).await?;
    let recorded = opened
        .store
        .record_certificate(
            &CertificateRecord {
                serial: issued.serial.clone(),
                issuer,
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

/// Issues the server a new certificate and key from `ca`, for the names
/// its certificate has now and `hosts`, and puts them in place of the
/// files the configuration names: each written beside and renamed over it,
/// the key first (a server reading the two between the renames finds them
/// apart, keeps the pair it has, and takes the new one at its next look).
/// Audited before the files are replaced. The certificate and its names.
pub async fn renew_server(
    loaded: &Loaded,
    ca: &CertificateAuthority,
    hosts: &[String],
    days: i64,
) -> anyhow::Result<(IssuedCertificate, Vec<String>)> {
    let certificate = loaded.path(&loaded.config.tls.certificate);
    let private_key = loaded.path(&loaded.config.tls.private_key);
    let mut names = match std::fs::read_to_string(&certificate) {
        Ok(pem) => names_of(&pem)
            .with_context(|| format!("reading the names of {}", certificate.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", certificate.display()));
        }
    };
    for host in hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    if names.is_empty() {
        anyhow::bail!("the server certificate would name no host: give --host NAME");
    }
    let issued = ca.issue_server(&names, days)?;
    let opened = installation::open(loaded).await?;
    let recorded = opened
        .store
        .record(&AuditEvent::local(
            "certificates:IssueServer",
            "server",
            &format!(
                "serial {} for {}, valid until {}",
                issued.serial,
                names.join(", "),
                issued.not_after.date()
            ),
        ))
        .await;
    opened.store.close().await;
    recorded.map_err(|error| anyhow::anyhow!("{error}"))?;
    // A crash between the two renames leaves the new key beside the old
    // certificate, which the server refuses to start on and a running one
    // does not take up: renew again.
    crate::pki::replace_private(&[
        (private_key.as_path(), issued.key_pem.as_str()),
        (certificate.as_path(), issued.certificate_pem.as_str()),
    ])?;
    Ok((issued, names))
}

/// The DNS names and IP addresses a PEM certificate names.
fn names_of(pem: &str) -> anyhow::Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    crate::pki::with_first_certificate(pem, |certificate| {
        let Some(names) = certificate
            .subject_alternative_name()
            .map_err(|error| anyhow::anyhow!("its alternative names do not parse: {error}"))?
        else {
            return Ok(Vec::new());
        };
        Ok(names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(host) => Some((*host).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes)
                        .ok()
                        .map(|octets| std::net::IpAddr::from(octets).to_string()),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .ok()
                        .map(|octets| std::net::IpAddr::from(octets).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect())
    })
}

/// Revokes every certificate of a principal, or one serial: of `issuer`
/// (hex of its DER name), or of any issuer when it is empty.
pub async fn revoke(
    loaded: &Loaded,
    target: RevokeTarget<'_>,
    issuer: &str,
) -> anyhow::Result<Vec<String>> {
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
            issuer,
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
