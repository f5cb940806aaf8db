//! The Python example client (`tests/python/read_secret.py`): stubs
//! generated from `proto/` by grpcio-tools, mutual TLS with an identity
//! file, against a real `rekeyd`. It runs where `REKEY_TEST_PYTHON` names a
//! Python with grpcio and grpcio-tools (`.ci/run` installs them and sets
//! it); without it the test says so and passes.

use rekey_tests::Installation;
use std::process::Command;

#[test]
fn the_python_client_reads_a_secret_over_mutual_tls() {
    let Ok(python) = std::env::var("REKEY_TEST_PYTHON") else {
        eprintln!("REKEY_TEST_PYTHON is not set; the Python client test is skipped");
        return;
    };
    let installation = Installation::new();
    let nobody = installation.issue("nobody", &[]);
    let server = installation.serve();
    server
        .rekey(&installation.admin())
        .run(&["create", "py/db", "--value", "from-python-3e9f"])
        .ok();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_secret.py");
    let read = |identity: &std::path::Path| {
        Command::new(&python)
            .arg(&script)
            .arg(&server.url)
            .arg(identity)
            .arg("py/db")
            .output()
            .unwrap()
    };
    let answer = read(&installation.admin());
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&answer.stdout),
        "from-python-3e9f\n"
    );

    // The policy holds for it as for anyone.
    let refused = read(&nobody);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("from-python"));
}
