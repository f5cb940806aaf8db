//! Whether the server refuses this client's certificate. A server refuses a
//! revoked, expired or foreign certificate at the TLS handshake, with an
//! alert that says why; but in TLS 1.3 that alert comes after the client's
//! side of the handshake is done, and tonic then reports only that the
//! connection closed, as for a server that went away. A client that would
//! wait for the server to come back (`rekey run --watch`), or tell an
//! operator it is away (the CLI on an UNAVAILABLE), asks
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
/// Only an alert the server sends once the handshake is done counts: one
/// before it is not authenticated.
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
        // Not yet a server this client has authenticated (its Finished
        // not checked): whoever is on the path could send that alert, and
        // have a production command stopped. A real refusal comes after.
        Err(_) => return None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An alert before the handshake is done proves nothing: anyone on the
    /// path can send one (here a listener that answers the ClientHello
    /// with a plaintext certificate_revoked alert), and it stopped a
    /// production command as if the server had refused it.
    #[tokio::test]
    async fn an_alert_before_the_handshake_is_done_is_not_a_refusal() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let forger = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello).await;
            // alert record, TLS 1.2 framing, fatal certificate_revoked
            stream
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x2c])
                .await
                .unwrap();
            let _ = stream.shutdown().await;
        });
        let identity = test_identity();
        let refused = certificate_refused(&format!("https://{address}"), &identity).await;
        assert_eq!(refused, None);
        forger.await.unwrap();
    }

    /// A well-formed identity (its CA and certificate self-made).
    fn test_identity() -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Identity::parse(&format!(
            "{}{}{}",
            key.serialize_pem(),
            certificate.pem(),
            certificate.pem()
        ))
        .unwrap()
    }
}
