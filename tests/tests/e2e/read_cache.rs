//! Reads of values answered from memory (SQLite's read cache, a real
//! `rekeyd`): a value read again with no change between comes from memory
//! (its metrics say so), and the next read after each change sees it: a
//! put, a stage moved by hand, a deletion and its restore. With
//! `read_cache_mib = 0` nothing is kept. A read from memory asks the
//! policy as it is when the read is made, while other reads race the
//! change. That a running server drops what it keeps when another process
//! retires the master-key version it was wrapped under is in `keys`.

use rekey_shared::identity::Identity;
use rekey_shared::proto::admin_client::AdminClient;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::{GetSecretValueRequest, QueryAuditRequest};
use rekey_tests::{Installation, Rekey, Server, eventually, metric};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

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

/// What one read of the racing reader got: the value, or the code it was
/// refused with.
type Answer = Result<Option<String>, tonic::Code>;

/// A value kept in memory is given only to whom the policy lets read it
/// at the moment of the read: without `keys:Use` on the secret's key, and
/// then without a role at all, the next read is refused; and while a
/// client reads from memory back to back, every read answered before the
/// new policy is applied gets the value, none that starts after it does,
/// and each refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_memory_asks_the_policy_as_it_is_then() {
    let installation = Installation::new();
    let app = installation.issue("app", &[]);
    let server = installation.serve();
    let admin = server.rekey(&installation.admin());
    admin.run(&["create", "rc/app", "--value", "v"]).ok();
    // Without its first line (the version it is): each apply below
    // replaces whatever is in force.
    let got = admin.run(&["policy", "get"]).ok().stdout;
    let unbound = got.split_once('\n').unwrap().1.to_owned();
    let bound = |statements: &[&str]| {
        format!(
            "{unbound}\n[roles.rc-app]\nstatements = [{}]\n\n[[bindings]]\nprincipal = \"app\"\nroles = [\"rc-app\"]\n",
            statements.join(", ")
        )
    };
    let read =
        r#"{ effect = "allow", actions = ["secrets:GetSecretValue"], resources = ["rc/*"] }"#;
    let use_key = r#"{ effect = "allow", actions = ["keys:Use"], resources = ["key:*"] }"#;
    let reader = server.rekey(&app);
    admin.apply_policy(&bound(&[read, use_key])).ok();
    read_from_memory(&server, &reader, &["rc/app"], "v");

    admin.apply_policy(&bound(&[read])).ok();
    let refused = reader.run(&["get", "rc/app"]);
    assert!(
        refused.code == 1
            && refused
                .stderr
                .contains("app may not keys:Use on key:default"),
        "{}",
        refused.stderr
    );
    admin.apply_policy(&bound(&[read, use_key])).ok();
    read_from_memory(&server, &reader, &["rc/app"], "v");

    // A client reads back to back until twenty reads have started after
    // the policy without its binding is in place.
    let applied: Arc<OnceLock<Instant>> = Arc::default();
    let reads = tokio::spawn(read_until(server.client(&app).await, applied.clone()));
    let hits = metric(&server, HITS);
    tokio::task::block_in_place(|| {
        eventually("the racing reads to come from memory", || {
            (metric(&server, HITS) >= hits + 20.0).then_some(())
        })
    });
    let applying = Instant::now();
    tokio::task::block_in_place(|| admin.apply_policy(&unbound).ok());
    applied.set(Instant::now()).unwrap();
    let answers = reads.await.unwrap();

    // A read sent before the apply began may reach the server after it
    // ended (a shared machine runs the reader late): only one answered
    // before is sure to have been decided on the old policy.
    let applied = applied.get().unwrap();
    let mut refusals = 0;
    for read in &answers {
        if read.answered < applying {
            assert_eq!(read.answer, Ok(Some("v".to_owned())), "before the change");
        } else if read.started > *applied {
            assert_eq!(read.answer, Err(tonic::Code::PermissionDenied), "after it");
        }
        refusals += usize::from(read.answer.is_err());
    }
    assert!(answers.iter().filter(|read| read.answer.is_ok()).count() >= 20);
    let denied = refusals_audited(&server, &installation.admin()).await;
    // Each of the racing reader's refusals, and the one for want of
    // keys:Use above (audited as the read of rc/app that it refused).
    assert_eq!(denied, refusals + 1);
}

/// One read of the racing reader: when it was sent and answered, and what
/// it got.
struct Read {
    started: Instant,
    answered: Instant,
    answer: Answer,
}

/// Reads rc/app back to back until twenty reads have started after the
/// moment `applied` is set.
async fn read_until(
    mut client: SecretsClient<Channel>,
    applied: Arc<OnceLock<Instant>>,
) -> Vec<Read> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers: Vec<Read> = Vec::new();
    let after = |applied: &Instant, answers: &[Read]| {
        answers
            .iter()
            .filter(|read| read.started > *applied)
            .count()
    };
    while applied
        .get()
        .is_none_or(|applied| after(applied, &answers) < 20)
    {
        assert!(Instant::now() < deadline, "the reads did not end");
        let started = Instant::now();
        let answer = client
            .get_secret_value(GetSecretValueRequest {
                name: "rc/app".into(),
                ..Default::default()
            })
            .await
            .map(|response| response.into_inner().secret_string)
            .map_err(|status| status.code());
        answers.push(Read {
            started,
            answered: Instant::now(),
            answer,
        });
    }
    answers
}

/// How many of `app`'s reads of rc/app the audit log holds as refused, by
/// pages through the API (the racing reader's reads pass a page).
async fn refusals_audited(server: &Server, admin: &Path) -> usize {
    let identity = Identity::load(admin).unwrap();
    let channel = rekey_shared::channel::connect(&server.url, &identity)
        .await
        .unwrap();
    let mut client = AdminClient::new(channel);
    let (mut after_seq, mut refused) = (0, 0);
    loop {
        let events = client
            .query_audit(QueryAuditRequest {
                principal: "app".into(),
                resource: "rc/app".into(),
                after_seq,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let Some(last) = events.last() else {
            return refused;
        };
        after_seq = last.seq;
        refused += events
            .iter()
            .filter(|event| {
                event.action == "secrets:GetSecretValue" && event.outcome == "PERMISSION_DENIED"
            })
            .count();
    }
}
