//! The mutual-TLS channel to `rekeyd`: the client presents the certificate of
//! its identity file and trusts only the CA named there. A call the
//! connection dropped is told apart here and named UNAVAILABLE
//! ([`dropped_call_is_unavailable`]).

use crate::identity::Identity;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("server address {0:?} is not a URL like https://host:port")]
    BadUrl(String),
    #[error("cannot connect to {server}: {reason}")]
    Unreachable { server: String, reason: String },
}

/// The TLS settings of a client that presents `identity`.
pub fn tls_config(identity: &Identity) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &identity.certificate_pem,
            identity.key_pem.as_bytes(),
        ))
}

/// How often an idle connection is pinged, and how long a ping may go
/// unanswered.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// An endpoint for `server` (`https://host:port`) with the given TLS
/// settings. Only `https`: tonic applies TLS to no other scheme, so an
/// `http://` address would send every request, values included, in clear
/// to whoever answers.
pub fn endpoint(server: &str, tls: ClientTlsConfig) -> Result<Endpoint, ConnectError> {
    if !server
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Err(ConnectError::BadUrl(server.to_owned()));
    }
    Endpoint::from_shared(server.to_owned())
        .map_err(|_| ConnectError::BadUrl(server.to_owned()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // A connection that stops answering (a partition, a host gone
        // without a reset) is found dead within about 20 seconds, even
        // while idle: a Watch stream on it ends, and a caching client stops
        // answering from memory.
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .tls_config(tls)
        .map_err(|error| ConnectError::Unreachable {
            server: server.to_owned(),
            reason: error.to_string(),
        })
}

/// Connects to `server` as `identity`.
pub async fn connect(server: &str, identity: &Identity) -> Result<Channel, ConnectError> {
    endpoint(server, tls_config(identity))?
        .connect()
        .await
        .map_err(|error| ConnectError::Unreachable {
            server: server.to_owned(),
            reason: describe_transport_error(&error),
        })
}

/// The innermost cause of a transport error: tonic's own text ("transport
/// error") says nothing a person can act on.
pub fn describe_transport_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// `status` as a caller should act on it. tonic reports a call that the
/// connection dropped (the server went away before it answered) as
/// CANCELLED when hyper had the request queued ("connection closed"),
/// which reads as if the caller had given up, or as UNKNOWN when TLS saw
/// the connection end ("peer closed connection without sending TLS
/// close_notify"); gRPC names both UNAVAILABLE, the code to retry on.
/// Every other status, and any status the server sent, passes unchanged.
pub fn dropped_call_is_unavailable(status: tonic::Status) -> tonic::Status {
    let dropped = matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown)
        && std::iter::successors(std::error::Error::source(&status), |cause| cause.source())
            .any(|cause| cause.is::<tonic::transport::Error>());
    if !dropped {
        return status;
    }
    tonic::Status::unavailable(format!(
        "the connection to the server closed before it answered: {}",
        describe_transport_error(&status)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_addresses_are_taken() {
        for server in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "ftp://host",
            "HTTP://x:1",
            "",
        ] {
            assert!(
                matches!(
                    endpoint(server, ClientTlsConfig::new()),
                    Err(ConnectError::BadUrl(_))
                ),
                "{server}"
            );
        }
        assert!(endpoint("https://127.0.0.1:8443", ClientTlsConfig::new()).is_ok());
        assert!(endpoint("HTTPS://rekey.internal:8443", ClientTlsConfig::new()).is_ok());
    }

    #[test]
    fn statuses_from_the_server_are_left_alone() {
        let status = dropped_call_is_unavailable(tonic::Status::cancelled("run cancelled"));
        assert_eq!(status.code(), tonic::Code::Cancelled);
        assert_eq!(status.message(), "run cancelled");
        let status = dropped_call_is_unavailable(tonic::Status::unknown("a rotator said so"));
        assert_eq!(status.code(), tonic::Code::Unknown);
        let status = dropped_call_is_unavailable(tonic::Status::not_found("x"));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
