//! `rekeyd`, the rekey server, as a library: [`serve`] runs the gRPC API on
//! a bound listener until a shutdown future completes; [`cli`] is what the
//! binary runs. See ARCHITECTURE.md for the module map and the path of a
//! request (TLS → principal → authorization → store → crypto).

pub mod audit;
pub mod auth;
pub mod backup;
pub mod certificates;
pub mod cli;
mod cli_admin;
pub mod config;
pub mod crls;
pub mod crypto;
pub mod error;
pub mod events;
pub mod fanout;
pub mod governance;
pub mod installation;
pub mod keyring;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod passphrase;
pub mod password;
pub mod pki;
pub mod policy;
pub mod principal;
pub mod retention;
pub mod rotation;
pub mod server_certificate;
pub mod service;
pub mod signals;
pub mod stages;
pub mod store;
pub mod sync;
pub mod tls;

use anyhow::Context;
use rekey_shared::proto::admin_server::AdminServer;
use rekey_shared::proto::rotation_server::RotationServer;
use rekey_shared::proto::secrets_server::SecretsServer;
use rekey_shared::proto::watch_server::WatchServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;

/// Opens the installation that `loaded` describes and serves it on
/// `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    loaded: &config::Loaded,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let prepared = prepare(loaded, installation::open_to_serve(loaded).await?).await?;
    serve_prepared(prepared, listener, None, shutdown).await
}

/// An installation ready to serve: everything that can refuse to start
/// (policy, TLS files, webhook settings, the audit archive directory) has
/// been read and checked.
#[derive(Debug)]
pub struct Prepared {
    loaded: config::Loaded,
    state: Arc<service::AppState>,
    tls: tls::ServerTls,
    notifier: notify::Notifier,
    /// The audit archiver, already running (see `retention`).
    archiving: Option<tokio::task::JoinHandle<()>>,
}

/// The rotation settings with the database CA's path made absolute, once
/// it is known to be there, and each `exec` command given as a relative
/// path (`rotators/ldap.sh`) made one of the installation's: relative to
/// the working directory, it would run another program wherever rekeyd is
/// started (under systemd, from `/`). A bare name is looked up on `PATH`.
fn rotation_settings(loaded: &config::Loaded) -> anyhow::Result<config::RotationSettings> {
    let mut settings = loaded.config.rotation.clone();
    for rotator in settings.exec.values_mut() {
        if rotator.in_installation() {
            rotator.command = loaded.path(&rotator.command);
        }
        // Not a refusal: the program may be put there after the start.
        if rotator.command.components().count() > 1 && !rotator.command.is_file() {
            tracing::warn!(
                command = %rotator.command.display(),
                "an exec rotator's program is not there; runs that use it fail until it is"
            );
        }
    }
    if let Some(file) = &settings.database_ca_file {
        let path = loaded.path(file);
        let pem = std::fs::read(&path).map_err(|error| {
            anyhow::anyhow!(
                "rotation.database_ca_file: cannot read {}: {error}",
                path.display()
            )
        })?;
        anyhow::ensure!(
            String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----"),
            "rotation.database_ca_file: {} holds no PEM certificate",
            path.display()
        );
        settings.database_ca_file = Some(path);
    }
    Ok(settings)
}

/// Reads and checks what serving `opened` needs, before anything listens.
pub async fn prepare(
    loaded: &config::Loaded,
    opened: installation::Opened,
) -> anyhow::Result<Prepared> {
    let config = &loaded.config;
    let installation::Opened { store, keyring } = opened;
    let page_tokens =
        service::convert::PageTokens::new(keyring.derive_key(b"rekey/page-tokens/v1"));
    let (policy, version) = governance::current_policy(&store)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let revocations = Arc::new(tls::Revocations::default());
    let tls = tls::server_config(
        &loaded.path(&config.tls.certificate),
        &loaded.path(&config.tls.private_key),
        &loaded.path(&config.tls.client_ca),
        &config
            .tls
            .crl_files
            .iter()
            .map(|file| loaded.path(file))
            .collect::<Vec<_>>(),
        revocations.clone(),
    )?;
    let notifier = notify::Notifier::start(loaded)?;
    let state = Arc::new(service::AppState {
        store,
        keyring,
        authorizer: auth::Authorizer::new(policy, version),
        revocations,
        events: events::Events::default(),
        rotation: rotation_settings(loaded)?,
        limits: limits::RateLimiter::new(config.rate_limit.clone()),
        streams: limits::OpenStreams::default(),
        refusals: auth::RefusalLog::default(),
        notifications: notifier.notifications(),
        page_tokens,
        changes: service::Changes::default(),
    });
    sync::refresh(&state)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    tracing::info!(policy_version = version, "policy in force");
    let archiving = start_retention(loaded, &state)?;
    Ok(Prepared {
        loaded: loaded.clone(),
        state,
        tls,
        notifier,
        archiving,
    })
}

