//! The client certificate verifier and the CRL files (`tls.crl_files`) it
//! trusts: read at start, where an expired or unreadable CRL refuses the
//! start, and each read again whenever it changes (checked every few
//! seconds, `watch`), so that a CA's fresh CRL is honoured without a
//! restart: its revocations refuse new handshakes at once, and a CRL past
//! its next update is replaced before it refuses every client of its CA.
//! A changed file that does not parse, holds no CRL, holds one past its
//! next update or one older than the CRL in force (a stale copy), is
//! logged and that file's CRLs in force stay; the other files' new CRLs
//! are taken all the same.

use anyhow::Context;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use x509_parser::prelude::FromDer;

/// How often the CRL files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What a file looked like when it was read: changed means reread.
type Stamp = Option<(SystemTime, u64)>;

/// One CRL file as last read, and the CRLs of it in force: those of the
/// last reading that could be used.
struct File {
    path: PathBuf,
    stamp: Stamp,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// The newest `thisUpdate` among them (Unix seconds): an older CRL
    /// written over the file (a stale copy) would un-revoke serials.
    issued: i64,
}

pub struct ClientVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// The roots' subjects, which a reload does not change.
    hints: Vec<rustls::DistinguishedName>,
    current: RwLock<(Arc<dyn ClientCertVerifier>, Vec<File>)>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier").finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// The verifier of certificates chaining to `roots`, with the CRLs in
    /// `files`; refuses a file that does not parse, holds no CRL or holds
    /// one past its next update.
    pub fn load(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        files: Vec<PathBuf>,
    ) -> anyhow::Result<Self> {
        let roots = Arc::new(roots);
        let files = files
            .into_iter()
            .map(|path| {
                let stamp = stamp(&path);
                let (crls, issued) = read(&path)?;
                Ok(File {
                    path,
                    stamp,
                    crls,
                    issued,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let verifier = build(&roots, &provider, &files)?;
        let hints = verifier.root_hint_subjects().to_vec();
        Ok(Self {
            roots,
            provider,
            hints,
            current: RwLock::new((verifier, files)),
        })
    }

    /// The verifier in force.
    pub fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    pub fn hints(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    /// Reads again each CRL file that changed since it was read, once per
    /// change: what it holds now replaces its CRLs in force, unless it
    /// cannot be used (then its CRLs in force stay, and every other file's
    /// new CRLs are taken all the same). What was read again, and why each
    /// file that could not be used was not.
    pub fn reload_if_changed(&self) -> (Vec<PathBuf>, Vec<anyhow::Error>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut read_again, mut refused) = (Vec::new(), Vec::new());
        for file in &mut current.1 {
            let now = stamp(&file.path);
            if now == file.stamp {
                continue;
            }
            file.stamp = now;
            match read(&file.path) {
                Ok((_, issued)) if issued < file.issued => refused.push(anyhow::anyhow!(
                    "CRL file {} holds a CRL older than the one in force (issued at {issued}, \
                     against {}): a stale copy would un-revoke serials",
                    file.path.display(),
                    file.issued
                )),
                Ok((crls, issued)) => {
                    file.crls = crls;
                    file.issued = issued;
                    read_again.push(file.path.clone());
                }
                Err(error) => refused.push(error),
            }
        }
        if !read_again.is_empty() {
            match build(&self.roots, &self.provider, &current.1) {
                Ok(verifier) => current.0 = verifier,
                Err(error) => refused.push(error),
            }
        }
        (read_again, refused)
    }

    /// Reloads every few seconds, logging what happened, until dropped
    /// with the task.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (read_again, refused) = self.reload_if_changed();
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

fn stamp(file: &Path) -> Stamp {
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The CRLs of one file, and the newest `thisUpdate` among them; refuses a
/// file that does not parse, holds none, or holds one past its next update.
fn read(file: &Path) -> anyhow::Result<(Vec<CertificateRevocationListDer<'static>>, i64)> {
    let mut crls = Vec::new();
    let mut issued = i64::MIN;
    for crl in CertificateRevocationListDer::pem_file_iter(file)
        .with_context(|| format!("reading CRL file {}", file.display()))?
    {
        let crl = crl.with_context(|| format!("parsing CRL file {}", file.display()))?;
        issued = issued.max(refuse_expired(&crl, file)?);
        crls.push(crl);
    }
    // An empty or cut-short file would drop every revocation it held.
    anyhow::ensure!(
        !crls.is_empty(),
        "CRL file {} holds no CRL (no -----BEGIN X509 CRL----- block)",
        file.display()
    );
    Ok((crls, issued))
}

fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    files: &[File],
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let crls = files.iter().flat_map(|file| file.crls.iter().cloned());
    // A CRL past its next update is not trusted (rustls would by default):
    // its issuer may have revoked more since.
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .build()
        .context("building the client certificate verifier")
}

/// Refuses a CRL that is already past its next update, saying which and
/// since when, rather than refuse every client of its CA; its
/// `thisUpdate` (Unix seconds) otherwise.
fn refuse_expired(crl: &CertificateRevocationListDer<'_>, file: &Path) -> anyhow::Result<i64> {
    let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
        .map_err(|error| anyhow::anyhow!("parsing CRL file {}: {error}", file.display()))?;
    if let Some(next) = parsed.next_update()
        && next.timestamp() < rekey_shared::time::now_millis() / 1000
    {
        anyhow::bail!(
            "CRL file {} expired at {next} (its next update): publish a fresh CRL from its CA",
            file.display()
        );
    }
    Ok(parsed.last_update().timestamp())
}
