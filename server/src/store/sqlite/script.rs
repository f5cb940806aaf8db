//! Several statements sent to SQLite as one query. sqlx runs each query
//! on its connection's worker thread, so every statement costs a round trip
//! between the async runtime and that thread; inside the write batch that
//! round trip is serial time every writer waits for. A script pays it once
//! for statements whose results the writer does not need one by one: sqlx
//! prepares a multi-statement query as a unit and binds its anonymous `?`
//! parameters in order across the statements, so values are bound here in
//! the order their `?` appear. Only rows are returned, so a statement whose
//! effect the caller must see says so with `RETURNING`. Each dialect keeps
//! its SQL explicit: PostgreSQL cannot prepare several statements as one.

use super::Tx;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Encode, Sqlite, Type};

pub(super) struct Script<'q> {
    sql: String,
    arguments: SqliteArguments<'q>,
    statements: usize,
    /// The first value that could not be bound: the script then fails.
    unbound: Option<sqlx::error::BoxDynError>,
}

impl<'q> Script<'q> {
    pub(super) fn new() -> Self {
        Self {
            sql: String::new(),
            arguments: SqliteArguments::default(),
            statements: 0,
            unbound: None,
        }
    }

    /// Appends one statement; its `?` take the values bound next, in order.
    pub(super) fn statement(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self.statements += 1;
        self
    }

    /// Binds the next `?` of the statements appended so far.
    pub(super) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Sqlite> + Type<Sqlite>,
    {
        // Encoding into SQLite's argument list does not fail for the types
        // rekey binds (text, blobs, integers, flags). Were it to, the
        // script must not run with a parameter left NULL.
        if let Err(error) = self.arguments.add(value) {
            self.unbound.get_or_insert(error);
        }
        self
    }

    /// Runs every statement in `tx`, in order, in one round trip; the rows
    /// of all of them, in order. The first statement that fails stops the
    /// script and is its error; the writer's savepoint takes back the rest.
    pub(super) async fn run(self, tx: &mut Tx<'_>) -> sqlx::Result<Vec<SqliteRow>> {
        if let Some(error) = self.unbound {
            return Err(sqlx::Error::Encode(error));
        }
        if self.statements == 0 {
            return Ok(Vec::new());
        }
        sqlx::query_with(&self.sql, self.arguments)
            .fetch_all(&mut **tx)
            .await
    }
}
