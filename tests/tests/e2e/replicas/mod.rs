//! Several replicas: real `rekeyd` processes on one PostgreSQL database
//! (`REKEY_TEST_POSTGRES_URL`, a fresh database per test). Writes through
//! one are read through the other; concurrent puts through both keep one
//! CURRENT; a scheduled rotation runs once; a replica killed in the middle
//! of a step leaves its run to the other, which finishes it; revocations
//! and key changes reach every replica. Watch across replicas: `watch`.

mod watch;

use rekey_shared::proto;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::databases::StorageDatabase;
use rekey_tests::{Installation, Rekey, eventually, http_get};
use serde_json::Value;
use std::path::PathBuf;
use tonic::transport::Channel;

const TOKEN: &str = "5f0c8a2e-replica-put-token-0000000000";

/// An installation on a fresh database, with the fixture rotator.
fn replicated() -> Option<(StorageDatabase, Installation, PathBuf)> {
    let database = StorageDatabase::create()?;
    let installation = Installation::on_postgres(&database);
    let state = installation.dir().join("rotator-state");
    std::fs::create_dir_all(&state).unwrap();
    installation.configure_fixture_rotator(&state);
    Some((database, installation, state))
}

fn show(rekey: &Rekey, name: &str) -> Value {
    rekey
        .run(&["rotation", "show", name, "--output", "json"])
        .ok()
        .json()
}

fn runs(rekey: &Rekey, name: &str) -> Vec<Value> {
    let history = rekey
        .run(&["rotation", "history", name, "--output", "json"])
        .ok()
        .json();
    history.as_array().cloned().unwrap_or_default()
}

