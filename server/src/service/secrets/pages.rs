//! A page of the secrets a listing matches that the caller may see. The
//! store scans on past what the caller may not see until the page is full
//! or the store ends, so that whether a page has a next-page token says
//! nothing of secrets the caller may not see: a filter on a name's prefix,
//! a page at a time, would otherwise spell out hidden names (a token came
//! back exactly when a hidden secret matched). The scan is bounded; a page
//! that reaches the bound ends early with a token, which then tells only
//! that at least that many secrets the caller may not see lie ahead.

use crate::error::Result;
use crate::service::convert::PageTokens;
use crate::store::{Cursor, SecretQuery, SecretRecord, Store};

/// Secrets the store scans at most for one page.
const SCAN_BUDGET: usize = 5_000;
/// Secrets one store query scans past the first (which asks for a page).
const SCAN_CHUNK: u32 = 500;

/// What a page holds and how many secrets it left out.
pub(super) struct Page {
    pub secrets: Vec<SecretRecord>,
    pub hidden: usize,
    pub next_page_token: String,
}

/// Up to `query.limit` secrets that `query` matches and `visible` lets
/// through, in order; a token when the page is full or the scan reached
/// its bound, none when the store ended.
pub(super) async fn visible_page(
    store: &Store,
    tokens: &PageTokens,
    query: &SecretQuery,
    visible: impl Fn(&SecretRecord) -> bool,
) -> Result<Page> {
    visible_page_within(store, tokens, query, visible, SCAN_BUDGET).await
}

async fn visible_page_within(
    store: &Store,
    tokens: &PageTokens,
    query: &SecretQuery,
    visible: impl Fn(&SecretRecord) -> bool,
    budget: usize,
) -> Result<Page> {
    let wanted = query.limit as usize;
    let mut scan = query.clone();
    let mut page = Page {
        secrets: Vec::new(),
        hidden: 0,
        next_page_token: String::new(),
    };
    loop {
        let chunk = store.list_secrets(&scan).await?;
        let ended = chunk.len() < scan.limit as usize;
        let Some(last) = chunk.last() else {
            return Ok(page);
        };
        let last_scanned = tokens.list_token(query, last);
        scan.after = Some(Cursor::after(last, query.sort));
        for secret in chunk {
            if page.secrets.len() == wanted {
                break;
            }
            if visible(&secret) {
                page.secrets.push(secret);
            } else {
                page.hidden += 1;
            }
        }
        if let Some(last) = page.secrets.last()
            && page.secrets.len() == wanted
        {
            page.next_page_token = tokens.list_token(query, last);
            return Ok(page);
        }
        if ended {
            return Ok(page);
        }
        let scanned = page.secrets.len() + page.hidden;
        if scanned >= budget {
            page.next_page_token = last_scanned;
            return Ok(page);
        }
        scan.limit = SCAN_CHUNK.min(u32::try_from(budget - scanned).unwrap_or(SCAN_CHUNK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditKey};
    use crate::crypto::{Key, RootKey};
    use crate::store::NewSecret;
    use rekey_shared::{KeyName, SecretName};

    /// Past its bound a page ends early with a token (and nothing it may
    /// not see); the next page goes on from there.
    #[tokio::test]
    async fn a_page_ends_at_its_bound_and_the_next_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db").display());
        let store = Store::open(&url, AuditKey::derive(&RootKey::new(Key::generate())))
            .await
            .unwrap();
        for (index, name) in (0..12)
            .map(|i| (i, format!("hidden/{i:02}")))
            .chain([(12, "seen/a".to_owned())])
        {
            let secret = NewSecret {
                id: format!("id-{index}"),
                name: SecretName::parse(&name).unwrap(),
                description: String::new(),
                key_name: KeyName::default_key(),
                tags: Vec::new(),
                created_at: index,
            };
            store
                .create_secret(
                    &secret,
                    None,
                    &AuditEvent::system("CreateSecret", &name, ""),
                )
                .await
                .unwrap();
        }
        let tokens = PageTokens::new(Key::generate());
        let visible = |secret: &SecretRecord| secret.name.as_str().starts_with("seen/");
        let mut query = SecretQuery {
            limit: 2,
            ..SecretQuery::default()
        };
        let mut pages = Vec::new();
        loop {
            let page = visible_page_within(&store, &tokens, &query, visible, 5)
                .await
                .unwrap();
            let names: Vec<String> = page.secrets.iter().map(|s| s.name.to_string()).collect();
            pages.push((names, page.hidden));
            if page.next_page_token.is_empty() {
                break;
            }
            query.after = tokens.list_cursor(&page.next_page_token, &query).unwrap();
        }
        // 12 hidden secrets, 5 or so at a time (a first query of a page,
        // then chunks), then the one the caller may see.
        let hidden: usize = pages.iter().map(|(_, hidden)| hidden).sum();
        assert_eq!(hidden, 12, "{pages:?}");
        assert!(pages.len() >= 3, "{pages:?}");
        let seen: Vec<&String> = pages.iter().flat_map(|(names, _)| names).collect();
        assert_eq!(seen, ["seen/a"]);
        assert!(
            pages[..pages.len() - 1]
                .iter()
                .all(|(names, _)| names.is_empty())
        );
        store.close().await;
    }
}
