//! The measured calls and the runs that make up a cell: `in_flight`
//! callers over `connections` channels, each making its call back to back
//! until the run's time is up; throughput and latency percentiles of all
//! of them, over every run of the cell.

use crate::machine;
use rekey_shared::proto;
use rekey_shared::proto::rotation_client::RotationClient;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_shared::proto::watch_client::WatchClient;
use rekey_tests::Server;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// The gRPC health check over the same mutual TLS: no policy, no
    /// audit, no store; the transport's own limit.
    Ping,
    /// GetSecretValue of one secret.
    GetOne,
    /// GetSecretValue of a random secret among `secrets`.
    GetRandom,
    /// GetSecretValue of a random secret among the first
    /// [`WORKING_SET`] (all, in a smaller store): the same reads whatever
    /// the store's size.
    GetWorkingSet,
    /// PutSecretValue (each caller on a secret of its own).
    Put,
    /// A full automatic `password` rotation, from StartRotation to the
    /// Watch event that says it finished (each caller on its own secret).
    Rotate,
    /// The first page of ListSecrets.
    ListFirst,
    /// A page of ListSecrets filtered by a name prefix.
    ListFiltered,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::GetOne => "get_one",
            Call::GetRandom => "get_random",
            Call::GetWorkingSet => "get_working_set",
            Call::Put => "put",
            Call::Rotate => "rotate",
            Call::ListFirst => "list_first_page",
            Call::ListFiltered => "list_filtered_page",
        }
    }
}

/// How many secrets [`Call::GetWorkingSet`] reads among: the load run's
/// store.
pub const WORKING_SET: usize = 10_000;

/// The secret each kind of caller uses.
pub fn one() -> String {
    "bench/one".to_owned()
}
pub fn numbered(index: usize) -> String {
    format!("bench/n{index:07}")
}
pub fn put_target(seed: usize) -> String {
    format!("bench/put{seed}")
}
pub fn rotation_target(seed: usize) -> String {
    format!("bench/rot{seed}")
}

