//! A planted value never reaches the server's log (at debug level), the
//! database file, or any error message of a run that stores, reads, and
//! fails to store it in every way a client can.

use rekey_tests::{Installation, Server, contains_bytes};

const PLANTED: &str = "planted-8c41e0f2d7-value";

#[test]
fn a_planted_value_appears_nowhere_but_in_the_answer_to_a_read() {
    let installation = Installation::new();
    let server = Server::start(
        installation.dir(),
        &[("REKEY_LOG", "debug,rekey_server=trace")],
    );
    let rekey = server.rekey(&installation.admin());
    let token = "5e1c0c4a-8d7e-4f7b-a2a4-3f3c9e6b1d20";
    let mut messages = Vec::new();
    let mut record = |run: rekey_tests::Run| {
        messages.push(run.stderr.clone());
        run
    };

    record(
        rekey
            .run_with_input(
                &["create", "leak/one", "--value-file", "-"],
                PLANTED.as_bytes(),
            )
            .ok(),
    );
    record(
        rekey
            .run_with_input(
                &["put", "leak/one", "--token", token, "--value-file", "-"],
                PLANTED.as_bytes(),
            )
            .ok(),
    );
    // Failures with the value in the request: a conflicting token, a value
    // too large, a bad name, a missing secret, a bad stage.
    let other = format!("{PLANTED}-other");
    let conflict = record(rekey.run_with_input(
        &["put", "leak/one", "--token", token, "--value-file", "-"],
        other.as_bytes(),
    ));
    assert_eq!(conflict.code, 1);
    let oversized = format!("{PLANTED}{}", "x".repeat(70_000));
    let too_big = record(rekey.run_with_input(
        &["put", "leak/one", "--value-file", "-"],
        oversized.as_bytes(),
    ));
    assert_eq!(too_big.code, 1);
    for args in [
        &["put", "leak/bad name", "--value-file", "-"][..],
        &["put", "leak/missing", "--value-file", "-"],
        &[
            "put",
            "leak/one",
            "--stage",
            "bad/stage",
            "--value-file",
            "-",
        ],
        &["create", "leak/one", "--value-file", "-"],
    ] {
        let failed = record(rekey.run_with_input(args, PLANTED.as_bytes()));
        assert_eq!(failed.code, 1, "{args:?} should fail");
    }
    let read = rekey.run(&["get", "leak/one"]).ok();
    assert_eq!(read.stdout, format!("{PLANTED}\n"));
    let field = record(rekey.run(&["get", "leak/one", "--field", "password"]));
    assert_eq!(field.code, 1);

    let log = server.stop_for_log();
    assert!(
        log.contains("leak/one"),
        "the log must cover the requests:\n{log}"
    );
    assert!(
        !log.contains(PLANTED),
        "the server log holds the value:\n{log}"
    );
    for message in &messages {
        assert!(
            !message.contains(PLANTED),
            "an error message holds the value: {message}"
        );
    }
    assert!(messages.iter().any(|m| m.contains("ALREADY_EXISTS")));
    // The audit table, field by field (and as bytes below): every request
    // of the run is there, and the value is not.
    let url = format!("sqlite://{}", installation.database().display());
    let events: Vec<(String, String, String, String)> =
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            use sqlx::Connection;
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_as("SELECT action, resource, outcome, detail FROM audit_events")
                .fetch_all(&mut db)
                .await
                .unwrap()
        });
    assert!(
        events
            .iter()
            .any(|(_, _, outcome, _)| outcome == "ALREADY_EXISTS"),
        "{events:?}"
    );
    assert!(events.len() >= 9, "{events:?}");
    for event in &events {
        assert!(
            !format!("{event:?}").contains(PLANTED),
            "an audit event holds the value: {event:?}"
        );
    }
    let mut database = Vec::new();
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", installation.database().display());
        database.extend(std::fs::read(path).unwrap_or_default());
    }
    assert!(!contains_bytes(&database, PLANTED.as_bytes()));
}

/// The database URL may carry a credential as a parameter (libpq's
/// `sslpassword`) that the PostgreSQL driver does not know: it logged each
/// such parameter with its value, at warning level, on every connection.
#[test]
fn a_parameter_of_the_database_url_is_not_logged() {
    let Some(database) = rekey_tests::databases::StorageDatabase::create() else {
        return;
    };
    let installation = Installation::on_postgres(&database);
    let separator = if database.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}sslpassword=planted-url-4e1f", database.url);
    installation.edit_config(|table| {
        table.insert("database_url".into(), toml::Value::String(url));
    });
    let server = Server::start(installation.dir(), &[("REKEY_LOG", "debug")]);
    server
        .rekey(&installation.admin())
        .run(&["create", "leak/url", "--value", "v"])
        .ok();
    let log = server.stop_for_log();
    assert!(log.contains("rekeyd serving"), "{log}");
    assert!(
        !log.contains("planted-url-4e1f"),
        "the URL's parameter is in the log"
    );
}
