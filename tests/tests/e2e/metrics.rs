//! Prometheus metrics: a real `rekeyd` serves `GET /metrics` over plain HTTP
//! on the address it printed; real `rekey` calls move the request counters
//! by exactly what they did (OK, NOT_FOUND, PERMISSION_DENIED, and an
//! UNAUTHENTICATED refused by the interceptor); the rotation gauges follow a
//! run waiting for approval; nothing secret is in the page. Metrics can be
//! turned off, and an address in use stops the start.

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rekey_shared::identity::Identity;
use rekey_shared::proto;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::{Installation, Server, binary, eventually, http_get, text};
use std::collections::HashMap;
use std::process::{Command, Stdio};

const GET: &str = "/rekey.v1.Secrets/GetSecretValue";
const PLANTED_NAME: &str = "metrics/planted-name-7f3a";
const PLANTED_VALUE: &str = "planted-value-9c1e";

/// A scrape: every sample by its series (`name{labels}`), and the text.
struct Scrape {
    samples: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    fn of(server: &Server) -> Self {
        let url = server
            .metrics
            .as_deref()
            .expect("the server printed its metrics address");
        let (status, headers, text) = http_get(url, "/metrics");
        assert_eq!(status, 200, "{text}");
        assert!(
            headers["content-type"].starts_with("text/plain; version=0.0.4"),
            "{headers:?}"
        );
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect();
        Self { samples, text }
    }

    fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    fn requests(&self, method: &str, code: &str) -> f64 {
        self.value(&format!(
            "rekey_requests_total{{method=\"{method}\",code=\"{code}\"}}"
        ))
    }
}

/// A certificate from the installation's CA whose principal is reserved:
/// it passes the handshake and the interceptor refuses it.
fn reserved_identity(installation: &Installation) -> Identity {
    let ca_pem = std::fs::read_to_string(installation.dir().join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(installation.dir().join("ca.key")).unwrap())
            .unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "system");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, &issuer).unwrap();
    Identity {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem().into(),
        ca_pem,
    }
}

fn list_as(server: &Server, identity: &Identity) -> tonic::Code {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = rekey_shared::channel::connect(&server.url, identity)
            .await
            .unwrap();
        SecretsClient::new(channel)
            .list_secrets(proto::ListSecretsRequest::default())
            .await
            .map_or_else(|status| status.code(), |_| tonic::Code::Ok)
    })
}

