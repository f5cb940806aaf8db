//! Reads of values answered from memory (SQLite's read cache, a real
//! `rekeyd`): a value read again with no change between comes from memory
//! (its metrics say so), and the next read after each change sees it: a
//! put, a stage moved by hand, a deletion and its restore. With
//! `read_cache_mib = 0` nothing is kept. That a running server drops what
//! it keeps when another process retires the master-key version it was
//! wrapped under is in `keys`.

use rekey_tests::{Installation, Rekey, Server, metric};

const HITS: &str = "rekey_read_cache_total{result=\"hit\"}";

fn get(rekey: &Rekey, args: &[&str]) -> String {
    rekey.run(&[&["get"], args].concat()).ok().stdout
}

/// Reads `args` three times and checks that the third read came from
/// memory: the first may record the day's access to the version (a
/// write, which makes what was kept stale), the second keeps what it read.
fn read_from_memory(server: &Server, rekey: &Rekey, args: &[&str], value: &str) {
    for _ in 0..2 {
        assert_eq!(get(rekey, args), format!("{value}\n"));
    }
    let hits = metric(server, HITS);
    assert_eq!(get(rekey, args), format!("{value}\n"));
    assert_eq!(
        metric(server, HITS),
        hits + 1.0,
        "{args:?} again, unchanged"
    );
}

#[test]
fn every_change_is_seen_by_the_next_read() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    let first = rekey
        .run(&["create", "rc/db", "--value", "one", "--output", "json"])
        .ok()
        .json()["version_id"]
        .as_str()
        .unwrap()
        .to_owned();
    read_from_memory(&server, &rekey, &["rc/db"], "one");
    read_from_memory(&server, &rekey, &["rc/db", "--version", &first], "one");

    rekey.run(&["put", "rc/db", "--value", "two"]).ok();
    assert_eq!(get(&rekey, &["rc/db"]), "two\n");
    read_from_memory(&server, &rekey, &["rc/db"], "two");
    read_from_memory(&server, &rekey, &["rc/db", "--stage", "PREVIOUS"], "one");

    rekey
        .run(&["stage", "rc/db", "CURRENT", "--to", &first])
        .ok();
    assert_eq!(get(&rekey, &["rc/db"]), "one\n");
    assert_eq!(get(&rekey, &["rc/db", "--stage", "PREVIOUS"]), "two\n");
    read_from_memory(&server, &rekey, &["rc/db"], "one");

    rekey.run(&["delete", "rc/db", "--recovery-days", "7"]).ok();
    let refused = rekey.run(&["get", "rc/db"]);
    assert!(
        refused.code == 1 && refused.stderr.contains("scheduled for deletion on"),
        "{}",
        refused.stderr
    );
    rekey.run(&["restore", "rc/db"]).ok();
    assert_eq!(get(&rekey, &["rc/db"]), "one\n");
}

#[test]
fn a_cache_of_no_size_keeps_nothing() {
    let installation = Installation::new();
    installation.edit_config(|table| {
        table.insert("read_cache_mib".into(), toml::Value::Integer(0));
    });
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "rc/none", "--value", "one"]).ok();
    for _ in 0..3 {
        assert_eq!(get(&rekey, &["rc/none"]), "one\n");
    }
    assert_eq!(metric(&server, HITS), 0.0, "nothing is kept");
    assert!(
        metric(&server, "rekey_read_cache_total{result=\"miss\"}") >= 3.0,
        "every read went to the database"
    );
}
