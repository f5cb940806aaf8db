//! The channel on which replicas tell each other about changes
//! (`NOTIFY`/`LISTEN`); see `crate::fanout`.

use super::Store;
use crate::error::Result;
use sqlx::postgres::PgListener;

/// The one channel every replica listens on.
const CHANNEL: &str = "rekey_events";

impl Store {
    /// Sends `payload` to every replica listening, this one included.
    pub async fn notify(&self, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A connection of its own that receives what replicas send.
    pub async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}
