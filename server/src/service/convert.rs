//! Conversions between store records and API messages, and the opaque page
//! tokens. Nothing here touches a value.

use crate::crypto::Key;
use crate::error::{Error, Result};
use crate::rotation::ConfigRecord;
use crate::stages::StageMap;
use crate::store::{Cursor, SecretQuery, SecretRecord, SortKey, VersionSummary};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rekey_shared::proto;
use rekey_shared::time::timestamp_from_millis;
use std::collections::BTreeMap;

const MILLIS_PER_DAY: i64 = 86_400_000;

pub fn today() -> i64 {
    rekey_shared::time::now_millis().div_euclid(MILLIS_PER_DAY)
}

fn day_timestamp(day: Option<i64>) -> Option<prost_types::Timestamp> {
    day.map(|day| timestamp_from_millis(day * MILLIS_PER_DAY))
}

pub fn secret_metadata(
    secret: &SecretRecord,
    stages: &StageMap,
    rotation: Option<&ConfigRecord>,
) -> proto::SecretMetadata {
    let mut by_version: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (stage, version) in stages {
        by_version
            .entry(version.as_str())
            .or_default()
            .push(stage.to_string());
    }
    proto::SecretMetadata {
        name: secret.name.to_string(),
        secret_id: secret.id.clone(),
        description: secret.description.clone(),
        key_name: secret.key_name.to_string(),
        tags: secret
            .tags
            .iter()
            .map(|(key, value)| proto::Tag {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        created_at: Some(timestamp_from_millis(secret.created_at)),
        changed_at: Some(timestamp_from_millis(secret.changed_at)),
        last_accessed_at: day_timestamp(secret.accessed_day),
        last_rotated_at: rotation
            .and_then(|config| config.last_rotated_at)
            .map(timestamp_from_millis),
        next_rotation_at: rotation
            .and_then(|config| config.next_rotation_at)
            .map(timestamp_from_millis),
        deletion_date: secret.deletion_date.map(timestamp_from_millis),
        rotation_enabled: rotation.is_some_and(|config| config.enabled),
        versions: by_version
            .into_iter()
            .map(|(version_id, stages)| proto::VersionStages {
                version_id: version_id.to_owned(),
                stages,
            })
            .collect(),
    }
}

pub fn secret_version(version: &VersionSummary) -> proto::SecretVersion {
    proto::SecretVersion {
        version_id: version.version_id.to_string(),
        stages: version.stages.iter().map(ToString::to_string).collect(),
        created_at: Some(timestamp_from_millis(version.created_at)),
        created_by: version.created_by.clone(),
        last_accessed_at: day_timestamp(version.accessed_day),
        key_name: version.key_name.clone(),
    }
}

/// Page tokens: the position after which the next page starts, sealed
/// (AES-256-GCM, the kind of listing as associated data) under a key
/// derived from the root key, so that every replica opens every other's
/// tokens and a token says nothing of where it points. It may point at a
/// secret the caller may not see: a listing leaves those out of its page,
/// not out of its position.
#[derive(Debug)]
pub struct PageTokens(Key);

impl PageTokens {
    pub fn new(key: Key) -> Self {
        Self(key)
    }

    pub fn encode(&self, kind: &str, position: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.0.seal(position.as_bytes(), kind.as_bytes()))
    }

    pub fn decode(&self, kind: &str, token: &str) -> Result<Option<String>> {
        if token.is_empty() {
            return Ok(None);
        }
        let malformed = || {
            Error::InvalidArgument(
                "page token is malformed, or of another listing (other filters or flags, \
                 another secret); pass the next_page_token of the previous response unchanged, \
                 with the request that it answered"
                    .to_owned(),
            )
        };
        let sealed = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        let opened = self
            .0
            .open(&sealed, kind.as_bytes())
            .map_err(|_| malformed())?;
        let position = std::str::from_utf8(&opened).map_err(|_| malformed())?;
        Ok(Some(position.to_owned()))
    }

    /// The token of the page after `last` in `query`'s listing.
    pub fn list_token(&self, query: &SecretQuery, last: &SecretRecord) -> String {
        let (sort, descending) = (query.sort, query.descending);
        let Cursor { value, name } = Cursor::after(last, sort);
        self.encode(
            &listing(query),
            &format!("{}:{value}:{name}", sort_tag(sort, descending)),
        )
    }

    /// Where `query`'s listing continues. A token of another listing is
    /// refused rather than misread: one sorted another way, saying so;
    /// one of other filters or flags (whose position would skip what this
    /// listing holds before it), as a token that does not open.
    pub fn list_cursor(&self, token: &str, query: &SecretQuery) -> Result<Option<Cursor>> {
        let (sort, descending) = (query.sort, query.descending);
        let Some(position) = self.decode(&listing(query), token)? else {
            return Ok(None);
        };
        let malformed = || Error::InvalidArgument("page token is malformed".to_owned());
        let mut parts = position.splitn(3, ':');
        let (Some(tag), Some(value), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        if tag != sort_tag(sort, descending) {
            return Err(Error::InvalidArgument(format!(
                "the page token belongs to a listing sorted {tag}; keep the sort of the first page"
            )));
        }
        Ok(Some(Cursor {
            value: value.parse().map_err(|_| malformed())?,
            name: name.to_owned(),
        }))
    }
}

/// What a listing's tokens are bound to (sealed with them): its filters
/// and flags.
fn listing(query: &SecretQuery) -> String {
    format!(
        "secrets {:?} {}",
        query.filters, query.include_planned_deletion
    )
}

fn sort_tag(sort: SortKey, descending: bool) -> String {
    let key = match sort {
        SortKey::Name => "name",
        SortKey::Created => "created",
        SortKey::Changed => "changed",
    };
    format!("{key}-{}", if descending { "desc" } else { "asc" })
}

/// The most a page's items take, encoded. A client refuses a message over
/// 4 MiB (tonic's default), and items each within their own bounds (a
/// secret's 50 tags and 100 labels, an event's texts, a run's history) can
/// add up to more than that in a page of the most a request may ask for.
pub const PAGE_BYTES: usize = 3 * 1024 * 1024;

/// How many of `items`, from the first, fit in [`PAGE_BYTES`]: at least
/// one (each is far smaller), all when they fit.
pub fn fitting<T: prost::Message>(items: &[T]) -> usize {
    let mut total = 0;
    for (index, item) in items.iter().enumerate() {
        // The item, its field's tag and its length.
        total += item.encoded_len() + 6;
        if total > PAGE_BYTES && index > 0 {
            return index;
        }
    }
    items.len()
}

/// A page size: 0 means the maximum; more than the maximum is refused.
pub fn page_size(requested: u32, maximum: u32) -> Result<u32> {
    match requested {
        0 => Ok(maximum),
        size if size <= maximum => Ok(size),
        size => Err(Error::InvalidArgument(format!(
            "page size {size} is too large; the maximum is {maximum}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page ends before the item that would take it past its bound.
    #[test]
    fn pages_end_at_their_size() {
        let event = |detail: usize| proto::AuditEvent {
            detail: "d".repeat(detail),
            ..Default::default()
        };
        let large: Vec<_> = (0..8).map(|_| event(1024 * 1024)).collect();
        assert_eq!(fitting(&large), 2);
        assert_eq!(fitting(&large[..1]), 1);
        let small: Vec<_> = (0..1000).map(|_| event(1000)).collect();
        assert_eq!(fitting(&small), 1000);
        let huge = [event(5 * 1024 * 1024), event(1)];
        assert_eq!(fitting(&huge), 1, "the first always");
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let tokens = PageTokens::new(Key::generate());
        let token = tokens.encode("secrets", "prod/db");
        assert_eq!(
            tokens.decode("secrets", &token).unwrap().as_deref(),
            Some("prod/db")
        );
        // Nothing of the position shows.
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert!(!bytes.windows(4).any(|window| window == b"prod"));
        assert_eq!(tokens.decode("secrets", "").unwrap(), None);
        let other_key = PageTokens::new(Key::generate()).encode("secrets", "prod/db");
        for bad in [
            "!!!",
            "bm9wZQ",
            &tokens.encode("versions", "1"),
            &other_key,
            &URL_SAFE_NO_PAD.encode("secrets:name-asc:0:prod/db"),
        ] {
            let error = tokens.decode("secrets", bad).unwrap_err().to_string();
            assert!(error.contains("malformed"), "{bad}: {error}");
        }
    }

    #[test]
    fn list_tokens_carry_the_sort_and_the_listing() {
        let tokens = PageTokens::new(Key::generate());
        let last = SecretRecord {
            id: "a/b-x".into(),
            name: rekey_shared::SecretName::parse("a/b").unwrap(),
            description: String::new(),
            key_name: rekey_shared::KeyName::default_key(),
            tags: Vec::new(),
            created_at: 42,
            changed_at: 43,
            accessed_day: None,
            deletion_date: None,
        };
        let query = |sort, descending, filters: &[&str], deleted| SecretQuery {
            filters: filters
                .iter()
                .map(|prefix| crate::store::SecretFilter {
                    field: crate::store::FilterField::Name,
                    include: vec![(*prefix).to_owned()],
                    exclude: Vec::new(),
                })
                .collect(),
            sort,
            descending,
            include_planned_deletion: deleted,
            ..SecretQuery::default()
        };
        let made = query(SortKey::Created, true, &["a/"], false);
        let token = tokens.list_token(&made, &last);
        let cursor = tokens.list_cursor(&token, &made).unwrap().unwrap();
        assert_eq!(
            cursor,
            Cursor {
                value: 42,
                name: "a/b".into()
            }
        );
        // A listing of other filters or flags would skip what it holds
        // before the position: refused.
        for other in [
            query(SortKey::Created, true, &["b/"], false),
            query(SortKey::Created, true, &[], false),
            query(SortKey::Created, true, &["a/"], true),
        ] {
            let error = tokens.list_cursor(&token, &other).unwrap_err().to_string();
            assert!(error.contains("of another listing"), "{error}");
        }
        let error = tokens
            .list_cursor(&token, &query(SortKey::Name, false, &["a/"], false))
            .unwrap_err()
            .to_string();
        assert!(error.contains("sorted created-desc"), "{error}");
    }
}
