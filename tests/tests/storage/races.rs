//! Writes that race on both backends: data keys wrapped under a master-key
//! version retired before they are stored (a move to another key, a
//! re-wrap) are refused; a value sealed under the key its secret was moved
//! off, or put after the secret was scheduled for deletion, is refused; a
//! secret restored after the purge found it due is not erased; a rotation
//! configuration saved over a change made since it was read is refused; a
//! rotation lease is freed only by its own claim's release.

use super::{add_default_key, all_events, create, event, new_version};
use rekey_server::audit::AuditKey;
use rekey_server::crypto::{Key, KeyRef, RootKey};
use rekey_server::error::Error;
use rekey_server::store::{Deletion, PutOutcome, Store, WrappedMasterKey};
use rekey_shared::{KeyName, SecretName};
use rekey_tests::databases::StorageDatabase;

/// Data keys wrapped under a master-key version that was retired before
/// they were stored (a move to another key, a re-wrap) are refused, and
/// nothing changes: stored, they could never be opened again.
async fn retired_key_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;
    let id = create(&store, "moving/db", &[]).await;
    let version = store.all_versions(&id).await.unwrap().remove(0);
    for number in [1, 2] {
        store
            .insert_master_key(
                &WrappedMasterKey {
                    name: "payments".into(),
                    version: number,
                    wrapped_material: vec![8; 60],
                    created_at: 2,
                },
                &event("CreateKey"),
            )
            .await
            .unwrap();
    }
    store
        .retire_master_key("payments", 1, &event("RetireKey"))
        .await
        .unwrap();
    let payments = KeyName::parse("payments").unwrap();
    let moved = rekey_server::store::Rewrapped {
        version_id: version.version_id.clone(),
        wrapped_data_key: vec![9; 60],
        from: version.sealed.key.clone(),
        to: KeyRef {
            name: payments.clone(),
            version: 1,
        },
    };
    let update = rekey_server::store::SecretUpdate {
        description: Some("moved"),
        new_key: Some((&payments, std::slice::from_ref(&moved))),
        version: None,
        now: 3,
    };
    let refused = store
        .update_secret(&id, &update, &event("UpdateSecret"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("was retired meanwhile"),
        "{refused}"
    );
    let refused = store
        .store_rewrapped(&[(id.clone(), moved.clone())], &event("Rewrap"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("was retired meanwhile"),
        "{refused}"
    );
    let stored = store.all_versions(&id).await.unwrap().remove(0);
    assert_eq!(stored.sealed.key, version.sealed.key);
    assert_eq!(
        stored.sealed.wrapped_data_key,
        version.sealed.wrapped_data_key
    );
    let secret = store
        .secret(&SecretName::parse("moving/db").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.key_name, KeyName::default_key());
    assert_eq!(secret.description, "about moving/db");

    // Under the version that is there, the move goes through.
    let moved = rekey_server::store::Rewrapped {
        to: KeyRef {
            name: payments.clone(),
            version: 2,
        },
        ..moved.clone()
    };
    let update = rekey_server::store::SecretUpdate {
        description: Some("moved"),
        new_key: Some((&payments, std::slice::from_ref(&moved))),
        version: None,
        now: 4,
    };
    store
        .update_secret(&id, &update, &event("UpdateSecret"))
        .await
        .unwrap();
    let stored = store.all_versions(&id).await.unwrap().remove(0);
    assert_eq!(stored.sealed.key, moved.to);
    store.close().await;
}

on_both_backends!(retired_key_suite => sqlite_retired_key_versions, postgres_retired_key_versions);

/// A secret restored after the purge found it due is not erased, and no
/// purge is recorded; one still due is.
async fn purge_race_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;
    let now = rekey_shared::time::now_millis();
    for name in ["purge/restored", "purge/due"] {
        create(&store, name, &[]).await;
        let secret = store
            .secret(&SecretName::parse(name).unwrap())
            .await
            .unwrap()
            .unwrap();
        store
            .delete_secret(&secret, Deletion::At(now - 1), &event("DeleteSecret"))
            .await
            .unwrap();
    }
    let due = store.due_for_purge(now).await.unwrap();
    assert_eq!(due.len(), 2, "{due:?}");
    let restored = store
        .secret(&SecretName::parse("purge/restored").unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .restore_secret(&restored, now, &event("RestoreSecret"))
        .await
        .unwrap();
    let mut purged = Vec::new();
    for (id, name) in &due {
        if store.purge(id, name, now).await.unwrap() {
            purged.push(name.clone());
        }
    }
    assert_eq!(purged, ["purge/due"]);
    let kept = store
        .secret(&SecretName::parse("purge/restored").unwrap())
        .await
        .unwrap()
        .expect("the restored secret was erased");
    assert_eq!(kept.deletion_date, None);
    assert_eq!(store.all_versions(&kept.id).await.unwrap().len(), 1);
    let purges = all_events(&store)
        .await
        .into_iter()
        .filter(|stored| stored.event.action == "secrets:PurgeSecret")
        .count();
    assert_eq!(purges, 1);
    store.close().await;
}

on_both_backends!(purge_race_suite => sqlite_purge_after_restore, postgres_purge_after_restore);

/// A put that read the secret before another request moved it to another
/// master key (or scheduled its deletion) and sealed its value under the
/// old key is refused when it commits; a retry of a put that was stored
/// is still answered as one.
async fn put_after_move_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;
    store
        .insert_master_key(
            &WrappedMasterKey {
                name: "payments".into(),
                version: 1,
                wrapped_material: vec![8; 60],
                created_at: 2,
            },
            &event("CreateKey"),
        )
        .await
        .unwrap();
    let id = create(&store, "moving/put", &[]).await;
    let stored = new_version(2);
    store
        .put_version(&id, &stored, &[], &event("PutSecretValue"))
        .await
        .unwrap();
    let payments = KeyName::parse("payments").unwrap();
    let moved: Vec<_> = store
        .all_versions(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|version| rekey_server::store::Rewrapped {
            version_id: version.version_id,
            wrapped_data_key: vec![9; 60],
            from: version.sealed.key,
            to: KeyRef {
                name: payments.clone(),
                version: 1,
            },
        })
        .collect();
    let update = rekey_server::store::SecretUpdate {
        description: None,
        new_key: Some((&payments, &moved)),
        version: None,
        now: 3,
    };
    store
        .update_secret(&id, &update, &event("UpdateSecret"))
        .await
        .unwrap();

    // Sealed under `default`, which the secret was moved off meanwhile.
    let late = new_version(3);
    let refused = store
        .put_version(&id, &late, &[], &event("PutSecretValue"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Aborted(message)
            if message.contains("moved to master key payments while this value was sealed under default")),
        "{refused:?}"
    );
    let versions = store.all_versions(&id).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert!(
        versions
            .iter()
            .all(|version| version.sealed.key.name == payments)
    );
    // A retry of the put that was stored before the move is one.
    assert!(matches!(
        store
            .put_version(&id, &stored, &[], &event("PutSecretValue"))
            .await
            .unwrap(),
        PutOutcome::VersionExists
    ));

    // Scheduled for deletion meanwhile: refused, nothing added.
    let secret = store
        .secret(&SecretName::parse("moving/put").unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .delete_secret(&secret, Deletion::At(i64::MAX / 2), &event("DeleteSecret"))
        .await
        .unwrap();
    let mut late = new_version(4);
    late.sealed.key = KeyRef {
        name: payments.clone(),
        version: 1,
    };
    let refused = store
        .put_version(&id, &late, &[], &event("PutSecretValue"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::FailedPrecondition(message)
            if message.contains("scheduled for deletion meanwhile")),
        "{refused:?}"
    );
    assert_eq!(store.all_versions(&id).await.unwrap().len(), 2);
    store.close().await;
}

on_both_backends!(put_after_move_suite => sqlite_put_after_a_key_move, postgres_put_after_a_key_move);

/// A rotation configuration saved over one that changed since it was read
/// (a schedule claimed or a run finished meanwhile) is refused, so it
/// cannot put back the old times and have the rotation run again at once;
/// one that changes how runs go is refused once a run started.
async fn config_save_suite(url: &str, root: &RootKey) {
    use rekey_server::rotation::{ConfigRecord, Phase, Revert, RunRecord, ScheduleClaim, Step};
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;
    let id = create(&store, "rotating/db", &[]).await;
    let first = ConfigRecord {
        secret_id: id.clone(),
        rotator: "password".into(),
        schedule: "rate(30 days)".into(),
        window: String::new(),
        approval_steps: Vec::new(),
        approvals_required: 0,
        approver_role: String::new(),
        approval_expiry: "24h".into(),
        settings: "{}".into(),
        enabled: true,
        configured_by: "tester".into(),
        configured_at: 1,
        next_rotation_at: Some(1_000),
        last_rotated_at: Some(0),
    };
    let configure = |config: &ConfigRecord, read: Option<&ConfigRecord>, frozen: bool| {
        let (store, config, read) = (&store, config.clone(), read.cloned());
        async move {
            store
                .save_rotation_config(&config, read.as_ref(), frozen, &event("Configure"))
                .await
        }
    };
    configure(&first, None, false).await.unwrap();
    let read = store.rotation_config(&id).await.unwrap().unwrap();
    // The scheduler claims the due rotation meanwhile.
    assert!(
        store
            .claim_due(&id, 1_000, Some(2_000), &event("Schedule"))
            .await
            .unwrap()
    );
    let edited = ConfigRecord {
        configured_at: 2,
        ..read.clone()
    };
    let refused = configure(&edited, Some(&read), false).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Aborted(message) if message.contains("look at it again")),
        "{refused:?}"
    );
    let stored = store.rotation_config(&id).await.unwrap().unwrap();
    assert_eq!(stored.next_rotation_at, Some(2_000));
    // A first configuration saved over one made meanwhile: refused too.
    assert!(matches!(
        configure(&edited, None, false).await.unwrap_err(),
        Error::Aborted(_)
    ));
    // Read again, it saves.
    let edited = ConfigRecord {
        configured_at: 3,
        ..stored.clone()
    };
    configure(&edited, Some(&stored), false).await.unwrap();

    let current = store
        .stage_map(&id)
        .await
        .unwrap()
        .get(&rekey_shared::Stage::current())
        .unwrap()
        .clone();
    // The run this test starts below. First, as a scheduled run whose due
    // time another process claimed: nothing is written, neither the run
    // nor the schedule's move.
    let run = RunRecord {
        id: rekey_shared::VersionId::random().into_string(),
        secret_id: id.clone(),
        manual: false,
        scheduled: false,
        initiator: "tester".into(),
        phase: Phase::Running,
        step: Step::Create,
        set_applied: false,
        operator_go: false,
        attempt: 0,
        next_attempt_at: None,
        approval_requested_at: None,
        current_at_start: current.to_string(),
        outcome: None,
        revert: Revert::NotNeeded,
        end_reason: String::new(),
        last_error: String::new(),
        created_at: 4,
        updated_at: 4,
        ended_at: None,
        revision: 0,
    };
    let late = RunRecord {
        id: rekey_shared::VersionId::random().into_string(),
        scheduled: true,
        ..run.clone()
    };
    let before = store.rotation_config(&id).await.unwrap().unwrap();
    let claimed_before = ScheduleClaim {
        due_at: before.next_rotation_at.unwrap_or(0) - 1,
        next: Some(9_000),
    };
    assert!(
        !store
            .insert_run(&late, &[], Some(claimed_before), &event("StartRotation"))
            .await
            .unwrap()
    );
    assert!(store.run(&late.id).await.unwrap().is_none());
    assert_eq!(store.rotation_config(&id).await.unwrap().unwrap(), before);
    // A run that read CURRENT before a put made another version CURRENT
    // (its read is outside the writers' lock): refused, and nothing is
    // written, neither the run nor the schedule's move, so the scheduler
    // starts it again from the new value.
    let stale = RunRecord {
        id: rekey_shared::VersionId::random().into_string(),
        scheduled: true,
        current_at_start: rekey_shared::VersionId::random().into_string(),
        ..run.clone()
    };
    let claim = ScheduleClaim {
        due_at: before.next_rotation_at.unwrap(),
        next: Some(9_000),
    };
    let refused = store
        .insert_run(&stale, &[], Some(claim), &event("StartRotation"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Aborted(message) if message.contains("CURRENT version changed")),
        "{refused:?}"
    );
    assert!(store.run(&stale.id).await.unwrap().is_none());
    assert_eq!(store.rotation_config(&id).await.unwrap().unwrap(), before);

    // A run starts: a change of how runs go is refused, the rest saves.
    assert!(
        store
            .insert_run(&run, &[], None, &event("StartRotation"))
            .await
            .unwrap()
    );
    let read = store.rotation_config(&id).await.unwrap().unwrap();
    let gated = ConfigRecord {
        configured_at: 5,
        approval_steps: vec![Step::Set],
        approvals_required: 1,
        ..read.clone()
    };
    let refused = configure(&gated, Some(&read), true).await.unwrap_err();
    assert!(
        matches!(&refused, Error::FailedPrecondition(message) if message.contains("run started")),
        "{refused:?}"
    );
    assert!(
        store
            .rotation_config(&id)
            .await
            .unwrap()
            .unwrap()
            .approval_steps
            .is_empty()
    );
    let rescheduled = ConfigRecord {
        configured_at: 5,
        schedule: "rate(7 days)".into(),
        ..read.clone()
    };
    configure(&rescheduled, Some(&read), false).await.unwrap();

    // The run ends: the next rotation follows the schedule configured
    // while it went on (it was the one the run read at its start).
    let made = super::NewVersion {
        version_id: rekey_shared::VersionId::parse(&run.id).unwrap(),
        ..new_version(7)
    };
    store
        .put_version(
            &id,
            &made,
            &[rekey_shared::Stage::parse("PENDING").unwrap()],
            &event("Put"),
        )
        .await
        .unwrap();
    let started = store.run(&run.id).await.unwrap().unwrap();
    let now = rekey_shared::time::now_millis();
    let mut ended = RunRecord {
        current_at_start: current.to_string(),
        phase: Phase::Ended,
        ended_at: Some(now),
        updated_at: now,
        ..started
    };
    assert!(
        store
            .finish_run(&mut ended, &[], &event("Finish"))
            .await
            .unwrap()
    );
    let next = store
        .rotation_config(&id)
        .await
        .unwrap()
        .unwrap()
        .next_rotation_at
        .unwrap();
    assert_eq!(next, now + 7 * 86_400_000);
    store.close().await;
}

