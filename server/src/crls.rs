//! The client certificate verifier and the CRL files (`tls.crl_files`) it
//! trusts: read at start, where a file that cannot be used refuses the
//! start, and each read again whenever it changes (checked every few
//! seconds, `watch`), so that a CA's fresh CRL is honoured without a
//! restart: its revocations refuse new handshakes at once, and a CRL past
//! its next update is replaced before it refuses every client of its CA.
//!
//! A file cannot be used when it does not parse, holds no CRL, holds one
//! the verifier would not take (a version-1 or delta CRL, say), one past
//! its next update, one that a CA of `tls.client_ca` of its issuer's name
//! did not sign (a forged CRL would decide which CRL is newest and what
//! open connections lose; the handshake checks signatures too late for
//! that; the CRL of a CA not in `tls.client_ca`, an intermediate's, is
//! checked against that CA's certificate when the file holds it too, a
//! certificate a client CA signed, and at the handshake only otherwise),
//! or one older than the CRL of the same issuer in force (a
//! stale copy, which would un-revoke serials: older by its CRL number, or
//! by its `thisUpdate` where either has none). A changed file that
//! cannot be used is logged, and its CRLs in force stay; the other files'
//! new CRLs are taken all the same. Files are read and the verifier built
//! outside the lock that handshakes take. Where files hold several CRLs of
//! one issuer and scope (a file each day's CRL is appended to, say), the
//! newest is the one in force; CRLs of one issuer with different scopes
//! (its issuing distribution point: a CA's partitioned CRLs) are each in
//! force.
//!
//! A CA without a CRL in the files is not checked by CRL: its clients are
//! let in (rustls would refuse them all once any CRL is loaded), and the
//! database's revocations still apply to them.
//!
//! The serials the CRLs in force revoke are also handed to
//! [`Revocations`], which every request asks: a certificate a fresh CRL
//! revokes loses the connections it opened before, not just new ones.

use crate::principal::serial_hex;
use crate::tls::Revocations;
use anyhow::Context;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use x509_parser::certificate::X509Certificate;
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::FromDer;

/// How often the CRL files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What a file looked like when it was read: changed means reread.
type Stamp = crate::tls::FileStamp;

/// How new a CRL is: its CRL number, if it has one, and its `thisUpdate`
/// (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Issue {
    number: Option<BigUint>,
    this_update: i64,
}

impl Issue {
    fn older_than(&self, other: &Issue) -> bool {
        match (&self.number, &other.number) {
            (Some(mine), Some(theirs)) => mine < theirs,
            _ => self.this_update < other.this_update,
        }
    }
}

/// One CRL as read from a file.
#[derive(Clone)]
struct Crl {
    /// The issuer's DER name.
    issuer: Vec<u8>,
    /// Its issuing distribution point extension (DER; empty without):
    /// which certificates of the issuer it covers.
    scope: Vec<u8>,
    issue: Issue,
    der: CertificateRevocationListDer<'static>,
    /// The serials it revokes, as `principal::serial_hex` writes them.
    serials: Vec<String>,
}

/// One CRL file as last read, and the CRLs of it in force: those of the
/// last reading that could be used.
#[derive(Clone)]
struct File {
    path: PathBuf,
    stamp: Stamp,
    crls: Vec<Crl>,
}

/// The newest of each issuer's CRLs of each scope in `crls` (the first of
/// equals).
fn newest<'a>(crls: impl IntoIterator<Item = &'a Crl>) -> Vec<&'a Crl> {
    let mut newest: Vec<&Crl> = Vec::new();
    for crl in crls {
        match newest
            .iter_mut()
            .find(|kept| kept.issuer == crl.issuer && kept.scope == crl.scope)
        {
            Some(kept) if kept.issue.older_than(&crl.issue) => *kept = crl,
            Some(_) => {}
            None => newest.push(crl),
        }
    }
    newest
}

