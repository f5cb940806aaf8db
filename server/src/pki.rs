//! The installation's own certificate authority (rcgen, ECDSA P-256): the CA
//! itself, the server certificate and client identities. Serving needs only
//! the CA certificate; the CA key is needed by `rekeyd init` and
//! `rekeyd cert` and may be moved away between uses.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rekey_shared::identity::Identity;
use std::path::Path;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

pub const CA_CERTIFICATE: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// The CA of an installation, with its signing key.
pub struct CertificateAuthority {
    pub certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// What it issues expires no later than it does.
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateAuthority(<key redacted>)")
    }
}

/// A certificate and its private key, both PEM.
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub key_pem: Zeroizing<String>,
    /// Lower-case hex, as the principal rule reports it.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    crate::crypto::random_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte to strip
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

fn validity(params: &mut CertificateParams, days: i64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    params.not_after
}

impl CertificateAuthority {
    /// A new self-signed CA, valid for ten years.
    pub fn generate(common_name: &str) -> anyhow::Result<(Self, Zeroizing<String>)> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, 3650);
        params.serial_number = Some(random_serial().0);
        let certificate = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        // As the certificate says it (whole seconds).
        let not_after = not_after_of(&certificate.pem())?;
        Ok((
            Self {
                certificate_pem: certificate.pem(),
                issuer: Issuer::new(params, key),
                not_after,
            },
            key_pem,
        ))
    }

    /// Loads `ca.pem` and `ca.key` from an installation directory.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let certificate_pem = std::fs::read_to_string(dir.join(CA_CERTIFICATE))
            .with_context(|| format!("reading {}", dir.join(CA_CERTIFICATE).display()))?;
        let key_path = dir.join(CA_KEY);
        if !key_path.exists() {
            anyhow::bail!(
                "the CA key {} is missing; `rekeyd cert` needs it beside the installation",
                key_path.display()
            );
        }
        // Whoever can read it can issue themselves an admin identity.
        let raw = read_private(&key_path, "the CA key")?;
        let key_pem = std::str::from_utf8(&raw).context("the CA key is not PEM text")?;
        let key = KeyPair::from_pem(key_pem).context("parsing the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)
            .context("parsing the CA certificate")?;
        let not_after = not_after_of(&certificate_pem).context("reading the CA certificate")?;
        Ok(Self {
            certificate_pem,
            issuer,
            not_after,
        })
    }

    fn sign(&self, mut params: CertificateParams, days: i64) -> anyhow::Result<IssuedCertificate> {
        let key = KeyPair::generate().context("generating a key")?;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let mut not_after = validity(&mut params, days);
        if self.not_after <= OffsetDateTime::now_utc() {
            anyhow::bail!(
                "the CA certificate expired on {}; it can issue nothing",
                self.not_after.date()
            );
        }
        // Not past the CA's own end: clients would stop trusting it then.
        if not_after > self.not_after {
            not_after = self.not_after;
            params.not_after = not_after;
        }
        params.use_authority_key_identifier_extension = true;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            serial: serial_hex,
            not_after,
        })
    }

    /// The server's certificate for the given host names and addresses.
    pub fn issue_server(&self, hosts: &[String], days: i64) -> anyhow::Result<IssuedCertificate> {
        let mut params =
            CertificateParams::new(hosts.to_vec()).context("server certificate names")?;
        params.distinguished_name.push(DnType::CommonName, "rekeyd");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, days)
    }

    /// A client certificate naming `principal` (a common name, or a
    /// `spiffe://` URI).
    pub fn issue_client(&self, principal: &str, days: i64) -> anyhow::Result<IssuedCertificate> {
        let mut params = CertificateParams::default();
        if principal.starts_with("spiffe://") {
            params.subject_alt_names = vec![SanType::URI(
                principal
                    .try_into()
                    .context("the spiffe URI is not ASCII")?,
            )];
            params.distinguished_name.push(DnType::CommonName, "spiffe");
        } else {
            params
                .distinguished_name
                .push(DnType::CommonName, principal);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, days)
    }

    /// An identity file's contents for a freshly issued client certificate.
    pub fn identity(&self, issued: &IssuedCertificate) -> Identity {
        Identity {
            certificate_pem: issued.certificate_pem.clone(),
            key_pem: issued.key_pem.clone(),
            ca_pem: self.certificate_pem.clone(),
        }
    }
}

