//! CRL files of the client CAs (`tls.crl_files`): honoured at start and
//! when they change, at the handshake and on connections opened before;
//! an expired, stale or broken file refused without holding up the others;
//! the newest CRL of an issuer and scope in force.

use super::tls::{client_params, identity, installation_ca, read_as, until_refused, wait_for_log};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rekey_shared::identity::Identity;
use rekey_shared::proto;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::Installation;
use time::{Duration, OffsetDateTime};

/// CRL number `number` of `issuer`, in PEM.
fn crl_pem(
    issuer: &Issuer<'_, KeyPair>,
    number: u8,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    revoked_certs: Vec<rcgen::RevokedCertParams>,
) -> String {
    rcgen::CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&[number]),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A client certificate of `issuer` for alice with `serial`.
fn alice_with_serial(issuer: &Issuer<'_, KeyPair>, ca_pem: &str, serial: &[u8]) -> Identity {
    let mut params = client_params("alice");
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    identity(params, issuer, ca_pem)
}

/// A CRL entry revoking `serial` a minute before `now`.
fn revoked_serial(serial: &[u8], now: OffsetDateTime) -> Vec<rcgen::RevokedCertParams> {
    vec![rcgen::RevokedCertParams {
        serial_number: rcgen::SerialNumber::from_slice(serial),
        revocation_time: now - Duration::minutes(1),
        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
        invalidity_date: None,
    }]
}

/// CRL number `number` of the installation's CA, next updated at
/// `next_update`, written as `crl.pem` and named in `tls.crl_files`.
fn use_crl(
    installation: &Installation,
    issuer: &Issuer<'_, KeyPair>,
    number: u8,
    next_update: OffsetDateTime,
    revoked_certs: Vec<rcgen::RevokedCertParams>,
) {
    let crl = crl_pem(
        issuer,
        number,
        next_update - Duration::days(7),
        next_update,
        revoked_certs,
    );
    use_crl_file(installation, &crl);
}

/// `text` written as `crl.pem` and named in `tls.crl_files`.
fn use_crl_file(installation: &Installation, text: &str) {
    std::fs::write(installation.dir().join("crl.pem"), text).unwrap();
    installation.edit_config(|table| {
        let tls = table
            .get_mut("tls")
            .and_then(|tls| tls.as_table_mut())
            .unwrap();
        tls.insert(
            "crl_files".into(),
            toml::Value::Array(vec!["crl.pem".into()]),
        );
    });
}

/// A self-signed CA named `name` (a bring-your-own CA's): its issuer and
/// its certificate in PEM.
fn own_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (Issuer::new(params, key), pem)
}

/// Client CAs: the installation's (`ca_pem`) and `other_pem`.
fn trust_as_well(installation: &Installation, ca_pem: &str, other_pem: &str) {
    std::fs::write(
        installation.dir().join("client-cas.pem"),
        format!("{ca_pem}{other_pem}"),
    )
    .unwrap();
    installation.edit_config(|table| {
        let tls = table
            .get_mut("tls")
            .and_then(|tls| tls.as_table_mut())
            .unwrap();
        tls.insert("client_ca".into(), "client-cas.pem".into());
    });
}

/// A CRL past its next update is not trusted: the server refuses to start
/// on it, saying which file and since when.
#[test]
fn an_expired_crl_is_refused_at_start() {
    let installation = Installation::new();
    let (_, issuer) = installation_ca(&installation);
    let now = OffsetDateTime::now_utc();
    use_crl(
        &installation,
        &issuer,
        1,
        now - Duration::days(1),
        Vec::new(),
    );
    let stderr = installation.refused_at_start();
    assert!(
        stderr.contains("crl.pem") && stderr.contains("expired"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_crl_of_the_ca_is_honoured() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0a, 0xbc, 0xde]);
    let kept = alice_with_serial(&issuer, &ca_pem, &[0x0b, 0x01, 0x02]);
    let now = OffsetDateTime::now_utc();
    let revocations = revoked_serial(&[0x0a, 0xbc, 0xde], now);
    use_crl(
        &installation,
        &issuer,
        1,
        now + Duration::days(7),
        revocations,
    );
    let server = installation.serve();
    read_as(&server, &kept).await.unwrap();
    read_as(&server, &revoked).await.unwrap_err();
}

