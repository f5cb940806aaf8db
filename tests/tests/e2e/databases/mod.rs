//! The postgres and mysql rotators against real servers that refuse wrong
//! passwords: a throwaway PostgreSQL with SCRAM authentication
//! (`postgres`), and the local MariaDB with users made for each test
//! (`mysql`); the helpers both use here.

mod mysql;
mod postgres;

use rekey_tests::Rekey;
use serde_json::Value;

pub(super) fn value(rekey: &Rekey, name: &str, stage: &str) -> Value {
    let text = rekey.run(&["get", name, "--stage", stage]).ok().stdout;
    serde_json::from_str(text.trim_end()).unwrap()
}

pub(super) fn put_json(rekey: &Rekey, command: &str, name: &str, document: &Value) {
    rekey
        .run_with_input(
            &[command, name, "--value-file", "-"],
            document.to_string().as_bytes(),
        )
        .ok();
}

pub(super) fn show(rekey: &Rekey, name: &str) -> Value {
    rekey
        .run(&["rotation", "show", name, "--output", "json"])
        .ok()
        .json()
}

/// `value` without its "ssl" field: TLS verified, as by default.
pub(super) fn without_ssl(mut value: Value) -> Value {
    value.as_object_mut().unwrap().remove("ssl");
    value
}

pub(super) fn login(value: &Value) -> (String, String) {
    (
        value["username"].as_str().unwrap().to_owned(),
        value["password"].as_str().unwrap().to_owned(),
    )
}