/// Reads a file of key material (`what` names it in errors), refusing one
/// that other users can read.
pub fn read_private(path: &Path, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {what} {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{what} {} can be read by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    Ok(Zeroizing::new(std::fs::read(path).with_context(|| {
        format!("reading {what} {}", path.display())
    })?))
}

/// The subject of the first certificate of a PEM text (a CA's: the issuer
/// of what it signs), as hex of its DER name, as revocations keep issuers.
pub fn subject_of(pem: &str) -> anyhow::Result<String> {
    with_first_certificate(pem, |certificate| {
        Ok(crate::audit::hex(certificate.subject().as_raw()))
    })
}

/// When the first certificate of a PEM text expires.
pub fn not_after_of(pem: &str) -> anyhow::Result<OffsetDateTime> {
    with_first_certificate(pem, |certificate| {
        OffsetDateTime::from_unix_timestamp(certificate.validity().not_after.timestamp())
            .context("its expiry is out of range")
    })
}

/// What `read` makes of the first certificate of a PEM text.
pub fn with_first_certificate<T>(
    pem: &str,
    read: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|error| anyhow::anyhow!("not PEM: {error}"))?;
    let certificate = block
        .parse_x509()
        .map_err(|error| anyhow::anyhow!("not a certificate: {error}"))?;
    read(&certificate)
}

/// Writes `contents` to a new file readable by its owner only. Refuses to
/// replace an existing file. Written whole or not at all: to a file beside
/// it (mode 0600), synced, then put in place under its name (refused if
/// the name was taken meanwhile), so that a crash or a full disk leaves no
/// truncated key under the name.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!("creating {}: the file exists", path.display());
    }
    whole_beside(path, contents)?
        .persist_noclobber(path)
        .map_err(|error| error.error)
        .with_context(|| format!("creating {}", path.display()))?;
    sync_directory_of(path);
    Ok(())
}

/// Replaces each file with its contents, readable by its owner only: all
/// written whole and synced beside their names first, then renamed over
/// them one right after the other, the directories synced. A crash leaves
/// the old files or the new ones, whole (or, between two renames, some
/// of each).
pub fn replace_private(files: &[(&Path, &str)]) -> anyhow::Result<()> {
    let written = files
        .iter()
        .map(|(path, contents)| whole_beside(path, contents))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (file, (path, _)) in written.into_iter().zip(files) {
        file.persist(path)
            .map_err(|error| error.error)
            .with_context(|| format!("replacing {}", path.display()))?;
        sync_directory_of(path);
    }
    Ok(())
}

/// `contents` in a new 0600 file in `path`'s directory, synced.
fn whole_beside(path: &Path, contents: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix(".rekey-new-")
        .tempfile_in(directory_of(path))
        .with_context(|| format!("creating a file beside {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes a new name in `path`'s directory durable.
fn sync_directory_of(path: &Path) {
    if let Ok(dir) = std::fs::File::open(directory_of(path)) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private file is written whole under its name, mode 0600, never
    /// over another, and nothing is left beside it.
    #[test]
    fn a_private_file_is_written_whole_and_never_over_another() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        write_private(&path, "secret material").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret material");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let refused = write_private(&path, "other").unwrap_err();
        assert!(format!("{refused:#}").contains("exists"), "{refused:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret material");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["root.key"]);
    }

    /// What the CA issues ends no later than the CA does: a client's
    /// certificate issued late in the CA's life for 3650 days outlived it.
    #[test]
    fn nothing_issued_outlives_its_ca() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let ca_ends = not_after_of(&ca.certificate_pem).unwrap();
        let client = ca.issue_client("alice", 3650).unwrap();
        assert!(client.not_after <= ca_ends);
        assert_eq!(not_after_of(&client.certificate_pem).unwrap(), ca_ends);
        let short = ca.issue_server(&["localhost".to_owned()], 30).unwrap();
        assert!(short.not_after < ca_ends);
    }
}
