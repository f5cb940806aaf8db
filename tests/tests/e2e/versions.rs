//! Deprecated versions beyond the newest hundred are purged, but never one
//! younger than a day and never one with a stage.

use rekey_shared::proto;
use rekey_tests::Installation;
use sqlx::{Connection, SqliteConnection};

#[tokio::test]
async fn old_deprecated_versions_beyond_the_newest_hundred_are_purged() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    let first = client
        .create_secret(proto::CreateSecretRequest {
            name: "many/versions".into(),
            secret_string: Some("v0".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version_id
        .unwrap();
    let mut ids = vec![first.clone()];
    for index in 1..=110 {
        ids.push(
            client
                .put_secret_value(proto::PutSecretValueRequest {
                    name: "many/versions".into(),
                    secret_string: Some(format!("v{index}")),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .version_id,
        );
    }
    // The oldest version keeps a label; the second oldest stays young.
    client
        .update_secret_version_stage(proto::UpdateSecretVersionStageRequest {
            name: "many/versions".into(),
            version_stage: "keep".into(),
            move_to_version_id: Some(first.clone()),
            remove_from_version_id: None,
        })
        .await
        .unwrap();
    let count = |client: &mut rekey_shared::proto::secrets_client::SecretsClient<_>| {
        let mut client = client.clone();
        async move {
            let mut total = 0;
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_secret_version_ids(proto::ListSecretVersionIdsRequest {
                        name: "many/versions".into(),
                        include_deprecated: true,
                        page_token,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                total += page.versions.len();
                if page.next_page_token.is_empty() {
                    return (total, page.versions);
                }
                page_token = page.next_page_token;
            }
        }
    };
    // Everything is younger than a day: nothing is purged yet.
    assert_eq!(count(&mut client).await.0, 111);

    let url = format!("sqlite://{}", installation.database().display());
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    let two_days_ago = rekey_shared::time::now_millis() - 2 * 86_400_000;
    sqlx::query("UPDATE versions SET created_at = ? WHERE version_id <> ?")
        .bind(two_days_ago)
        .bind(&ids[1])
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    client
        .put_secret_value(proto::PutSecretValueRequest {
            name: "many/versions".into(),
            secret_string: Some("v111".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // 112 versions: the newest 100 stay, and of the 12 older ones the
    // labelled first and the young second stay too.
    let (total, oldest_page) = count(&mut client).await;
    assert_eq!(total, 102);
    let oldest: Vec<&str> = oldest_page
        .iter()
        .rev()
        .take(2)
        .map(|v| v.version_id.as_str())
        .collect();
    assert_eq!(oldest, [ids[0].as_str(), ids[1].as_str()]);
    let read = client
        .get_secret_value(proto::GetSecretValueRequest {
            name: "many/versions".into(),
            version_id: Some(ids[2].clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), tonic::Code::NotFound);
}
