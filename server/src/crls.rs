//! The client certificate verifier and the CRL files (`tls.crl_files`) it
//! trusts: read at start, where an expired or unreadable CRL refuses the
//! start, and read again whenever a file changes (checked every few
//! seconds, `watch`), so that a CA's fresh CRL is honoured without a
//! restart: its revocations refuse new handshakes at once, and a CRL past
//! its next update is replaced before it refuses every client of its CA.
//! A changed file that does not parse, holds no CRL, or is already past
//! its next update, is logged and the CRLs in force stay (at start, it
//! refuses the start).

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

pub struct ClientVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    files: Vec<PathBuf>,
    /// The roots' subjects, which a reload does not change.
    hints: Vec<rustls::DistinguishedName>,
    current: RwLock<(Arc<dyn ClientCertVerifier>, Vec<Stamp>)>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("crl_files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// The verifier of certificates chaining to `roots`, with the CRLs in
    /// `files`; refuses one that does not parse or is past its next update.
    pub fn load(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        files: Vec<PathBuf>,
    ) -> anyhow::Result<Self> {
        let roots = Arc::new(roots);
        let stamps = files.iter().map(|file| stamp(file)).collect();
        let verifier = build(&roots, &provider, &files)?;
        let hints = verifier.root_hint_subjects().to_vec();
        Ok(Self {
            roots,
            provider,
            files,
            hints,
            current: RwLock::new((verifier, stamps)),
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

    /// Reads the CRL files again if one changed since it was read: true
    /// when the new ones are in force, an error (and the old ones stay)
    /// when they cannot be.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let stamps: Vec<Stamp> = self.files.iter().map(|file| stamp(file)).collect();
        let unchanged = |current: &(Arc<dyn ClientCertVerifier>, Vec<Stamp>)| current.1 == stamps;
        if unchanged(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            return Ok(false);
        }
        let built = build(&self.roots, &self.provider, &self.files);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Tried once per change: the next try is when a file changes again.
        current.1 = stamps;
        current.0 = built?;
        Ok(true)
    }

    /// Reloads every few seconds, logging what happened, until dropped
    /// with the task.
    pub async fn watch(self: Arc<Self>) {
        if self.files.is_empty() {
            return;
        }
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(files = ?self.files, "CRL files read again"),
                Ok(false) => {}
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "a changed CRL file cannot be used; the CRLs read before stay in force"
                ),
            }
        }
    }
}

fn stamp(file: &Path) -> Stamp {
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    files: &[PathBuf],
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut crls = Vec::new();
    for file in files {
        let before = crls.len();
        for crl in CertificateRevocationListDer::pem_file_iter(file)
            .with_context(|| format!("reading CRL file {}", file.display()))?
        {
            let crl = crl.with_context(|| format!("parsing CRL file {}", file.display()))?;
            refuse_expired(&crl, file)?;
            crls.push(crl);
        }
        // An empty or cut-short file would drop every revocation it held.
        anyhow::ensure!(
            crls.len() > before,
            "CRL file {} holds no CRL (no -----BEGIN X509 CRL----- block)",
            file.display()
        );
    }
    // A CRL past its next update is not trusted (rustls would by default):
    // its issuer may have revoked more since.
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .build()
        .context("building the client certificate verifier")
}

/// Refuses a CRL that is already past its next update, saying which and
/// since when, rather than refuse every client of its CA.
fn refuse_expired(crl: &CertificateRevocationListDer<'_>, file: &Path) -> anyhow::Result<()> {
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
    Ok(())
}
