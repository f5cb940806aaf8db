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

pub(super) fn installation_ca(installation: &Installation) -> (String, Issuer<'static, KeyPair>) {
    let ca_pem = std::fs::read_to_string(installation.dir().join("ca.pem")).unwrap();
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(installation.dir().join("ca.key")).unwrap())
            .unwrap();
    (
        ca_pem.clone(),
        Issuer::from_ca_cert_pem(&ca_pem, key).unwrap(),
    )
}

pub(super) fn client_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// An identity signed by `issuer`, trusting `server_ca_pem` for the server.
pub(super) fn identity(
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

/// Tries one read as `who`, on a connection of its own.
pub(super) async fn read_as(server: &Server, who: &Identity) -> Result<(), String> {
    try_read(server, rekey_shared::channel::tls_config(who)).await
}

/// Tries one read with the given TLS settings.
pub(super) async fn try_read(server: &Server, tls: ClientTlsConfig) -> Result<(), String> {
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

pub(super) async fn wait_for_log(server: &Server, fragment: &str) {
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
    read_as(&server, &good).await.unwrap();

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
    read_as(&server, &foreign).await.unwrap_err();

    // An expired certificate from the right CA.
    let mut expired = client_params("alice");
    expired.not_before = OffsetDateTime::now_utc() - Duration::days(30);
    expired.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    let expired = identity(expired, &issuer, &ca_pem);
    read_as(&server, &expired).await.unwrap_err();
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
    let refused = read_as(&server, &two_uris).await.unwrap_err();
    assert!(refused.starts_with("Unauthenticated"), "{refused}");
    assert!(
        refused.contains("2 URI subject alternative names"),
        "{refused}"
    );

    let reserved = identity(client_params("system"), &issuer, &ca_pem);
    let refused = read_as(&server, &reserved).await.unwrap_err();
    assert!(refused.contains("reserved"), "{refused}");

    let odd_name = identity(client_params("alice smith!"), &issuer, &ca_pem);
    let refused = read_as(&server, &odd_name).await.unwrap_err();
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
    for service in [
        "",
        "rekey.v1.Secrets",
        "rekey.v1.Admin",
        "rekey.v1.Rotation",
        "rekey.v1.Watch",
    ] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

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

/// Waits (polling, up to the tests' deadline) until `who` is refused.
pub(super) async fn until_refused(server: &Server, who: &Identity, what: &str) {
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    while read_as(server, who).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    let listed = read_as(&server, &carol).await;
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
    let server = installation.serve();
    // Made once the server is up, so that a slow start does not spend its
    // few seconds.
    let mut params = client_params("dora");
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    params.not_after = OffsetDateTime::now_utc() + Duration::seconds(8);
    let dora = identity(params, &issuer, &ca_pem);
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

/// `rekeyd cert revoke --serial S --ca` of an intermediate CA's
/// certificate refuses the clients it issued, at the handshake and on a
/// connection opened before; the serial may be typed without its leading
/// zero. A client certificate's serial revoked without `--ca` refuses no
/// chain that holds a CA certificate of that serial (serials are unique per
/// issuer only).
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_intermediate_refuses_the_clients_under_it() {
    let installation = Installation::new();
    let (ca_pem, root) = installation_ca(&installation);
    let under_intermediate = |name: &str, serial: &[u8]| {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} intermediate"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        let key = KeyPair::generate().unwrap();
        let intermediate_pem = params.signed_by(&key, &root).unwrap().pem();
        let intermediate = Issuer::new(params, key);
        let mut client = identity(client_params(name), &intermediate, &ca_pem);
        client.certificate_pem.push_str(&intermediate_pem);
        client
    };
    let erin = under_intermediate("erin", &[0x0a, 0xbc]);
    let frank = under_intermediate("frank", &[0x0a, 0xbd]);
    let dave = installation.issue("dave", &[]);
    let dave = Identity::load(&dave).unwrap();
    let server = installation.serve();
    read_as(&server, &erin).await.unwrap();
    let revoke = |args: &[&str]| {
        let revoked = rekey_tests::rekeyd(installation.dir(), args);
        assert!(
            revoked.status.success(),
            "{args:?}: {}",
            rekey_tests::text(&revoked.stderr)
        );
    };
    // A leaf's serial, the same as erin's intermediate's: erin stays in
    // (dave's revocation, loaded with it, marks when it is in force).
    revoke(&["cert", "revoke", "--serial", "0abc"]);
    revoke(&["cert", "revoke", "dave"]);
    until_refused(&server, &dave, "dave's revocation was not loaded").await;
    read_as(&server, &erin).await.unwrap();

    let endpoint =
        rekey_shared::channel::endpoint(&server.url, rekey_shared::channel::tls_config(&frank))
            .unwrap();
    let mut open = SecretsClient::new(endpoint.connect().await.unwrap());
    let list = || proto::ListSecretsRequest::default();
    open.list_secrets(list()).await.unwrap();
    revoke(&["cert", "revoke", "--serial", "abd", "--ca"]);
    until_refused(
        &server,
        &frank,
        "a client of the revoked intermediate is let in",
    )
    .await;
    let refused = open.list_secrets(list()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("serial 0abd of a CA certificate it sent was revoked"),
        "{refused:?}"
    );
    read_as(&server, &erin).await.unwrap();
}

/// Serials are unique per issuer only: revoking serial 0x1002 of one CA
/// (`--issuer CA_FILE`) refuses that CA's certificate and lets in another
/// CA's certificate of the same serial; without `--issuer` the serial is
/// revoked whoever issued it. The revocation was issuer-blind: revoking one
/// CA's certificate refused every other CA's of that serial.
#[tokio::test(flavor = "multi_thread")]
async fn a_serial_revoked_of_one_issuer_leaves_another_issuers_alone() {
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
    let serial = |name: &str| {
        let mut params = client_params(name);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x10, 0x02]));
        params
    };
    let grace = identity(serial("grace"), &root, &ca_pem);
    let mut heidi = identity(serial("heidi"), &intermediate, &ca_pem);
    heidi.certificate_pem.push_str(&intermediate_pem);
    let intermediate_file = installation.dir().join("intermediate.pem");
    std::fs::write(&intermediate_file, &intermediate_pem).unwrap();
    let server = installation.serve();
    read_as(&server, &grace).await.unwrap();
    read_as(&server, &heidi).await.unwrap();

    let revoked = rekey_tests::rekeyd(
        installation.dir(),
        &[
            "cert",
            "revoke",
            "--serial",
            "1002",
            "--issuer",
            intermediate_file.to_str().unwrap(),
        ],
    );
    assert!(
        revoked.status.success(),
        "{}",
        rekey_tests::text(&revoked.stderr)
    );
    until_refused(&server, &heidi, "the intermediate's 1002 is still let in").await;
    read_as(&server, &grace).await.unwrap();

    // Without an issuer: whoever issued it.
    let revoked = rekey_tests::rekeyd(installation.dir(), &["cert", "revoke", "--serial", "1002"]);
    assert!(
        revoked.status.success(),
        "{}",
        rekey_tests::text(&revoked.stderr)
    );
    until_refused(&server, &grace, "the root's 1002 is still let in").await;
}

