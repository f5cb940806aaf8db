//! Listing secrets: AWS-style filters, three sort orders, and keyset pages
//! (each page starts after the last secret of the previous one, by sort value
//! then name), so secrets added or removed between pages never make another
//! secret appear twice or go missing.
//!
//! The SQL is built from fixed fragments; every user value is a bound
//! parameter. Both backends run the same statement: SQLite as built, with
//! `?` placeholders, PostgreSQL with them numbered.

use super::rows::{CONFIG_COLUMNS, Columns, SECRET_COLUMNS, config_row, stored};
use super::{FilterField, SecretFilter, SecretQuery, SecretRecord, SortKey};
use crate::error::Result;
use crate::rotation::ConfigRecord;
use crate::stages::StageMap;
use rekey_shared::{Stage, VersionId};
use std::collections::HashMap;

/// A parameter of the query being built.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bind {
    Text(String),
    Integer(i64),
}

/// The SQL condition "`column` starts with the next bound value".
fn starts_with(column: &str) -> String {
    format!("substr({column}, 1, length(?)) = ?")
}

/// How each backend compares text byte by byte, as the prefix tests do:
/// SQLite by default, PostgreSQL in the "C" collation.
pub(super) const SQLITE_BYTES: &str = "";
pub(super) const POSTGRES_BYTES: &str = " COLLATE \"C\"";