/// Serves a prepared installation on `listener` until `shutdown`
/// completes, and answers Prometheus scrapes on `metrics` (plain HTTP, see
/// [`metrics::http`]) when it is given.
pub async fn serve_prepared(
    prepared: Prepared,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared {
        loaded,
        state,
        tls,
        notifier,
        archiving,
    } = prepared;
    let config = &loaded.config;
    // First: every event from here on is relayed to the other replicas.
    let fanning_out = fanout::start(state.clone());
    let syncing = tokio::spawn(sync::run(state.clone()));
    let watching_crls = tokio::spawn(tls.client_verifier.clone().watch());
    let watching_certificate = tokio::spawn(tls.own.clone().watch());
    let engine = rotation::engine::Engine::new(state.clone());
    let rotating = tokio::spawn(engine.clone().run());
    let requests = Arc::new(metrics::RequestMetrics::for_services(&[
        rekey_shared::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ])?);
    let scraping = metrics.map(|listener| {
        let metrics = metrics::Metrics::new(
            requests.clone(),
            state.clone(),
            engine.clone(),
            tls.own.clone(),
        );
        tokio::spawn(metrics::http::serve(listener, Arc::new(metrics)))
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SecretsServer<service::secrets::SecretsService>>()
        .await;
    health
        .set_serving::<AdminServer<service::admin::AdminService>>()
        .await;
    health
        .set_serving::<RotationServer<service::rotation::RotationService>>()
        .await;
    health
        .set_serving::<WatchServer<service::watch::WatchService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rekey_shared::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let authenticator = auth::Authenticator::new(state.clone());
    let secrets = InterceptedService::new(
        SecretsServer::new(service::secrets::SecretsService::new(
            state.clone(),
            engine.clone(),
        )),
        authenticator.clone(),
    );
    let admin = InterceptedService::new(
        AdminServer::new(service::admin::AdminService::new(state.clone())),
        authenticator.clone(),
    );
    let rotation = InterceptedService::new(
        RotationServer::new(service::rotation::RotationService::new(
            state.clone(),
            engine.clone(),
        )),
        authenticator.clone(),
    );
    let watch = InterceptedService::new(
        WatchServer::new(service::watch::WatchService::new(state.clone())),
        authenticator.clone(),
    );

    let (stop_sweeping, sweep_stop) = tokio::sync::oneshot::channel();
    let sweeping = tokio::spawn(refusal_sweep(state.clone(), sweep_stop));
    let purge = tokio::spawn(purge_loop(
        state.clone(),
        std::time::Duration::from_secs(config.purge_interval_seconds.max(1)),
    ));
    let incoming = ReceiverStream::new(tls::accept(listener, Arc::new(tls.config)));
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let watchers = state.clone();
    let stopping_engine = engine.clone();
    let signal = async move {
        shutdown.await;
        // A balancer that watches health hears it on the streams it has
        // open (new connections are refused from here on).
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<SecretsServer<service::secrets::SecretsService>>()
            .await;
        health
            .set_not_serving::<AdminServer<service::admin::AdminService>>()
            .await;
        health
            .set_not_serving::<RotationServer<service::rotation::RotationService>>()
            .await;
        health
            .set_not_serving::<WatchServer<service::watch::WatchService>>()
            .await;
        // No rotation step starts from here on; those under way end with
        // their outcome persisted, as changes.
        stopping_engine.stop();
        // Open Watch streams end, so that they do not hold the drain up.
        watchers
            .events
            .publish(events::SERVER_STOPPING, "", Default::default());
        let _ = stopping.send(());
    };
    let serving = tonic::transport::Server::builder()
        // A client that stops answering pings is let go, with its streams.
        .http2_keepalive_interval(Some(rekey_shared::channel::KEEP_ALIVE))
        .http2_keepalive_timeout(Some(rekey_shared::channel::KEEP_ALIVE))
        // hyper's own default, which tonic leaves unset (no bound): calls
        // at once on one connection.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(metrics::RequestMetricsLayer::new(requests))
        // Requests tonic answers before their handler (one that does not
        // decode, say) are audited there.
        .layer(service::unhandled::UnhandledLayer::new(state.clone()))
        // Health and reflection touch no store and take no policy decision,
        // but a certificate revoked since its connection opened, or one
        // that names no principal, is refused there too, and recorded.
        .add_service(InterceptedService::new(
            health_service,
            authenticator.clone(),
        ))
        .add_service(InterceptedService::new(reflection, authenticator))
        .add_service(secrets)
        .add_service(admin)
        .add_service(rotation)
        .add_service(watch)
        .serve_with_incoming_shutdown(incoming, signal);
    // In-flight requests finish; a client that keeps an idle connection
    // open does not hold the shutdown up for longer than DRAIN_TIMEOUT.
    let drain_deadline = async {
        match stopped.await {
            Ok(()) => tokio::time::sleep(DRAIN_TIMEOUT).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serving => served.context("serving gRPC")?,
        () = drain_deadline => tracing::warn!(
            seconds = DRAIN_TIMEOUT.as_secs(),
            "connections still open after the drain timeout; closing them"
        ),
    }
    // The engine stopped at the signal (serving ends only after it).
    rotating.abort();
    // Changes whose clients went away run on in tasks of their own: they
    // commit, and are told to the other replicas, before the store closes.
    // So do rotation steps under way, for as long as a step may take.
    let running = state.changes.running();
    if running > 0 {
        tracing::info!(running, "waiting for changes still running");
    }
    let wait =
        DRAIN_TIMEOUT.max(config.rotation.longest_step() + std::time::Duration::from_secs(1));
    if tokio::time::timeout(wait, state.changes.all_done())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = wait.as_secs(),
            "changes still running after the longest a step may take; closing the store under them"
        );
    }
    purge.abort();
    // The round under way ends (aborted, the counts it took would be
    // lost), then one more takes what came after.
    let _ = stop_sweeping.send(());
    let _ = sweeping.await;
    state.record_unrecorded_refusals(true).await;
    if let Some(archiving) = archiving {
        archiving.abort();
    }
    syncing.abort();
    watching_crls.abort();
    watching_certificate.abort();
    // What is queued for the other replicas goes out, then word that this
    // one leaves (they would otherwise take its silence for a crash).
    state
        .events
        .leave_replicas(std::time::Duration::from_secs(5))
        .await;
    fanning_out.abort();
    if let Some(scraping) = scraping {
        scraping.abort();
    }
    // Queued webhook deliveries get one last attempt, within a bound.
    notifier.stop().await;
    state.store.log_audit_checkpoint();
    state.store.close().await;
    Ok(())
}

/// Records the refusals left out of the log (the rate limit's, and those
/// before any handler), every second, until `stop` (between rounds, never
/// within one).
async fn refusal_sweep(
    state: Arc<service::AppState>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => state.record_unrecorded_refusals(false).await,
            _ = &mut stop => return,
        }
    }
}

