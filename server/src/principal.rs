//! The principal rule: who a client certificate names.
//!
//! The principal is the certificate's URI SAN when it has exactly one and it
//! is a `spiffe://` URI; otherwise its subject common name, which must match
//! `[A-Za-z0-9._@-]{1,128}` so that it can never look like a URI. A
//! certificate with several URI SANs, an unusable or reserved name, or
//! without the client-auth extended key usage is refused. This module only
//! reads certificates; chain and expiry checks happen in the TLS handshake.

use std::fmt;
use x509_parser::prelude::*;

/// The authenticated identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

/// Names the server keeps for its own actions.
pub const RESERVED_PRINCIPALS: &[&str] = &["system", "rekeyd"];

impl Principal {
    /// A principal the server acts as (`system`), never one a certificate
    /// may name.
    pub fn system() -> Self {
        Self("system".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a certificate could name `name`: a `spiffe://` URI, or a valid
/// common name that is not reserved.
pub fn could_be_named(name: &str) -> bool {
    is_valid_spiffe_name(name)
        || (is_valid_common_name(name) && !RESERVED_PRINCIPALS.contains(&name))
}

/// A certificate serial as rekey keeps it: lower-case hex of whole bytes
/// without colons or leading zero bytes (DER's sign padding), so that the
/// serial `openssl x509 -serial` prints (`8F01…`), the one `rekeyd cert`
/// prints, the one a certificate carries (`00:8f:01:…`) and one typed
/// without its leading zero (`abc` for `0abc`) are the same text.
pub fn serial_hex(text: &str) -> String {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let digits = hex.trim_start_matches('0');
    match digits.len() {
        0 if hex.is_empty() => String::new(),
        0 => "00".to_owned(),
        odd if odd % 2 == 1 => format!("0{digits}"),
        _ => digits.to_owned(),
    }
}

/// The serial of a DER certificate, as [`serial_hex`] writes it.
pub fn serial_of(der: &[u8]) -> Option<String> {
    issued_of(der).map(|(_, serial)| serial)
}

/// A DER certificate's issuer (hex of its DER name, as revocations keep
/// it) and serial (as [`serial_hex`] writes it): what names it among all
/// certificates, where a serial alone names it among its issuer's only.
pub fn issued_of(der: &[u8]) -> Option<(String, String)> {
    X509Certificate::from_der(der).ok().map(|(_, certificate)| {
        (
            crate::audit::hex(certificate.issuer().as_raw()),
            serial_hex(&certificate.raw_serial_as_string()),
        )
    })
}

/// What the server keeps of a client certificate once the handshake is done.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub principal: Principal,
    /// Lower-case hex of the serial number, as `rekeyd cert` prints it.
    pub serial: String,
    /// When the certificate expires (Unix seconds): the handshake checks
    /// it once, requests on the connection check it again.
    pub not_after: i64,
    /// The issuer's DER name: with the serial, what a CRL revokes.
    pub issuer: Vec<u8>,
    /// The issuers and serials of the other certificates the client sent
    /// (its CAs'; see [`issued_of`]): `rekeyd cert revoke --serial --ca` of
    /// one refuses the client too.
    pub chain: Vec<(String, String)>,
}

impl PeerCertificate {
    /// Whether the certificate has expired by `now` (Unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        now > self.not_after
    }
}

/// Why a certificate that passed the handshake still names no principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client certificate refused: {0}")]
pub struct CertificateRefusal(String);

fn refuse(reason: impl Into<String>) -> CertificateRefusal {
    CertificateRefusal(reason.into())
}

/// A `spiffe://` URI as a principal: printable ASCII without spaces, at
/// most 512 characters (no control character can reach a log line or a
/// terminal as part of a name).
pub fn is_valid_spiffe_name(name: &str) -> bool {
    name.starts_with("spiffe://") && name.len() <= 512 && name.bytes().all(|b| b.is_ascii_graphic())
}

fn is_valid_common_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Applies the principal rule to a DER certificate.
pub fn peer_certificate(der: &[u8]) -> Result<PeerCertificate, CertificateRefusal> {
    let (_, certificate) = X509Certificate::from_der(der)
        .map_err(|_| refuse("it is not a valid X.509 certificate"))?;

    let client_auth = certificate
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return Err(refuse(
            "it lacks the client-auth extended key usage (TLS Web Client Authentication)",
        ));
    }

