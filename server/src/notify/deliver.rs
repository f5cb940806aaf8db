//! One webhook call: HTTP/1.1 over a fresh connection (TLS for `https://`,
//! the receiver's certificate verified against the web's root CAs or the
//! webhook's own CA file), a signed POST, and what its answer means:
//! delivered, worth another attempt, or refused for good. No redirects are
//! followed and no connection is kept: notifications are rare.

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Where a webhook's calls go.
pub struct Target {
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    path_and_query: String,
    /// `Some` for `https://`.
    tls: Option<tokio_rustls::TlsConnector>,
    /// `SCHEME://HOST:PORT`: what logs name, since a path may carry a token.
    pub origin: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What an error may show of a URL: `SCHEME://HOST[:PORT]` with any user
/// part and the path left out, and the full text kept for parsing.
struct Shown<'a> {
    full: &'a str,
    origin: String,
}

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.origin)
    }
}

fn shown(url: &str) -> Shown<'_> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let origin = if scheme.is_empty() {
        "(not a URL)".to_owned()
    } else {
        format!("{scheme}://{host}/…")
    };
    Shown { full: url, origin }
}

impl Target {
    /// `url` must be `http://` or `https://` with a host and no user
    /// name or password. `ca_file`: CA certificates (PEM) to trust instead
    /// of the web's root CAs.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        // Errors name the scheme and host only: a path or user part may
        // carry a token.
        let url = &shown(url);
        let uri: hyper::Uri = url
            .full
            .parse()
            .with_context(|| format!("{url:?} is not a URL like https://HOST[:PORT]/PATH"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("{url:?} must start with http:// or https://"),
        };
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} names no host"))?;
        anyhow::ensure!(
            !authority.as_str().contains('@'),
            "{url:?} carries a user name or password; webhooks are signed instead"
        );
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        anyhow::ensure!(!host.is_empty(), "{url:?} names no host");
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(connector(ca_file)?)
        } else {
            anyhow::ensure!(
                ca_file.is_none(),
                "ca_file is set but {url:?} is not https://"
            );
            None
        };
        Ok(Self {
            origin: format!(
                "{}://{}:{port}",
                if https { "https" } else { "http" },
                authority.host()
            ),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_owned(), |path| path.as_str().to_owned()),
            host,
            port,
            tls,
        })
    }
}

fn connector(ca_file: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let roots = match ca_file {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(file)
                .with_context(|| format!("reading the webhook CA file {}", file.display()))?
            {
                roots
                    .add(certificate.with_context(|| {
                        format!("parsing the webhook CA file {}", file.display())
                    })?)
                    .with_context(|| format!("the webhook CA file {}", file.display()))?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "the webhook CA file {} holds no certificate",
                file.display()
            );
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("selecting TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One signed call, as it goes out.
#[derive(Debug)]
pub struct Call<'a> {
    pub kind: &'a str,
    pub delivery: &'a str,
    /// Unix seconds, signed with the body.
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered(u16),
    /// A timeout, a connection or TLS error, 408, 429 or 5xx; `after`: the
    /// receiver's `Retry-After`, in seconds.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Any other answer: trying again would not change it.
    Refused(String),
}

/// Makes the call, all of it within `timeout`.
pub async fn attempt(target: &Target, call: &Call<'_>, timeout: Duration) -> Attempt {
    match tokio::time::timeout(timeout, exchange(target, call)).await {
        Err(_) => Attempt::Retry {
            reason: format!("no answer within {} seconds", timeout.as_secs_f64()),
            after: None,
        },
        Ok(Err(error)) => Attempt::Retry {
            reason: format!("{error:#}"),
            after: None,
        },
        Ok(Ok(response)) => classify(&response),
    }
}

fn classify<B>(response: &hyper::Response<B>) -> Attempt {
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered(status.as_u16());
    }
    let answered = format!("answered {status}");
    if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
        let after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok())
            .map(Duration::from_secs);
        return Attempt::Retry {
            reason: answered,
            after,
        };
    }
    if status.is_redirection() {
        return Attempt::Refused(format!("{answered}; webhooks follow no redirects"));
    }
    Attempt::Refused(answered)
}

async fn exchange(
    target: &Target,
    call: &Call<'_>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let request = hyper::Request::post(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("rekeyd/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close")
        .header("X-Rekey-Event", call.kind)
        .header("X-Rekey-Delivery", call.delivery)
        .header("X-Rekey-Timestamp", call.timestamp.to_string())
        .header("X-Rekey-Signature", call.signature)
        .body(Full::new(Bytes::copy_from_slice(call.body)))
        .context("building the request")?;
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .context("connecting")?;
    match &target.tls {
        None => send(TokioIo::new(stream), request).await,
        Some(connector) => {
            let name = ServerName::try_from(target.host.clone()).context("the host name")?;
            let stream = connector
                .connect(name, stream)
                .await
                .context("TLS handshake")?;
            send(TokioIo::new(stream), request).await
        }
    }
}

async fn send<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    // The connection runs beside the request and ends with this call: only
    // the status of the answer matters.
    let driving = tokio::spawn(connection);
    let response = sender.send_request(request).await.context("sending");
    driving.abort();
    response
}

#[cfg(test)]
mod tests;
