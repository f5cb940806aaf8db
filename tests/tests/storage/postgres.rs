//! What only PostgreSQL does: two `Store`s on one database standing in for
//! two replicas, the schema check of a database other replicas share, and
//! the writers' lock across them.

use super::{add_default_key, assert_chain_verifies, create, event, new_version};
use rekey_server::audit::AuditKey;
use rekey_server::crypto::{Key, RootKey};
use rekey_server::error::Error;
use rekey_server::store::Store;
use rekey_shared::{SecretName, Stage};
use rekey_tests::databases::StorageDatabase;
use std::sync::Arc;

/// Two stores on one database, as two replicas: writes through one are
/// read through the other, concurrent puts through both leave one CURRENT,
/// and the audit chain is one chain.
#[tokio::test]
async fn postgres_two_replicas_share_one_database() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let root = RootKey::new(Key::generate());
    let a = Arc::new(
        Store::open(&database.url, AuditKey::derive(&root))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        Store::open(&database.url, AuditKey::derive(&root))
            .await
            .unwrap(),
    );
    add_default_key(&a).await;
    let id = create(&a, "shared/secret", &[]).await;
    let seen = b
        .secret(&SecretName::parse("shared/secret").unwrap())
        .await
        .unwrap()
        .expect("a write through one replica is read through the other");
    assert_eq!(seen.id, id);

    let tasks: Vec<_> = (0..20u8)
        .map(|n| {
            let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
            let id = id.clone();
            tokio::spawn(async move {
                let version = new_version(n);
                store
                    .put_version(&id, &version, &[Stage::current()], &event("Put"))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let versions = b.list_versions(&id, true, None, 100).await.unwrap();
    assert_eq!(versions.len(), 21);
    let with = |stage: Stage| {
        versions
            .iter()
            .filter(|v| v.stages.contains(&stage))
            .count()
    };
    assert_eq!(with(Stage::current()), 1);
    assert_eq!(with(Stage::previous()), 1);
    let events = assert_chain_verifies(&a, &AuditKey::derive(&root)).await;
    assert_eq!(events, 22);
    a.close().await;
    b.close().await;
}

/// Only the server migrates: `open_current` (every other command) refuses
/// a schema older than the binary's and leaves it as it is; `open` (the
/// server) brings it up to date. A schema newer than the binary's is
/// refused by both.
#[tokio::test]
async fn postgres_a_schema_other_than_the_binarys() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let root = RootKey::new(Key::generate());
    let opened = |current: bool| {
        let (url, key) = (database.url.clone(), AuditKey::derive(&root));
        async move {
            let store = if current {
                Store::open_current(&url, key).await
            } else {
                Store::open(&url, key).await
            };
            match store {
                Ok(store) => {
                    store.close().await;
                    Ok(())
                }
                Err(error) => Err(error.to_string()),
            }
        }
    };
    opened(false).await.unwrap();
    database.sql(
        "DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)",
    );
    // Twice: the first refusal changed nothing.
    for _ in 0..2 {
        let error = opened(true).await.unwrap_err();
        assert!(
            error.contains("older than this rekeyd's")
                && error.contains("only the server migrates it"),
            "{error}"
        );
    }
    opened(false).await.unwrap();
    opened(true).await.unwrap();

    database.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)");
    for current in [false, true] {
        let error = opened(current).await.unwrap_err();
        assert!(error.contains("newer than this rekeyd knows"), "{error}");
    }
}

/// A lease is held on the database's clock: a replica whose clock runs
/// ahead does not take a lease another replica holds (it did, and drove a
/// step against the target beside its holder: with renewals every three
/// seconds, a clock seven seconds ahead sufficed; here a lease just
/// claimed for ten seconds, by a clock eleven ahead).
#[tokio::test]
async fn postgres_a_replica_whose_clock_runs_ahead_takes_no_live_lease() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let root = RootKey::new(Key::generate());
    let (a, b) = (
        Store::open(&database.url, AuditKey::derive(&root))
            .await
            .unwrap(),
        Store::open(&database.url, AuditKey::derive(&root))
            .await
            .unwrap(),
    );
    add_default_key(&a).await;
    let id = create(&a, "leased/db", &[]).await;
    let now = rekey_shared::time::now_millis();
    assert!(a.claim_lease(&id, "A/1", now, now + 10_000).await.unwrap());
    let ahead = now + 11_000;
    assert!(
        !b.claim_lease(&id, "B/1", ahead, ahead + 10_000)
            .await
            .unwrap()
    );
    a.close().await;
    b.close().await;
}

