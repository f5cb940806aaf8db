//! `rekey demo`: a throwaway installation in a temporary directory, served
//! in this process on loopback, with demo secrets (one rotation awaiting
//! approval, one failed run) and a second identity that may approve; the UI
//! opens on it as the admin. Quitting stops the server and removes the
//! directory.

use rekey_server::audit::AuditEvent;
use rekey_server::{certificates, config, governance, installation, pki};
use rekey_shared::identity::Identity;
use rekey_shared::proto::rotation_client::RotationClient;
use rekey_shared::proto::{self, RotationStep};

fn domain(error: rekey_server::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("rekey-demo-").tempdir()?;
    installation::init(dir.path(), &[], None, None).await?;
    installation::add_demo_secrets(dir.path()).await?;
    // Its own database and root key, whatever the shell says (REKEY_DATABASE_URL
    // may name a real installation's).
    let mut loaded = config::load_new_installation(dir.path())?;
    let ca = pki::CertificateAuthority::load(dir.path())?;
    let approver = dir.path().join("approver.pem");
    certificates::issue(&loaded, &ca, "approver", 30, &approver).await?;
    {
        let opened = installation::open(&loaded).await?;
        let bound = governance::bind(
            &opened.store,
            "approver",
            &["approver".to_owned()],
            &AuditEvent::local("policy:ApplyPolicy", "*", "demo approver"),
        )
        .await;
        opened.store.close().await;
        bound.map_err(domain)?;
    }
    // A failed demo run fails at once, without retries.
    loaded.config.rotation.max_attempts = 1;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Server and UI run side by side in this task; quitting the UI stops
    // the server.
    let serving = rekey_server::serve(&loaded, listener, async {
        let _ = stopped.await;
    });
    let ui = async {
        let result = demo_ui(&url, dir.path(), &approver).await;
        let _ = stop.send(());
        result
    };
    let (served, result) = tokio::join!(serving, ui);
    drop(dir);
    served?;
    result
}

async fn demo_ui(
    url: &str,
    dir: &std::path::Path,
    approver: &std::path::Path,
) -> anyhow::Result<()> {
    let identity = Identity::load(&dir.join(installation::ADMIN_IDENTITY))?;
    let channel = rekey_shared::channel::connect(url, &identity).await?;
    let mut rotation = RotationClient::new(channel.clone());
    let configure = |name: &str, approve: bool, field: &str| proto::ConfigureRotationRequest {
        name: name.to_owned(),
        rotator: "password".to_owned(),
        schedule: "rate(30 days)".to_owned(),
        approval_steps: if approve {
            vec![RotationStep::SetSecret as i32]
        } else {
            Vec::new()
        },
        approvals_required: u32::from(approve),
        json_field: field.to_owned(),
        ..Default::default()
    };
    rotation
        .configure_rotation(configure("demo/db/orders", true, "password"))
        .await?;
    rotation
        .configure_rotation(configure("demo/api/payments", false, ""))
        .await?;
    // The session secret is not JSON: a rotation of its "password" field fails.
    rotation
        .configure_rotation(configure("demo/app/session-secret", false, "password"))
        .await?;
    for name in ["demo/db/orders", "demo/app/session-secret"] {
        rotation
            .start_rotation(proto::StartRotationRequest {
                name: name.to_owned(),
                manual: false,
            })
            .await?;
    }

    let message = format!(
        "demo: approve demo/db/orders as another user: rekey --server {url} --identity {}",
        approver.display()
    );
    crate::ui::run(channel, url, "admin", Some(message)).await
}