on_both_backends!(config_save_suite => sqlite_config_saved_over_a_change, postgres_config_saved_over_a_change);

/// A drive's lease is freed by its own release only: a release that comes
/// late (it runs in the background once the drive ended) does not free the
/// lease that the same process's next drive claimed meanwhile, so no other
/// replica can claim it and drive the same step alongside.
async fn lease_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;
    let id = create(&store, "leased/db", &[]).await;
    assert!(store.claim_lease(&id, "a/1", 0, 10_000).await.unwrap());
    assert!(
        store.claim_lease(&id, "a/2", 1, 10_001).await.unwrap(),
        "a process's next drive takes over its own lease"
    );
    store.release_lease(&id, "a/1").await.unwrap();
    assert!(
        !store.claim_lease(&id, "b/1", 2, 10_002).await.unwrap(),
        "another replica claimed a lease held by the next drive"
    );
    store.release_lease(&id, "a/2").await.unwrap();
    // Two seconds long (PostgreSQL counts on its own clock, SQLite on the
    // times given).
    assert!(store.claim_lease(&id, "b/1", 3, 2_003).await.unwrap());
    assert!(
        !store.claim_lease(&id, "a/3", 4, 10_004).await.unwrap(),
        "a live lease of another process"
    );
    let deadline = std::time::Instant::now() + rekey_tests::DEADLINE;
    loop {
        let now = rekey_shared::time::now_millis();
        if store
            .claim_lease(&id, "a/3", now, now + 10_000)
            .await
            .unwrap()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a lapsed lease goes to whoever claims it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    store.close().await;
}