/// How new each issuer's newest CRL of each scope in `crls` is, by issuer
/// and scope.
fn issues(crls: &[Crl]) -> HashMap<(Vec<u8>, Vec<u8>), Issue> {
    newest(crls)
        .into_iter()
        .map(|crl| ((crl.issuer.clone(), crl.scope.clone()), crl.issue.clone()))
        .collect()
}

/// What the CRLs in force revoke: (issuer's DER name, serial).
fn revoked(files: &[File]) -> HashSet<(Vec<u8>, String)> {
    newest(files.iter().flat_map(|file| &file.crls))
        .into_iter()
        .flat_map(|crl| {
            crl.serials
                .iter()
                .map(|serial| (crl.issuer.clone(), serial.clone()))
        })
        .collect()
}

/// The client CAs: as the verifier takes them, and as certificates, whose
/// keys check the CRLs' signatures.
struct Anchors {
    roots: Arc<RootCertStore>,
    certificates: Vec<CertificateDer<'static>>,
}

pub struct ClientVerifier {
    anchors: Anchors,
    provider: Arc<CryptoProvider>,
    /// The roots' subjects, which a reload does not change.
    hints: Vec<rustls::DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    /// The files as last read; only the reload touches them.
    files: Mutex<Vec<File>>,
    /// Where requests learn what the CRLs in force revoke.
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier").finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// The verifier of certificates chaining to the client CAs `cas`, with
    /// the CRLs in `files`; refuses a file that cannot be used.
    /// Reads `files`, and tells `revocations` what their CRLs revoke.
    pub fn load(
        cas: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
        files: Vec<PathBuf>,
        revocations: Arc<Revocations>,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots.add(ca.clone()).context("adding the client CA")?;
        }
        let anchors = Anchors {
            roots: Arc::new(roots),
            certificates: cas,
        };
        let files = files
            .into_iter()
            .map(|path| {
                let stamp = crate::tls::file_stamp(&path);
                let crls = read(&path, &anchors, &provider)?;
                Ok(File { path, stamp, crls })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let verifier = build(&anchors.roots, &provider, &files)?;
        let hints = verifier.root_hint_subjects().to_vec();
        revocations.replace_crl_entries(revoked(&files));
        Ok(Self {
            anchors,
            provider,
            hints,
            current: RwLock::new(verifier),
            files: Mutex::new(files),
            revocations,
        })
    }

    /// The verifier in force.
    pub fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn hints(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    /// Reads again each CRL file that changed since it was read, once per
    /// change: what it holds now replaces its CRLs in force, unless it
    /// cannot be used. What was read again, and why each file that could
    /// not be used was not.
    pub fn reload_if_changed(&self) -> (Vec<PathBuf>, Vec<anyhow::Error>) {
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut read_again, mut refused) = (Vec::new(), Vec::new());
        for file in files.iter_mut() {
            let now = crate::tls::file_stamp(&file.path);
            if now == file.stamp {
                continue;
            }
            file.stamp = now;
            let taken = read(&file.path, &self.anchors, &self.provider).and_then(|crls| {
                stale(&file.path, &issues(&file.crls), &issues(&crls))?;
                Ok(crls)
            });
            match taken {
                Ok(crls) => {
                    file.crls = crls;
                    read_again.push(file.path.clone());
                }
                Err(error) => refused.push(error),
            }
        }
        if !read_again.is_empty() {
            // Each file's CRLs were taken by the verifier on their own, so
            // together they build.
            match build(&self.anchors.roots, &self.provider, &files) {
                Ok(verifier) => {
                    *self
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = verifier;
                    self.revocations.replace_crl_entries(revoked(&files));
                }
                Err(error) => refused.push(error),
            }
        }
        (read_again, refused)
    }

    /// Reloads every few seconds, logging what happened, until dropped
    /// with the task.
    pub async fn watch(self: Arc<Self>) {
        let no_files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty();
        if no_files {
            return;
        }
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let this = self.clone();
            let Ok((read_again, refused)) =
                tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            else {
                continue;
            };
            if !read_again.is_empty() {
                tracing::info!(files = ?read_again, "CRL files read again");
            }
            for error in refused {
                tracing::error!(
                    error = format!("{error:#}"),
                    "a changed CRL file cannot be used; its CRLs read before stay in force"
                );
            }
        }
    }
}