    // A SAN extension that does not parse is refused, not read as none: the
    // common name would stand in for the URI it may hold.
    let uris: Vec<&str> = certificate
        .subject_alternative_name()
        .map_err(|error| {
            refuse(format!(
                "its subject alternative names do not parse: {error}"
            ))
        })?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if uris.len() > 1 {
        return Err(refuse(format!(
            "it has {} URI subject alternative names; at most one is allowed",
            uris.len()
        )));
    }

    let name = match uris.first() {
        Some(uri) if uri.starts_with("spiffe://") => {
            if !is_valid_spiffe_name(uri) {
                return Err(refuse(format!(
                    "its URI {uri:?} must be at most 512 printable ASCII characters without spaces"
                )));
            }
            (*uri).to_owned()
        }
        _ => {
            let mut common_names = certificate.subject().iter_common_name();
            let common_name = common_names
                .next()
                .and_then(|cn| cn.as_str().ok())
                .ok_or_else(|| refuse("it has neither a spiffe:// URI nor a common name"))?;
            // Which of several a CA means differs between implementations.
            if common_names.next().is_some() {
                return Err(refuse(
                    "it has more than one common name and no spiffe:// URI",
                ));
            }
            if !is_valid_common_name(common_name) {
                return Err(refuse(format!(
                    "its common name {common_name:?} must be 1-128 characters of A-Z a-z 0-9 . _ @ -"
                )));
            }
            common_name.to_owned()
        }
    };
    if RESERVED_PRINCIPALS.contains(&name.as_str()) {
        return Err(refuse(format!(
            "the name {name:?} is reserved for the server"
        )));
    }
    let serial = serial_hex(&certificate.raw_serial_as_string());
    Ok(PeerCertificate {
        principal: Principal(name),
        issuer: certificate.issuer().as_raw().to_vec(),
        serial,
        not_after: certificate.validity().not_after.timestamp(),
        chain: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_read_the_same_however_written() {
        for spelling in ["8F0102030405", "8f:01:02:03:04:05", "00:8f:01:02:03:04:05"] {
            assert_eq!(serial_hex(spelling), "8f0102030405", "{spelling}");
        }
        assert_eq!(serial_hex("00"), "00");
        assert_eq!(serial_hex("0"), "00");
        assert_eq!(serial_hex(""), "");
        for spelling in ["0a:bc", "abc", "ABC", "000abc", "00:0a:bc"] {
            assert_eq!(serial_hex(spelling), "0abc", "{spelling}");
        }
    }
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};

    fn certificate(common_name: &str, uris: &[&str], client_auth: bool) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().unwrap()))
            .collect();
        if client_auth {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// Common name, URI SANs, client-auth usage, and the principal or a
    /// fragment of the refusal.
    type Case<'a> = (&'a str, &'a [&'a str], bool, Result<&'a str, &'a str>);

    #[test]
    fn the_principal_rule() {
        let cases: &[Case] = &[
            ("alice", &[], true, Ok("alice")),
            ("alice", &["spiffe://corp/ci"], true, Ok("spiffe://corp/ci")),
            ("alice", &["https://corp/ci"], true, Ok("alice")),
            ("alice", &["spiffe://a", "spiffe://b"], true, Err("2 URI")),
            ("has space", &[], true, Err("common name")),
            ("spiffe://x", &[], true, Err("common name")),
            ("system", &[], true, Err("reserved")),
            ("rekeyd", &[], true, Err("reserved")),
            ("alice", &[], false, Err("client-auth")),
            (
                "alice",
                &["spiffe://corp/\u{1b}[2Jci"],
                true,
                Err("printable ASCII"),
            ),
            (
                "alice",
                &["spiffe://corp/a b"],
                true,
                Err("printable ASCII"),
            ),
        ];
        for (cn, uris, client_auth, expected) in cases {
            let result = peer_certificate(&certificate(cn, uris, *client_auth));
            match (result, expected) {
                (Ok(peer), Ok(name)) => assert_eq!(peer.principal.as_str(), *name),
                (Err(refusal), Err(fragment)) => {
                    assert!(refusal.to_string().contains(fragment), "{cn}: {refusal}")
                }
                (got, want) => panic!("{cn} {uris:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
