//! What a backup's database holds, proven: an HMAC-SHA256 of its schema
//! and one of each table's rows, under a key derived from the root key.
//! `backup` writes them into its description, whose sealed copy restore
//! compares with the clear one; `restore` computes them again over its
//! copy of the backup's database (opened immutable: the file as it is,
//! never a write-ahead log beside it) before it writes anything else, and
//! refuses a table that differs. Each installation file the backup carries
//! has a MAC too (`file_mac`). So
//! a backup edited by someone without the root key (a policy binding
//! added, a revocation or a certificate's registry entry removed, a
//! trigger planted) is refused, not restored as proven.
//!
//! Rows are read in primary-key order (every column where a table has no
//! primary key) and each value is fed to the MAC with its type and length,
//! so the MACs depend on what the tables hold, not on how the file lays it
//! out: the restored copy's `VACUUM` changes nothing they cover.

use crate::crypto::RootKey;
use anyhow::Context;
use hmac::{Hmac, Mac};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;
use zeroize::Zeroizing;

/// The backup's own tables, which the MACs leave out (they hold the MACs).
const BACKUP_TABLES: [&str; 2] = ["backup_info", "backup_files"];

/// The description entries' prefix: `mac.schema`, `mac.table.NAME`.
pub(super) const ENTRY_PREFIX: &str = "mac.";
const SCHEMA: &str = "schema";
const TABLE: &str = "table.";

/// The key of the contents' MACs, for this purpose only.
pub(super) struct ContentsKey(Zeroizing<[u8; 32]>);

impl ContentsKey {
    pub(super) fn new(root: &RootKey) -> Self {
        Self(root.derive_subkey(b"rekey/backup-contents/v1"))
    }

    /// The MAC of an installation file the backup carries, as hex.
    pub(super) fn file_mac(&self, name: &str, contents: &[u8]) -> String {
        let mut mac = self.mac(&format!("file.{name}"));
        feed(&mut mac, contents);
        crate::audit::hex(&mac.finalize().into_bytes())
    }

    fn mac(&self, what: &str) -> Hmac<Sha256> {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_ref()).expect("HMAC key");
        feed(&mut mac, b"rekey/backup-contents/v1");
        feed(&mut mac, what.as_bytes());
        mac
    }
}

/// The MACs of the database at `path` (opened read-only), as description
/// entries: `mac.schema` and `mac.table.NAME` for each table.
pub(super) fn macs(path: &Path, key: &ContentsKey) -> anyhow::Result<BTreeMap<String, String>> {
    // Immutable: the file as it is, never a write-ahead log beside it.
    let connection = Connection::open_with_flags(
        format!("{}?immutable=1", uri(path)),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let mut entries = BTreeMap::new();
    let leave_out = format!("'{}'", BACKUP_TABLES.join("', '"));
    entries.insert(
        format!("{ENTRY_PREFIX}{SCHEMA}"),
        mac_of_rows(
            &connection,
            key.mac(SCHEMA),
            &format!(
                "SELECT type, name, tbl_name, sql FROM sqlite_master \
                 WHERE tbl_name NOT IN ({leave_out}) ORDER BY type, name"
            ),
        )?,
    );
    let tables: Vec<String> = connection
        .prepare(&format!(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT IN ({leave_out}) ORDER BY name"
        ))?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for table in tables {
        let select = select_in_order(&connection, &table)?;
        let mac = mac_of_rows(&connection, key.mac(&format!("{TABLE}{table}")), &select)
            .with_context(|| format!("reading table {table}"))?;
        entries.insert(format!("{ENTRY_PREFIX}{TABLE}{table}"), mac);
    }
    Ok(entries)
}

/// `path` as a `file:` URI: every byte but letters, digits and `/-_.~`
/// percent-encoded (also those of a name that is not UTF-8); an absolute
/// path after an empty authority, so that one starting `//` is not read as
/// a host.
fn uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut encoded = String::new();
    for byte in path.as_os_str().as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(char::from(*byte));
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    if path.is_absolute() {
        format!("file://{encoded}")
    } else {
        format!("file:{encoded}")
    }
}

/// How the MACs found in a backup differ from those it was written with,
/// in words for the operator; `None` when they are the same.
pub(super) fn difference(
    written: &BTreeMap<String, String>,
    found: &BTreeMap<String, String>,
) -> Option<String> {
    let what = |entry: &str| match entry.strip_prefix(ENTRY_PREFIX) {
        Some(SCHEMA) => "its schema (tables, indexes, triggers)".to_owned(),
        Some(other) => format!("its table {}", other.strip_prefix(TABLE).unwrap_or(other)),
        None => entry.to_owned(),
    };
    for (entry, mac) in written {
        match found.get(entry) {
            None => return Some(format!("{} was removed", what(entry))),
            Some(other) if other != mac => return Some(format!("{} was changed", what(entry))),
            Some(_) => {}
        }
    }
    found
        .keys()
        .find(|entry| !written.contains_key(*entry))
        .map(|entry| format!("{} was added", what(entry)))
}