/// Erases secrets whose recovery window has ended, every `interval`.
async fn purge_loop(state: Arc<service::AppState>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match state
            .store
            .purge_due(rekey_shared::time::now_millis())
            .await
        {
            Ok(purged) => {
                for name in purged {
                    tracing::info!(secret = %name, principal = "system", "purged a deleted secret");
                }
            }
            Err(error) => tracing::error!(%error, "purging deleted secrets failed"),
        }
    }
}

/// Starts archiving old audit events when `[audit] retention_days` is set;
/// an archive directory that cannot be made stops the start.
fn start_retention(
    loaded: &config::Loaded,
    state: &Arc<service::AppState>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let settings = &loaded.config.audit;
    if settings.retention_days == 0 {
        return Ok(None);
    }
    let dir = loaded.path(&settings.archive_dir);
    retention::file::create_dir(&dir)
        .with_context(|| format!("creating the audit archive directory {}", dir.display()))?;
    tracing::info!(
        days = settings.retention_days,
        dir = %dir.display(),
        "audit events older than the retention are archived"
    );
    Ok(Some(tokio::spawn(retention::run(
        state.clone(),
        dir,
        settings.clone(),
    ))))
}

/// How long a shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most calls at once on one connection (HTTP/2 streams), Watch
/// streams among them.
const MAX_STREAMS_PER_CONNECTION: u32 = 200;
