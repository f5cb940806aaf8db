//! Listing: every filter and sort, and pages that stay correct while
//! secrets are added and removed between them.

use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::{self, Filter, FilterKey, SortBy, SortOrder};
use rekey_tests::Installation;
use std::collections::BTreeSet;
use tonic::transport::Channel;

async fn create(
    client: &mut SecretsClient<Channel>,
    name: &str,
    description: &str,
    tags: &[(&str, &str)],
) {
    client
        .create_secret(proto::CreateSecretRequest {
            name: name.into(),
            description: description.into(),
            tags: tags
                .iter()
                .map(|(key, value)| proto::Tag {
                    key: (*key).into(),
                    value: (*value).into(),
                })
                .collect(),
            secret_string: Some("v".into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn filter(key: FilterKey, values: &[&str]) -> Filter {
    Filter {
        key: key as i32,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

async fn names(
    client: &mut SecretsClient<Channel>,
    request: proto::ListSecretsRequest,
) -> Vec<String> {
    client
        .list_secrets(request)
        .await
        .unwrap()
        .into_inner()
        .secrets
        .into_iter()
        .map(|secret| secret.name)
        .collect()
}

async fn filtered(client: &mut SecretsClient<Channel>, filters: Vec<Filter>) -> Vec<String> {
    names(
        client,
        proto::ListSecretsRequest {
            filters,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn every_filter() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    create(
        &mut client,
        "f/alpha",
        "Primary database",
        &[("env", "prod"), ("team", "core")],
    )
    .await;
    create(&mut client, "f/beta", "Backup copy", &[("env", "staging")]).await;
    create(&mut client, "f/gamma", "primary cache", &[("team", "edge")]).await;
    create(&mut client, "g/delta", "", &[]).await;

    use FilterKey::*;
    let cases: Vec<(Vec<Filter>, &[&str])> = vec![
        (
            vec![filter(Name, &["f/"])],
            &["f/alpha", "f/beta", "f/gamma"],
        ),
        (vec![filter(Name, &["f/a", "g/"])], &["f/alpha", "g/delta"]),
        (vec![filter(Name, &["!f/"])], &["g/delta"]),
        (vec![filter(Name, &["f/", "!f/b"])], &["f/alpha", "f/gamma"]),
        (vec![filter(TagKey, &["env"])], &["f/alpha", "f/beta"]),
        (vec![filter(TagKey, &["!env"])], &["f/gamma", "g/delta"]),
        (vec![filter(TagValue, &["prod"])], &["f/alpha"]),
        (
            vec![filter(TagValue, &["st", "ed"])],
            &["f/beta", "f/gamma"],
        ),
        (vec![filter(Description, &["Primary"])], &["f/alpha"]),
        (
            vec![filter(Description, &["!Primary"])],
            &["f/beta", "f/gamma", "g/delta"],
        ),
        (vec![filter(All, &["core"])], &["f/alpha"]),
        (vec![filter(All, &["Back", "g/"])], &["f/beta", "g/delta"]),
        (vec![filter(Tag, &["team=core"])], &["f/alpha"]),
        (
            vec![filter(Tag, &["env=prod", "env=st"])],
            &["f/alpha", "f/beta"],
        ),
        (vec![filter(Tag, &["env="])], &["f/alpha", "f/beta"]),
        (vec![filter(Tag, &["!team="])], &["f/beta", "g/delta"]),
        (
            vec![filter(Name, &["f/"]), filter(TagKey, &["!env"])],
            &["f/gamma"],
        ),
    ];
    for (filters, expected) in cases {
        let got = filtered(&mut client, filters.clone()).await;
        assert_eq!(got, expected, "filters {filters:?}");
    }
}

#[tokio::test]
async fn every_sort() {
    let installation = Installation::new();
    let server = installation.serve();
    let mut client = server.client(&installation.admin()).await;
    for name in ["s/c", "s/a", "s/d", "s/b"] {
        create(&mut client, name, "", &[]).await;
    }
    // A change makes s/a the most recently changed.
    client
        .update_secret(proto::UpdateSecretRequest {
            name: "s/a".into(),
            description: Some("touched".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut by_created = Vec::new();
    let mut by_changed = Vec::new();
    for secret in client
        .list_secrets(proto::ListSecretsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .secrets
    {
        let created = rekey_shared::time::millis_from_timestamp(&secret.created_at.unwrap());
        let changed = rekey_shared::time::millis_from_timestamp(&secret.changed_at.unwrap());
        by_created.push((created, secret.name.clone()));
        by_changed.push((changed, secret.name));
    }
    by_created.sort();
    by_changed.sort();
    let order = |pairs: &[(i64, String)]| pairs.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
    let reversed = |mut list: Vec<String>| {
        list.reverse();
        list
    };
    assert_eq!(by_changed.last().unwrap().1, "s/a");

    let sorted = |by: SortBy, order: SortOrder| proto::ListSecretsRequest {
        sort_by: by as i32,
        sort_order: order as i32,
        ..Default::default()
    };
    let by_name = vec!["s/a", "s/b", "s/c", "s/d"];
    assert_eq!(
        names(&mut client, sorted(SortBy::Name, SortOrder::Asc)).await,
        by_name
    );
    assert_eq!(
        names(&mut client, sorted(SortBy::Name, SortOrder::Desc)).await,
        by_name.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        names(&mut client, sorted(SortBy::Created, SortOrder::Asc)).await,
        order(&by_created)
    );
    assert_eq!(
        names(&mut client, sorted(SortBy::Created, SortOrder::Desc)).await,
        reversed(order(&by_created))
    );
    assert_eq!(
        names(&mut client, sorted(SortBy::Changed, SortOrder::Asc)).await,
        order(&by_changed)
    );
    assert_eq!(
        names(&mut client, sorted(SortBy::Changed, SortOrder::Desc)).await,
        reversed(order(&by_changed))
    );

    // The CLI's flags reach the same orders.
    let rekey = server.rekey(&installation.admin());
    let listed = rekey
        .run(&["list", "--sort", "changed", "--desc", "--output", "json"])
        .ok()
        .json();
    assert_eq!(listed[0]["name"], "s/a");
    let listed = rekey
        .run(&[
            "list", "--prefix", "s/", "--prefix", "!s/a", "--output", "json",
        ])
        .ok()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

/// Pages through everything in `order`, changing the store between pages
/// with `between(page_index)`.
async fn page_through(
    client: &mut SecretsClient<Channel>,
    by: SortBy,
    order: SortOrder,
    mut between: impl AsyncFnMut(usize, &mut SecretsClient<Channel>),
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut page_index = 0;
    loop {
        let page = client
            .list_secrets(proto::ListSecretsRequest {
                filters: vec![filter(FilterKey::Name, &["p/"])],
                page_size: 7,
                page_token,
                sort_by: by as i32,
                sort_order: order as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.secrets.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            return seen;
        }
        page_token = page.next_page_token;
        between(page_index, client).await;
        page_index += 1;
    }
}

#[tokio::test]
async fn pages_stay_correct_while_secrets_come_and_go() {
    for (by, order) in [
        (SortBy::Name, SortOrder::Asc),
        (SortBy::Name, SortOrder::Desc),
        (SortBy::Created, SortOrder::Desc),
        (SortBy::Changed, SortOrder::Asc),
    ] {
        let installation = Installation::new();
        let server = installation.serve();
        let mut client = server.client(&installation.admin()).await;
        let originals: Vec<String> = (0..40).map(|i| format!("p/{:02}", i * 2)).collect();
        for name in &originals {
            create(&mut client, name, "", &[]).await;
        }
        let mut removed = BTreeSet::new();
        let seen = page_through(&mut client, by, order, async |page, client| {
            // New secrets on both sides of the cursor.
            for odd in [page * 8 + 1, 77 - page * 8] {
                create(client, &format!("p/{odd:02}"), "", &[]).await;
            }
            // Remove one original: early in the order, then late.
            let victim = format!("p/{:02}", (page * 14 + 6) % 80);
            if client
                .delete_secret(proto::DeleteSecretRequest {
                    name: victim.clone(),
                    force_delete_without_recovery: true,
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                removed.insert(victim);
            }
        })
        .await;

        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{by:?} {order:?}: a secret came twice: {seen:?}"
        );
        for name in &originals {
            if !removed.contains(name) {
                assert!(
                    seen.contains(name),
                    "{by:?} {order:?}: {name} was skipped: {seen:?}"
                );
            }
        }
        assert!(!removed.is_empty());
    }
}
