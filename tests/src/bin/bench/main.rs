//! The benchmark: starts a real `rekeyd` (embedded SQLite with full fsync,
//! audit log on, mutual TLS) and measures, at fixed in-flight concurrency
//! over one or several connections, throughput and p50/p99 latency of
//!
//! 1. `ping`: the gRPC health check over the same mutual TLS, no
//!    authorization, no audit: the transport's own limit;
//! 2. `get_one` and `get_random`: GetSecretValue of one secret and of random
//!    secrets among ten thousand;
//! 3. `put`: PutSecretValue;
//! 4. `rotate`: a full `password` rotation (four steps), StartRotation to
//!    the Watch event that it finished;
//!
//! with the ratio of each to the ping at the same concurrency, the CPU time
//! per call of the server and of the load generator (which share the
//! machine) and the calls per commit of the server's batches (from its
//! metrics), beside what the disk allows (a bare fsync loop) and the
//! server's resident memory. The calls at one concurrency take turns, a
//! fifth of each cell at a time, so that a slower moment of a shared
//! machine falls on the ping and the call it is compared with alike.
//! `--scale` measures GetSecretValue and ListSecrets (first page, filtered
//! page) with 10³, 10⁵ and 10⁶ secrets in the store instead, each against
//! the 10³ figure; each size has a server of its own, all running at once,
//! and at each cell the sizes take turns as the calls do. Figures go to a
//! table, a JSON report and an SVG plot.
//!
//! ```sh
//! cargo build --release --workspace
//! target/release/bench --out bench.json            # minutes; plot in bench.svg
//! target/release/bench --scale --out scale.json    # a million secrets: minutes
//! target/release/bench --only get_one              # one call (and the ping)
//! target/release/bench --smoke --out smoke.json    # seconds; CI runs this
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the benchmark's failure report

mod load;
mod machine;
mod plot;
mod scale;

use load::{Call, Measured};
use rekey_shared::identity::Identity;
use rekey_shared::proto;
use rekey_shared::proto::rotation_client::RotationClient;
use rekey_shared::proto::secrets_client::SecretsClient;
use rekey_tests::{Installation, Server};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::transport::Channel;

/// What the load run measures.
struct Plan {
    secrets: usize,
    /// Each cell's time, in `rounds` parts taken in turn with the other
    /// calls at the same concurrency.
    cell: Duration,
    rounds: u32,
    concurrency: &'static [usize],
    connections: &'static [usize],
    /// Store sizes of the scale run.
    scale: &'static [usize],
    scale_cell: Duration,
}

const FULL: Plan = Plan {
    secrets: 10_000,
    cell: Duration::from_secs(5),
    rounds: 5,
    concurrency: &[1, 16, 64],
    connections: &[1, 4],
    scale: &[1_000, 100_000, 1_000_000],
    scale_cell: Duration::from_secs(5),
};

const SMOKE: Plan = Plan {
    secrets: 200,
    cell: Duration::from_millis(300),
    rounds: 2,
    concurrency: &[1, 16],
    connections: &[1],
    scale: &[200, 2_000],
    scale_cell: Duration::from_millis(300),
};

const LOAD_CALLS: [Call; 5] = [
    Call::Ping,
    Call::GetOne,
    Call::GetRandom,
    Call::Put,
    Call::Rotate,
];

/// The cells of the scale run: (call, connections, in flight).
const SCALE_CELLS: [(Call, usize, usize); 7] = [
    (Call::GetRandom, 1, 1),
    (Call::GetRandom, 4, 64),
    (Call::GetWorkingSet, 4, 64),
    (Call::ListFirst, 1, 1),
    (Call::ListFirst, 1, 16),
    (Call::ListFiltered, 1, 1),
    (Call::ListFiltered, 1, 16),
];

struct Args {
    plan: &'static Plan,
    smoke: bool,
    scale: bool,
    /// Only this call of the load run (and the ping it is compared with).
    only: Option<String>,
    out: String,
}

const USAGE: &str = "usage: bench [--smoke] [--scale] [--only CALL] [--out FILE]
  --smoke      seconds, not minutes (CI runs this)
  --scale      GetSecretValue and ListSecrets at 10^3, 10^5 and 10^6 secrets
  --only CALL  one call of the load run, beside the ping: get_one, get_random, put, rotate
  --out FILE   the JSON report (default bench.json); the SVG plot goes beside it";

