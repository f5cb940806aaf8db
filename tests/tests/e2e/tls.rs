//! Mutual TLS: who gets in, who is refused at the handshake, and what a
//! certificate that passes the handshake but breaks the principal rule gets.
//! Health and reflection are served to any valid certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rekey_shared::identity::Identity;
use rekey_shared::proto;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::{Installation, Server};
use std::path::Path;
use time::{Duration, OffsetDateTime};
use tonic::transport::{Certificate, ClientTlsConfig};

fn installation_ca(installation: &Installation) -> (String, Issuer<'static, KeyPair>) {
    let ca_pem = std::fs::read_to_string(installation.dir().join("ca.pem")).unwrap();
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(installation.dir().join("ca.key")).unwrap())
            .unwrap();
    (
        ca_pem.clone(),
        Issuer::from_ca_cert_pem(&ca_pem, key).unwrap(),
    )
}

fn client_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// An identity signed by `issuer`, trusting `server_ca_pem` for the server.
fn identity(
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    server_ca_pem: &str,
) -> Identity {
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, issuer).unwrap();
    Identity {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem().into(),
        ca_pem: server_ca_pem.to_owned(),
    }
}

/// Tries one read with the given TLS settings.
async fn try_read(server: &Server, tls: ClientTlsConfig) -> Result<(), String> {
    let endpoint = rekey_shared::channel::endpoint(&server.url, tls).map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    SecretsClient::new(channel)
        .list_secrets(proto::ListSecretsRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

async fn wait_for_log(server: &Server, fragment: &str) {
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    while !server.log_text().contains(fragment) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server log never said {fragment:?}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused_at_the_handshake() {
    let installation = Installation::new();
    let server = installation.serve();
    let (ca_pem, issuer) = installation_ca(&installation);

    // The control: a certificate from the installation's CA gets in.
    let good = identity(client_params("alice"), &issuer, &ca_pem);
    try_read(&server, rekey_shared::channel::tls_config(&good))
        .await
        .unwrap();

    // No certificate at all.
    let no_certificate = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let refused = try_read(&server, no_certificate).await.unwrap_err();
    assert!(!refused.contains("alice"), "{refused}");
    wait_for_log(&server, "TLS handshake failed").await;

    // A certificate from another CA.
    let other_ca_key = KeyPair::generate().unwrap();
    let mut other_ca = CertificateParams::default();
    other_ca
        .distinguished_name
        .push(DnType::CommonName, "another CA");
    other_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_issuer = Issuer::new(other_ca, other_ca_key);
    let foreign = identity(client_params("alice"), &other_issuer, &ca_pem);
    try_read(&server, rekey_shared::channel::tls_config(&foreign))
        .await
        .unwrap_err();

    // An expired certificate from the right CA.
    let mut expired = client_params("alice");
    expired.not_before = OffsetDateTime::now_utc() - Duration::days(30);
    expired.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    let expired = identity(expired, &issuer, &ca_pem);
    try_read(&server, rekey_shared::channel::tls_config(&expired))
        .await
        .unwrap_err();
}

#[tokio::test]
async fn a_certificate_that_names_no_principal_is_unauthenticated() {
    let installation = Installation::new();
    let server = installation.serve();
    let (ca_pem, issuer) = installation_ca(&installation);
    let mut params = client_params("alice");
    params.subject_alt_names = vec![
        SanType::URI("spiffe://corp/a".try_into().unwrap()),
        SanType::URI("spiffe://corp/b".try_into().unwrap()),
    ];
    let two_uris = identity(params, &issuer, &ca_pem);
    let refused = try_read(&server, rekey_shared::channel::tls_config(&two_uris))
        .await
        .unwrap_err();
    assert!(refused.starts_with("Unauthenticated"), "{refused}");
    assert!(
        refused.contains("2 URI subject alternative names"),
        "{refused}"
    );

    let reserved = identity(client_params("system"), &issuer, &ca_pem);
    let refused = try_read(&server, rekey_shared::channel::tls_config(&reserved))
        .await
        .unwrap_err();
    assert!(refused.contains("reserved"), "{refused}");

    let odd_name = identity(client_params("alice smith!"), &issuer, &ca_pem);
    let refused = try_read(&server, rekey_shared::channel::tls_config(&odd_name))
        .await
        .unwrap_err();
    assert!(refused.starts_with("Unauthenticated"), "{refused}");
    assert!(
        refused.contains("common name \"alice smith!\""),
        "{refused}"
    );

    // Without the client-auth usage: no extended key usage at all (the
    // principal rule refuses it), or server-auth only (the handshake does).
    let mut no_usage = client_params("alice");
    no_usage.extended_key_usages.clear();
    let refused = try_read(
        &server,
        rekey_shared::channel::tls_config(&identity(no_usage, &issuer, &ca_pem)),
    )
    .await
    .unwrap_err();
    assert!(refused.contains("client-auth"), "{refused}");
    let mut server_only = client_params("alice");
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    try_read(
        &server,
        rekey_shared::channel::tls_config(&identity(server_only, &issuer, &ca_pem)),
    )
    .await
    .unwrap_err();
}

#[tokio::test]
async fn an_issued_identity_works_and_the_cli_refuses_an_open_identity_file() {
    let installation = Installation::new();
    let bob = installation.issue("bob", &["operator"]);
    let server = installation.serve();
    let rekey = server.rekey(&bob);
    rekey.run(&["create", "team/x", "--value", "v"]).ok();
    let versions = rekey
        .run(&["versions", "team/x", "--output", "json"])
        .ok()
        .json();
    assert_eq!(versions[0]["created_by"], "bob");

    set_mode(&bob, 0o644);
    let refused = rekey.run(&["get", "team/x"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("chmod 600"), "{}", refused.stderr);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let installation = Installation::new();
    let server = installation.serve();
    let identity = Identity::load(&installation.admin()).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "rekey.v1.Secrets".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"rekey.v1.Secrets".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tokio_stream::Stream<Item = T> {
    tokio_stream::iter([item])
}

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

/// Waits (polling, up to the tests' deadline) until `who` is refused.
async fn until_refused(server: &Server, who: &Identity, what: &str) {
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    while try_read(server, rekey_shared::channel::tls_config(who))
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    std::fs::write(installation.dir().join("crl.pem"), crl).unwrap();
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
    try_read(&server, rekey_shared::channel::tls_config(&kept))
        .await
        .unwrap();
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap_err();
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
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap();

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
    try_read(&server, rekey_shared::channel::tls_config(&kept))
        .await
        .unwrap();

    std::fs::write(installation.dir().join("crl.pem"), "not a CRL").unwrap();
    wait_for_log(&server, "a changed CRL file cannot be used").await;
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap_err();
    try_read(&server, rekey_shared::channel::tls_config(&kept))
        .await
        .unwrap();

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
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap_err();
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
    try_read(&server, rekey_shared::channel::tls_config(&kept))
        .await
        .unwrap();
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap_err();
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
    try_read(&server, rekey_shared::channel::tls_config(&kept))
        .await
        .unwrap();
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap_err();
}

/// One CRL file that cannot be used holds up no other: with another CA's
/// file broken, a fresh CRL of the installation's CA still revokes.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_crl_file_holds_up_no_other() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let revoked = alice_with_serial(&issuer, &ca_pem, &[0x0e, 0x03]);
    let mut other_ca = CertificateParams::default();
    other_ca
        .distinguished_name
        .push(DnType::CommonName, "another CA");
    other_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = Issuer::new(other_ca, KeyPair::generate().unwrap());
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
    try_read(&server, rekey_shared::channel::tls_config(&revoked))
        .await
        .unwrap();

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

/// A certificate of another issuer of the installation's CA (a bring-your-
/// own CA's) whose serial has its high bit set is revoked by the serial as
/// `openssl x509 -serial` prints it, without DER's leading zero byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_serial_revoked_as_openssl_prints_it_is_refused() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let mut params = client_params("carol");
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[
        0x8f, 0x01, 0x02, 0x03, 0x04, 0x05,
    ]));
    let carol = identity(params, &issuer, &ca_pem);
    let server = installation.serve();
    let listed = try_read(&server, rekey_shared::channel::tls_config(&carol)).await;
    assert!(listed.is_ok(), "carol lists what she may see: {listed:?}");
    let revoked = rekey_tests::rekeyd(
        installation.dir(),
        &["cert", "revoke", "--serial", "8F0102030405"],
    );
    assert!(
        revoked.status.success(),
        "{}",
        rekey_tests::text(&revoked.stderr)
    );
    until_refused(&server, &carol, "the revoked certificate is still let in").await;
}

/// A certificate that expires while its connection is open is refused on
/// that connection's next request, not only at the next handshake.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_that_expires_on_an_open_connection_is_refused() {
    let installation = Installation::new();
    let (ca_pem, issuer) = installation_ca(&installation);
    let mut params = client_params("dora");
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    params.not_after = OffsetDateTime::now_utc() + Duration::seconds(6);
    let dora = identity(params, &issuer, &ca_pem);
    let server = installation.serve();
    let endpoint =
        rekey_shared::channel::endpoint(&server.url, rekey_shared::channel::tls_config(&dora))
            .unwrap();
    let mut client = SecretsClient::new(endpoint.connect().await.unwrap());
    let list = |client: &mut SecretsClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .list_secrets(proto::ListSecretsRequest::default())
                .await
        }
    };
    list(&mut client).await.unwrap();
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    let refused = loop {
        match list(&mut client).await {
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the expired certificate is still served"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{refused:?}");
}