#[test]
fn metrics_count_every_answer_and_show_nothing_secret() {
    let installation = Installation::new();
    let nobody = installation.issue("nobody", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let nobody = server.rekey(&nobody);
    admin
        .run(&["create", PLANTED_NAME, "--value", PLANTED_VALUE])
        .ok();

    let before = Scrape::of(&server);
    assert_eq!(
        admin.run(&["get", PLANTED_NAME]).ok().stdout.trim(),
        PLANTED_VALUE
    );
    let missing = admin.run(&["get", "metrics/missing"]);
    assert!(missing.stderr.contains("(NOT_FOUND)"), "{}", missing.stderr);
    let denied = nobody.run(&["get", PLANTED_NAME]);
    assert!(
        denied.stderr.contains("(PERMISSION_DENIED)"),
        "{}",
        denied.stderr
    );
    let refused = list_as(&server, &reserved_identity(&installation));
    assert_eq!(refused, tonic::Code::Unauthenticated);
    let after = Scrape::of(&server);

    for (method, code) in [
        (GET, "OK"),
        (GET, "NOT_FOUND"),
        (GET, "PERMISSION_DENIED"),
        ("/rekey.v1.Secrets/ListSecrets", "UNAUTHENTICATED"),
    ] {
        assert_eq!(
            after.requests(method, code) - before.requests(method, code),
            1.0,
            "{method} {code}:\n{}",
            after.text
        );
    }
    let count = format!("rekey_request_duration_seconds_count{{method=\"{GET}\"}}");
    assert_eq!(
        after.value(&count) - before.value(&count),
        3.0,
        "{}",
        after.text
    );
    let infinity = format!("rekey_request_duration_seconds_bucket{{method=\"{GET}\",le=\"+Inf\"}}");
    assert_eq!(after.value(&infinity), after.value(&count));
    let fastest =
        format!("rekey_request_duration_seconds_bucket{{method=\"{GET}\",le=\"0.0005\"}}");
    assert!(after.samples.contains_key(&fastest), "{}", after.text);
    let sum = format!("rekey_request_duration_seconds_sum{{method=\"{GET}\"}}");
    assert!(after.value(&sum) > 0.0, "{}", after.text);

    assert!(
        after.value("rekey_audit_batch_size_count") > 0.0,
        "{}",
        after.text
    );
    assert!(
        after
            .samples
            .contains_key("rekey_audit_batch_size_bucket{le=\"+Inf\"}")
    );
    assert!(
        after.value("rekey_write_batch_size_count") > 0.0,
        "{}",
        after.text
    );
    // Present from the start, though a checkpoint may not have run yet.
    assert!(
        after
            .samples
            .contains_key("rekey_write_pause_seconds_bucket{le=\"+Inf\"}"),
        "{}",
        after.text
    );
    let version = format!(
        "rekey_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(after.value(&version), 1.0, "{}", after.text);

    // The expiry is the server certificate's own notAfter.
    let server_pem = std::fs::read_to_string(installation.dir().join("server.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(server_pem.as_bytes()).unwrap();
    let certificate = pem.parse_x509().unwrap();
    let validity = certificate.validity();
    let expiry = after.value("rekey_server_certificate_expiry_timestamp_seconds");
    assert_eq!(
        expiry,
        validity.not_after.timestamp() as f64,
        "{}",
        after.text
    );
    assert!(expiry > validity.not_before.timestamp() as f64);

    for secret in [PLANTED_NAME, PLANTED_VALUE, "metrics/", "nobody", "admin"] {
        assert!(
            !after.text.contains(secret),
            "{secret:?} in:\n{}",
            after.text
        );
    }
    let (status, _, _) = http_get(server.metrics.as_deref().unwrap(), "/other");
    assert_eq!(status, 404);
}

#[test]
fn rotation_gauges_follow_a_run_waiting_for_approval() {
    let installation = Installation::new();
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    let initial = Scrape::of(&server);
    assert_eq!(initial.value("rekey_approvals_waiting"), 0.0);
    assert!(initial.samples.contains_key("rekey_approvals_waiting"));
    for state in ["running", "cancelled", "needs_attention"] {
        let series = format!("rekey_rotation_runs{{state=\"{state}\"}}");
        assert_eq!(initial.samples.get(&series), Some(&0.0), "{}", initial.text);
    }

    admin
        .run(&["create", "gated/db", "--value", r#"{"password":"old"}"#])
        .ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "gated/db",
            "--rotator",
            "password",
            "--field",
            "password",
            "--approve",
            "set",
            "--approvals",
            "1",
        ])
        .ok();
    admin.run(&["rotate", "gated/db", "--no-wait"]).ok();
    let waiting = eventually("a run waiting for its approval", || {
        let scrape = Scrape::of(&server);
        (scrape.value("rekey_approvals_waiting") == 1.0).then_some(scrape)
    });
    assert_eq!(waiting.value("rekey_rotation_runs{state=\"running\"}"), 1.0);

    admin.run(&["rotation", "cancel", "gated/db"]).ok();
    let cancelled = eventually("the cancelled run counted", || {
        let scrape = Scrape::of(&server);
        (scrape.value("rekey_rotation_runs{state=\"cancelled\"}") == 1.0).then_some(scrape)
    });
    assert_eq!(cancelled.value("rekey_approvals_waiting"), 0.0);
    assert_eq!(
        cancelled.value("rekey_rotation_runs{state=\"running\"}"),
        0.0
    );
    assert!(!cancelled.text.contains("gated"), "{}", cancelled.text);
}

#[test]
fn an_empty_metrics_address_turns_the_listener_off() {
    let installation = Installation::new();
    // The configured port is held here: a server that tried to bind it
    // would fail to start.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    installation.edit_config(|table| {
        let mut metrics = toml::Table::new();
        metrics.insert("listen".into(), address.clone().into());
        table.insert("metrics".into(), toml::Value::Table(metrics));
    });
    let server = Server::start(installation.dir(), &[("REKEY_METRICS_LISTEN", "")]);
    assert_eq!(server.metrics, None);
    server.rekey(&installation.admin()).run(&["list"]).ok();
}

#[test]
fn a_metrics_address_in_use_stops_the_start() {
    let installation = Installation::new();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    let output = Command::new(binary("rekeyd"))
        .arg("--dir")
        .arg(installation.dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("REKEY_METRICS_LISTEN", &address)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("the metrics listener cannot bind {address}"))
            && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!text(&output.stdout).contains("listening on"));
}
