//! Listing secrets: the statement built in `store::list`, run with numbered placeholders.

use super::Store;
use crate::error::Result;
use crate::store::list::{Bind, build, number_placeholders};
use crate::store::{SecretQuery, SecretRecord};

impl Store {
    /// One page of secrets.
    pub async fn list_secrets(&self, query: &SecretQuery) -> Result<Vec<SecretRecord>> {
        let (sql, binds) = build(query);
        let sql = number_placeholders(&sql);
        let mut statement = sqlx::query(&sql);
        for bind in binds {
            statement = match bind {
                Bind::Text(text) => statement.bind(text),
                Bind::Integer(number) => statement.bind(number),
            };
        }
        let rows = statement.fetch_all(&self.pool).await?;
        self.with_tags(&rows).await
    }
}
