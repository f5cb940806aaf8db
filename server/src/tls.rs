//! Our own TLS acceptor. tonic is handed streams that already finished a
//! TLS 1.3 handshake with a client certificate from our CA, each carrying
//! what the principal rule made of that certificate, so the certificate
//! reaches every request without being parsed again.
//!
//! Handshakes run in their own tasks with a time limit, so a slow or silent
//! client cannot hold up others.

use crate::crls::ClientVerifier;
use crate::principal::{CertificateRefusal, PeerCertificate, peer_certificate};
use crate::server_certificate::ServerCertificate;
use anyhow::Context;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::RwLock;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What tells a file read again when it changes (the CRL files, the
/// server's certificate and key) that it changed: modification time,
/// length, inode (a file renamed over it) and change time (its mode or
/// owner mended after a read that refused them, say); `None` when it
/// cannot be looked at.
pub(crate) type FileStamp = Option<(std::time::SystemTime, u64, u64, i64, i64)>;

pub(crate) fn file_stamp(file: &Path) -> FileStamp {
    let metadata = std::fs::metadata(file).ok()?;
    #[cfg(unix)]
    let (inode, changed, changed_nanos) = {
        use std::os::unix::fs::MetadataExt;
        (metadata.ino(), metadata.ctime(), metadata.ctime_nsec())
    };
    #[cfg(not(unix))]
    let (inode, changed, changed_nanos) = (0, 0, 0);
    Some((
        metadata.modified().ok()?,
        metadata.len(),
        inode,
        changed,
        changed_nanos,
    ))
}

/// An issuer (hex of its DER name; `""` for any) and a serial.
pub type Issued = (String, String);

/// The serials of revoked client certificates, refreshed from the database
/// (see `sync`), consulted at every handshake and on every request; and
/// the certificates the CRL files in force revoke (see `crls`), by issuer
/// and serial, which the handshake's verifier checks itself and every
/// request asks here.
#[derive(Debug, Default)]
pub struct Revocations {
    /// The database's: (client certificates', CA certificates'), each an
    /// issuer and a serial, the issuer `""` where any issuer's is revoked.
    serials: RwLock<(HashSet<Issued>, HashSet<Issued>)>,
    by_crl: RwLock<HashSet<(Vec<u8>, String)>>,
}

impl Revocations {
    /// Whether the database revokes the client certificate `serial` of
    /// `issuer` (hex of its DER name): revoked of that issuer, or of any.
    pub fn is_revoked(&self, issuer: &str, serial: &str) -> bool {
        match self.serials.read() {
            Ok(serials) => among(&serials.0, issuer, serial),
            // A poisoned lock must not let a revoked certificate in.
            Err(_) => true,
        }
    }

    /// Whether the database revokes the CA certificate `serial` of
    /// `issuer` (one a client sends beside its own). Apart from the client
    /// certificates' serials: serials are unique per issuer only, and a
    /// CA's are often small numbers that another CA's leaves have too.
    pub fn is_revoked_ca(&self, issuer: &str, serial: &str) -> bool {
        match self.serials.read() {
            Ok(serials) => among(&serials.1, issuer, serial),
            Err(_) => true,
        }
    }

    /// Whether these are the revocations in force already.
    pub fn holds(&self, serials: &HashSet<Issued>, cas: &HashSet<Issued>) -> bool {
        self.serials
            .read()
            .is_ok_and(|current| current.0 == *serials && current.1 == *cas)
    }

    /// The database's revocations: client certificates' serials and CA
    /// certificates'.
    pub fn replace(&self, serials: HashSet<Issued>, cas: HashSet<Issued>) {
        if let Ok(mut current) = self.serials.write() {
            *current = (serials, cas);
        }
    }

    /// Whether a CRL in force revokes the certificate `serial` of
    /// `issuer` (a DER name). Only a client's own certificate is asked
    /// about on each request: which of the intermediates it sent the
    /// handshake's path went through is not known here, and a revoked one
    /// it did not use must not refuse it (the handshake checks the path).
    pub fn revoked_by_crl(&self, issuer: &[u8], serial: &str) -> bool {
        match self.by_crl.read() {
            Ok(revoked) => {
                !revoked.is_empty() && revoked.contains(&(issuer.to_vec(), serial.to_owned()))
            }
            // A poisoned lock must not let a revoked certificate in.
            Err(_) => true,
        }
    }

    /// What the CRL files in force revoke, replacing what they did.
    pub fn replace_crl_entries(&self, entries: HashSet<(Vec<u8>, String)>) {
        if let Ok(mut current) = self.by_crl.write() {
            *current = entries;
        }
    }
}

/// Whether `revoked` holds `serial` of `issuer`, or of any issuer.
fn among(revoked: &HashSet<Issued>, issuer: &str, serial: &str) -> bool {
    let of = |issuer: &str| revoked.contains(&(issuer.to_owned(), serial.to_owned()));
    of("") || of(issuer)
}

/// The WebPKI client verifier (chain to our CA, validity, client-auth
/// usage, CRLs), then the revocation list of the database.
#[derive(Debug)]
struct RevocationCheckingVerifier {
    inner: Arc<ClientVerifier>,
    revocations: Arc<Revocations>,
}

impl ClientCertVerifier for RevocationCheckingVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.hints()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .current()
            .verify_client_cert(end_entity, intermediates, now)?;
        // The CA certificates it sends too, against the serials revoked
        // as CA certificates' (`rekeyd cert revoke --serial S --ca`).
        let leaf_revoked = crate::principal::issued_of(end_entity)
            .is_some_and(|(issuer, serial)| self.revocations.is_revoked(&issuer, &serial));
        let ca_revoked = intermediates
            .iter()
            .filter_map(|certificate| crate::principal::issued_of(certificate))
            .any(|(issuer, serial)| self.revocations.is_revoked_ca(&issuer, &serial));
        if leaf_revoked || ca_revoked {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner
            .current()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner
            .current()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.current().supported_verify_schemes()
    }
}

