//! One storage suite, run against both backends through the store's API: SQLite in a temporary
//! file always, PostgreSQL when `REKEY_TEST_POSTGRES_URL` names a server
//! (`.ci/run` sets it), each run in a fresh database of its own that is
//! dropped afterwards. Two `Store`s on one PostgreSQL database stand in for
//! two replicas (`postgres`, with what is PostgreSQL's own: its schema
//! check, its writers' lock). The audit log's own suites (group commit of many events,
//! retention) are in `audit`; the read of a value in `reads`; SQLite's
//! write-ahead log under steady writes in `wal`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the test's failure report

use rekey_server::audit::{AuditEvent, AuditKey, verify};
use rekey_server::crypto::{Key, KeyRef, RootKey, SealedValue};
use rekey_server::error::Error;
use rekey_server::store::{
    AuditQuery, CertificateRecord, Cursor, Deletion, FilterField, NewSecret, NewVersion,
    PutOutcome, RevokeTarget, SecretFilter, SecretQuery, Store, WrappedMasterKey,
};
use rekey_shared::{KeyName, SecretName, Stage, VersionId};
use rekey_tests::databases::StorageDatabase;
use std::sync::Arc;

/// The two tests of a suite `async fn(url, root key)`: on a SQLite file in
/// a temporary directory, and on a PostgreSQL database of its own when
/// `REKEY_TEST_POSTGRES_URL` names a server.
macro_rules! on_both_backends {
    ($suite:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("rekey.db").display());
            $suite(&url, &RootKey::new(Key::generate())).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $postgres() {
            let Some(database) = StorageDatabase::create() else {
                return;
            };
            $suite(&database.url, &RootKey::new(Key::generate())).await;
        }
    };
}

mod audit;
mod journal;
mod postgres;
mod races;
mod reads;
mod wal;

fn event(action: &str) -> AuditEvent {
    AuditEvent::system(action, "test", "")
}

fn sealed(byte: u8) -> SealedValue {
    SealedValue {
        is_binary: false,
        ciphertext: vec![byte; 32],
        wrapped_data_key: vec![byte; 60],
        key: KeyRef {
            name: KeyName::default_key(),
            version: 1,
        },
    }
}

fn new_version(byte: u8) -> NewVersion {
    NewVersion {
        version_id: VersionId::random(),
        created_at: rekey_shared::time::now_millis(),
        created_by: "tester".into(),
        sealed: sealed(byte),
    }
}

async fn create(store: &Store, name: &str, tags: &[(&str, &str)]) -> String {
    let id = VersionId::random().into_string();
    let secret = NewSecret {
        id: id.clone(),
        name: SecretName::parse(name).unwrap(),
        description: format!("about {name}"),
        key_name: KeyName::default_key(),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        created_at: rekey_shared::time::now_millis(),
    };
    store
        .create_secret(&secret, Some(&new_version(1)), &event("CreateSecret"))
        .await
        .unwrap();
    id
}

/// Master key `default` version 1, which `sealed` values name.
async fn add_default_key(store: &Store) {
    store
        .insert_master_key(
            &WrappedMasterKey {
                name: "default".into(),
                version: 1,
                wrapped_material: vec![7; 60],
                created_at: 1,
            },
            &event("CreateKey"),
        )
        .await
        .unwrap();
}