on_both_backends!(lease_suite => sqlite_a_late_release_frees_no_other_lease, postgres_a_late_release_frees_no_other_lease);

/// Rotations of one master key that race (on one server, or on replicas)
/// each add a version: the one that finds its number taken takes the next,
/// rather than answer ALREADY_EXISTS for a rotation that could be made.
async fn concurrent_rotations_each_add_a_version_suite(url: &str, root: &RootKey) {
    use rekey_server::keyring::Keyring;
    let store = std::sync::Arc::new(Store::open(url, AuditKey::derive(root)).await.unwrap());
    let keyring = std::sync::Arc::new(Keyring::new(RootKey::new(Key::generate())));
    let name = KeyName::default_key();
    keyring
        .create_version(&store, &name, &event("CreateKey"))
        .await
        .unwrap();
    let rotations: Vec<_> = (0..4)
        .map(|_| {
            let (store, keyring, name) = (store.clone(), keyring.clone(), name.clone());
            tokio::spawn(async move {
                keyring
                    .create_version(&store, &name, &event("RotateKey"))
                    .await
            })
        })
        .collect();
    let mut added = Vec::new();
    for rotation in rotations {
        added.push(rotation.await.unwrap().unwrap());
    }
    added.sort_unstable();
    assert_eq!(added, [2, 3, 4, 5]);
    store.close().await;
}

