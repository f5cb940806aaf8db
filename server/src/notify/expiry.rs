//! How long the certificates this server uses stay valid: its own TLS
//! certificate (which it reads again when its file changes, see
//! `server_certificate`) and the CA that client certificates chain to (read
//! at start only, by the handshake's verifier), read from their files and
//! checked at start and every 12 hours. Each one that expires within `certificate_warning_days` is
//! logged as a warning and raised as `certificate_expiring`.

use super::{Notice, Notifications};
use crate::config::Loaded;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const CHECK_INTERVAL: Duration = Duration::from_secs(12 * 60 * 60);

const DAY_SECONDS: i64 = 86_400;

/// A certificate whose expiry is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// `server` or `client_ca`.
    pub certificate: &'static str,
    pub file: PathBuf,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The server certificate (the first of its chain) and every client CA
/// certificate. A file that cannot be read is left out with a warning:
/// serving reports it with its own error.
pub fn read(loaded: &Loaded) -> Vec<Watched> {
    let tls = &loaded.config.tls;
    let mut watched = Vec::new();
    for (certificate, file, all) in [
        ("server", loaded.path(&tls.certificate), false),
        ("client_ca", loaded.path(&tls.client_ca), true),
    ] {
        match certificates_of(&file) {
            Ok(found) => watched.extend(
                found
                    .into_iter()
                    .take(if all { usize::MAX } else { 1 })
                    .map(|(subject, not_after)| Watched {
                        certificate,
                        file: file.clone(),
                        subject,
                        not_after,
                    }),
            ),
            Err(error) => tracing::warn!(
                file = %file.display(),
                %error,
                "cannot read a certificate to watch its expiry"
            ),
        }
    }
    watched
}

fn certificates_of(file: &Path) -> anyhow::Result<Vec<(String, i64)>> {
    let mut found = Vec::new();
    for der in CertificateDer::pem_file_iter(file)? {
        let der = der?;
        let (_, parsed) = X509Certificate::from_der(der.as_ref())
            .map_err(|error| anyhow::anyhow!("not an X.509 certificate: {error}"))?;
        found.push((
            parsed.subject().to_string(),
            parsed.validity().not_after.timestamp(),
        ));
    }
    Ok(found)
}

/// The notices due at `now` (Unix seconds): certificates that expire in
/// less than `warning_days` days, or have expired.
pub fn due(watched: &[Watched], now: i64, warning_days: u32) -> Vec<Notice> {
    watched
        .iter()
        .filter(|watched| watched.not_after - now < i64::from(warning_days) * DAY_SECONDS)
        .map(|watched| Notice::CertificateExpiring {
            certificate: watched.certificate.to_owned(),
            file: watched.file.display().to_string(),
            subject: watched.subject.clone(),
            not_after: rekey_shared::time::format_millis(watched.not_after.saturating_mul(1000)),
            days_left: (watched.not_after - now).div_euclid(DAY_SECONDS),
        })
        .collect()
}

/// Checks now, then every [`CHECK_INTERVAL`], reading the files each time
/// (a certificate renewed meanwhile is the one checked).
pub async fn run(loaded: Loaded, warning_days: u32, notifications: Notifications) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let watched = read(&loaded);
        let now = rekey_shared::time::now_millis().div_euclid(1000);
        for notice in due(&watched, now, warning_days) {
            if let Notice::CertificateExpiring {
                certificate,
                file,
                not_after,
                days_left,
                ..
            } = &notice
            {
                tracing::warn!(
                    certificate,
                    file,
                    not_after,
                    days_left,
                    "a certificate expires within {warning_days} days"
                );
            }
            notifications.send(notice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_within_the_warning_days_and_after_expiry() {
        let now = 1_000_000_000;
        let watched = |days: i64| Watched {
            certificate: "server",
            file: PathBuf::from("server.pem"),
            subject: "CN=rekeyd".to_owned(),
            not_after: now + days * DAY_SECONDS + 60,
        };
        let all = [watched(40), watched(29), watched(-2)];
        let days: Vec<i64> = due(&all, now, 30)
            .into_iter()
            .map(|notice| match notice {
                Notice::CertificateExpiring { days_left, .. } => days_left,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(days, [29, -2]);
        assert!(due(&all, now, 0).len() == 1, "an expired one is always due");
    }
}
