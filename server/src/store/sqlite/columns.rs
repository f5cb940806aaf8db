//! Rows of the synchronous connections (`threads`) for the decoders the
//! pool's rows go through (`store::rows`): a row as the statement yields
//! it, and a row read whole for the decoders that take several at once.

use super::super::rows::Columns;
use crate::error::Result;
use rusqlite::Connection;
use rusqlite::types::Value;
use std::sync::Arc;

/// A row read whole, for the decoders that take several rows at once
/// (a page's tags, stages and rotation settings).
#[derive(Debug)]
pub(super) struct OwnedRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

/// Every row of `sql` with `binds`, read whole.
pub(super) fn fetch_all(
    connection: &Connection,
    sql: &str,
    binds: impl rusqlite::Params,
) -> Result<Vec<OwnedRow>> {
    let mut statement = connection.prepare_cached(sql)?;
    let names: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.query(binds)?;
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..names.len())
            .map(|index| row.get::<_, Value>(index))
            .collect::<rusqlite::Result<_>>()?;
        all.push(OwnedRow {
            names: names.clone(),
            values,
        });
    }
    Ok(all)
}

impl OwnedRow {
    /// As [`column`]: a column the statement does not have, or of another
    /// type, is a programming error. Only the type is told, never a value.
    fn value(&self, column: &str) -> &Value {
        self.names
            .iter()
            .position(|name| name == column)
            .and_then(|index| self.values.get(index))
            .unwrap_or_else(|| panic!("no column {column}"))
    }
}

fn wrong_type(column: &str, value: &Value) -> ! {
    panic!("column {column} holds {}", value.data_type())
}

impl Columns for OwnedRow {
    fn text(&self, name: &str) -> String {
        match self.value(name) {
            Value::Text(text) => text.clone(),
            other => wrong_type(name, other),
        }
    }
    fn maybe_text(&self, name: &str) -> Option<String> {
        match self.value(name) {
            Value::Null => None,
            Value::Text(text) => Some(text.clone()),
            other => wrong_type(name, other),
        }
    }
    fn integer(&self, name: &str) -> i64 {
        match self.value(name) {
            Value::Integer(number) => *number,
            other => wrong_type(name, other),
        }
    }
    fn maybe_integer(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Value::Null => None,
            Value::Integer(number) => Some(*number),
            other => wrong_type(name, other),
        }
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        match self.value(name) {
            Value::Blob(bytes) => bytes.clone(),
            other => wrong_type(name, other),
        }
    }
    fn flag(&self, name: &str) -> bool {
        self.integer(name) != 0
    }
}

/// A missing column, or one of another type, is a programming error (the
/// statements above name their columns), and panics as the pool's rows do.
fn column<T: rusqlite::types::FromSql>(row: &rusqlite::Row<'_>, column: &str) -> T {
    row.get(column)
        .unwrap_or_else(|error| panic!("column {column}: {error}"))
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> String {
        column(self, name)
    }
    fn maybe_text(&self, name: &str) -> Option<String> {
        column(self, name)
    }
    fn integer(&self, name: &str) -> i64 {
        column(self, name)
    }
    fn maybe_integer(&self, name: &str) -> Option<i64> {
        column(self, name)
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        column(self, name)
    }
    fn flag(&self, name: &str) -> bool {
        column(self, name)
    }
}