/// Every event in the store, in sequence order.
async fn all_events(store: &Store) -> Vec<rekey_server::audit::StoredEvent> {
    let mut events = Vec::new();
    loop {
        let page = store
            .audit_events(&AuditQuery {
                after_seq: events
                    .last()
                    .map_or(0, |last: &rekey_server::audit::StoredEvent| last.seq),
                limit: 500,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// Every event in order verifies as one chain; how many there are.
async fn assert_chain_verifies(store: &Store, key: &AuditKey) -> u64 {
    let mut verification = verify(key, None);
    for stored in all_events(store).await {
        assert!(verification.push(stored), "{:?}", verification.finding);
    }
    assert!(verification.finding.is_none(), "{:?}", verification.finding);
    verification.events
}

/// The behaviour both backends must share.
async fn suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;

    // Secrets, versions and stages.
    let id = create(&store, "app/db", &[("env", "prod"), ("team", "payments")]).await;
    let second = new_version(2);
    // A value sealed under a key version that does not exist (retired
    // meanwhile) is refused, and nothing is written.
    let mut orphan = new_version(3);
    orphan.sealed.key.version = 2;
    let refused = store
        .put_version(&id, &orphan, &[Stage::current()], &event("Put"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("was retired meanwhile"),
        "{refused}"
    );
    let outcome = store
        .put_version(&id, &second, &[Stage::current()], &event("Put"))
        .await
        .unwrap();
    assert!(matches!(outcome, PutOutcome::Added(stages) if stages == vec![Stage::current()]));
    let again = store
        .put_version(&id, &second, &[Stage::current()], &event("Put"))
        .await
        .unwrap();
    assert_eq!(again, PutOutcome::VersionExists);
    let current = store
        .version_at_stage(&id, &Stage::current())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.version_id, second.version_id);
    assert_eq!(current.sealed.ciphertext, vec![2; 32]);
    assert!(
        store
            .version_at_stage(&id, &Stage::previous())
            .await
            .unwrap()
            .is_some()
    );
    // What a read answers, in one statement: by stage, by id, or nothing.
    let (read, read_stages) = store
        .version_with_stages(&id, None, &Stage::current())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version_id, second.version_id);
    assert_eq!(read_stages, [Stage::current()]);
    let custom = Stage::parse("blue").unwrap();
    store
        .move_stage(
            &store
                .secret(&SecretName::parse("app/db").unwrap())
                .await
                .unwrap()
                .unwrap(),
            &custom,
            Some(&second.version_id),
            None,
            rekey_shared::time::now_millis(),
            &event("Stage"),
        )
        .await
        .unwrap();
    let (by_id, by_id_stages) = store
        .version_with_stages(&id, Some(&second.version_id), &Stage::current())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_id.sealed.ciphertext, vec![2; 32]);
    let mut expected = vec![Stage::current(), custom.clone()];
    expected.sort();
    assert_eq!(by_id_stages, expected);
    let (previous, previous_stages) = store
        .version_with_stages(&id, None, &Stage::previous())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(previous.version_id, second.version_id);
    assert_eq!(previous_stages, [Stage::previous()]);
    for (version_id, stage) in [
        (Some(VersionId::random()), Stage::current()),
        (None, Stage::parse("nowhere").unwrap()),
    ] {
        let missing = store
            .version_with_stages(&id, version_id.as_ref(), &stage)
            .await
            .unwrap();
        assert!(missing.is_none());
    }
    assert!(
        store
            .secret_without_tags(&SecretName::parse("app/db").unwrap())
            .await
            .unwrap()
            .unwrap()
            .tags
            .is_empty()
    );
    let versions = store.list_versions(&id, true, None, 10).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions.iter().all(|v| v.key_name == "default"));

    // Listing: filters, sort orders and keyset pages.
    for name in ["app/api", "app/cache", "ops/backup", "ops/ci"] {
        create(
            &store,
            name,
            &[(
                "env",
                if name.starts_with("app") {
                    "prod"
                } else {
                    "dev"
                },
            )],
        )
        .await;
    }
    let by_name = |filters| SecretQuery {
        filters,
        limit: 2,
        ..SecretQuery::default()
    };
    let mut names = Vec::new();
    let mut query = by_name(Vec::new());
    loop {
        let page = store.list_secrets(&query).await.unwrap();
        let Some(last) = page.last() else { break };
        query.after = Some(Cursor {
            value: 0,
            name: last.name.as_str().to_owned(),
        });
        names.extend(page.iter().map(|s| s.name.as_str().to_owned()));
    }
    assert_eq!(
        names,
        ["app/api", "app/cache", "app/db", "ops/backup", "ops/ci"]
    );
    // Name prefixes (a range on the name index, too), included and excluded.
    let prefixed = store
        .list_secrets(&SecretQuery {
            limit: 10,
            ..by_name(vec![SecretFilter {
                field: FilterField::Name,
                include: vec!["app/".into(), "ops/b".into()],
                exclude: vec!["app/c".into()],
            }])
        })
        .await
        .unwrap();
    let prefixed: Vec<&str> = prefixed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(prefixed, ["app/api", "app/db", "ops/backup"]);
    let tagged = store
        .list_secrets(&SecretQuery {
            limit: 10,
            ..by_name(vec![SecretFilter {
                field: FilterField::Tag,
                include: vec!["env=pro".into()],
                exclude: vec![],
            }])
        })
        .await
        .unwrap();
    assert_eq!(tagged.len(), 3);
    let excluded = store
        .list_secrets(&SecretQuery {
            limit: 10,
            ..by_name(vec![SecretFilter {
                field: FilterField::All,
                include: vec!["ops/".into()],
                exclude: vec!["ops/c".into()],
            }])
        })
        .await
        .unwrap();
    assert_eq!(excluded.len(), 1);
    assert_eq!(excluded[0].name.as_str(), "ops/backup");

    // Deletion and restore.
    let doomed = store
        .secret(&SecretName::parse("ops/ci").unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .delete_secret(&doomed, Deletion::At(i64::MAX / 2), &event("Delete"))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_secrets(&by_name(Vec::new()))
            .await
            .unwrap()
            .len(),
        2
    );
    let doomed = store.secret(&doomed.name).await.unwrap().unwrap();
    // A change that found the secret live before its deletion was
    // scheduled is refused in its own transaction, and changes nothing.
    let tagged = store
        .tag_secret(
            &doomed.id,
            &[("late".to_owned(), "tag".to_owned())],
            7,
            &event("TagResource"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&tagged, Error::FailedPrecondition(message) if message.contains("scheduled for deletion")),
        "{tagged:?}"
    );
    assert!(
        !store
            .secret(&doomed.name)
            .await
            .unwrap()
            .unwrap()
            .tags
            .iter()
            .any(|(key, _)| key == "late")
    );
    // A name taken: ALREADY_EXISTS, or FAILED_PRECONDITION while the secret
    // holding it waits for deletion (on PostgreSQL the failed INSERT
    // aborted the transaction, and the check after it answered INTERNAL).
    for (name, expected) in [
        ("app/db", "already exists"),
        ("ops/ci", "scheduled for deletion"),
    ] {
        let taken = NewSecret {
            id: VersionId::random().into_string(),
            name: SecretName::parse(name).unwrap(),
            description: String::new(),
            key_name: KeyName::default_key(),
            tags: Vec::new(),
            created_at: 1,
        };
        let refused = store
            .create_secret(&taken, Some(&new_version(9)), &event("CreateSecret"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                (&refused, expected),
                (Error::AlreadyExists(_), "already exists")
                    | (Error::FailedPrecondition(_), "scheduled for deletion")
            ) && refused.to_string().contains(expected),
            "{refused:?}"
        );
    }
    store
        .restore_secret(&doomed, rekey_shared::time::now_millis(), &event("Restore"))
        .await
        .unwrap();

    // Policy versions: a stale base is refused.
    let first = store
        .insert_policy("roles: {}", "tester", 0, 1, &event("Policy"))
        .await
        .unwrap();
    assert_eq!(first, Some(1));
    let stale = store
        .insert_policy("roles: {}", "tester", 0, 2, &event("Policy"))
        .await
        .unwrap();
    assert_eq!(stale, None);
    assert_eq!(store.policy_version().await.unwrap(), 1);

    // Certificates and revocation.
    store
        .record_certificate(
            &CertificateRecord {
                serial: "0a0b".into(),
                issuer: "30".into(),
                principal: "alice".into(),
                issued_at: Some(1),
                not_after: Some(2),
                revoked_at: None,
            },
            &event("Issue"),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .revoke(RevokeTarget::Named("alice"), "", 5, &event("Revoke"))
            .await
            .unwrap(),
        ["0a0b"]
    );
    assert_eq!(
        store.revoked_serials().await.unwrap(),
        [("0a0b".to_owned(), "30".to_owned(), "alice".to_owned())]
    );
    // Serials are unique per issuer only: one CA's serial revoked by its
    // issuer leaves another CA's of that serial alone, and both can be
    // revoked; a serial revoked without an issuer is any issuer's.
    for issuer in ["41", "42"] {
        store
            .revoke(RevokeTarget::Serial("0c"), issuer, 6, &event("Revoke"))
            .await
            .unwrap();
    }
    store
        .revoke(RevokeTarget::Serial("0d"), "", 7, &event("Revoke"))
        .await
        .unwrap();
    let mut revoked = store.revoked_serials().await.unwrap();
    revoked.sort();
    let row = |serial: &str, issuer: &str, principal: &str| {
        (serial.to_owned(), issuer.to_owned(), principal.to_owned())
    };
    assert_eq!(
        revoked,
        [
            row("0a0b", "30", "alice"),
            row("0c", "41", ""),
            row("0c", "42", ""),
            row("0d", "", ""),
        ]
    );

    // Concurrent puts: every acknowledged put is a version, one CURRENT.
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16u8)
        .map(|n| {
            let store = Arc::clone(&store);
            let id = id.clone();
            tokio::spawn(async move {
                let version = new_version(10 + n);
                store
                    .put_version(&id, &version, &[Stage::current()], &event("Put"))
                    .await
                    .unwrap();
                version.version_id
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.push(task.await.unwrap());
    }
    let map = store.stage_map(&id).await.unwrap();
    let versions = store.list_versions(&id, true, None, 100).await.unwrap();
    assert_eq!(versions.len(), 18);
    for version_id in &acknowledged {
        assert!(versions.iter().any(|v| &v.version_id == version_id));
    }
    let current: Vec<_> = versions
        .iter()
        .filter(|v| v.stages.contains(&Stage::current()))
        .collect();
    assert_eq!(current.len(), 1, "{map:?}");
    let previous: Vec<_> = versions
        .iter()
        .filter(|v| v.stages.contains(&Stage::previous()))
        .collect();
    assert_eq!(previous.len(), 1, "{map:?}");

    let events = assert_chain_verifies(&store, &AuditKey::derive(root)).await;
    assert_eq!(events, 32, "one event per write, in one chain");
    store.close().await;
}

/// Writes that arrive together share a commit (group commit), each in a
/// savepoint of its own: a write that fails after it changed something
/// takes back only its own changes, and every write that succeeded is
/// there, with its audit event, in one chain.
async fn concurrent_writes_suite(url: &str, root: &RootKey) {
    let store = Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    add_default_key(&store).await;
    let mut ids = Vec::new();
    for index in 0..8 {
        ids.push(create(&store, &format!("batch/s{index}"), &[]).await);
    }
    let too_many: Arc<Vec<Stage>> = Arc::new(
        (0..21)
            .map(|n| Stage::parse(&format!("label{n}")).unwrap())
            .collect(),
    );
    let tasks: Vec<_> = (0..96u8)
        .map(|n| {
            let store = store.clone();
            let id = ids[usize::from(n) % ids.len()].clone();
            let too_many = too_many.clone();
            tokio::spawn(async move {
                let version = new_version(n);
                let result = match n % 3 {
                    // Succeeds.
                    0 => store
                        .put_version(&id, &version, &[Stage::current()], &event("Put"))
                        .await
                        .map(|_| ()),
                    // Fails after inserting the version: too many labels.
                    1 => store
                        .put_version(&id, &version, &too_many, &event("Put"))
                        .await
                        .map(|_| ()),
                    // Fails after reading the stage map.
                    _ => {
                        let secret = store.secret_by_id(&id).await.unwrap().unwrap();
                        store
                            .move_stage(
                                &secret,
                                &Stage::current(),
                                Some(&version.version_id),
                                Some(&VersionId::random()),
                                rekey_shared::time::now_millis(),
                                &event("Stage"),
                            )
                            .await
                    }
                };
                (n, id, version.version_id, result)
            })
        })
        .collect();
    let mut added = 0;
    for task in tasks {
        let (n, id, version_id, result) = task.await.unwrap();
        let stored = store.version(&id, &version_id).await.unwrap();
        if n % 3 == 0 {
            result.unwrap();
            assert!(stored.is_some(), "an acknowledged put is there");
            added += 1;
        } else {
            assert!(result.is_err(), "write {n} should have failed");
            assert!(stored.is_none(), "a failed put left its version behind");
        }
    }
    for id in &ids {
        let versions = store.list_versions(id, true, None, 100).await.unwrap();
        assert_eq!(versions.len(), 5, "the first version and four puts");
        let current = versions
            .iter()
            .filter(|v| v.stages.contains(&Stage::current()))
            .count();
        assert_eq!(current, 1);
        assert!(versions.iter().all(|v| v.stages.len() <= 2));
    }

    // Requests that go away at any point of their write (here: time limits
    // from 0.05 to 22 ms) leave the batch as if they never came, or wholly
    // written; the writes beside them all succeed.
    let hurried = create(&store, "batch/hurried", &[]).await;
    let tasks: Vec<_> = (0..48u64)
        .map(|n| {
            let (store, hurried) = (store.clone(), hurried.clone());
            tokio::spawn(async move {
                let (steady, version) = (new_version(1), new_version(2));
                let (current, put) = ([Stage::current()], event("Put"));
                let steady_put = store.put_version(&hurried, &steady, &current, &put);
                let limit = std::time::Duration::from_micros(50 + 10 * n * n);
                let hurried_put =
                    tokio::time::timeout(limit, store.put_version(&hurried, &version, &[], &put));
                let (steady_result, hurried_result) = tokio::join!(steady_put, hurried_put);
                steady_result.unwrap();
                (version.version_id, hurried_result.is_ok())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    // A put whose request went away may still be in a batch that has not
    // committed yet: its fate is settled once the writes begun are.
    store.barrier().await.unwrap();
    let mut kept = 0;
    for (version_id, finished) in outcomes {
        let stored = store.version(&hurried, &version_id).await.unwrap();
        if finished {
            assert!(stored.is_some(), "a put that finished is there");
        }
        kept += usize::from(stored.is_some());
    }
    let versions = store
        .list_versions(&hurried, true, None, 200)
        .await
        .unwrap();
    assert_eq!(versions.len(), 1 + 48 + kept);
    let current = versions
        .iter()
        .filter(|v| v.stages.contains(&Stage::current()))
        .count();
    assert_eq!(current, 1);

    let events = assert_chain_verifies(&store, &AuditKey::derive(root)).await;
    assert_eq!(
        events,
        1 + 8 + added + 1 + 48 + kept as u64,
        "one event per write that is there"
    );
    store.close().await;
}

on_both_backends!(concurrent_writes_suite => sqlite_concurrent_writes, postgres_concurrent_writes);

#[tokio::test]
async fn sqlite_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rekey.db").display());
    suite(&url, &RootKey::new(Key::generate())).await;
}

#[tokio::test]
async fn unknown_database_scheme_is_refused() {
    let error = Store::open(
        "mysql://root@localhost/test",
        AuditKey::derive(&RootKey::new(Key::generate())),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("sqlite:// or postgres://"),
        "{error}"
    );
}

/// A PostgreSQL URL that does not parse is refused without being quoted:
/// it may hold the password (one with a `/` in it reads as a bad port).
#[tokio::test]
async fn a_database_url_that_does_not_parse_is_not_quoted() {
    let error = Store::open(
        "postgres://rekey:s3cr/et-pw@db.invalid/rekey",
        AuditKey::derive(&RootKey::new(Key::generate())),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("does not parse"), "{error}");
    assert!(
        !error.contains("s3cr") && !error.contains("et-pw"),
        "{error}"
    );
}

#[tokio::test]
async fn postgres_backend() {
    let Some(database) = StorageDatabase::create() else {
        return;
    };
    suite(&database.url, &RootKey::new(Key::generate())).await;
}
