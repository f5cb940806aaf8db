//! Prometheus metrics: what `GET /metrics` on the metrics listener
//! ([`http`]) shows. Requests are counted as they are answered
//! ([`layer`] around the gRPC router, into [`requests`]); the store counts
//! its batches, its writers' pauses and its read cache's hits
//! ([`crate::store::StoreMetrics`]);
//! rotation runs and waiting approvals are read from the store at each
//! scrape ([`rotation`]).
//!
//! Labels are bounded and say nothing secret: gRPC method paths from the
//! services' descriptors, status codes, run states. Never a secret's name,
//! a principal, a value or key material. The state lives in one [`Metrics`]
//! per `serve`, shared as an `Arc`, not in globals: two servers in one
//! process (the tests, `rekey demo`) keep their counts apart.

mod exposition;
pub mod http;
mod layer;
mod requests;
mod rotation;

pub use exposition::Histogram;
pub use layer::RequestMetricsLayer;
pub use requests::RequestMetrics;

use crate::rotation::engine::Engine;
use crate::server_certificate::ServerCertificate;
use crate::service::AppState;
use exposition::Exposition;
use std::sync::Arc;

/// Batch-size buckets: one writer or event up to the largest batches.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Duration buckets, in seconds: half a millisecond up to ten seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Everything a scrape reads.
#[derive(Debug)]
pub struct Metrics {
    requests: Arc<RequestMetrics>,
    state: Arc<AppState>,
    engine: Arc<Engine>,
    /// The server certificate served (its notAfter).
    certificate: Arc<ServerCertificate>,
    /// One scrape at a time: the rotation gauges query the database, and
    /// anyone on the host can connect, so parallel scrapes must not take
    /// the pool from the gRPC handlers.
    scraping: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub fn new(
        requests: Arc<RequestMetrics>,
        state: Arc<AppState>,
        engine: Arc<Engine>,
        certificate: Arc<ServerCertificate>,
    ) -> Self {
        Self {
            requests,
            state,
            engine,
            certificate,
            scraping: tokio::sync::Mutex::new(()),
        }
    }

    /// The page a scrape gets.
    pub async fn render(&self) -> String {
        let _one_at_a_time = self.scraping.lock().await;
        let mut page = Exposition::default();
        page.family("rekey_build_info", "gauge", "The rekeyd version serving.");
        page.sample(
            "rekey_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        self.requests.write(&mut page);
        rotation::write(&self.state, &self.engine, &mut page).await;
        let store = self.state.store.store_metrics();
        page.family(
            "rekey_audit_batch_size",
            "histogram",
            "Audit events of requests that changed nothing, appended per group commit.",
        );
        page.histogram("rekey_audit_batch_size", &[], &store.audit_events);
        page.family(
            "rekey_write_batch_size",
            "histogram",
            "Writers whose changes one write transaction committed.",
        );
        page.histogram("rekey_write_batch_size", &[], &store.writers);
        page.family(
            "rekey_write_pause_seconds",
            "histogram",
            "How long each pause of the writers for upkeep (a SQLite checkpoint) held every write and every read's audit event waiting.",
        );
        page.histogram("rekey_write_pause_seconds", &[], &store.writer_pauses);
        page.family(
            "rekey_read_cache_total",
            "counter",
            "Reads of values answered from memory (hit) and from the database (miss); SQLite only.",
        );
        for (result, counter) in [
            ("hit", &store.read_cache_hits),
            ("miss", &store.read_cache_misses),
        ] {
            page.sample(
                "rekey_read_cache_total",
                &[("result", result)],
                counter.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        if let Some(expiry) = self.certificate.not_after() {
            page.family(
                "rekey_server_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the server certificate in use expires (notAfter), in Unix seconds.",
            );
            page.sample(
                "rekey_server_certificate_expiry_timestamp_seconds",
                &[],
                expiry,
            );
        }
        page.finish()
    }
}
