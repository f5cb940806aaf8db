//! Listing secrets: the statement built in `store::list`, run on a reader
//! (`readers`): the page and its tags in one snapshot and one hand-off,
//! then, for the secrets the caller may see, their stages and rotation
//! settings in another.

use super::Store;
use super::columns::fetch_all;
use crate::error::Result;
use crate::store::list::{
    Bind, PageDetails, SQLITE_BYTES, attach_tags, build, detail_statements, page_details,
};
use crate::store::rows::secret_row;
use crate::store::{SecretQuery, SecretRecord};
use rusqlite::params_from_iter;
use rusqlite::types::Value;

impl Store {
    /// One page of secrets, with their tags.
    pub async fn list_secrets(&self, query: &SecretQuery) -> Result<Vec<SecretRecord>> {
        let (sql, binds) = build(query, SQLITE_BYTES);
        let values: Vec<Value> = binds
            .into_iter()
            .map(|bind| match bind {
                Bind::Text(text) => Value::Text(text),
                Bind::Integer(number) => Value::Integer(number),
            })
            .collect();
        self.readers
            .run(move |connection| {
                let rows = fetch_all(connection, &sql, params_from_iter(values))?;
                let mut secrets = rows.iter().map(secret_row).collect::<Result<Vec<_>>>()?;
                if !secrets.is_empty() {
                    let [tags, _, _] = detail_statements(secrets.len());
                    let ids: Vec<String> = secrets.iter().map(|secret| secret.id.clone()).collect();
                    let tag_rows = fetch_all(connection, &tags, params_from_iter(&ids))?;
                    attach_tags(&mut secrets, &tag_rows);
                }
                Ok(secrets)
            })
            .await
    }

    /// The stage maps and rotation configurations of a page's secrets, in
    /// two statements and one hand-off.
    pub async fn page_details(&self, ids: &[String]) -> Result<PageDetails> {
        if ids.is_empty() {
            return Ok(PageDetails::default());
        }
        let ids = ids.to_vec();
        self.readers
            .run(move |connection| {
                let [_, stages, configs] = detail_statements(ids.len());
                let stage_rows = fetch_all(connection, &stages, params_from_iter(&ids))?;
                let config_rows = fetch_all(connection, &configs, params_from_iter(&ids))?;
                page_details(&stage_rows, &config_rows)
            })
            .await
    }
}