/// The command line, or a message for a person and the exit code.
fn parse_args(mut given: impl Iterator<Item = String>) -> Result<Args, (String, i32)> {
    let mut parsed = Args {
        plan: &FULL,
        smoke: false,
        scale: false,
        only: None,
        out: "bench.json".to_owned(),
    };
    let refuse = |message: String| (format!("bench: {message}\n{USAGE}"), 2);
    while let Some(arg) = given.next() {
        let mut value = |flag: &str| {
            given
                .next()
                .ok_or_else(|| refuse(format!("{flag} needs a value")))
        };
        match arg.as_str() {
            "--smoke" => {
                parsed.smoke = true;
                parsed.plan = &SMOKE;
            }
            "--scale" => parsed.scale = true,
            "--only" => {
                let call = value("--only")?;
                if !LOAD_CALLS
                    .iter()
                    .any(|known| *known != Call::Ping && known.name() == call)
                {
                    return Err(refuse(format!("--only: no call named {call:?}")));
                }
                parsed.only = Some(call);
            }
            "--out" => parsed.out = value("--out")?,
            "-h" | "--help" => return Err((USAGE.to_owned(), 0)),
            other => return Err(refuse(format!("unknown argument {other:?}"))),
        }
    }
    Ok(parsed)
}

fn args() -> Args {
    parse_args(std::env::args().skip(1)).unwrap_or_else(|(message, code)| {
        if code == 0 {
            println!("{message}");
        } else {
            eprintln!("{message}");
        }
        std::process::exit(code)
    })
}

/// An installation with `secrets` numbered secrets, served.
async fn served(secrets: usize) -> (Installation, Server, Identity) {
    let installation = Installation::new();
    // The benchmark measures the server, not its per-principal limit (one
    // principal makes every request here).
    installation.edit_config(|table| {
        let off: toml::Table = "requests_per_second = 0".parse().unwrap();
        table.insert("rate_limit".into(), toml::Value::Table(off));
    });
    eprintln!("seeding {secrets} secrets");
    scale::seed(&installation, secrets).await;
    let server = installation.serve();
    let identity = Identity::load(&installation.admin()).unwrap();
    (installation, server, identity)
}

async fn channels(server: &Server, identity: &Identity, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count {
        channels.push(
            rekey_shared::channel::connect(&server.url, identity)
                .await
                .unwrap(),
        );
    }
    channels
}

