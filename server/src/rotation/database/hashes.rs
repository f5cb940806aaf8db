//! What rekey sends instead of a plaintext password: a PostgreSQL
//! SCRAM-SHA-256 verifier (RFC 5802 / 7677, as PostgreSQL stores it) and a
//! MySQL/MariaDB `mysql_native_password` hash. Built from the `pbkdf2`,
//! `hmac`, `sha2` and `sha1` crates; only the encodings are written here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SCRAM_ITERATIONS: u32 = 4096;

/// `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`, under a fresh
/// random salt. The password itself never leaves rekey.
pub fn scram_sha256_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    crate::crypto::random_bytes(&mut salt);
    scram_with_salt(password, &salt, SCRAM_ITERATIONS)
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC key");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn scram_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, salted.as_mut());
    let client_key = Zeroizing::new(hmac(salted.as_ref(), b"Client Key"));
    let stored_key = Sha256::digest(client_key.as_slice());
    let server_key = hmac(salted.as_ref(), b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// `*` and the upper-case hex of SHA1(SHA1(password)).
pub fn mysql_native_hash(password: &str) -> String {
    let first = Zeroizing::new(Sha1::digest(password.as_bytes()).to_vec());
    let second = Sha1::digest(first.as_slice());
    format!(
        "*{}",
        second
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_hash_matches_the_server() {
        // SELECT PASSWORD('password') on MySQL 5.7 / MariaDB.
        assert_eq!(
            mysql_native_hash("password"),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    #[test]
    fn scram_verifiers_have_postgres_form_and_fresh_salts() {
        let one = scram_sha256_verifier("pencil");
        let two = scram_sha256_verifier("pencil");
        assert_ne!(one, two);
        assert!(one.starts_with("SCRAM-SHA-256$4096:"), "{one}");
        assert!(!one.contains("pencil"));
        // Same salt, same password: the same verifier.
        assert_eq!(
            scram_with_salt("pencil", b"0123456789abcdef", 4096),
            scram_with_salt("pencil", b"0123456789abcdef", 4096)
        );
    }
}