/// A CRL file that changes while the server runs is read again: a serial
/// it now revokes is refused at its next handshake, without a restart; a
/// changed file that does not parse leaves the CRLs in force as they were,
/// and says so in the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_crl_is_honoured_without_a_restart() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0c, 0x01]);
    let kept = alice_with_serial(&issuer, &ca_pem, &[0x0d, 0x02]);
    let now = OffsetDateTime::now_utc();
    use_crl(
        &installation,
        &issuer,
        1,
        now + Duration::days(7),
        Vec::new(),
    );
    let server = installation.serve();
    read_as(&server, &revoked).await.unwrap();

    let revocations = revoked_serial(&[0x0c, 0x01], now);
    use_crl(
        &installation,
        &issuer,
        2,
        now + Duration::days(7),
        revocations,
    );
    until_refused(
        &server,
        &revoked,
        "the CRL written while the server runs was not honoured",
    )
    .await;
    read_as(&server, &kept).await.unwrap();

    std::fs::write(installation.dir().join("crl.pem"), "not a CRL").unwrap();
    wait_for_log(&server, "a changed CRL file cannot be used").await;
    read_as(&server, &revoked).await.unwrap_err();
    read_as(&server, &kept).await.unwrap();

    // A stale copy (an older CRL, without the revocation) written over the
    // file is refused: the revocation stays.
    std::fs::write(
        installation.dir().join("crl.pem"),
        crl_pem(
            &issuer,
            1,
            now - Duration::days(30),
            now + Duration::days(7),
            Vec::new(),
        ),
    )
    .unwrap();
    wait_for_log(&server, "older than the one of its issuer in force").await;
    read_as(&server, &revoked).await.unwrap_err();
}

/// A certificate a fresh CRL revokes loses the connection it opened
/// before, at its next request, not only new handshakes.
#[tokio::test(flavor = "multi_thread")]
async fn a_crl_revocation_reaches_connections_opened_before() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0f, 0x04]);
    let now = OffsetDateTime::now_utc();
    use_crl(
        &installation,
        &issuer,
        1,
        now + Duration::days(7),
        Vec::new(),
    );
    let server = installation.serve();
    let tls = rekey_shared::channel::tls_config(&revoked);
    let endpoint = rekey_shared::channel::endpoint(&server.url, tls).unwrap();
    let mut client = SecretsClient::new(endpoint.connect().await.unwrap());
    let list = || proto::ListSecretsRequest::default();
    client.list_secrets(list()).await.unwrap();

    let revocation = revoked_serial(&[0x0f, 0x04], now);
    use_crl(
        &installation,
        &issuer,
        2,
        now + Duration::days(7),
        revocation,
    );
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    let status = loop {
        match client.list_secrets(list()).await {
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "the open connection outlived its certificate's revocation:\n{}",
                server.log_text()
            ),
            Err(status) => break status,
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("0f04 was revoked by its CA's CRL"),
        "{status:?}"
    );
}

/// Of several CRLs of one issuer in the files (each day's appended to one
/// file, say), the newest is in force, whichever comes first.
#[tokio::test]
async fn the_newest_crl_of_an_issuer_is_the_one_in_force() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0f, 0x05]);
    let kept = alice_with_serial(&issuer, &ca_pem, &[0x0f, 0x06]);
    let now = OffsetDateTime::now_utc();
    use_crl(
        &installation,
        &issuer,
        1,
        now + Duration::days(7),
        Vec::new(),
    );
    let path = installation.dir().join("crl.pem");
    let older = std::fs::read_to_string(&path).unwrap();
    let newer = crl_pem(
        &issuer,
        2,
        now - Duration::days(1),
        now + Duration::days(7),
        revoked_serial(&[0x0f, 0x05], now),
    );
    std::fs::write(&path, older + &newer).unwrap();
    let server = installation.serve();
    read_as(&server, &kept).await.unwrap();
    read_as(&server, &revoked).await.unwrap_err();
}

