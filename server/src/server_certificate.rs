//! The server's own certificate and key, served from memory and read again
//! when their files change (`rekeyd cert renew-server`, or a certificate a
//! deployment's own CA issued, replaced in place): handshakes from then on
//! present the new one, open connections keep theirs, and no restart is
//! needed. A pair that cannot be used (unreadable, not PEM, the key not the
//! certificate's, as while one file is replaced and not yet the other) is
//! logged once and the pair in force stays.

use crate::tls::{FileStamp, file_stamp};
use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

const CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct ServerCertificate {
    certificate: PathBuf,
    private_key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Served>,
    /// The files' stamps when last read, whether the pair was taken or not.
    seen: Mutex<(FileStamp, FileStamp)>,
}

/// The pair in force, and when its certificate expires (Unix seconds;
/// `None` if it could not be read).
struct Served {
    pair: Arc<CertifiedKey>,
    not_after: Option<i64>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("certificate", &self.certificate)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// Reads the pair; an error if it cannot be served.
    pub fn load(
        certificate: &Path,
        private_key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let seen = (file_stamp(certificate), file_stamp(private_key));
        let pair = read(certificate, private_key, &provider)?;
        Ok(Self {
            certificate: certificate.to_owned(),
            private_key: private_key.to_owned(),
            provider,
            current: RwLock::new(pair),
            seen: Mutex::new(seen),
        })
    }

    /// Reads the pair again if either file changed since it was last read:
    /// `None` if neither did, else whether the new pair is now served.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<()>> {
        let now = (file_stamp(&self.certificate), file_stamp(&self.private_key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(
            read(&self.certificate, &self.private_key, &self.provider).map(|pair| {
                if let Ok(mut current) = self.current.write() {
                    *current = pair;
                }
            }),
        )
    }

    /// Reads the pair again every few seconds when it changed, logging
    /// what became of it, until dropped with the task.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let this = self.clone();
            let Ok(Some(reloaded)) =
                tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            else {
                continue;
            };
            match reloaded {
                Ok(()) => tracing::info!(
                    certificate = %self.certificate.display(),
                    "the server certificate was read again; new connections get it"
                ),
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "the changed server certificate or key cannot be used; the pair read \
                     before is still served"
                ),
            }
        }
    }
}

impl ServerCertificate {
    /// When the certificate served now expires, as Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.current
            .read()
            .ok()
            .and_then(|current| current.not_after)
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.pair.clone())
    }
}

fn read(
    certificate: &Path,
    private_key: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<Served> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .with_context(|| format!("reading server certificate {}", certificate.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing server certificate {}", certificate.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", certificate.display());
    }
    let raw = crate::pki::read_private(private_key, "the server key")?;
    let key = PrivateKeyDer::from_pem_slice(&raw)
        .with_context(|| format!("reading server key {}", private_key.display()))?;
    let not_after = X509Certificate::from_der(chain[0].as_ref())
        .ok()
        .map(|(_, leaf)| leaf.validity().not_after.timestamp());
    let pair = CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "the server certificate {} does not match its key {}",
            certificate.display(),
            private_key.display()
        )
    })?;
    Ok(Served {
        pair: Arc::new(pair),
        not_after,
    })
}
