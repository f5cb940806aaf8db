//! What the database shares with every process and replica, brought into
//! this server's memory: the policy in force, the revoked certificates and
//! the master-key versions. Changes made elsewhere (`rekeyd cert revoke`,
//! `rekeyd keys rotate`, another replica) take effect here within
//! [`INTERVAL`]. The loop also logs audit checkpoints.

use crate::audit::hex;
use crate::error::Result;
use crate::governance;
use crate::service::AppState;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub const INTERVAL: Duration = Duration::from_secs(1);

/// Loads everything once; [`run`] keeps it current.
pub async fn refresh(state: &AppState) -> Result<()> {
    let store = &state.store;
    let version = store.policy_version().await?;
    if version != state.authorizer.version() {
        let (policy, version) = governance::current_policy(store).await?;
        state.authorizer.replace(policy, version);
        tracing::info!(version, "policy in force");
    }
    let revoked: HashSet<String> = store
        .revoked_serials()
        .await?
        .iter()
        .map(|serial| crate::principal::serial_hex(serial))
        .collect();
    if revoked.len() != state.revocations.len()
        || revoked.iter().any(|s| !state.revocations.is_revoked(s))
    {
        tracing::info!(revoked = revoked.len(), "revoked certificates loaded");
        state.revocations.replace(revoked);
    }
    if state
        .keyring
        .forget_changed(&store.master_key_index().await?)
    {
        // Another process rotated or retired a key: a read kept in memory
        // may hold a data key wrapped under a version that is gone, which
        // that process has wrapped again since. (One answered meanwhile
        // fails to open and is read again from the database.)
        store.forget_cached_reads();
    }
    Ok(())
}

/// Refreshes every [`INTERVAL`], and logs an audit checkpoint each minute
/// when the log grew.
pub async fn run(state: Arc<AppState>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = None;
    let mut since_checkpoint = 0u32;
    loop {
        ticks.tick().await;
        if let Err(error) = refresh(&state).await {
            tracing::error!(%error, "refreshing shared state failed");
        }
        since_checkpoint += 1;
        if since_checkpoint >= 60 {
            since_checkpoint = 0;
            let head = state.store.audit_head();
            if head.is_some() && head != last_checkpoint {
                if let Some((seq, mac)) = &head {
                    tracing::info!(seq, mac = %hex(mac), "audit checkpoint");
                }
                last_checkpoint = head;
            }
        }
    }
}
