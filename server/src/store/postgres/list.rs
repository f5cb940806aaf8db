//! Listing secrets: the statement built in `store::list`, run with numbered placeholders.

use super::Store;
use super::fetch_for_ids;
use crate::error::Result;
use crate::store::list::{
    Bind, POSTGRES_BYTES, PageDetails, build, detail_statements, number_placeholders, page_details,
};
use crate::store::{SecretQuery, SecretRecord};

impl Store {
    /// One page of secrets.
    pub async fn list_secrets(&self, query: &SecretQuery) -> Result<Vec<SecretRecord>> {
        let (sql, binds) = build(query, POSTGRES_BYTES);
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

    /// The stage maps and rotation configurations of a page's secrets, in
    /// two statements.
    pub async fn page_details(&self, ids: &[String]) -> Result<PageDetails> {
        if ids.is_empty() {
            return Ok(PageDetails::default());
        }
        let [_, stages, configs] = detail_statements(ids.len());
        let stage_rows = fetch_for_ids(&self.pool, &number_placeholders(&stages), ids).await?;
        let config_rows = fetch_for_ids(&self.pool, &number_placeholders(&configs), ids).await?;
        page_details(&stage_rows, &config_rows)
    }
}
