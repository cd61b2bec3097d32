//! Benchmark 16: VerifyKey for other callers under a deadline-less flood of the costliest call.
//! The flood is CreateKey (one bcrypt hash at the production cost) with no `grpc-timeout`, from
//! many workers back to back on connections of their own, so bcrypt runs on every core it is
//! given and the queue in front of it stays full. Beside it another client verifies cached keys
//! at a modest fixed rate on its own connection, latency timed from when each call was due. In
//! turns: that client alone, then with the flood; for two flood sizes (all admitted, and far more
//! than the queue admits, refused at once and sent again) and for two bcrypt limits (one running
//! per core, the default, and one core left to the rest).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::api_key;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, ms};
use crate::setup::{self, Server, authorized};

const CACHED_KEYS: usize = 16;
const USERS: usize = 20;
/// The other caller's rate: modest, far below what cached VerifyKey can serve.
const RATE: f64 = 500.0;
/// Seconds per turn.
const TURN: u64 = 3;
const TURNS: usize = 3;
/// Flood sizes: requests in flight. 64 fit in the bcrypt queue (cores + 64 admitted); 512 do
/// not, and the rest are refused at once and sent again.
const FLOODS: [usize; 2] = [64, 512];

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("keyhouse-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.display());
    let mut settings = setup::settings(url, args.bcrypt_cost);
    settings.domain.keys.max_key_creates_per_minute = 1_000_000;
    settings.domain.keys.max_active_keys_per_user = 1_000_000;
    let server = setup::start(settings, rt).await?;
    let outcome = measure(args, &server).await;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    api_key::set_running(cores).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// One cell of the table: the other caller's latencies alone and beside the flood.
#[derive(Default)]
struct Cell {
    alone: Vec<Duration>,
    flooded: Vec<Duration>,
    failures: u64,
    flood_answered: u64,
    flood_refused: u64,
    flood_seconds: f64,
}

async fn measure(args: &Args, server: &Server) -> anyhow::Result<()> {
    let mut tokens = Vec::with_capacity(USERS);
    for n in 0..USERS {
        tokens.push(server.session(&format!("flood-{n}"), Role::User).await?);
    }
    let mut keys = Vec::with_capacity(CACHED_KEYS);
    for i in 0..CACHED_KEYS {
        let key = server
            .key(
                &format!("gateway-user-{i}"),
                pb::CreateKeyRequest {
                    name: "traffic".into(),
                    ..Default::default()
                },
            )
            .await?;
        keys.push(key.api_key);
    }
    let victim = server.channel().await?;
    let mut check = UserKeyServiceClient::new(victim.clone());
    for key in &keys {
        anyhow::ensure!(
            check
                .verify_key(load::verify_request(key))
                .await?
                .into_inner()
                .valid,
            "a traffic key did not verify"
        );
    }
    let flood_channels = server.channels(args.connections).await?;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let limits = [cores, cores.saturating_sub(1).max(1)];
    let mut cells: Vec<Cell> = (0..limits.len() * FLOODS.len())
        .map(|_| Cell::default())
        .collect();
    for _ in 0..TURNS {
        for (l, &limit) in limits.iter().enumerate() {
            api_key::set_running(limit).await;
            for (f, &size) in FLOODS.iter().enumerate() {
                let cell = &mut cells[l * FLOODS.len() + f];
                let (latencies, failures) = open(&victim, &keys, RATE, TURN).await;
                cell.alone.extend(latencies);
                cell.failures += failures;
                let flood = Flood::start(&flood_channels, &tokens, size);
                // The queue fills within a moment; the flood keeps it full from then on.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (latencies, failures) = open(&victim, &keys, RATE, TURN).await;
                cell.flooded.extend(latencies);
                cell.failures += failures;
                let (answered, refused, seconds) = flood.stop();
                cell.flood_answered += answered;
                cell.flood_refused += refused;
                cell.flood_seconds += seconds;
                drained(server).await?;
            }
        }
    }

    println!("## 16. Cached VerifyKey for another caller under a deadline-less CreateKey flood\n");
    println!(
        "The other caller: {RATE:.0} req/s open loop over one connection, {CACHED_KEYS} cached keys; \
         the flood: CreateKey at bcrypt cost {}, no deadline, on {} connections of its own. \
         {TURNS} turns of {TURN} s alone and {TURN} s with the flood per row.\n",
        args.bcrypt_cost, args.connections,
    );
    println!(
        "| bcrypt running at once | flood in flight | p50 alone | p99 alone | p50 with the flood | p99 with the flood | p99 with / alone | flood created/s | flood refused/s | other caller's failures |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for (l, limit) in limits.iter().enumerate() {
        for (f, size) in FLOODS.iter().enumerate() {
            let cell = &mut cells[l * FLOODS.len() + f];
            cell.alone.sort_unstable();
            cell.flooded.sort_unstable();
            let (a99, f99) = (
                load::quantile(&cell.alone, 0.99),
                load::quantile(&cell.flooded, 0.99),
            );
            println!(
                "| {limit} | {size} | {} | {} | {} | {} | **{:.1}** | {:.1} | {:.0} | {} |",
                ms(load::quantile(&cell.alone, 0.50)),
                ms(a99),
                ms(load::quantile(&cell.flooded, 0.50)),
                ms(f99),
                f99.as_secs_f64() / a99.as_secs_f64().max(1e-9),
                cell.flood_answered as f64 / cell.flood_seconds,
                cell.flood_refused as f64 / cell.flood_seconds,
                cell.failures,
            );
        }
    }
    println!();
    Ok(())
}

/// `rate` VerifyKey calls a second for `seconds`, the keys in turn, each timed from when it was
/// due: the latencies of the valid answers, and the failures.
async fn open(channel: &Channel, keys: &[String], rate: f64, seconds: u64) -> (Vec<Duration>, u64) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds as f64) as usize;
    let started = Instant::now();
    let mut calls = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (mut client, req) = (
            UserKeyServiceClient::new(channel.clone()),
            load::verify_request(&keys[i % keys.len()]),
        );
        calls.push(tokio::spawn(async move {
            let valid = client
                .verify_key(req)
                .await
                .is_ok_and(|r| r.into_inner().valid);
            valid.then(|| due.elapsed())
        }));
    }
    let (mut latencies, mut failures) = (Vec::with_capacity(total), 0);
    for call in calls {
        match call.await {
            Ok(Some(took)) => latencies.push(took),
            _ => failures += 1,
        }
    }
    (latencies, failures)
}

