//! Connecting to the server: where it is, who we are. Errors name the flag
//! or variable that fixes them.

use rekey_shared::channel;
use rekey_shared::identity::Identity;
use rekey_shared::proto::admin_client::AdminClient;
use rekey_shared::proto::rotation_client::RotationClient;
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
    /// A mutual-TLS channel to the server as the identity.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let path = self.identity.as_ref().ok_or_else(|| {
            anyhow::anyhow!("no identity: pass --identity FILE or set REKEY_IDENTITY")
        })?;
        let identity = Identity::load(path)?;
        Ok(channel::connect(&self.server, &identity).await?)
    }

    pub async fn secrets(&self) -> anyhow::Result<SecretsClient<Channel>> {
        Ok(SecretsClient::new(self.channel().await?))
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel().await?))
    }

    pub async fn rotation(&self) -> anyhow::Result<RotationClient<Channel>> {
        Ok(RotationClient::new(self.channel().await?))
    }
}