/// Refuses `found` if a CRL of it is older than the one of the same
/// issuer in `in_force` (an issuer no longer there is fine: a retired CA).
fn stale(
    file: &Path,
    in_force: &HashMap<(Vec<u8>, Vec<u8>), Issue>,
    found: &HashMap<(Vec<u8>, Vec<u8>), Issue>,
) -> anyhow::Result<()> {
    for (issuer, issue) in found {
        if let Some(current) = in_force.get(issuer)
            && issue.older_than(current)
        {
            anyhow::bail!(
                "CRL file {} holds a CRL older than the one of its issuer in force: a stale \
                 copy would un-revoke serials",
                file.display()
            );
        }
    }
    Ok(())
}

/// The CRLs of one file; refuses a file that does not parse, holds none,
/// holds one past its next update, one no client CA signed, or one the
/// verifier would not take.
fn read(
    file: &Path,
    anchors: &Anchors,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Vec<Crl>> {
    // Read once: the CA certificates and the CRLs come from the same bytes.
    let contents =
        std::fs::read(file).with_context(|| format!("reading CRL file {}", file.display()))?;
    let issuers = issuers_in(file, &contents, &anchors.certificates)?;
    let mut crls = Vec::new();
    for der in CertificateRevocationListDer::pem_slice_iter(&contents) {
        let der = der.with_context(|| format!("parsing CRL file {}", file.display()))?;
        crls.push(examine(der, file, &issuers)?);
    }
    // An empty or cut-short file would drop every revocation it held.
    anyhow::ensure!(
        !crls.is_empty(),
        "CRL file {} holds no CRL (no -----BEGIN X509 CRL----- block)",
        file.display()
    );
    // What the verifier refuses (a version-1 CRL, a delta CRL) is found
    // here, for this file alone.
    build_from(
        &anchors.roots,
        provider,
        crls.iter().map(|crl| crl.der.clone()),
    )
    .with_context(|| format!("CRL file {}", file.display()))?;
    Ok(crls)
}

/// The CAs whose CRLs `file` may hold, checked as it is read: the client
/// CAs, and the CA certificates the file holds beside its CRLs (an
/// intermediate's, whose CRL could not be checked otherwise), each of them
/// signed by a client CA or by another of them. A certificate that is a
/// client CA's is one already; one that is not a CA's, or that nothing
/// trusted signed, is not used (and the log says so): the file's CRLs are
/// read as they would be without it.
fn issuers_in(
    file: &Path,
    contents: &[u8],
    cas: &[CertificateDer<'static>],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut unchecked: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(contents)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing CRL file {}", file.display()))?
        .into_iter()
        .filter(|der| !cas.contains(der))
        .collect();
    let mut issuers = cas.to_vec();
    // Each round takes those an issuer already taken signed.
    loop {
        let before = unchecked.len();
        unchecked.retain(|der| {
            let signed = X509Certificate::from_der(der).is_ok_and(|(_, certificate)| {
                certificate.is_ca()
                    && issuers.iter().any(|issuer| {
                        X509Certificate::from_der(issuer).is_ok_and(|(_, issuer)| {
                            issuer.subject().as_raw() == certificate.issuer().as_raw()
                                && certificate
                                    .verify_signature(Some(issuer.public_key()))
                                    .is_ok()
                        })
                    })
            });
            if signed {
                issuers.push(der.clone());
            }
            !signed
        });
        if unchecked.is_empty() || unchecked.len() == before {
            break;
        }
    }
    for der in &unchecked {
        let subject = X509Certificate::from_der(der)
            .map(|(_, certificate)| certificate.subject().to_string())
            .unwrap_or_else(|_| "(a certificate that does not parse)".to_owned());
        tracing::warn!(
            file = %file.display(),
            %subject,
            "a certificate in a CRL file that is not a CA's, or that no client CA \
             (tls.client_ca) signed, nor a CA certificate beside it: not used to check CRLs"
        );
    }
    Ok(issuers)
}

/// The verifier of each issuer's newest CRL in `files` (the verifier would
/// check a certificate against the first CRL of its issuer it holds).
fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    files: &[File],
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    build_from(
        roots,
        provider,
        newest(files.iter().flat_map(|file| &file.crls))
            .into_iter()
            .map(|crl| crl.der.clone()),
    )
}

fn build_from(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crls: impl IntoIterator<Item = CertificateRevocationListDer<'static>>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    // A CRL past its next update is not trusted (rustls would by default):
    // its issuer may have revoked more since.
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .allow_unknown_revocation_status()
        .build()
        .context("building the client certificate verifier")
}

/// A CRL's issuer, how new it is and what it revokes; refuses one that no
/// client CA of its issuer's name signed, and one already past its next
/// update, saying which and since when, rather than refuse every client of
/// its CA.
fn examine(
    der: CertificateRevocationListDer<'static>,
    file: &Path,
    cas: &[CertificateDer<'static>],
) -> anyhow::Result<Crl> {
    let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|error| anyhow::anyhow!("parsing CRL file {}: {error}", file.display()))?;
    let issuers: Vec<X509Certificate<'_>> = cas
        .iter()
        .filter_map(|ca| X509Certificate::from_der(ca).ok().map(|(_, ca)| ca))
        .filter(|ca| ca.subject().as_raw() == parsed.issuer().as_raw())
        .collect();
    if issuers.is_empty() {
        // An intermediate CA's, say, whose certificate only its clients
        // send: the handshake checks its signature, nothing can here.
        tracing::warn!(
            file = %file.display(),
            issuer = %parsed.issuer(),
            "a CRL of a CA that is not in tls.client_ca (an intermediate's): its signature is \
             checked at each handshake, not as it is read; put the CA's certificate in the file \
             beside it to have it checked"
        );
    } else if let Err(error) = issuers
        .iter()
        .map(|ca| parsed.verify_signature(ca.public_key()))
        .reduce(Result::or)
        .unwrap_or(Ok(()))
    {
        anyhow::bail!(
            "CRL file {} holds a CRL of {} that its key did not sign ({error}): a forged or \
             damaged CRL, one signed with an algorithm rekeyd cannot check, or a CA certificate \
             beside it older than the key that signed it",
            file.display(),
            parsed.issuer()
        );
    }
    if let Some(next) = parsed.next_update()
        && next.timestamp() < rekey_shared::time::now_millis() / 1000
    {
        anyhow::bail!(
            "CRL file {} expired at {next} (its next update): publish a fresh CRL from its CA",
            file.display()
        );
    }
    let scope = parsed
        .extensions()
        .iter()
        .find(|extension| {
            extension.oid == x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT
        })
        .map(|extension| extension.value.to_vec())
        .unwrap_or_default();
    Ok(Crl {
        issuer: parsed.issuer().as_raw().to_vec(),
        scope,
        issue: Issue {
            number: parsed.crl_number().cloned(),
            this_update: parsed.last_update().timestamp(),
        },
        serials: parsed
            .iter_revoked_certificates()
            .map(|entry| serial_hex(&entry.raw_serial_as_string()))
            .collect(),
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_is_older_by_its_number_or_else_its_time() {
        let issue = |number: Option<u32>, this_update| Issue {
            number: number.map(BigUint::from),
            this_update,
        };
        assert!(issue(Some(1), 200).older_than(&issue(Some(2), 100)));
        assert!(!issue(Some(2), 100).older_than(&issue(Some(1), 200)));
        assert!(!issue(Some(2), 100).older_than(&issue(Some(2), 100)));
        assert!(issue(None, 100).older_than(&issue(Some(2), 200)));
        assert!(!issue(Some(1), 300).older_than(&issue(None, 200)));
    }
}