/// How many callers have started (which sequence of secrets the next
/// one reads).
static CALLERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A small non-cryptographic generator: which secret to read next.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// One caller: makes `call` back to back until `until`, returning each
/// call's latency.
async fn caller(
    channel: Channel,
    call: Call,
    secrets: usize,
    seed: usize,
    until: Instant,
) -> Vec<Duration> {
    let mut health = HealthClient::new(channel.clone());
    let mut client = SecretsClient::new(channel.clone());
    let mut rotation = RotationClient::new(channel.clone());
    // Each caller reads a sequence of its own: a run's callers must not
    // read again what the last run's read (and the server kept).
    let stream = CALLERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut random = XorShift((stream + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut finished = if call == Call::Rotate {
        Some(finished_runs(channel, rotation_target(seed)).await)
    } else {
        None
    };
    let mut latencies = Vec::new();
    let mut count = 0u64;
    while Instant::now() < until {
        let started = Instant::now();
        match call {
            Call::Ping => {
                health.check(HealthCheckRequest::default()).await.unwrap();
            }
            Call::GetOne | Call::GetRandom | Call::GetWorkingSet => {
                let name = match call {
                    Call::GetOne => one(),
                    Call::GetWorkingSet => numbered(random.below(secrets.min(WORKING_SET))),
                    _ => numbered(random.below(secrets)),
                };
                client
                    .get_secret_value(proto::GetSecretValueRequest {
                        name,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            Call::Put => {
                count += 1;
                client
                    .put_secret_value(proto::PutSecretValueRequest {
                        name: put_target(seed),
                        secret_string: Some(format!("value-{count}")),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            Call::Rotate => {
                let run = rotation
                    .start_rotation(proto::StartRotationRequest {
                        name: rotation_target(seed),
                        manual: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let finished = finished.as_mut().unwrap();
                loop {
                    let event = tokio::time::timeout(Duration::from_secs(30), finished.recv())
                        .await
                        .expect("a rotation did not finish within 30 s")
                        .expect("the watch stream ended");
                    if event.run_id == run.run_id {
                        assert_eq!(event.kind, "finished", "{event:?}");
                        break;
                    }
                }
            }
            Call::ListFirst | Call::ListFiltered => {
                let filters = if call == Call::ListFiltered {
                    // A name prefix that a hundred secrets share, at any size.
                    let hundred = random.below((secrets / 100).max(1));
                    vec![proto::Filter {
                        key: proto::FilterKey::Name as i32,
                        values: vec![format!("bench/n{hundred:05}")],
                    }]
                } else {
                    Vec::new()
                };
                client
                    .list_secrets(proto::ListSecretsRequest {
                        filters,
                        page_size: 100,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }
        latencies.push(started.elapsed());
    }
    latencies
}

/// The ends of the runs on `name`: a Watch stream, open before the first
/// run starts, reduced to the events that end a run.
async fn finished_runs(
    channel: Channel,
    name: String,
) -> tokio::sync::mpsc::UnboundedReceiver<proto::WatchEvent> {
    let mut stream = WatchClient::new(channel)
        .watch(proto::WatchRequest {
            prefix: name.clone(),
            names: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            let ends = matches!(
                event.kind.as_str(),
                "finished" | "failed" | "cancelled" | "abandoned" | "needs_attention"
            );
            if event.name == name && ends && sender.send(event).is_err() {
                break;
            }
        }
    });
    receiver
}

/// What one run of a call took: a cell is one run, or several taken in
/// turn with the other calls of its group (`Measured::of`).
#[derive(Debug)]
pub struct Sample {
    latencies: Vec<Duration>,
    seconds: f64,
    /// CPU seconds: the server's, and the load generator's own.
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    /// The server's threads' context switches.
    server_switches: Option<f64>,
    /// Commits of the server's two batches (audit events, writes).
    commits: Option<f64>,
    /// Reads of values the server answered from memory, and all it made.
    cache_hits: Option<f64>,
    cache_reads: Option<f64>,
}

/// What one cell measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub calls: usize,
    pub calls_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time per call: the server's, and the load generator's own.
    pub server_cpu_us: Option<f64>,
    pub client_cpu_us: Option<f64>,
    /// The server's context switches per call: its hand-offs between
    /// threads, which cost most at low concurrency.
    pub server_switches: Option<f64>,
    /// Calls per commit of the server's batches: how many reads' events
    /// or writes one fsync carried (a rotation takes several commits).
    pub calls_per_commit: Option<f64>,
    /// The share of the server's reads of values answered from memory
    /// (its read cache); none when it made no such read.
    pub read_cache_hits: Option<f64>,
}

impl Measured {
    /// The samples of one cell, as one.
    pub fn of(samples: Vec<Sample>) -> Self {
        let seconds: f64 = samples.iter().map(|sample| sample.seconds).sum();
        let total =
            |part: fn(&Sample) -> Option<f64>| -> Option<f64> { samples.iter().map(part).sum() };
        let (server_cpu, client_cpu, server_switches, commits) = (
            total(|sample| sample.server_cpu),
            total(|sample| sample.client_cpu),
            total(|sample| sample.server_switches),
            total(|sample| sample.commits),
        );
        let (cache_hits, cache_reads) = (
            total(|sample| sample.cache_hits),
            total(|sample| sample.cache_reads),
        );
        let mut latencies: Vec<Duration> = samples
            .into_iter()
            .flat_map(|sample| sample.latencies)
            .collect();
        latencies.sort();
        let calls = latencies.len();
        let per_call = |seconds: Option<f64>| Some(seconds? * 1e6 / calls.max(1) as f64);
        Measured {
            calls,
            calls_per_second: calls as f64 / seconds,
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            server_cpu_us: per_call(server_cpu),
            client_cpu_us: per_call(client_cpu),
            server_switches: server_switches.map(|switches| switches / calls.max(1) as f64),
            calls_per_commit: commits
                .filter(|commits| *commits > 0.0)
                .map(|commits| calls as f64 / commits),
            read_cache_hits: cache_hits
                .zip(cache_reads.filter(|reads| *reads > 0.0))
                .map(|(hits, reads)| hits / reads),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "calls": self.calls,
            "calls_per_second": self.calls_per_second,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "server_cpu_us_per_call": self.server_cpu_us,
            "client_cpu_us_per_call": self.client_cpu_us,
            "server_context_switches_per_call": self.server_switches,
            "calls_per_commit": self.calls_per_commit,
            "read_cache_hit_ratio": self.read_cache_hits,
        })
    }
}

/// Runs `call` with `in_flight` callers spread over `channels` for `time`,
/// against `server`.
pub async fn run(
    server: &Server,
    channels: &[Channel],
    call: Call,
    in_flight: usize,
    secrets: usize,
    time: Duration,
) -> Sample {
    // The ping commits nothing and reads no value; what the server does
    // meanwhile is not its own.
    let counted = |series: &[&str]| {
        (call != Call::Ping)
            .then(|| server_counters(server, series))
            .flatten()
    };
    let committed = || counted(&COMMITS);
    let hits = || counted(&[CACHE_HITS]);
    let reads = || counted(&[CACHE_HITS, CACHE_MISSES]);
    let before = (
        machine::cpu_seconds(server.pid()),
        machine::own_cpu_seconds(),
        committed(),
        machine::context_switches(server.pid()),
        (hits(), reads()),
    );
    let started = Instant::now();
    let until = started + time;
    let tasks: Vec<_> = (0..in_flight)
        .map(|seed| {
            tokio::spawn(caller(
                channels[seed % channels.len()].clone(),
                call,
                secrets,
                seed,
                until,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    let since = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    Sample {
        latencies,
        seconds,
        server_cpu: since(before.0, machine::cpu_seconds(server.pid())),
        client_cpu: since(before.1, machine::own_cpu_seconds()),
        server_switches: since(before.3, machine::context_switches(server.pid())),
        commits: since(before.2, committed()),
        cache_hits: since(before.4.0, hits()),
        cache_reads: since(before.4.1, reads()),
    }
}

/// The server's counts of its batches' commits (audit events, writes).
const COMMITS: [&str; 2] = [
    "rekey_audit_batch_size_count",
    "rekey_write_batch_size_count",
];
/// Its reads of values answered from memory, and from the database.
const CACHE_HITS: &str = "rekey_read_cache_total{result=\"hit\"}";
const CACHE_MISSES: &str = "rekey_read_cache_total{result=\"miss\"}";

/// The sum of `series` on the server's metrics page so far.
fn server_counters(server: &Server, series: &[&str]) -> Option<f64> {
    let (_, _, page) = rekey_tests::http_get(server.metrics.as_deref()?, "/metrics");
    page.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            series.contains(&name).then_some(value)
        })
        .map(|value| value.trim().parse::<f64>().ok())
        .sum()
}

/// The latency below which `fraction` of `sorted` fall, in ms.
pub fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}