/// A CA's partitioned CRLs (one for its end-entity certificates, one for
/// its CAs, each with its issuing distribution point) are each in force:
/// the newer of the two does not stand in for the other.
#[tokio::test]
async fn partitioned_crls_of_one_issuer_are_each_in_force() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let user_crl = "http://crl.example/users.crl";
    let with_distribution_point = |serial: &[u8]| {
        let mut params = client_params("alice");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![user_crl.to_owned()],
        }];
        identity(params, &issuer, &ca_pem)
    };
    let revoked = with_distribution_point(&[0x0f, 0x07]);
    let kept = with_distribution_point(&[0x0f, 0x08]);
    let now = OffsetDateTime::now_utc();
    let partition = |number: u8, uri: &str, scope, revoked_certs| {
        rcgen::CertificateRevocationListParams {
            this_update: now - Duration::days(1),
            next_update: now + Duration::days(7),
            crl_number: rcgen::SerialNumber::from_slice(&[number]),
            issuing_distribution_point: Some(rcgen::CrlIssuingDistributionPoint {
                distribution_point: rcgen::CrlDistributionPoint {
                    uris: vec![uri.to_owned()],
                },
                scope: Some(scope),
            }),
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .pem()
        .unwrap()
    };
    let users = partition(
        2,
        user_crl,
        rcgen::CrlScope::UserCertsOnly,
        revoked_serial(&[0x0f, 0x07], now),
    );
    let cas = partition(
        3,
        "http://crl.example/cas.crl",
        rcgen::CrlScope::CaCertsOnly,
        Vec::new(),
    );
    use_crl(
        &installation,
        &issuer,
        1,
        now + Duration::days(7),
        Vec::new(),
    );
    std::fs::write(installation.dir().join("crl.pem"), users + &cas).unwrap();
    let server = installation.serve();
    read_as(&server, &kept).await.unwrap();
    read_as(&server, &revoked).await.unwrap_err();
}

/// One CRL file that cannot be used holds up no other: with another CA's
/// file broken, a fresh CRL of the installation's CA still revokes.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_crl_file_holds_up_no_other() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0e, 0x03]);
    let (other, other_pem) = own_ca("another CA");
    trust_as_well(&installation, &ca_pem, &other_pem);
    let now = OffsetDateTime::now_utc();
    let (ours, theirs) = (
        installation.dir().join("ours.pem"),
        installation.dir().join("theirs.pem"),
    );
    std::fs::write(
        &ours,
        crl_pem(
            &issuer,
            1,
            now - Duration::days(1),
            now + Duration::days(7),
            Vec::new(),
        ),
    )
    .unwrap();
    std::fs::write(
        &theirs,
        crl_pem(
            &other,
            1,
            now - Duration::days(1),
            now + Duration::days(7),
            Vec::new(),
        ),
    )
    .unwrap();
    installation.edit_config(|table| {
        let tls = table
            .get_mut("tls")
            .and_then(|tls| tls.as_table_mut())
            .unwrap();
        tls.insert(
            "crl_files".into(),
            toml::Value::Array(vec!["ours.pem".into(), "theirs.pem".into()]),
        );
    });
    let server = installation.serve();
    read_as(&server, &revoked).await.unwrap();

    std::fs::write(&theirs, "cut sho").unwrap();
    let revocation = revoked_serial(&[0x0e, 0x03], now);
    std::fs::write(
        &ours,
        crl_pem(&issuer, 2, now, now + Duration::days(7), revocation),
    )
    .unwrap();
    until_refused(
        &server,
        &revoked,
        "the fresh CRL was held up by the broken file",
    )
    .await;
    wait_for_log(&server, "theirs.pem").await;
    assert!(
        server.log_text().contains("theirs.pem"),
        "{}",
        server.log_text()
    );
}

/// A CRL its issuer's key did not sign (written over the file by whoever
/// can write there, say) is refused, at start and later: it neither takes
/// back a revocation nor blocks the CA's genuine CRLs that follow it.
#[tokio::test(flavor = "multi_thread")]
async fn a_crl_its_issuer_did_not_sign_is_refused() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let forger = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::generate().unwrap()).unwrap();
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0e, 0x01]);
    let later = alice_with_serial(&issuer, &ca_pem, &[0x0e, 0x02]);
    let now = OffsetDateTime::now_utc();
    let next = now + Duration::days(7);
    use_crl(&installation, &forger, 1, next, Vec::new());
    let stderr = installation.refused_at_start();
    assert!(
        stderr.contains("crl.pem") && stderr.contains("that its key did not sign"),
        "{stderr}"
    );
    // A CRL of a CA not among the client CAs (an intermediate's) cannot be
    // checked here: it is taken, saying so, and checked at the handshake.
    let (stranger, _) = own_ca("stranger CA");
    use_crl(&installation, &stranger, 1, next, Vec::new());
    let server = installation.serve();
    wait_for_log(&server, "a CRL of a CA that is not in tls.client_ca").await;
    drop(server);

    use_crl(
        &installation,
        &issuer,
        1,
        next,
        revoked_serial(&[0x0e, 0x01], now),
    );
    let server = installation.serve();
    read_as(&server, &revoked).await.unwrap_err();
    read_as(&server, &later).await.unwrap();
    // A forged CRL numbered past every genuine one, revoking nothing.
    use_crl(&installation, &forger, 200, next, Vec::new());
    wait_for_log(&server, "that its key did not sign").await;
    read_as(&server, &revoked).await.unwrap_err();
    // The CA's next CRL is taken all the same.
    let mut both = revoked_serial(&[0x0e, 0x01], now);
    both.extend(revoked_serial(&[0x0e, 0x02], now));
    use_crl(&installation, &issuer, 2, next, both);
    until_refused(
        &server,
        &later,
        "the CA's CRL after a forged one was not taken",
    )
    .await;
    read_as(&server, &revoked).await.unwrap_err();
}