/// `SELECT` of every column of `table`, in primary-key order (every
/// column's, where it has none), names quoted.
fn select_in_order(connection: &Connection, table: &str) -> anyhow::Result<String> {
    let columns: Vec<(String, i64)> = connection
        .prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!columns.is_empty(), "table {table} has no columns");
    let mut key: Vec<&(String, i64)> = columns.iter().filter(|(_, pk)| *pk > 0).collect();
    key.sort_by_key(|(_, pk)| *pk);
    if key.is_empty() {
        key = columns.iter().collect();
    }
    let list = |columns: &mut dyn Iterator<Item = &(String, i64)>| {
        columns
            .map(|(name, _)| quote(name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "SELECT {} FROM {} ORDER BY {}",
        list(&mut columns.iter()),
        quote(table),
        list(&mut key.into_iter())
    ))
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The MAC of every row `select` yields, each value with its type and
/// length, as lowercase hex.
fn mac_of_rows(
    connection: &Connection,
    mut mac: Hmac<Sha256>,
    select: &str,
) -> anyhow::Result<String> {
    let mut statement = connection.prepare(select)?;
    let columns = statement.column_count();
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        mac.update(b"r");
        for index in 0..columns {
            match row.get_ref(index)? {
                ValueRef::Null => mac.update(b"n"),
                ValueRef::Integer(number) => {
                    mac.update(b"i");
                    mac.update(&number.to_be_bytes());
                }
                ValueRef::Real(number) => {
                    mac.update(b"f");
                    mac.update(&number.to_bits().to_be_bytes());
                }
                ValueRef::Text(text) => {
                    mac.update(b"t");
                    feed(&mut mac, text);
                }
                ValueRef::Blob(blob) => {
                    mac.update(b"b");
                    feed(&mut mac, blob);
                }
            }
        }
    }
    Ok(crate::audit::hex(&mac.finalize().into_bytes()))
}

/// `bytes` with their length before them.
fn feed(mac: &mut Hmac<Sha256>, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ContentsKey {
        ContentsKey(Zeroizing::new([7; 32]))
    }

    fn database(statements: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(statements)
            .unwrap();
        (dir, path)
    }

    const TABLES: &str = "CREATE TABLE policies (version INTEGER PRIMARY KEY, body TEXT);
        CREATE TABLE bindings (name TEXT, role TEXT, PRIMARY KEY (role, name));
        CREATE TABLE loose (a, b);
        CREATE TABLE backup_info (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO policies VALUES (1, 'p1'), (2, 'p2');
        INSERT INTO bindings VALUES ('bob', 'reader'), ('alice', 'admin');
        INSERT INTO loose VALUES (x'00ff', 1.5), (NULL, 'x');
        INSERT INTO backup_info VALUES ('format', '2');";

    #[test]
    fn the_macs_follow_the_contents_not_the_layout() {
        let (_a, first) = database(TABLES);
        let written = macs(&first, &key()).unwrap();
        assert_eq!(
            written.keys().collect::<Vec<_>>(),
            [
                "mac.schema",
                "mac.table.bindings",
                "mac.table.loose",
                "mac.table.policies"
            ]
        );
        // The same rows inserted in another order, the backup's own table
        // changed, and the file vacuumed: the same MACs.
        let (_b, second) = database(
            "CREATE TABLE policies (version INTEGER PRIMARY KEY, body TEXT);
             CREATE TABLE bindings (name TEXT, role TEXT, PRIMARY KEY (role, name));
             CREATE TABLE loose (a, b);
             CREATE TABLE backup_info (key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO policies VALUES (2, 'p2'), (1, 'p1');
             INSERT INTO bindings VALUES ('alice', 'admin'), ('bob', 'reader');
             INSERT INTO loose VALUES (NULL, 'x'), (x'00ff', 1.5);
             INSERT INTO backup_info VALUES ('format', '3');
             VACUUM;",
        );
        assert_eq!(difference(&written, &macs(&second, &key()).unwrap()), None);
    }

    #[test]
    fn an_edit_names_what_it_changed() {
        let (_dir, path) = database(TABLES);
        let written = macs(&path, &key()).unwrap();
        let after = |statement: &str| {
            let (_dir, path) = database(&format!("{TABLES}{statement}"));
            difference(&written, &macs(&path, &key()).unwrap())
        };
        assert_eq!(
            after("INSERT INTO bindings VALUES ('mallory', 'admin');").as_deref(),
            Some("its table bindings was changed")
        );
        assert_eq!(
            after("UPDATE loose SET b = 1 WHERE b = 1.5;").as_deref(),
            Some("its table loose was changed"),
            "an integer for a real"
        );
        assert_eq!(
            after("UPDATE loose SET b = CAST(b AS BLOB) WHERE b = 'x';").as_deref(),
            Some("its table loose was changed"),
            "a blob for a text"
        );
        assert_eq!(
            after("DROP TABLE loose;").as_deref(),
            Some("its schema (tables, indexes, triggers) was changed")
        );
        assert_eq!(
            after("CREATE TRIGGER t AFTER INSERT ON policies BEGIN DELETE FROM bindings; END;")
                .as_deref(),
            Some("its schema (tables, indexes, triggers) was changed")
        );
        let mut without_schema = written.clone();
        without_schema.remove("mac.schema");
        let (_d, extra) = database(&format!("{TABLES}CREATE TABLE more (x);"));
        let found = macs(&extra, &key()).unwrap();
        let mut found_without_schema = found.clone();
        found_without_schema.remove("mac.schema");
        assert_eq!(
            difference(&without_schema, &found_without_schema).as_deref(),
            Some("its table more was added")
        );
        assert_eq!(
            difference(&found_without_schema, &without_schema).as_deref(),
            Some("its table more was removed")
        );
    }

    #[test]
    fn another_key_gives_other_macs() {
        let (_dir, path) = database(TABLES);
        let other = ContentsKey(Zeroizing::new([8; 32]));
        assert_ne!(
            macs(&path, &key()).unwrap()["mac.table.policies"],
            macs(&path, &other).unwrap()["mac.table.policies"]
        );
    }
}
