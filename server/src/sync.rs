//! What the database shares with every process and replica, brought into
//! this server's memory: the policy in force, the revoked certificates and
//! the master-key versions. Changes made elsewhere (`rekeyd cert revoke`,
//! `rekeyd keys rotate`, another replica) take effect here within
//! [`INTERVAL`]. The loop also logs audit checkpoints.

use crate::audit::hex;
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::service::AppState;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub const INTERVAL: Duration = Duration::from_secs(1);

/// Loads everything once; [`run`] keeps it current. Each part is loaded
/// whatever became of the others: a policy this server cannot read must not
/// keep a revocation from taking effect. The first failure is returned.
pub async fn refresh(state: &AppState) -> Result<()> {
    let revocations = refresh_revocations(state).await;
    let policy = refresh_policy(state).await;
    let keys = refresh_keys(state).await;
    revocations.and(policy).and(keys)
}

/// A newer policy than the one in force is put in force. One this server
/// cannot read (a newer `rekeyd` wrote it, say, with an action this one does
/// not know) leaves it nothing it can enforce: it then refuses every request
/// (an empty policy, deny by default) until a policy it can read is applied,
/// rather than go on with one that was replaced.
async fn refresh_policy(state: &AppState) -> Result<()> {
    let store = &state.store;
    let version = store.policy_version().await?;
    if version == state.authorizer.version() {
        return Ok(());
    }
    let Some(stored) = store.current_policy().await? else {
        return Ok(());
    };
    match Policy::parse(&stored.document) {
        Ok(policy) => {
            state.put_policy_in_force(policy, stored.version);
            tracing::info!(version = stored.version, "policy in force");
            Ok(())
        }
        Err(error) => {
            // Deny everything; open Watch streams end (they would go on,
            // silent), and a client that watches again is refused.
            state.put_policy_in_force(Policy::default(), stored.version);
            Err(Error::Internal(format!(
                "stored policy version {}: {error}; this server cannot enforce it and refuses every request until a policy it can read is applied",
                stored.version
            )))
        }
    }
}

async fn refresh_revocations(state: &AppState) -> Result<()> {
    let store = &state.store;
    let (mut revoked, mut cas) = (HashSet::new(), HashSet::new());
    for (serial, issuer, principal) in store.revoked_serials().await? {
        let issued = (issuer, crate::principal::serial_hex(&serial));
        if principal == crate::store::CA_CERTIFICATE {
            cas.insert(issued);
        } else {
            revoked.insert(issued);
        }
    }
    if !state.revocations.holds(&revoked, &cas) {
        tracing::info!(
            revoked = revoked.len(),
            ca_certificates = cas.len(),
            "revoked certificates loaded"
        );
        state.revocations.replace(revoked, cas);
    }
    Ok(())
}

async fn refresh_keys(state: &AppState) -> Result<()> {
    let store = &state.store;
    let stored = store.master_key_index().await?;
    if state.keyring.differs(&stored) {
        // Another process rotated or retired a key: a read kept in memory
        // may hold a data key wrapped under a version that is gone, which
        // that process has wrapped again since. The reads first, then the
        // keys, as the read cache's docs say. (One answered meanwhile fails
        // to open and is read again from the database.)
        store.forget_cached_reads();
        state.keyring.forget_changed(&stored);
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