on_both_backends!(
    concurrent_rotations_each_add_a_version_suite => sqlite_concurrent_rotations_each_add_a_version,
    postgres_concurrent_rotations_each_add_a_version
);

/// A change to a secret erased after its handler found it (by another
/// replica, say) is FAILED_PRECONDITION, saying so, and changes nothing:
/// the tags' insert met the foreign key first and answered INTERNAL.
async fn a_change_to_a_secret_erased_meanwhile_suite(url: &str, root: &RootKey) {
    let store = Store::open(url, AuditKey::derive(root)).await.unwrap();
    add_default_key(&store).await;
    create(&store, "gone/db", &[]).await;
    let found = store
        .secret(&SecretName::parse("gone/db").unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .delete_secret(&found, Deletion::Now, &event("Delete"))
        .await
        .unwrap();
    let refused = store
        .tag_secret(
            &found.id,
            &[("late".to_owned(), "tag".to_owned())],
            7,
            &event("TagResource"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::FailedPrecondition(message) if message.contains("erased meanwhile")),
        "{refused:?}"
    );
    store.close().await;
}

on_both_backends!(
    a_change_to_a_secret_erased_meanwhile_suite => sqlite_a_change_to_a_secret_erased_meanwhile,
    postgres_a_change_to_a_secret_erased_meanwhile
);
