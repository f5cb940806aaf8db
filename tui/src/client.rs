//! Connecting to the server: where it is, who we are. Errors name the flag
//! or variable that fixes them.

use rekey_shared::channel;
use rekey_shared::identity::Identity;
use rekey_shared::proto::secrets_client::SecretsClient;
use std::path::PathBuf;
use tonic::transport::Channel;

/// Where the server is and which identity to present.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub identity: Option<PathBuf>,
}

impl Connection {
    pub async fn secrets(&self) -> anyhow::Result<SecretsClient<Channel>> {
        let path = self.identity.as_ref().ok_or_else(|| {
            anyhow::anyhow!("no identity: pass --identity FILE or set REKEY_IDENTITY")
        })?;
        let identity = Identity::load(path)?;
        let channel = channel::connect(&self.server, &identity).await?;
        Ok(SecretsClient::new(channel))
    }
}
