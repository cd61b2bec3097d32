//! Benchmark 11: a flood of forged keys. Anyone who knows one real key knows its lookup prefix and
//! can make endless well-formed keys with it (the checksum is public). Such keys, every one
//! distinct (so none is answered by the negative cache), are sent at saturation while other keys'
//! cached VerifyKey is measured, in turns with and without the flood; and the two loads are
//! compared alone, in turns, for what one request of each costs. The server's own bcrypt counter
//! says how many bcrypts the flood cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use keyhouse_proto::v1::verify_key_response::Reason;
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, Call};
use crate::setup::{self, Server};

/// More than the flood can send in the run, so that no forged key is sent twice.
const FORGED: usize = 1_500_000;
const CACHED_KEYS: usize = 16;
/// The flood's rate in the second comparison: far beyond what bcrypt could survive (about 8 a
/// second on two cores at cost 12), far below saturation.
const FLOOD_RATE: f64 = 2_000.0;

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("keyhouse-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let server = setup::sqlite(&dir, args, rt).await?;
    let outcome = measure(args, &server).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn measure(args: &Args, server: &Server) -> anyhow::Result<()> {
    let real = server
        .key(
            "victim",
            pb::CreateKeyRequest {
                name: "real".into(),
                ..Default::default()
            },
        )
        .await?;
    let mut cached = Vec::new();
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
        cached.push(key.api_key);
    }
    let forged = forgeries(&real.api_key, FORGED);
    let traffic = {
        let mut ch = UserKeyServiceClient::new(server.channel().await?);
        for key in &cached {
            let answer = ch.verify_key(load::verify_request(key)).await?.into_inner();
            anyhow::ensure!(answer.valid, "a traffic key did not verify");
        }
        server.channels(args.connections).await?
    };
    let flood_channels = server.channels(args.connections).await?;
    let bcrypt_before = bcrypt_runs(server).await?;

    // Turns of 2 s: the cached traffic alone; with the flood beside it on connections of its
    // own, as fast as it can (as many requests in flight as the traffic); and with the flood at
    // a fixed rate.
    let turn = args.seconds.clamp(1, 2);
    let turns = (args.seconds / turn).max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let (mut alone, mut flooded, mut flood_rate, mut failures) = (0.0, 0.0, 0.0, 0);
    let mut at_rate = 0.0;
    for _ in 0..turns {
        let quiet = load::closed(&traffic, each(cached.clone()), args.concurrency, turn).await;
        alone += quiet.per_second / turns as f64;
        failures += quiet.failures;
        let flood = tokio::spawn(load::closed_owned(
            flood_channels.clone(),
            sent_once(forged.clone(), next.clone()),
            args.concurrency,
            turn,
        ));
        let busy = load::closed(&traffic, each(cached.clone()), args.concurrency, turn).await;
        let flood = flood.await?;
        flooded += busy.per_second / turns as f64;
        flood_rate += flood.per_second / turns as f64;
        failures += busy.failures + flood.failures;
        let (channels, call) = (
            flood_channels.clone(),
            sent_once(forged.clone(), next.clone()),
        );
        let steady =
            tokio::spawn(async move { load::open(&channels, call, FLOOD_RATE, turn).await });
        let busy = load::closed(&traffic, each(cached.clone()), args.concurrency, turn).await;
        failures += busy.failures + steady.await?.failures;
        at_rate += busy.per_second / turns as f64;
    }
    // What one request of each costs: the two loads alone, in turns.
    let [cached_alone, forged_alone] = load::alternating(
        [
            (traffic.as_slice(), each(cached.clone())),
            (
                flood_channels.as_slice(),
                sent_once(forged.clone(), next.clone()),
            ),
        ],
        args.concurrency,
        args.seconds,
    )
    .await;
    failures += cached_alone.failures + forged_alone.failures;
    let bcrypts = bcrypt_runs(server).await? - bcrypt_before;
    // Every forged key is refused, and the real key still verifies.
    let mut ch = UserKeyServiceClient::new(server.channel().await?);
    for key in forged.iter().step_by(997) {
        let answer = ch.verify_key(load::verify_request(key)).await?.into_inner();
        anyhow::ensure!(
            answer.reason() == Reason::NotFound,
            "a forged key was accepted"
        );
    }
    anyhow::ensure!(
        ch.verify_key(load::verify_request(&real.api_key))
            .await?
            .into_inner()
            .valid,
        "the real key stopped verifying"
    );

    println!("## 11. A flood of forged keys sharing a real key's prefix\n");
    println!(
        "| flood | cached VerifyKey alone, req/s | with the flood, req/s | with / alone | forged req/s |\n|---|---|---|---|---|"
    );
    println!(
        "| at saturation ({} in flight) | {alone:.0} | {flooded:.0} | **{:.2}** | {flood_rate:.0} |",
        args.concurrency,
        flooded / alone,
    );
    println!(
        "| at {FLOOD_RATE:.0} req/s | {alone:.0} | {at_rate:.0} | **{:.2}** | {FLOOD_RATE:.0} |\n",
        at_rate / alone,
    );
    println!(
        "Alone, in turns: forged {:.0} req/s, cached {:.0} req/s, forged / cached **{:.2}**.\n\n\
         Forged keys sent: {} ({} distinct); bcrypt runs on the server meanwhile: **{bcrypts}**; failures: {failures}.\n\
         Goals: bcrypt runs 0; cached throughput with the flood ≥ 0.8× without.\n",
        forged_alone.per_second,
        cached_alone.per_second,
        forged_alone.per_second / cached_alone.per_second,
        next.load(Ordering::Relaxed),
        next.load(Ordering::Relaxed).min(FORGED),
    );
    Ok(())
}

/// Well-formed keys (right shape, right checksum) with `real`'s lookup prefix, none of them stored.
fn forgeries(real: &str, n: usize) -> Vec<String> {
    let prefix = &real[..keyhouse_domain::crypto::api_key::LOOKUP_PREFIX_LEN];
    (0..n)
        .map(|i| {
            let head = format!("{prefix}{:044x}", i + 1);
            format!("{head}{:08x}", crc32fast::hash(head.as_bytes()))
        })
        .collect()
}

/// The keys in turn, round and round.
fn each(keys: Vec<String>) -> Call {
    sent_once(keys, Arc::new(AtomicUsize::new(0)))
}

/// The keys in turn from `next` on; past the end it starts again (then the negative cache answers).
fn sent_once(keys: Vec<String>, next: Arc<AtomicUsize>) -> Call {
    let keys = Arc::new(keys);
    Arc::new(move |channel: Channel| {
        let i = next.fetch_add(1, Ordering::Relaxed) % keys.len();
        let request = load::verify_request(&keys[i]);
        Box::pin(async move {
            UserKeyServiceClient::new(channel)
                .verify_key(request)
                .await
                .is_ok()
        })
    })
}

/// The server's count of bcrypt verifications, from its metrics.
pub async fn bcrypt_runs(server: &Server) -> anyhow::Result<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"keyhouse_bcrypt_duration_seconds_count{operation="verify"} "#)
        })
        .map_or(Ok(0), str::parse)?)
}
