//! Calls against real listeners on loopback: a plain HTTP one answering a
//! scripted status, and an HTTPS one with a certificate from a CA made
//! here, trusted through `ca_file` and refused without it.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::pki::CertificateAuthority;
use rustls_pki_types::PrivateKeyDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const CALL: Call<'static> = Call {
    kind: "run_failed",
    delivery: "d-1",
    timestamp: 1_700_000_000,
    signature: "sha256=00",
    body: b"{}",
};

/// Reads one request (head and a `content-length` body) and answers it.
async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin, response: &str) -> String {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await.unwrap();
        request.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |value| value.trim().parse().unwrap());
            if request.len() >= end + 4 + length || read == 0 {
                break;
            }
        }
        if read == 0 {
            break;
        }
    }
    stream.write_all(response.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    String::from_utf8_lossy(&request).into_owned()
}

async fn plain_once(response: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        answer(stream, response).await
    });
    (port, served)
}

#[tokio::test]
async fn statuses_decide_between_delivered_retry_and_refused() {
    let cases = [
        ("HTTP/1.1 204 No Content\r\n\r\n", Attempt::Delivered(204)),
        (
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n",
            Attempt::Retry {
                reason: "answered 503 Service Unavailable".to_owned(),
                after: Some(Duration::from_secs(7)),
            },
        ),
        (
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            Attempt::Refused("answered 404 Not Found".to_owned()),
        ),
        (
            "HTTP/1.1 301 Moved Permanently\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n",
            Attempt::Refused(
                "answered 301 Moved Permanently; webhooks follow no redirects".to_owned(),
            ),
        ),
    ];
    for (response, expected) in cases {
        let (port, served) = plain_once(response).await;
        let target =
            Target::parse(&format!("http://127.0.0.1:{port}/hooks/rekey?t=1"), None).unwrap();
        assert_eq!(target.origin, format!("http://127.0.0.1:{port}"));
        let outcome = attempt(&target, &CALL, Duration::from_secs(10)).await;
        assert_eq!(outcome, expected);
        let request = served.await.unwrap();
        assert!(
            request.starts_with("POST /hooks/rekey?t=1 HTTP/1.1\r\n"),
            "{request}"
        );
        for header in [
            "content-type: application/json",
            "content-length: 2",
            "x-rekey-event: run_failed",
            "x-rekey-delivery: d-1",
            "x-rekey-timestamp: 1700000000",
            "x-rekey-signature: sha256=00",
        ] {
            assert!(
                request.to_lowercase().contains(header),
                "{header}: {request}"
            );
        }
        assert!(request.ends_with("\r\n\r\n{}"), "{request}");
    }
}

#[tokio::test]
async fn nobody_listening_and_silence_are_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = Target::parse(&format!("http://127.0.0.1:{port}/"), None).unwrap();
    // Accepted but never answered: the time limit ends the attempt.
    let outcome = attempt(&target, &CALL, Duration::from_millis(300)).await;
    assert!(
        matches!(&outcome, Attempt::Retry { reason, .. } if reason.contains("no answer")),
        "{outcome:?}"
    );
    drop(listener);
    let outcome = attempt(&target, &CALL, Duration::from_secs(10)).await;
    assert!(
        matches!(&outcome, Attempt::Retry { reason, .. } if reason.contains("connecting")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn https_verifies_the_receiver_against_the_ca_file_or_the_web_roots() {
    let (ca, _) = CertificateAuthority::generate("webhook test CA").unwrap();
    let issued = ca.issue_server(&["127.0.0.1".to_owned()], 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("receiver-ca.pem");
    std::fs::write(&ca_file, &ca.certificate_pem).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = tokio::spawn(async move {
        let mut requests = Vec::new();
        // The first connection is refused by the client (unknown issuer);
        // the second one is trusted.
        for _ in 0..2 {
            let (stream, _) = listener.accept().await.unwrap();
            if let Ok(stream) = acceptor.accept(stream).await {
                requests.push(answer(stream, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await);
            }
        }
        requests
    });
    let url = format!("https://127.0.0.1:{port}/tls");
    let untrusted = Target::parse(&url, None).unwrap();
    let outcome = attempt(&untrusted, &CALL, Duration::from_secs(10)).await;
    assert!(
        matches!(&outcome, Attempt::Retry { reason, .. } if reason.contains("UnknownIssuer")),
        "{outcome:?}"
    );
    let trusted = Target::parse(&url, Some(&ca_file)).unwrap();
    assert_eq!(
        attempt(&trusted, &CALL, Duration::from_secs(10)).await,
        Attempt::Delivered(200)
    );
    let requests = served.await.unwrap();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with("POST /tls HTTP/1.1"),
        "{requests:?}"
    );
}

#[test]
fn urls_other_than_http_and_https_are_refused_with_the_reason() {
    for (url, expected) in [
        (
            "ftp://hooks.example.com/x",
            "must start with http:// or https://",
        ),
        ("hooks.example.com/x", "is not a URL like https://HOST"),
        (
            "https://user:token@hooks.example.com/",
            "user name or password",
        ),
        ("http://exa mple.com/", "is not a URL"),
    ] {
        let error = format!("{:#}", Target::parse(url, None).unwrap_err());
        assert!(error.contains(expected), "{url}: {error}");
    }
    let error = Target::parse("http://hooks.example.com/", Some(Path::new("ca.pem")))
        .unwrap_err()
        .to_string();
    assert!(error.contains("not https://"), "{error}");
    let target = Target::parse("https://[::1]/x", None).unwrap();
    assert_eq!(target.origin, "https://[::1]:443");
    assert_eq!((target.host.as_str(), target.port), ("::1", 443));
}
