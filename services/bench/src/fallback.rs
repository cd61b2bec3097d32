//! Benchmark 14: the Redis fallback of per-key rate limits. A `redis-server` of the benchmark's
//! own on a free port; two replicas counting in it (A, measured, and B, which with A shows
//! whether counting is shared) and one counting in memory only (L, the baseline), all on one
//! SQLite file. Rate-limited keys' VerifyKey runs open loop at a fixed rate, on A and on L in
//! turns of 2 s: with Redis up, with Redis killed, and after it is back. The first call after the
//! kill is timed alone; after the restart, one key is asked on A and B in turn until two pairs in
//! a row are counted together.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, Call, ms};
use crate::setup::{self, Server};

const KEYS: usize = 16;
/// High enough that the load never meets it: what is measured is the counting.
const LIMIT: i32 = 1_000_000;
const RATE: f64 = 2_000.0;
const TURN: u64 = 2;
/// Turns per phase on each server.
const TURNS: u64 = 5;
const POLL_EVERY: Duration = Duration::from_millis(50);

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("keyhouse-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let mut redis = Redis::spawn()?;
    let outcome = measure(args, rt, &dir, &mut redis).await;
    redis.kill();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn measure(
    args: &Args,
    rt: &tokio::runtime::Handle,
    dir: &std::path::Path,
    redis: &mut Redis,
) -> anyhow::Result<()> {
    let local = setup::sqlite(dir, args, rt).await?;
    let mut shared = local.settings.clone();
    shared.domain.verify.redis_url = Some(redis.url());
    let a = setup::start(shared.clone(), rt).await?;
    let b = setup::start(shared, rt).await?;
    let outcome = phases(args, redis, &a, &b, &local).await;
    // With Redis back, so that nothing is left waiting for it.
    redis.start()?;
    for server in [a, b, local] {
        server.stop().await;
    }
    outcome
}

/// p50 and p99 of one phase on one server, and its failures.
struct Measured {
    p50: Duration,
    p99: Duration,
    failures: u64,
}

async fn phases(
    args: &Args,
    redis: &mut Redis,
    a: &Server,
    b: &Server,
    local: &Server,
) -> anyhow::Result<()> {
    let mut keys = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        keys.push(mint(local, &format!("limited-{i}")).await?);
    }
    let probe = mint(local, "limited-probe").await?;
    for server in [a, local] {
        let mut ch = UserKeyServiceClient::new(server.channel().await?);
        for key in &keys {
            anyhow::ensure!(
                ch.verify_key(load::verify_request(key))
                    .await?
                    .into_inner()
                    .valid,
                "a rate-limited key did not verify"
            );
        }
    }
    let (on_a, on_l) = (
        a.channels(args.connections).await?,
        local.channels(args.connections).await?,
    );
    let (mut probe_a, mut probe_b) = (
        UserKeyServiceClient::new(a.channel().await?),
        UserKeyServiceClient::new(b.channel().await?),
    );
    anyhow::ensure!(
        counted_together(&mut probe_a, &mut probe_b, &probe).await?,
        "A and B do not count together while Redis is up"
    );

    let up = turns(&on_a, &on_l, &keys).await;

    redis.kill();
    // The probe key, which both replicas have cached: the time is Redis's, not a bcrypt's. Asked
    // once on each, it keeps the pairs of `counted_together` even.
    let first = verify_timed(&mut probe_a, &probe).await?;
    let first_b = verify_timed(&mut probe_b, &probe).await?;
    let apart = !counted_together(&mut probe_a, &mut probe_b, &probe).await?;
    let down = turns(&on_a, &on_l, &keys).await;

    redis.start()?;
    let back = Instant::now();
    let shared_again = loop {
        if counted_together(&mut probe_a, &mut probe_b, &probe).await?
            && counted_together(&mut probe_a, &mut probe_b, &probe).await?
        {
            break back.elapsed();
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(60),
            "counting not shared a minute after Redis returned"
        );
        tokio::time::sleep(POLL_EVERY).await;
    };
    let after = turns(&on_a, &on_l, &keys).await;

    println!("## 14. Rate-limited VerifyKey and the Redis fallback\n");
    println!(
        "{KEYS} keys limited to {LIMIT} a minute, {RATE:.0} req/s open loop, on a replica counting in Redis (A) and one counting in memory (L) in turns of {TURN} s, {} s each per phase.\n",
        TURN * TURNS
    );
    println!(
        "| Redis | A (Redis) p50 / p99 | L (memory) p50 / p99 | A − L p50 / p99 | failures (A, L) |\n|---|---|---|---|---|"
    );
    for (label, [on_a, on_l]) in [
        ("up", up),
        ("killed (fallback)", down),
        ("back (after sharing resumed)", after),
    ] {
        println!(
            "| {label} | {} / {} | {} / {} | {} / {} | {}, {} |",
            ms(on_a.p50),
            ms(on_a.p99),
            ms(on_l.p50),
            ms(on_l.p99),
            signed(on_a.p50, on_l.p50),
            signed(on_a.p99, on_l.p99),
            on_a.failures,
            on_l.failures,
        );
    }
    println!(
        "\nFirst call on A after the kill: **{}** (on B: {}); A and B counted apart while Redis was down: {apart}. \
         Counting shared again (two pairs in a row on A and B) **{}** after Redis was back (asked every {} ms).\n",
        ms(first),
        ms(first_b),
        ms(shared_again),
        POLL_EVERY.as_millis(),
    );
    println!(
        "Goals: the fallback adds at most a few milliseconds (the first call at most the 100 ms Redis timeout); counting shared again within seconds.\n"
    );
    Ok(())
}