async fn get(client: &mut SecretsClient<Channel>, name: &str) -> String {
    client
        .get_secret_value(proto::GetSecretValueRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret_string
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_writes_and_concurrent_puts_keep_one_current() {
    let Some((_database, installation, _state)) = replicated() else {
        return;
    };
    let (a, b) = (installation.serve(), installation.serve());
    let admin = installation.admin();
    let mut through_a = a.client(&admin).await;
    let mut through_b = b.client(&admin).await;
    through_a
        .create_secret(proto::CreateSecretRequest {
            name: "shared/db".into(),
            secret_string: Some("v0".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(get(&mut through_b, "shared/db").await, "v0");

    // Eight clients, half on each replica, five puts each, all at once.
    let mut tasks = Vec::new();
    for client in 0..8 {
        let mut connection = if client % 2 == 0 {
            through_a.clone()
        } else {
            through_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for put in 0..5 {
                let reply = connection
                    .put_secret_value(proto::PutSecretValueRequest {
                        name: "shared/db".into(),
                        secret_string: Some(format!("value-{client}-{put}")),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                acknowledged.push(reply.version_id);
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let versions = through_b
        .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
            name: "shared/db".into(),
            include_deprecated: true,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 41, "every acknowledged put is a version");
    for id in &acknowledged {
        assert!(
            versions.iter().any(|v| &v.version_id == id),
            "{id} is missing"
        );
    }
    let with = |stage: &str| -> Vec<&proto::SecretVersion> {
        versions
            .iter()
            .filter(|v| v.stages.iter().any(|s| s == stage))
            .collect()
    };
    let (current, previous) = (with("CURRENT"), with("PREVIOUS"));
    assert_eq!(current.len(), 1, "{versions:?}");
    assert_eq!(previous.len(), 1, "{versions:?}");
    assert_ne!(current[0].version_id, previous[0].version_id);
    assert!(acknowledged.contains(&current[0].version_id));
    // Both replicas read the same CURRENT.
    assert_eq!(
        get(&mut through_a, "shared/db").await,
        get(&mut through_b, "shared/db").await
    );
    b.rekey(&admin).run(&["audit", "verify"]).ok();
}

#[test]
fn a_scheduled_rotation_runs_exactly_once() {
    let Some((database, installation, state)) = replicated() else {
        return;
    };
    let (a, b) = (installation.serve(), installation.serve());
    let admin = a.rekey(&installation.admin());
    admin.run(&["create", "sched/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "sched/db",
            "--rotator",
            "exec:fixture",
            "--schedule",
            "rate(1 days)",
        ])
        .ok();
    // The schedule comes due for both replicas at once.
    database.sql("UPDATE rotation_configs SET next_rotation_at = 1000");
    let other = b.rekey(&installation.admin());
    eventually("the scheduled run to succeed", || {
        (show(&other, "sched/db")["run"]["state"] == "succeeded").then_some(())
    });
    assert_eq!(runs(&other, "sched/db").len(), 1, "one run");
    // Started by the server, for the principal who configured it.
    let started: Vec<serde_json::Value> = other
        .run(&["audit", "--resource", "sched/db", "--output", "json"])
        .ok()
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| event["action"] == "rotation:StartRotation")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["principal"], "system");
    assert!(
        started[0]["detail"]
            .as_str()
            .unwrap()
            .contains("its initiator is admin"),
        "{started:?}"
    );
    // Both replicas' gauges read the shared database (PostgreSQL's
    // grouping statement): one succeeded run.
    for replica in [&a, &b] {
        let (_, _, page) = http_get(
            replica.metrics.as_deref().expect("a metrics listener"),
            "/metrics",
        );
        assert!(
            page.lines()
                .any(|line| line == r#"rekey_rotation_runs{state="succeeded"} 1"#),
            "{page}"
        );
    }
    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    assert_eq!(
        calls
            .lines()
            .filter(|l| l.starts_with("createSecret"))
            .count(),
        1,
        "{calls}"
    );
    admin.run(&["audit", "verify"]).ok();
}

/// A server killed while it starts a scheduled run (its insert of the run
/// held by a lock) leaves the schedule due: the run starts once a server
/// runs again. The schedule's claim committed on its own, moving it on a
/// whole period, and no run was stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_while_starting_a_scheduled_run_leaves_it_due() {
    use sqlx::Connection;
    let Some((database, installation, _state)) = replicated() else {
        return;
    };
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "sched/kill", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "sched/kill",
            "--rotator",
            "exec:fixture",
            "--schedule",
            "rate(1 days)",
        ])
        .ok();
    // Inserts of runs wait while this holds its lock; reads go on.
    let mut lock = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE rotation_runs IN EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    database.sql("UPDATE rotation_configs SET next_rotation_at = 1000");
    let mut watcher = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE relation = 'rotation_runs'::regclass AND NOT granted",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled run's insert never waited on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    tokio::task::block_in_place(|| server.kill());
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    watcher.close().await.unwrap();

    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    tokio::task::block_in_place(|| {
        eventually("the scheduled run to start and succeed", || {
            (show(&admin, "sched/kill")["run"]["state"] == "succeeded").then_some(())
        })
    });
}

/// A server that cannot renew its lease on a run (its renewals refused
/// here) stops the step it runs once the lease lapses: another replica may
/// have the run by then, and two must never act on one target. It went on
/// with the step. The run then goes on from what is stored.
#[test]
fn a_lapsed_lease_stops_the_step_under_way() {
    let Some((database, installation, state)) = replicated() else {
        return;
    };
    // A step that may run longer than a lease lasts.
    installation.edit_config(|table| {
        table["rotation"]["exec"]["fixture"]
            .as_table_mut()
            .unwrap()
            .insert("timeout_seconds".into(), 60.into());
    });
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "lease/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "lease/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    std::fs::write(state.join("block-setSecret"), "").unwrap();
    admin.run(&["rotate", "lease/db", "--no-wait"]).ok();
    eventually("the rotator to block in setSecret", || {
        state.join("blocked-setSecret").exists().then_some(())
    });
    database.sql(
        "CREATE FUNCTION refuse_renewal() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$;
         CREATE TRIGGER refuse_renewal BEFORE UPDATE ON rotation_leases
           FOR EACH ROW WHEN (OLD.owner = NEW.owner) EXECUTE FUNCTION refuse_renewal();",
    );
    eventually("the step to be stopped when the lease lapses", || {
        server
            .log_text()
            .contains(
                "the rotation lease lapsed while renewals failed; the step under way is stopped",
            )
            .then_some(())
    });
    database.sql("DROP TRIGGER refuse_renewal ON rotation_leases");
    std::fs::remove_file(state.join("block-setSecret")).unwrap();
    eventually("the run to succeed", || {
        (show(&admin, "lease/db")["run"]["state"] == "succeeded").then_some(())
    });
}

#[test]
fn a_replica_killed_in_a_step_leaves_the_run_to_the_other() {
    let Some((_database, installation, state)) = replicated() else {
        return;
    };
    let mut servers = vec![installation.serve(), installation.serve()];
    let admin = servers[0].rekey(&installation.admin());
    admin.run(&["create", "kill/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "kill/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    std::fs::write(state.join("block-setSecret"), "").unwrap();
    admin.run(&["rotate", "kill/db", "--no-wait"]).ok();
    let driver: u32 = eventually("the rotator to block in setSecret", || {
        std::fs::read_to_string(state.join("blocked-setSecret"))
            .ok()
            .and_then(|pid| pid.parse().ok())
    });
    let position = servers
        .iter()
        .position(|server| server.pid() == driver)
        .expect("one of the replicas runs the rotator");
    servers.remove(position).kill();

    // The step blocks again if the other replica resumes it, so CURRENT is
    // read before the run can finish; then the step may go on.
    let survivor = servers.remove(0);
    let admin = survivor.rekey(&installation.admin());
    assert_eq!(admin.run(&["get", "kill/db"]).ok().stdout, "v1\n");
    std::fs::remove_file(state.join("block-setSecret")).unwrap();
    let shown = eventually("the other replica to finish the run", || {
        let shown = show(&admin, "kill/db");
        (shown["run"]["state"] == "succeeded").then_some(shown)
    });
    let versions = admin
        .run(&["versions", "kill/db", "--all", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        versions.as_array().unwrap().len(),
        2,
        "one new version: {versions}"
    );
    let current = admin
        .run(&["get", "kill/db", "--output", "json"])
        .ok()
        .json();
    assert_eq!(current["version_id"], shown["run"]["version_id"]);
    let target = std::fs::read_to_string(state.join("target")).unwrap();
    assert_eq!(
        current["secret_string"],
        target.trim_end(),
        "CURRENT is what the target holds"
    );
    admin.run(&["audit", "verify"]).ok();
}

/// A cancel made through the replica that does not drive the run holds:
/// the driver's write after its step finds the run changed and writes
/// nothing, and the run ends cancelled, with the target holding CURRENT.
#[test]
fn a_cancel_through_the_other_replica_is_not_undone_by_the_driver() {
    let Some((_database, installation, state)) = replicated() else {
        return;
    };
    let servers = [installation.serve(), installation.serve()];
    let admin = servers[0].rekey(&installation.admin());
    admin.run(&["create", "undo/db", "--value", "v1"]).ok();
    admin
        .run(&[
            "rotation",
            "configure",
            "undo/db",
            "--rotator",
            "exec:fixture",
        ])
        .ok();
    std::fs::write(state.join("block-setSecret"), "").unwrap();
    admin.run(&["rotate", "undo/db", "--no-wait"]).ok();
    let driver: u32 = eventually("the rotator to block in setSecret", || {
        std::fs::read_to_string(state.join("blocked-setSecret"))
            .ok()
            .and_then(|pid| pid.parse().ok())
    });
    let other = servers
        .iter()
        .find(|server| server.pid() != driver)
        .expect("one replica does not drive the run");
    let other = other.rekey(&installation.admin());
    other.run(&["rotation", "cancel", "undo/db"]).ok();
    std::fs::remove_file(state.join("block-setSecret")).unwrap();

    let shown = eventually("the run to end", || {
        let shown = show(&other, "undo/db");
        (shown["run"]["active"] == false).then_some(shown)
    });
    assert_eq!(shown["run"]["state"], "cancelled", "{shown}");
    assert_eq!(other.run(&["get", "undo/db"]).ok().stdout, "v1\n");
    let target = std::fs::read_to_string(state.join("target")).unwrap();
    assert_eq!(target.trim_end(), "v1", "the revert put CURRENT back");
    other.run(&["audit", "verify"]).ok();
}

#[test]
fn a_revocation_reaches_every_replica() {
    let Some((_database, installation, _state)) = replicated() else {
        return;
    };
    let bob = installation.issue("bob", &["reader"]);
    let replicas = [installation.serve(), installation.serve()];
    replicas[0]
        .rekey(&installation.admin())
        .run(&["create", "rv/x", "--value", "v"])
        .ok();
    for replica in &replicas {
        replica.rekey(&bob).run(&["get", "rv/x"]).ok();
    }
    let revoked = rekey_tests::rekeyd(installation.dir(), &["cert", "revoke", "bob"]);
    assert!(
        revoked.status.success(),
        "{}",
        rekey_tests::text(&revoked.stderr)
    );
    for replica in &replicas {
        // The refusal comes at the handshake as a TLS alert, which the
        // client may report as a cancelled call instead when its request
        // was already on the way; one of the next attempts names it.
        eventually("the replica to refuse the revoked certificate", || {
            let read = replica.rekey(&bob).run(&["get", "rv/x"]);
            (read.code != 0 && read.stderr.to_lowercase().contains("revoked")).then_some(())
        });
    }
}

#[test]
fn master_key_changes_reach_every_replica_and_every_value_reads() {
    let Some((_database, installation, _state)) = replicated() else {
        return;
    };
    let (a, b) = (installation.serve(), installation.serve());
    let (through_a, through_b) = (
        a.rekey(&installation.admin()),
        b.rekey(&installation.admin()),
    );
    for index in 0..3 {
        let name = format!("mk/{index}");
        through_a.run(&["create", &name, "--value", "old"]).ok();
        through_b
            .run(&["put", &name, "--value", &format!("{name}-new")])
            .ok();
    }
    let local = |args: &[&str]| {
        let output = rekey_tests::rekeyd(installation.dir(), args);
        let stderr = rekey_tests::text(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        stderr
    };
    local(&["keys", "rotate", "default"]);
    assert!(local(&["keys", "rewrap", "default"]).contains("(100%)"));
    local(&["keys", "retire", "default", "1"]);
    for index in 0..3 {
        let name = format!("mk/{index}");
        for rekey in [&through_a, &through_b] {
            assert_eq!(
                rekey.run(&["get", &name]).ok().stdout,
                format!("{name}-new\n")
            );
        }
    }
    // New values are sealed under the new key version, on either replica;
    // one that has not yet learned of it is refused rather than sealing
    // under the retired version.
    eventually("a put through the other replica", || {
        let put = through_b.run(&["put", "mk/0", "--value", "newest", "--token", TOKEN]);
        assert!(
            put.code == 0 || put.stderr.contains("was retired meanwhile"),
            "{}",
            put.stderr
        );
        (put.code == 0).then_some(())
    });
    assert_eq!(through_a.run(&["get", "mk/0"]).ok().stdout, "newest\n");
    through_a.run(&["audit", "verify"]).ok();
}
