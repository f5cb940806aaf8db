//! The read-path benchmark: starts a real `rekeyd` (embedded SQLite, audit
//! log on, mutual TLS) and measures, at fixed in-flight concurrency over one
//! or several connections, throughput and p50/p99 latency of
//!
//! 1. `ping`: the gRPC health check over the same mutual TLS, no
//!    authorization, no audit: the transport's own limit;
//! 2. `get_one` and `get_random`: GetSecretValue of one secret and of random
//!    secrets among many;
//! 3. `put`: PutSecretValue;
//!
//! and the ratio of each to the ping at the same concurrency. It prints a
//! table and writes the figures as JSON.
//!
//! ```sh
//! cargo build --release --workspace
//! target/release/bench --out bench.json          # the full run, minutes
//! target/release/bench --smoke --out smoke.json  # seconds; CI runs this
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the benchmark's failure report

use rekey_shared::identity::Identity;
use rekey_shared::proto;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::Installation;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What one run measures.
struct Plan {
    secrets: usize,
    cell: Duration,
    concurrency: &'static [usize],
    connections: &'static [usize],
}

const FULL: Plan = Plan {
    secrets: 10_000,
    cell: Duration::from_secs(5),
    concurrency: &[1, 16, 64],
    connections: &[1, 4],
};

const SMOKE: Plan = Plan {
    secrets: 50,
    cell: Duration::from_millis(300),
    concurrency: &[1, 16],
    connections: &[1],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Ping,
    GetOne,
    GetRandom,
    Put,
}

impl Call {
    const ALL: [Call; 4] = [Call::Ping, Call::GetOne, Call::GetRandom, Call::Put];

    fn name(self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::GetOne => "get_one",
            Call::GetRandom => "get_random",
            Call::Put => "put",
        }
    }
}

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
    seed: u64,
    until: Instant,
) -> Vec<Duration> {
    let mut health = HealthClient::new(channel.clone());
    let mut client = SecretsClient::new(channel);
    let mut random = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut latencies = Vec::new();
    let mut count = 0u64;
    while Instant::now() < until {
        let started = Instant::now();
        match call {
            Call::Ping => {
                health.check(HealthCheckRequest::default()).await.unwrap();
            }
            Call::GetOne | Call::GetRandom => {
                let name = if call == Call::GetOne {
                    "bench/one".to_owned()
                } else {
                    format!("bench/n{}", random.below(secrets))
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
                        name: format!("bench/put{seed}"),
                        secret_string: Some(format!("value-{count}")),
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

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plan = if args.iter().any(|a| a == "--smoke") {
        &SMOKE
    } else {
        &FULL
    };
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench.json".to_owned());

    let installation = Installation::new();
    let server = installation.serve();
    let identity = Identity::load(&installation.admin()).unwrap();
    let connect = || rekey_shared::channel::connect(&server.url, &identity);
    let setup = connect().await.unwrap();
    let create = |name: String| {
        let mut client = SecretsClient::new(setup.clone());
        async move {
            client
                .create_secret(proto::CreateSecretRequest {
                    name,
                    secret_string: Some("a value of about the size of a password".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    };
    eprintln!("creating {} secrets", plan.secrets + 1 + 64);
    create("bench/one".to_owned()).await;
    for chunk in (0..plan.secrets).collect::<Vec<_>>().chunks(32) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| tokio::spawn(create(format!("bench/n{i}"))))
            .collect();
        for task in batch {
            task.await.unwrap();
        }
    }
    for seed in 0..64 {
        create(format!("bench/put{seed}")).await;
    }

    let mut cells = Vec::new();
    println!(
        "{:<11} {:>5} {:>11} {:>12} {:>9} {:>9} {:>14} {:>12}",
        "call",
        "conns",
        "in flight",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "vs ping (tput)",
        "vs ping p99"
    );
    for &connections in plan.connections {
        let channels: Vec<Channel> = {
            let mut channels = Vec::new();
            for _ in 0..connections {
                channels.push(connect().await.unwrap());
            }
            channels
        };
        for &in_flight in plan.concurrency {
            let mut ping: Option<(f64, f64)> = None;
            for call in Call::ALL {
                let until = Instant::now() + plan.cell;
                let started = Instant::now();
                let tasks: Vec<_> = (0..in_flight)
                    .map(|seed| {
                        tokio::spawn(caller(
                            channels[seed % connections].clone(),
                            call,
                            plan.secrets,
                            seed as u64,
                            until,
                        ))
                    })
                    .collect();
                let mut latencies = Vec::new();
                for task in tasks {
                    latencies.extend(task.await.unwrap());
                }
                let elapsed = started.elapsed().as_secs_f64();
                latencies.sort();
                let throughput = latencies.len() as f64 / elapsed;
                let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
                if call == Call::Ping {
                    ping = Some((throughput, p99));
                }
                let (ping_throughput, ping_p99) = ping.unwrap_or((throughput, p99));
                let (ratio, p99_ratio) = (throughput / ping_throughput, p99 / ping_p99);
                println!(
                    "{:<11} {connections:>5} {in_flight:>11} {throughput:>12.0} {p50:>9.2} {p99:>9.2} {ratio:>14.2} {p99_ratio:>12.2}",
                    call.name()
                );
                cells.push(json!({
                    "call": call.name(),
                    "connections": connections,
                    "in_flight": in_flight,
                    "calls": latencies.len(),
                    "calls_per_second": throughput,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "throughput_vs_ping": ratio,
                    "p99_vs_ping": p99_ratio,
                }));
            }
        }
    }
    let report = json!({
        "secrets": plan.secrets,
        "seconds_per_cell": plan.cell.as_secs_f64(),
        "store": "sqlite",
        "audit": true,
        "cells": cells,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("wrote {out}");
}
