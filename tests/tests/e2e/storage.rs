//! What is on disk: no plaintext in the SQLite file, ciphertexts that fail
//! loudly when changed or moved, values that survive a restart, and one
//! server per SQLite file.

use rekey_shared::proto;
use rekey_tests::{DEADLINE, Installation, binary, contains_bytes, text};
use sqlx::{Connection, Row, SqliteConnection};
use tonic::Code;

async fn database(installation: &Installation) -> SqliteConnection {
    let url = format!("sqlite://{}", installation.database().display());
    SqliteConnection::connect(&url).await.unwrap()
}

fn database_bytes(installation: &Installation) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", installation.database().display());
        if let Ok(content) = std::fs::read(&path) {
            bytes.extend(content);
        }
    }
    bytes
}

fn get(name: &str, version: Option<&str>) -> proto::GetSecretValueRequest {
    proto::GetSecretValueRequest {
        name: name.into(),
        version_id: version.map(Into::into),
        version_stage: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_holds_no_plaintext() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    let canary = "plaintext-canary-4b1d9c0e7a";
    client
        .create_secret(proto::CreateSecretRequest {
            name: "disk/canary".into(),
            secret_string: Some(canary.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .put_secret_value(proto::PutSecretValueRequest {
            name: "disk/canary".into(),
            secret_binary: Some(canary.as_bytes().to_vec()),
            ..Default::default()
        })
        .await
        .unwrap();
    // The control: the canary reads back, so the search below looks for
    // bytes that were really stored.
    let read = client
        .get_secret_value(get("disk/canary", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.secret_binary.as_deref(), Some(canary.as_bytes()));
    assert!(!contains_bytes(
        &database_bytes(&installation),
        canary.as_bytes()
    ));
    drop(client);
    assert!(server.stop().success());
    // After a clean stop the WAL is checkpointed into the main file.
    let bytes = database_bytes(&installation);
    assert!(
        contains_bytes(&bytes, b"disk/canary"),
        "the search must see the secret's row"
    );
    assert!(!contains_bytes(&bytes, canary.as_bytes()));
}

#[tokio::test]
async fn changed_or_moved_ciphertexts_fail_the_integrity_check() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    let v1 = client
        .create_secret(proto::CreateSecretRequest {
            name: "disk/tamper".into(),
            secret_string: Some("first".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version_id
        .unwrap();
    let v2 = client
        .put_secret_value(proto::PutSecretValueRequest {
            name: "disk/tamper".into(),
            secret_string: Some("second".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version_id;

    let mut db = database(&installation).await;
    let row = sqlx::query("SELECT ciphertext, wrapped_data_key FROM versions WHERE version_id = ?")
        .bind(&v1)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let original: Vec<u8> = row.get("ciphertext");
    let original_key: Vec<u8> = row.get("wrapped_data_key");

    // One flipped byte.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    sqlx::query("UPDATE versions SET ciphertext = ? WHERE version_id = ?")
        .bind(&flipped)
        .bind(&v1)
        .execute(&mut db)
        .await
        .unwrap();
    let status = client
        .get_secret_value(get("disk/tamper", Some(&v1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(
        status.message().contains("failed its integrity check"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("first"));

    // Put back, it reads again: the failure was the flipped byte.
    sqlx::query("UPDATE versions SET ciphertext = ? WHERE version_id = ?")
        .bind(&original)
        .bind(&v1)
        .execute(&mut db)
        .await
        .unwrap();
    let read = client
        .get_secret_value(get("disk/tamper", Some(&v1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.secret_string.as_deref(), Some("first"));

    // v1's ciphertext and data key moved into v2's row.
    sqlx::query("UPDATE versions SET ciphertext = ?, wrapped_data_key = ? WHERE version_id = ?")
        .bind(&original)
        .bind(&original_key)
        .bind(&v2)
        .execute(&mut db)
        .await
        .unwrap();
    let status = client
        .get_secret_value(get("disk/tamper", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{}", status.message());
    // The server is still serving: other reads work.
    let read = client
        .get_secret_value(get("disk/tamper", Some(&v1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.secret_string.as_deref(), Some("first"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_serves_every_value_written_before() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    let mut written = Vec::new();
    for index in 0..5 {
        let name = format!("restart/{index}");
        client
            .create_secret(proto::CreateSecretRequest {
                name: name.clone(),
                secret_string: Some(format!("v1-{index}")),
                ..Default::default()
            })
            .await
            .unwrap();
        let v2 = client
            .put_secret_value(proto::PutSecretValueRequest {
                name: name.clone(),
                secret_binary: Some(vec![index as u8; 100]),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .version_id;
        written.push((name, v2));
    }
    drop(client);
    assert!(server.stop().success());

    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    for (index, (name, v2)) in written.iter().enumerate() {
        let current = client
            .get_secret_value(get(name, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&current.version_id, v2);
        assert_eq!(current.secret_binary, Some(vec![index as u8; 100]));
        let previous = client
            .get_secret_value(proto::GetSecretValueRequest {
                name: name.clone(),
                version_id: None,
                version_stage: Some("PREVIOUS".into()),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(previous.secret_string, Some(format!("v1-{index}")));
    }
}

/// A second `rekeyd serve` on a database another one serves exits 1 and
/// says so, before it changes anything, also when it names the file
/// through a symbolic link; the first goes on serving, and once it stops
/// the database can be served again.
#[test]
fn a_second_server_on_one_sqlite_file_is_refused() {
    let installation = Installation::new();
    let server = installation.serve();
    let rekey = server.rekey(&installation.admin());
    rekey.run(&["create", "one/server", "--value", "v"]).ok();

    let (status, said) = exit_of(second_server(&installation).spawn().unwrap());
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("another rekeyd is serving the database")
            && said.contains("one SQLite file has one server"),
        "{said}"
    );
    assert_eq!(rekey.run(&["get", "one/server"]).ok().stdout, "v\n");

    // Nor through another name for the file: a symbolic link.
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("link.db");
    std::os::unix::fs::symlink(installation.database(), &link).unwrap();
    let second = second_server(&installation)
        .env("REKEY_DATABASE_URL", format!("sqlite://{}", link.display()))
        .spawn()
        .unwrap();
    let (status, said) = exit_of(second);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("another rekeyd is serving the database") && said.contains("link.db"),
        "{said}"
    );

    drop(rekey);
    assert!(server.stop().success());
    let again = installation.serve();
    let rekey = again.rekey(&installation.admin());
    assert_eq!(rekey.run(&["get", "one/server"]).ok().stdout, "v\n");
}

/// A second `rekeyd serve` of `installation`, what it says kept.
fn second_server(installation: &Installation) -> std::process::Command {
    let mut command = std::process::Command::new(binary("rekeyd"));
    command
        .arg("--dir")
        .arg(installation.dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// How `server` (a second `rekeyd serve`) ended, and what it said; fails
/// if it is still serving after [`DEADLINE`].
fn exit_of(mut server: std::process::Child) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            server.kill().unwrap();
            panic!("a second server started on the same database");
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    };
    (status, text(&server.wait_with_output().unwrap().stderr))
}