/// Above every string that starts with `prefix` (names are ASCII).
fn past_prefix(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// One prefix test for a filter field; pushes its parameters. `bytes`
/// makes a comparison bytewise (see [`SQLITE_BYTES`]).
fn matches(field: FilterField, value: &str, bytes: &str, binds: &mut Vec<Bind>) -> String {
    let mut prefix = |times: usize| {
        for _ in 0..times {
            binds.push(Bind::Text(value.to_owned()));
            binds.push(Bind::Text(value.to_owned()));
        }
    };
    let tag = |column: &str| {
        format!(
            "EXISTS (SELECT 1 FROM secret_tags t WHERE t.secret_id = s.id AND {})",
            starts_with(column)
        )
    };
    match field {
        // A name prefix is also a range, so that the name index is sought
        // instead of scanned; the prefix test keeps the meaning exact.
        FilterField::Name if !value.is_empty() => {
            prefix(1);
            binds.push(Bind::Text(value.to_owned()));
            binds.push(Bind::Text(past_prefix(value)));
            format!(
                "({} AND s.name{bytes} >= ? AND s.name{bytes} < ?)",
                starts_with("s.name")
            )
        }
        FilterField::Name => {
            prefix(1);
            starts_with("s.name")
        }
        FilterField::Description => {
            prefix(1);
            starts_with("s.description")
        }
        FilterField::TagKey => {
            prefix(1);
            tag("t.key")
        }
        FilterField::TagValue => {
            prefix(1);
            tag("t.value")
        }
        FilterField::All => {
            prefix(4);
            format!(
                "({} OR {} OR {} OR {})",
                starts_with("s.name"),
                starts_with("s.description"),
                tag("t.key"),
                tag("t.value")
            )
        }
        FilterField::Tag => {
            let (key, value_prefix) = value.split_once('=').unwrap_or((value, ""));
            binds.push(Bind::Text(key.to_owned()));
            binds.push(Bind::Text(value_prefix.to_owned()));
            binds.push(Bind::Text(value_prefix.to_owned()));
            format!(
                "EXISTS (SELECT 1 FROM secret_tags t WHERE t.secret_id = s.id AND t.key = ? AND {})",
                starts_with("t.value")
            )
        }
    }
}

fn filter_condition(filter: &SecretFilter, bytes: &str, binds: &mut Vec<Bind>) -> String {
    let mut parts = Vec::new();
    if !filter.include.is_empty() {
        let any: Vec<String> = filter
            .include
            .iter()
            .map(|value| matches(filter.field, value, bytes, binds))
            .collect();
        parts.push(format!("({})", any.join(" OR ")));
    }
    for value in &filter.exclude {
        parts.push(format!(
            "NOT {}",
            matches(filter.field, value, bytes, binds)
        ));
    }
    if parts.is_empty() {
        "1 = 1".to_owned()
    } else {
        parts.join(" AND ")
    }
}

/// The whole statement for a query, with its parameters in order; `bytes`
/// as the backend compares bytewise ([`SQLITE_BYTES`], [`POSTGRES_BYTES`]).
pub(super) fn build(query: &SecretQuery, bytes: &str) -> (String, Vec<Bind>) {
    let mut binds = Vec::new();
    let mut conditions = Vec::new();
    if !query.include_planned_deletion {
        conditions.push("s.deletion_date IS NULL".to_owned());
    }
    for filter in &query.filters {
        conditions.push(filter_condition(filter, bytes, &mut binds));
    }
    let column = match query.sort {
        SortKey::Name => None,
        SortKey::Created => Some("s.created_at"),
        SortKey::Changed => Some("s.changed_at"),
    };
    let (after, direction) = if query.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(cursor) = &query.after {
        match column {
            None => {
                conditions.push(format!("s.name {after} ?"));
                binds.push(Bind::Text(cursor.name.clone()));
            }
            Some(column) => {
                conditions.push(format!(
                    "({column} {after} ? OR ({column} = ? AND s.name {after} ?))"
                ));
                binds.push(Bind::Integer(cursor.value));
                binds.push(Bind::Integer(cursor.value));
                binds.push(Bind::Text(cursor.name.clone()));
            }
        }
    }
    let order = match column {
        None => format!("s.name {direction}"),
        Some(column) => format!("{column} {direction}, s.name {direction}"),
    };
    let columns: Vec<String> = SECRET_COLUMNS
        .split(", ")
        .map(|column| format!("s.{column}"))
        .collect();
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    binds.push(Bind::Integer(i64::from(query.limit)));
    (
        format!(
            "SELECT {} FROM secrets s{where_clause} ORDER BY {order} LIMIT ?",
            columns.join(", ")
        ),
        binds,
    )
}

/// What a page of a listing shows besides the secrets' own rows: their
/// tags, stage maps and rotation configurations, each read for the whole
/// page in one statement rather than once per secret.
#[derive(Debug, Default)]
pub struct PageDetails {
    pub stages: HashMap<String, StageMap>,
    pub rotation: HashMap<String, ConfigRecord>,
}

/// The statements that read a page's details, for `count` secret ids
/// bound in order (`?` placeholders): tags, stages, rotation.
pub(super) fn detail_statements(count: usize) -> [String; 3] {
    let ids = vec!["?"; count].join(", ");
    [
        format!(
            "SELECT secret_id, key, value FROM secret_tags WHERE secret_id IN ({ids}) \
             ORDER BY secret_id, key"
        ),
        format!(
            "SELECT secret_id, stage, version_id FROM version_stages WHERE secret_id IN ({ids})"
        ),
        format!("SELECT {CONFIG_COLUMNS} FROM rotation_configs WHERE secret_id IN ({ids})"),
    ]
}

/// Gives each secret the tags among `rows` (the first statement's).
pub(super) fn attach_tags(secrets: &mut [SecretRecord], rows: &[impl Columns]) {
    let mut tags: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in rows {
        tags.entry(row.text("secret_id"))
            .or_default()
            .push((row.text("key"), row.text("value")));
    }
    for secret in secrets {
        secret.tags = tags.remove(&secret.id).unwrap_or_default();
        // By the keys' bytes on both backends (PostgreSQL's ORDER BY
        // follows the database's collation).
        secret.tags.sort();
    }
}

/// The stage maps and configurations among `stage_rows` and `config_rows`
/// (the second and third statements').
pub(super) fn page_details(
    stage_rows: &[impl Columns],
    config_rows: &[impl Columns],
) -> Result<PageDetails> {
    let mut details = PageDetails::default();
    for row in stage_rows {
        details
            .stages
            .entry(row.text("secret_id"))
            .or_default()
            .insert(
                stored(Stage::parse(&row.text("stage")), "stage")?,
                stored(VersionId::parse(&row.text("version_id")), "version id")?,
            );
    }
    for row in config_rows {
        let config = config_row(row)?;
        details.rotation.insert(config.secret_id.clone(), config);
    }
    Ok(details)
}

/// PostgreSQL numbers its parameters: the n-th `?` of a built statement
/// becomes `$n`. Built statements hold no literal text, so every `?` is a
/// placeholder.
pub(super) fn number_placeholders(sql: &str) -> String {
    let mut numbered = String::with_capacity(sql.len() + 16);
    for (number, part) in sql.split('?').enumerate() {
        if number > 0 {
            numbered.push_str(&format!("${number}"));
        }
        numbered.push_str(part);
    }
    numbered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Cursor;

    #[test]
    fn every_value_is_a_parameter() {
        let query = SecretQuery {
            filters: vec![SecretFilter {
                field: FilterField::All,
                include: vec!["x'; DROP TABLE secrets; --".into()],
                exclude: vec!["old".into()],
            }],
            sort: SortKey::Created,
            descending: true,
            after: Some(Cursor {
                value: 5,
                name: "n".into(),
            }),
            include_planned_deletion: false,
            limit: 10,
        };
        let (sql, binds) = build(&query, SQLITE_BYTES);
        assert!(!sql.contains("DROP"), "{sql}");
        assert_eq!(sql.matches('?').count(), binds.len());
        let numbered = number_placeholders(&sql);
        assert!(!numbered.contains('?'), "{numbered}");
        assert!(
            numbered.contains(&format!("${}", binds.len())),
            "{numbered}"
        );
        assert!(
            sql.contains("ORDER BY s.created_at DESC, s.name DESC"),
            "{sql}"
        );
        assert!(
            sql.contains("(s.created_at < ? OR (s.created_at = ? AND s.name < ?))"),
            "{sql}"
        );
    }
}
