//! Large stores for the scale run. Making a million secrets through the
//! API would take longer than measuring them, so the benchmark writes them
//! into the installation's SQLite file before its server starts: rows as
//! the server writes them, each value sealed by the server's own crypto
//! under the installation's master key, so that every one of them reads
//! back through the ordinary path. (No audit events are made for them.)
//! They are marked read today, as in a store whose secrets programs read
//! every day: the first read of a day writes the access day once, and that
//! write is not what a store's size changes.

use crate::load::numbered;
use rekey_server::crypto::seal_value;
use rekey_shared::{KeyName, SecretValue, Stage, VersionId};
use rekey_tests::Installation;
use sqlx::{Connection, SqliteConnection};

/// Rows per seeding transaction.
const CHUNK: usize = 20_000;

/// Adds the secrets `numbered(0..count)` with one CURRENT value each.
pub async fn seed(installation: &Installation, count: usize) {
    let loaded = rekey_server::config::load(installation.dir(), None).unwrap();
    let opened = rekey_server::installation::open(&loaded).await.unwrap();
    let key_name = KeyName::default_key();
    let master = opened
        .keyring
        .for_encryption(&opened.store, &key_name)
        .await
        .unwrap();
    opened.store.close().await;

    let url = format!("sqlite://{}", installation.database().display());
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    // The seed needs no durability of its own: the server syncs at start.
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut db)
        .await
        .unwrap();
    let now = rekey_shared::time::now_millis();
    let today = now / 86_400_000;
    let value = SecretValue::text("a value of about the size of a password");
    let current = Stage::current();
    for start in (0..count).step_by(CHUNK) {
        let mut tx = db.begin().await.unwrap();
        for index in start..(start + CHUNK).min(count) {
            let name = numbered(index);
            let id = format!("{name}-seed00");
            let version_id = VersionId::random();
            let sealed = seal_value(&master, &id, &version_id, &value);
            sqlx::query(
                "INSERT INTO secrets (id, name, key_name, created_at, changed_at, accessed_day)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            )
            .bind(&id)
            .bind(&name)
            .bind(key_name.as_str())
            .bind(now)
            .bind(today)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO versions (secret_id, version_id, seq, created_at, created_by, accessed_day,
                                       is_binary, ciphertext, wrapped_data_key, key_name, key_version)
                 VALUES (?1, ?2, 1, ?3, 'bench', ?8, 0, ?4, ?5, ?6, ?7)",
            )
            .bind(&id)
            .bind(version_id.as_str())
            .bind(now)
            .bind(&sealed.ciphertext)
            .bind(&sealed.wrapped_data_key)
            .bind(sealed.key.name.as_str())
            .bind(sealed.key.version)
            .bind(today)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO version_stages (secret_id, stage, version_id) VALUES (?1, ?2, ?3)",
            )
            .bind(&id)
            .bind(current.as_str())
            .bind(version_id.as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    db.close().await.unwrap();
}
