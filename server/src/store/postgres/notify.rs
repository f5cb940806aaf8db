//! The channel on which replicas tell each other about changes
//! (`NOTIFY`/`LISTEN`); see `crate::fanout`.

use super::Store;
use crate::error::Result;
use sqlx::postgres::PgListener;

/// The channel of the replicas' events.
const CHANNEL: &str = "rekey_events";

/// The channel of the replicas' heartbeats: one of its own, so that a
/// replica of a release from before them, which reads every payload on
/// [`CHANNEL`] as an event, never sees one.
const HEARTBEATS: &str = "rekey_heartbeats";

impl Store {
    /// Sends `payload` to every replica listening, this one included.
    pub async fn notify(&self, payload: &str) -> Result<()> {
        self.notify_on(CHANNEL, payload).await
    }

    /// Sends a heartbeat (see `crate::fanout`).
    pub async fn heartbeat(&self, payload: &str) -> Result<()> {
        self.notify_on(HEARTBEATS, payload).await
    }

    async fn notify_on(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A connection of its own that receives what replicas send, events
    /// and heartbeats (told apart by [`is_heartbeat`]).
    pub async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([CHANNEL, HEARTBEATS]).await?;
        Ok(listener)
    }
}

/// Whether `notification` is a heartbeat rather than an event.
pub fn is_heartbeat(notification: &sqlx::postgres::PgNotification) -> bool {
    notification.channel() == HEARTBEATS
}