/// `a - b`, signed, in milliseconds.
fn signed(a: Duration, b: Duration) -> String {
    format!("{:+.3} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

/// The keys on A and on L in turns, open loop: each side's latencies pooled over its turns.
async fn turns(on_a: &[Channel], on_l: &[Channel], keys: &[String]) -> [Measured; 2] {
    let mut pooled: [(Vec<Duration>, u64); 2] = Default::default();
    for _ in 0..TURNS {
        for (side, channels) in pooled.iter_mut().zip([on_a, on_l]) {
            let (latencies, failures) =
                load::open_latencies(channels, each(keys), RATE, TURN).await;
            side.0.extend(latencies);
            side.1 += failures;
        }
    }
    pooled.map(|(mut latencies, failures)| {
        latencies.sort_unstable();
        Measured {
            p50: load::quantile(&latencies, 0.5),
            p99: load::quantile(&latencies, 0.99),
            failures,
        }
    })
}

/// Whether A and B count `key` together: asked once on each in the same minute, B's remaining
/// count is one below A's. Apart (each replica counting its own) they stay equal, since the two
/// are always asked in pairs.
async fn counted_together(
    a: &mut UserKeyServiceClient<Channel>,
    b: &mut UserKeyServiceClient<Channel>,
    key: &str,
) -> anyhow::Result<bool> {
    let first = a.verify_key(load::verify_request(key)).await?.into_inner();
    let second = b.verify_key(load::verify_request(key)).await?.into_inner();
    Ok(first.reset_at == second.reset_at && second.remaining + 1 == first.remaining)
}

async fn verify_timed(
    client: &mut UserKeyServiceClient<Channel>,
    key: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let answer = client
        .verify_key(load::verify_request(key))
        .await?
        .into_inner();
    anyhow::ensure!(answer.valid, "a rate-limited key did not verify");
    Ok(started.elapsed())
}

/// The keys in turn; a call succeeds when the key is answered valid (within its limit).
fn each(keys: &[String]) -> Call {
    let (keys, next) = (Arc::new(keys.to_vec()), Arc::new(AtomicUsize::new(0)));
    Arc::new(move |channel: Channel| {
        let i = next.fetch_add(1, Ordering::Relaxed) % keys.len();
        let request = load::verify_request(&keys[i]);
        Box::pin(async move {
            UserKeyServiceClient::new(channel)
                .verify_key(request)
                .await
                .is_ok_and(|r| r.into_inner().valid)
        })
    })
}

async fn mint(server: &Server, user: &str) -> anyhow::Result<String> {
    let key = server
        .key(
            user,
            pb::CreateKeyRequest {
                name: "limited".into(),
                rate_limit_per_minute: Some(LIMIT),
                ..Default::default()
            },
        )
        .await?;
    Ok(key.api_key)
}

/// A `redis-server` of the benchmark's own on a free port, which it kills and starts again there
/// (the shared one is left alone).
struct Redis {
    port: u16,
    process: Option<std::process::Child>,
}

impl Redis {
    fn spawn() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.start()?;
        Ok(redis)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let process = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("benchmark 14 needs redis-server: {e}"))?;
        self.process = Some(process);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