/// Workers sending CreateKey back to back, with no deadline.
struct Flood {
    workers: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    started: Instant,
}

impl Flood {
    fn start(channels: &[Channel], tokens: &[String], size: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (answered, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let workers = (0..size)
            .map(|w| {
                let channel = channels[w % channels.len()].clone();
                let token = tokens[w % tokens.len()].clone();
                let (stop, answered, refused) = (stop.clone(), answered.clone(), refused.clone());
                tokio::spawn(async move {
                    let mut client = UserKeyServiceClient::new(channel);
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(req) = authorized(
                            pb::CreateKeyRequest {
                                name: "flood".into(),
                                ..Default::default()
                            },
                            &token,
                        ) else {
                            return;
                        };
                        match client.create_key(req).await {
                            Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Self {
            workers,
            stop,
            answered,
            refused,
            started: Instant::now(),
        }
    }

    /// Stops sending and abandons the calls in flight (the server drops those still waiting).
    /// Returns what was created and refused, and over how many seconds.
    fn stop(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.workers {
            w.abort();
        }
        (
            self.answered.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
        )
    }
}

/// Waits until the server's bcrypt queue is empty again (abandoned calls' bcrypt still running
/// ends), so the next turn alone is alone.
async fn drained(server: &Server) -> anyhow::Result<()> {
    for _ in 0..300 {
        if crate::overload::queue_depths(server).await?("bcrypt") == "0" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the bcrypt queue did not drain within 30 s")
}