/// Connections that open and send nothing hold a TLS handshake each until
/// its time limit (10 s); from one address at most 32 are held: the next
/// is closed at once, not held as well. Once they go, clients connect.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_from_one_address_are_bounded() {
    use tokio::io::AsyncReadExt;
    let installation = Installation::new();
    let server = installation.serve();
    let address = server.url.trim_start_matches("https://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut byte = [0u8; 1];
    // Well inside the handshake's time limit, which would close it too.
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut byte))
        .await
        .expect("the 33rd silent connection was held, not closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(silent);
    let admin = Identity::load(&installation.admin()).unwrap();
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    while let Err(error) = read_as(&server, &admin).await {
        assert!(
            std::time::Instant::now() < deadline,
            "no client connects after the silent ones went: {error}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `rekeyd cert renew-server` issues the server a new certificate for the
/// names it had and those given, and the running server serves it from
/// its next handshake: a client that checks a new name gets in without a
/// restart, and one that checks an old name still does; the expiry metric
/// follows. The audit log says so. (There was no way to renew it: on day 826 every handshake failed.)
#[tokio::test]
async fn a_renewed_server_certificate_is_served_without_a_restart() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = Identity::load(&installation.admin()).unwrap();
    let named = |host: &str| rekey_shared::channel::tls_config(&admin).domain_name(host.to_owned());
    let refused = try_read(&server, named("secrets.corp.example")).await;
    assert!(refused.is_err(), "{refused:?}");
    let key_before = std::fs::read(installation.dir().join("server.key")).unwrap();

    let renewed = rekey_tests::rekeyd(
        installation.dir(),
        &[
            "cert",
            "renew-server",
            "--host",
            "secrets.corp.example",
            "--days",
            "30",
        ],
    );
    let said = rekey_tests::text(&renewed.stdout);
    assert!(
        renewed.status.success(),
        "{}",
        rekey_tests::text(&renewed.stderr)
    );
    assert!(
        said.contains("localhost, 127.0.0.1, ::1, secrets.corp.example"),
        "{said}"
    );
    assert_ne!(
        std::fs::read(installation.dir().join("server.key")).unwrap(),
        key_before
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(installation.dir().join("server.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    wait_for_log(&server, "the server certificate was read again").await;
    try_read(&server, named("secrets.corp.example"))
        .await
        .unwrap();
    try_read(&server, named("localhost")).await.unwrap();
    // The expiry metric is the served certificate's (it was read at start).
    let expiry = rekey_tests::metric(&server, "rekey_server_certificate_expiry_timestamp_seconds");
    let in_30_days = (OffsetDateTime::now_utc() + Duration::days(30)).unix_timestamp() as f64;
    assert!((expiry - in_30_days).abs() < 600.0, "{expiry} {in_30_days}");
    let events = server
        .rekey(&installation.admin())
        .run(&["audit", "--resource", "server", "--output", "json"])
        .ok()
        .stdout;
    assert!(
        events.contains("certificates:IssueServer") && events.contains("secrets.corp.example"),
        "{events}"
    );
}

/// A key the server cannot use (readable by others: a copy that lost its
/// mode) is taken up once mended: a `chmod` is a change too. The server
/// looked at modification times, lengths and inodes only, which a chmod
/// leaves as they were: it never noticed either change.
#[tokio::test]
async fn a_key_mended_after_it_was_refused_is_taken_up() {
    use std::os::unix::fs::PermissionsExt;
    let installation = Installation::new();
    let server = installation.serve();
    let renewed = rekey_tests::rekeyd(
        installation.dir(),
        &["cert", "renew-server", "--host", "mended.corp.example"],
    );
    assert!(
        renewed.status.success(),
        "{}",
        rekey_tests::text(&renewed.stderr)
    );
    let read_again = |times: usize| {
        let server = &server;
        async move {
            let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
            while server
                .log_text()
                .matches("the server certificate was read again")
                .count()
                < times
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}",
                    server.log_text()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    read_again(1).await;
    let key = installation.dir().join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_for_log(&server, "cannot be used").await;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    read_again(2).await;
    let admin = Identity::load(&installation.admin()).unwrap();
    try_read(
        &server,
        rekey_shared::channel::tls_config(&admin).domain_name("mended.corp.example".to_owned()),
    )
    .await
    .unwrap();
}