/// The secrets the load calls use besides the numbered ones: one to read,
/// one per caller to put to, one per caller to rotate.
async fn create_targets(channel: &Channel, callers: usize) {
    let mut secrets = SecretsClient::new(channel.clone());
    let mut rotation = RotationClient::new(channel.clone());
    let names = std::iter::once(load::one())
        .chain((0..callers).map(load::put_target))
        .chain((0..callers).map(load::rotation_target));
    for name in names {
        secrets
            .create_secret(proto::CreateSecretRequest {
                name,
                secret_string: Some("a value of about the size of a password".into()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for seed in 0..callers {
        rotation
            .configure_rotation(proto::ConfigureRotationRequest {
                name: load::rotation_target(seed),
                rotator: "password".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn cell_json(call: Call, connections: usize, in_flight: usize, measured: &Measured) -> Value {
    let mut cell = measured.json();
    cell["call"] = call.name().into();
    cell["connections"] = connections.into();
    cell["in_flight"] = in_flight.into();
    cell
}

fn header() {
    println!(
        "{:<19} {:>5} {:>9} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>11}",
        "call",
        "conns",
        "in flight",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "vs tput",
        "vs p99",
        "server µs",
        "client µs",
        "switches",
        "calls/commit",
        "from memory"
    );
}

fn row(call: Call, connections: usize, in_flight: usize, measured: &Measured, base: &Measured) {
    println!(
        "{:<19} {connections:>5} {in_flight:>9} {:>10.0} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>10.1} {:>10.1} {:>10.2} {:>12.1} {:>11.2}",
        call.name(),
        measured.calls_per_second,
        measured.p50_ms,
        measured.p99_ms,
        measured.calls_per_second / base.calls_per_second,
        measured.p99_ms / base.p99_ms,
        measured.server_cpu_us.unwrap_or(f64::NAN),
        measured.client_cpu_us.unwrap_or(f64::NAN),
        measured.server_switches.unwrap_or(f64::NAN),
        measured.calls_per_commit.unwrap_or(f64::NAN),
        measured.read_cache_hits.unwrap_or(f64::NAN),
    );
}

/// The load run: every call in every cell, beside the ping.
async fn load_run(plan: &Plan, only: Option<&str>, out: &str) -> Value {
    let (installation, server, identity) = served(plan.secrets).await;
    let max_callers = plan.concurrency.iter().copied().max().unwrap_or(1);
    let setup = channels(&server, &identity, 1).await;
    create_targets(&setup[0], max_callers).await;
    let fsync = machine::fsync_loop(installation.dir(), plan.cell.min(Duration::from_secs(3)));
    let rss_idle = machine::rss_mib(server.pid());
    eprintln!(
        "fsync loop: {:.0}/s, p50 {:.3} ms, p99 {:.3} ms; server RSS idle: {rss_idle:?} MiB",
        fsync.per_second, fsync.p50_ms, fsync.p99_ms
    );

    let mut cells = Vec::new();
    let mut bars = Vec::new();
    header();
    for &connections in plan.connections {
        let channels = channels(&server, &identity, connections).await;
        for &in_flight in plan.concurrency {
            let calls: Vec<Call> = LOAD_CALLS
                .into_iter()
                .filter(|call| *call == Call::Ping || only.is_none_or(|only| only == call.name()))
                .collect();
            // The calls take turns, a part of each cell at a time, so that
            // a slower moment of a shared machine falls on all of them
            // alike and the ratios to the ping hold.
            let part = plan.cell / plan.rounds;
            let measured = in_turns(&calls, plan.rounds, async |call: &Call| {
                load::run(&server, &channels, *call, in_flight, plan.secrets, part).await
            })
            .await;
            let base = measured[0];
            for (call, measured) in calls.into_iter().zip(measured) {
                row(call, connections, in_flight, &measured, &base);
                let mut cell = cell_json(call, connections, in_flight, &measured);
                cell["throughput_vs_ping"] =
                    (measured.calls_per_second / base.calls_per_second).into();
                cell["p99_vs_ping"] = (measured.p99_ms / base.p99_ms).into();
                cells.push(cell);
                bars.push(plot::Bar {
                    group: format!("{connections} conn, {in_flight} in flight"),
                    call: call.name(),
                    calls_per_second: measured.calls_per_second,
                });
            }
        }
    }
    let rss_after = machine::rss_mib(server.pid());
    let plot_path = std::path::Path::new(out).with_extension("svg");
    std::fs::write(
        &plot_path,
        plot::svg(
            &format!(
                "rekey: throughput by call ({} secrets, SQLite, audit on, mTLS)",
                plan.secrets
            ),
            &bars,
        ),
    )
    .unwrap();
    eprintln!("wrote {}", plot_path.display());
    json!({
        "secrets": plan.secrets,
        "seconds_per_cell": plan.cell.as_secs_f64(),
        "store": "sqlite (WAL, synchronous=FULL)",
        "audit": true,
        "fsync_loop_per_second": fsync.per_second,
        "fsync_loop_p50_ms": fsync.p50_ms,
        "fsync_loop_p99_ms": fsync.p99_ms,
        "server_rss_mib_idle": rss_idle,
        "server_rss_mib_after_load": rss_after,
        "cells": cells,
    })
}

/// Runs each of `turns` in turn, `rounds` times over, and merges each
/// one's samples: a slower moment of the machine falls on all of them.
async fn in_turns<T>(
    turns: &[T],
    rounds: u32,
    run: impl AsyncFn(&T) -> load::Sample,
) -> Vec<Measured> {
    let mut samples: Vec<Vec<load::Sample>> = turns.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (turn, samples) in turns.iter().zip(&mut samples) {
            samples.push(run(turn).await);
        }
    }
    samples.into_iter().map(Measured::of).collect()
}

/// One store size of the scale run, served.
struct StoreSize {
    secrets: usize,
    /// Kept for the server's life.
    _installation: Installation,
    server: Server,
    channels: Vec<Channel>,
    rss_idle: Option<f64>,
}

/// The scale run: the same reads and listings at each store size, each
/// against the smallest. Every size has a server of its own, all running
/// at once; at each cell the sizes take turns, a part of the cell at a
/// time, so that a slower moment of the machine falls on every size alike.
async fn scale_run(plan: &Plan) -> Value {
    let mut stores = Vec::new();
    for &secrets in plan.scale {
        let (installation, server, identity) = served(secrets).await;
        let channels = channels(&server, &identity, 4).await;
        let rss_idle = machine::rss_mib(server.pid());
        // A server just started on a store just written: one unrecorded
        // round of each cell first, so that no size is measured cold.
        for (call, connections, in_flight) in SCALE_CELLS {
            let warm = plan.scale_cell / 4;
            load::run(
                &server,
                &channels[..connections],
                call,
                in_flight,
                secrets,
                warm,
            )
            .await;
        }
        stores.push(StoreSize {
            secrets,
            _installation: installation,
            server,
            channels,
            rss_idle,
        });
    }
    // measured[size][cell]
    let mut measured: Vec<Vec<Measured>> = stores.iter().map(|_| Vec::new()).collect();
    for (call, connections, in_flight) in SCALE_CELLS {
        let part = plan.scale_cell / plan.rounds;
        let cell = in_turns(&stores, plan.rounds, async |store: &StoreSize| {
            let channels = &store.channels[..connections];
            load::run(
                &store.server,
                channels,
                call,
                in_flight,
                store.secrets,
                part,
            )
            .await
        })
        .await;
        for (size, measured_here) in measured.iter_mut().zip(cell) {
            size.push(measured_here);
        }
    }
    header();
    let mut sizes = Vec::new();
    for (store, cells_measured) in stores.iter().zip(&measured) {
        let (secrets, rss_idle) = (store.secrets, store.rss_idle);
        let mut cells = Vec::new();
        for (((call, connections, in_flight), measured), base) in SCALE_CELLS
            .into_iter()
            .zip(cells_measured)
            .zip(&measured[0])
        {
            row(call, connections, in_flight, measured, base);
            let mut cell = cell_json(call, connections, in_flight, measured);
            cell["throughput_vs_smallest"] =
                (measured.calls_per_second / base.calls_per_second).into();
            cell["p50_vs_smallest"] = (measured.p50_ms / base.p50_ms).into();
            cells.push(cell);
        }
        println!("({secrets} secrets; server RSS {rss_idle:?} MiB)");
        sizes.push(json!({ "secrets": secrets, "server_rss_mib_idle": rss_idle, "cells": cells }));
    }
    json!({ "seconds_per_cell": plan.scale_cell.as_secs_f64(), "sizes": sizes })
}

#[tokio::main]
async fn main() {
    let args = args();
    let mut report =
        json!({ "cores": std::thread::available_parallelism().map_or(0, |n| n.get()) });
    if args.smoke || !args.scale {
        report["load"] = load_run(args.plan, args.only.as_deref(), &args.out).await;
    }
    if args.smoke || args.scale {
        report["scale"] = scale_run(args.plan).await;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("wrote {}", args.out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(given: &[&str]) -> Result<Args, (String, i32)> {
        parse_args(given.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn flags_and_values_are_read() {
        let args = parse(&["--smoke", "--only", "put", "--out", "x.json"]).unwrap();
        assert!(args.smoke && !args.scale);
        assert_eq!(args.only.as_deref(), Some("put"));
        assert_eq!(args.out, "x.json");
        assert_eq!(parse(&[]).unwrap().out, "bench.json");
    }

    #[test]
    fn help_and_mistakes_do_not_start_a_run() {
        let (usage, code) = parse(&["--help"]).err().unwrap();
        assert_eq!(code, 0);
        assert!(usage.starts_with("usage: bench"));
        for (given, says) in [
            (&["--hlep"][..], "unknown argument \"--hlep\""),
            (&["--only", "pong"], "no call named \"pong\""),
            (&["--only", "ping"], "no call named \"ping\""),
            (&["--out"], "--out needs a value"),
        ] {
            let (message, code) = parse(given).err().unwrap();
            assert_eq!(code, 2, "{given:?}");
            assert!(message.contains(says), "{given:?}: {message}");
        }
    }
}