/// With two client CAs and the CRL of one, the other's clients (the
/// installation's own `admin.pem`) are let in: a CA without a CRL in the
/// files is not checked by CRL.
#[tokio::test(flavor = "multi_thread")]
async fn a_crl_of_one_client_ca_leaves_the_others_clients_alone() {
    let installation = Installation::new();
    let (ca_pem, _) = installation_ca(&installation);
    let (corp, corp_pem) = own_ca("Corp Client CA");
    let revoked = alice_with_serial(&corp, &ca_pem, &[0x0e, 0x03]);
    let kept = alice_with_serial(&corp, &ca_pem, &[0x0e, 0x04]);
    trust_as_well(&installation, &ca_pem, &corp_pem);
    let now = OffsetDateTime::now_utc();
    use_crl(
        &installation,
        &corp,
        1,
        now + Duration::days(7),
        revoked_serial(&[0x0e, 0x03], now),
    );
    let server = installation.serve();
    read_as(&server, &kept).await.unwrap();
    read_as(&server, &revoked).await.unwrap_err();
    let admin = Identity::load(&installation.admin()).unwrap();
    read_as(&server, &admin).await.unwrap();
}

/// The CRL of an intermediate CA is checked as it is read when its file
/// holds the intermediate's certificate too (one a client CA signed):
/// genuine, it is taken without a warning and its revocations refuse the
/// intermediate's clients; forged, the file is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_intermediates_crl_is_checked_against_its_certificate_in_the_file() {
    let installation = Installation::new();
    let (ca_pem, root) = installation_ca(&installation);
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "team intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let intermediate_pem = params.signed_by(&key, &root).unwrap().pem();
    let intermediate = Issuer::new(params, key);
    let leaf = |serial: &[u8]| {
        let mut identity = alice_with_serial(&intermediate, &ca_pem, serial);
        identity.certificate_pem.push_str(&intermediate_pem);
        identity
    };
    let (revoked, kept) = (leaf(&[0x0e, 0x11]), leaf(&[0x0e, 0x12]));
    let now = OffsetDateTime::now_utc();
    let crl_of = |issuer: &Issuer<'_, KeyPair>| {
        crl_pem(
            issuer,
            1,
            now - Duration::days(1),
            now + Duration::days(7),
            revoked_serial(&[0x0e, 0x11], now),
        )
    };

    let forger = Issuer::from_ca_cert_pem(&intermediate_pem, KeyPair::generate().unwrap()).unwrap();
    use_crl_file(
        &installation,
        &format!("{intermediate_pem}{}", crl_of(&forger)),
    );
    let stderr = installation.refused_at_start();
    assert!(stderr.contains("that its key did not sign"), "{stderr}");
    // A certificate beside a CRL that nothing trusted signed is not used
    // (its CRL is then checked at the handshake only), and the log says so.
    let (stranger, stranger_pem) = own_ca("stranger CA");
    use_crl_file(
        &installation,
        &format!("{stranger_pem}{}", crl_of(&stranger)),
    );
    let server = installation.serve();
    wait_for_log(&server, "not used to check CRLs").await;
    drop(server);

    use_crl_file(
        &installation,
        &format!("{intermediate_pem}{}", crl_of(&intermediate)),
    );
    let server = installation.serve();
    read_as(&server, &kept).await.unwrap();
    read_as(&server, &revoked).await.unwrap_err();
    assert!(
        !server.log_text().contains("is not in tls.client_ca"),
        "{}",
        server.log_text()
    );
}
