//! Whether the server refuses this client's certificate. A server refuses a
//! revoked, expired or foreign certificate at the TLS handshake, with an
//! alert that says why; but in TLS 1.3 that alert comes after the client's
//! side of the handshake is done, and tonic then reports only that the
//! connection closed, as for a server that went away. A client that would
//! wait for the server to come back (`rekey run --watch`) asks
//! [`certificate_refused`] first: a TLS connection of its own, no HTTP/2,
//! that reads what the server sends first (its HTTP/2 settings when it
//! accepts the certificate, the alert when it does not).

use crate::identity::Identity;
use rustls::AlertDescription as Alert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long each part of the probe may take.
const PATIENCE: Duration = Duration::from_secs(5);

/// The alert with which `server` (`https://host:port`) refuses `identity`'s
/// certificate, if it does; `None` when it accepts it, or cannot be asked.
pub async fn certificate_refused(server: &str, identity: &Identity) -> Option<Alert> {
    let uri: tonic::codegen::http::Uri = server.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config(identity)?));
    let tcp = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect((host, port)))
        .await
        .ok()?
        .ok()?;
    let mut tls = match tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .ok()?
    {
        Ok(tls) => tls,
        Err(error) => return refusal(&error),
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(PATIENCE, tls.read(&mut first))
        .await
        .ok()?
    {
        Err(error) => refusal(&error),
        Ok(_) => None,
    }
}

/// The TLS settings of the channel's, in rustls's terms.
fn config(identity: &Identity) -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots.add(ca.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_slice_iter(identity.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}

/// The alert of a refused certificate that `error` carries, if any.
fn refusal(error: &std::io::Error) -> Option<Alert> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied
            | Alert::CertificateRequired),
        ) => Some(*alert),
        _ => None,
    }
}