/// The TLS settings of the server: TLS 1.3 only, a client certificate from
/// `client_ca` required, HTTP/2 by ALPN. The crypto provider is `ring`,
/// chosen here explicitly rather than from a process-wide default.
///
/// Sessions are never resumed: every connection presents its certificate
/// and passes the revocation check again. The CRL files and the server's
/// certificate and key are read again when they change (see [`ServerTls`]).
pub fn server_config(
    certificate: &Path,
    private_key: &Path,
    client_ca: &Path,
    crl_files: &[std::path::PathBuf],
    revocations: Arc<Revocations>,
) -> anyhow::Result<ServerTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let own = Arc::new(ServerCertificate::load(
        certificate,
        private_key,
        provider.clone(),
    )?);
    let cas = CertificateDer::pem_file_iter(client_ca)
        .with_context(|| format!("reading client CA {}", client_ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing client CA {}", client_ca.display()))?;
    let client_verifier = Arc::new(ClientVerifier::load(
        cas,
        provider.clone(),
        crl_files.to_vec(),
        revocations.clone(),
    )?);
    let verifier = Arc::new(RevocationCheckingVerifier {
        inner: client_verifier.clone(),
        revocations,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("selecting TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(own.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(ServerTls {
        config,
        client_verifier,
        own,
    })
}

/// The server's TLS settings, with what keeps them current: the client
/// verifier (its CRL files) and the server's own certificate (its files),
/// each read again when they change (their `watch`, which the caller runs).
#[derive(Debug)]
pub struct ServerTls {
    pub config: rustls::ServerConfig,
    pub client_verifier: Arc<ClientVerifier>,
    pub own: Arc<ServerCertificate>,
}

/// What every request on a connection learns about it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote_addr: SocketAddr,
    pub peer: Arc<Result<PeerCertificate, CertificateRefusal>>,
}

/// A TCP stream after a successful TLS handshake.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The most TLS handshakes under way from one address: a client that opens
/// connections and sends nothing holds each for [`HANDSHAKE_TIMEOUT`], and
/// without a bound its connections (file descriptors, tasks) are as many as
/// it likes. Beyond it, a new connection from that address is closed at
/// once. (A handshake takes milliseconds: many clients behind one address
/// reconnecting at once stay well below it.)
const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

/// The handshakes under way, by address.
#[derive(Debug, Default)]
struct Handshakes {
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One handshake under way; dropped when it ends.
struct Handshake {
    handshakes: Arc<Handshakes>,
    address: std::net::IpAddr,
}

impl Handshakes {
    /// A place for a handshake from `address`, if it has fewer under way
    /// than the bound.
    fn start(self: &Arc<Self>, address: std::net::IpAddr) -> Option<Handshake> {
        let mut by_address = self
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let under_way = by_address.entry(address).or_default();
        if *under_way >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *under_way += 1;
        Some(Handshake {
            handshakes: self.clone(),
            address,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut by_address = self
            .handshakes
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(under_way) = by_address.get_mut(&self.address) {
            *under_way -= 1;
            if *under_way == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// Accepts connections on `listener` and yields those whose handshake
/// succeeded. Failed handshakes are logged and dropped; a connection from
/// an address with [`MAX_HANDSHAKES_PER_ADDRESS`] under way is closed at
/// once. The accept loop ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> mpsc::Receiver<Result<TlsConnection, io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Handshakes::default());
    tokio::spawn(async move {
        // When a refusal was last logged (one a second at most).
        let mut logged: Option<tokio::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, say: trying again at once
                    // would spin a core and flood the log.
                    tracing::warn!(%error, "accepting a TCP connection failed; trying again in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(handshake) = handshakes.start(remote_addr.ip()) else {
                if logged.is_none_or(|last| last.elapsed() >= Duration::from_secs(1)) {
                    logged = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        %remote_addr,
                        "a connection closed at once: {MAX_HANDSHAKES_PER_ADDRESS} TLS handshakes from its address are under way"
                    );
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let _handshake = handshake;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let peer = peer_of(&stream);
                        if let Err(refusal) = &peer {
                            tracing::warn!(%remote_addr, %refusal, "client certificate refused");
                        }
                        let info = ConnectionInfo {
                            remote_addr,
                            peer: Arc::new(peer),
                        };
                        let _ = sender.send(Ok(TlsConnection { stream, info })).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%remote_addr, %error, "TLS handshake failed")
                    }
                    Err(_) => tracing::info!(%remote_addr, "TLS handshake timed out"),
                }
            });
        }
    });
    receiver
}

fn peer_of(stream: &TlsStream<TcpStream>) -> Result<PeerCertificate, CertificateRefusal> {
    let (_, connection) = stream.get_ref();
    match connection.peer_certificates() {
        Some([leaf, rest @ ..]) => {
            let mut peer = peer_certificate(leaf)?;
            peer.chain = rest
                .iter()
                .filter_map(|certificate| crate::principal::issued_of(certificate))
                .collect();
            Ok(peer)
        }
        // The verifier requires a certificate; this cannot pass the handshake.
        _ => peer_certificate(&[]),
    }
}