/// Tags come back in the order of their keys' bytes, as on SQLite,
/// whatever the database's collation (here an ICU one on the column, as a
/// database created with it would have): `B`, `_z`, `a`, not `_z`, `a`,
/// `B`; on a secret's own read and on a listed page.
#[tokio::test]
async fn postgres_tags_come_in_the_order_of_their_bytes() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let root = RootKey::new(Key::generate());
    let store = Store::open(&database.url, AuditKey::derive(&root))
        .await
        .unwrap();
    add_default_key(&store).await;
    database.sql(r#"ALTER TABLE secret_tags ALTER COLUMN key TYPE TEXT COLLATE "und-x-icu""#);
    create(&store, "sorted/db", &[("a", "1"), ("B", "2"), ("_z", "3")]).await;
    let keys = |tags: &[(String, String)]| tags.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let read = store
        .secret(&SecretName::parse("sorted/db").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys(&read.tags), ["B", "_z", "a"]);
    let listed = store
        .list_secrets(&rekey_server::store::SecretQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&listed[0].tags), ["B", "_z", "a"]);
    store.close().await;
}

/// Two `init`s on one empty database at once: one makes the schema, the
/// other is refused and changes nothing. Both passed the check for a schema
/// before either made one, and the second went on to add a master key of
/// its own root key (one the first installation cannot unwrap).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_two_inits_at_once_make_one_installation() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let create = |root: RootKey| {
        let url = database.url.clone();
        async move {
            match Store::create(&url, AuditKey::derive(&root)).await {
                Ok(store) => {
                    store.close().await;
                    Ok(())
                }
                Err(error) => Err(error),
            }
        }
    };
    let (a, b) = tokio::join!(
        create(RootKey::new(Key::generate())),
        create(RootKey::new(Key::generate()))
    );
    let outcomes = [a, b];
    assert_eq!(
        outcomes.iter().filter(|made| made.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|made| matches!(made,
            Err(Error::FailedPrecondition(message)) if message.contains("already holds a rekey schema"))),
        "{outcomes:?}"
    );
}

/// A writer that holds the writers' lock (a replica cut off mid-batch,
/// whose session PostgreSQL has not yet found dead) makes the other
/// writers UNAVAILABLE after ten seconds, as SQLite's busy timeout does,
/// rather than hang them for as long as that takes (hours). And a refusal
/// that is not the database being away (insufficient privilege, 42501,
/// whose number matches SQLite's BUSY mask) is not called unavailable.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_held_writers_lock_is_unavailable_not_a_hang() {
    use sqlx::Connection;
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let root = RootKey::new(Key::generate());
    let store = Store::open(&database.url, AuditKey::derive(&root))
        .await
        .unwrap();
    let mut holder = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT pg_advisory_xact_lock(7001)")
        .execute(&mut holder)
        .await
        .unwrap();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.record(&event("Read")),
    )
    .await
    .expect("the write waited past the lock's timeout")
    .unwrap_err();
    assert!(matches!(refused, Error::Unavailable(_)), "{refused:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    store.record(&event("Read")).await.unwrap();

    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN RAISE EXCEPTION 'no' USING ERRCODE = 'insufficient_privilege'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON audit_events
           FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let refused = store.record(&event("Read")).await.unwrap_err();
    assert!(matches!(refused, Error::Internal(_)), "{refused:?}");
    holder.close().await.unwrap();
    store.close().await;
}

/// Two processes on one database (two replicas): events cut off the tail
/// and written again by one of them are not built over by the other,
/// though the head it reads is past the newest event it wrote. Its own
/// event is read back and found changed.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_tail_written_again_by_another_is_not_built_over() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    let (url, root) = (&database.url, &RootKey::new(Key::generate()));
    let a = Store::open(url, AuditKey::derive(root)).await.unwrap();
    let b = Store::open(url, AuditKey::derive(root)).await.unwrap();
    b.record(&event("Read")).await.unwrap();
    for _ in 0..10 {
        a.record(&event("Read")).await.unwrap();
    }
    let head = super::all_events(&a).await.last().unwrap().seq;
    super::audit::tamper(
        url,
        &format!("DELETE FROM audit_events WHERE seq > {}", head - 5),
    )
    .await;
    // b's own event is intact: it appends over the cut (it cannot tell).
    for _ in 0..10 {
        b.record(&event("Read")).await.unwrap();
    }
    let refused = a.record(&event("Read")).await.unwrap_err();
    assert!(
        matches!(&refused, Error::AuditUnwritable { detail, for_now: false } if detail.contains(&format!("audit event {head}, which this server wrote"))),
        "{refused:?}"
    );
    // Appends that build on what a wrote, untouched, go on.
    let c = Store::open(url, AuditKey::derive(root)).await.unwrap();
    c.record(&event("Read")).await.unwrap();
    b.record(&event("Read")).await.unwrap();
    a.close().await;
    b.close().await;
    c.close().await;
}
