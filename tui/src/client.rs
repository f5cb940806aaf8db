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
    /// The identity file, loaded.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        let path = self.identity.as_ref().ok_or_else(|| {
            anyhow::anyhow!("no identity: pass --identity FILE or set REKEY_IDENTITY")
        })?;
        Ok(Identity::load(path)?)
    }

    /// A mutual-TLS channel to the server as the identity.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(channel::connect(&self.server, &self.identity()?).await?)
    }

    /// A channel that connects on first use (the UI starts at once, and
    /// says so when the server cannot be reached), and who we are.
    pub fn lazy_channel(&self) -> anyhow::Result<(Channel, String)> {
        let identity = self.identity()?;
        let principal = principal_of(&identity.certificate_pem);
        let endpoint = channel::endpoint(&self.server, channel::tls_config(&identity))?;
        Ok((endpoint.connect_lazy(), principal))
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

/// The principal a certificate names, as the server's rule reads it (a
/// single spiffe URI, else the common name); for display only.
pub fn principal_of(certificate_pem: &str) -> String {
    use x509_parser::prelude::*;
    let Some((_, block)) = rekey_shared::identity::pem_blocks(certificate_pem)
        .into_iter()
        .next()
    else {
        return "?".to_owned();
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(block.as_bytes()) else {
        return "?".to_owned();
    };
    let Ok(certificate) = pem.parse_x509() else {
        return "?".to_owned();
    };
    let uris: Vec<String> = certificate
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [uri] if uri.starts_with("spiffe://") => uri.clone(),
        _ => certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("?")
            .to_owned(),
    }
}
