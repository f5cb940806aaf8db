//! The identity file: one PEM file with a client's private key, its
//! certificate and the CA certificate that the server's certificate must
//! chain to. `rekeyd init` and `rekeyd cert issue` write it with mode 0600,
//! and `rekey` refuses one that other users can read.

use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A loaded identity. The key stays in zeroizing memory.
pub struct Identity {
    /// PEM of the client certificate (and any intermediates).
    pub certificate_pem: String,
    /// PEM of the private key.
    pub key_pem: Zeroizing<String>,
    /// PEM of the CA that signed the server's certificate.
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificate_pem", &self.certificate_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "identity file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("identity file {path} is not usable: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

impl Identity {
    /// Builds the text of an identity file, in zeroizing memory (allocated
    /// once, so that no copy of the key is left behind by a reallocation).
    pub fn to_file_text(&self, principal: &str) -> Zeroizing<String> {
        let header = format!(
            "# rekey identity for {principal}: private key, certificate, CA. Keep it mode 0600.\n"
        );
        let parts = [self.key_pem.as_str(), &self.certificate_pem, &self.ca_pem];
        let length = header.len() + parts.iter().map(|part| part.len() + 1).sum::<usize>();
        let mut text = Zeroizing::new(String::with_capacity(length));
        text.push_str(&header);
        for part in parts {
            text.push_str(part);
            if !part.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }

    /// Reads an identity file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let read_error = |source| IdentityError::Read {
            path: path.to_owned(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::TooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_error)?);
        Self::parse(&text).map_err(|reason| IdentityError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Splits the PEM blocks: the private key, then the certificates, the
    /// first being the client's own and the last the CA.
    pub fn parse(text: &str) -> Result<Self, String> {
        let blocks = pem_blocks(text);
        let keys: Vec<&(String, Zeroizing<String>)> = blocks
            .iter()
            .filter(|(label, _)| label.ends_with("PRIVATE KEY"))
            .collect();
        let certificates: Vec<&str> = blocks
            .iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, block)| block.as_str())
            .collect();
        let [key] = keys.as_slice() else {
            return Err(format!(
                "expected one PRIVATE KEY block, found {}",
                keys.len()
            ));
        };
        if certificates.len() < 2 {
            return Err(format!(
                "expected the client certificate and the CA certificate, found {} CERTIFICATE block(s)",
                certificates.len()
            ));
        }
        let (chain, ca) = certificates.split_at(certificates.len() - 1);
        let identity = Self {
            certificate_pem: chain.concat(),
            key_pem: key.1.clone(),
            ca_pem: ca.concat(),
        };
        identity.check_key()?;
        Ok(identity)
    }

    /// Whether the key is one this client can sign with, and the client
    /// certificate's: a key of another certificate (a renewal half
    /// copied), or one encrypted, surfaced as "transport error" at connect.
    fn check_key(&self) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(self.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("the client certificate does not parse: {error}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|error| {
            format!("the private key is not usable (PKCS#8, SEC1 or RSA, unencrypted): {error}")
        })?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map(drop)
            .map_err(|error| format!("the private key is not the client certificate's: {error}"))
    }
}

/// Every `-----BEGIN X----- ... -----END X-----` block with its label, the
/// block's text kept as it is (text between blocks is ignored, as PEM
/// allows), in zeroizing memory: one may be a private key.
pub fn pem_blocks(text: &str) -> Vec<(String, Zeroizing<String>)> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let block_end = start + end + end_marker.len();
        let mut block = Zeroizing::new(String::with_capacity(block_end - start + 1));
        block.push_str(&rest[start..block_end]);
        block.push('\n');
        blocks.push((label.to_owned(), block));
        rest = &rest[block_end..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key, a certificate of it, and another certificate as the CA.
    fn material() -> (String, String, String) {
        let certificate = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let certificate = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (key.serialize_pem(), certificate.pem())
        };
        let (key, leaf) = certificate("client");
        let (_, ca) = certificate("ca");
        (key, leaf, ca)
    }

    #[test]
    fn splits_key_leaf_and_ca() {
        let (key, leaf, ca) = material();
        let file = format!("# comment\n{key}{leaf}{ca}");
        let identity = Identity::parse(&file).unwrap();
        assert_eq!(identity.key_pem.as_str(), key);
        assert_eq!(identity.certificate_pem, leaf);
        assert_eq!(identity.ca_pem, ca);
        let again = Identity::parse(&identity.to_file_text("x")).unwrap();
        assert_eq!(again.certificate_pem, identity.certificate_pem);
        let body = key.lines().nth(1).unwrap();
        assert!(!format!("{identity:?}").contains(body));
    }

    #[test]
    fn refuses_incomplete_files() {
        let error = Identity::parse("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")
            .err()
            .unwrap();
        assert!(error.contains("PRIVATE KEY"), "{error}");
    }

    /// A key that is not the client certificate's (half of a renewal
    /// copied) is named as such when the file is read: it surfaced as a
    /// bare "transport error" when connecting.
    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (_, leaf, ca) = material();
        let (other_key, _, _) = material();
        let error = Identity::parse(&format!("{other_key}{leaf}{ca}"))
            .err()
            .unwrap();
        assert!(error.contains("not the client certificate's"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_files_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let (key, leaf, ca) = material();
        let dir = std::env::temp_dir().join(format!("rekey-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("id.pem");
        std::fs::write(&path, format!("{key}{leaf}{ca}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Identity::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Identity::load(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
