//! Load generation over real gRPC or HTTP: closed loop (a fixed number of requests in flight,
//! for the maximum rate) and open loop (a fixed rate, for latency without coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// One call of the operation under test on a target (a gRPC channel, an HTTP client).
pub type CallOn<T> = Arc<dyn Fn(T) -> futures_lite::BoxFuture<bool> + Send + Sync>;

/// One call of the RPC under test on a channel.
pub type Call = CallOn<Channel>;

pub mod futures_lite {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

pub struct Outcome {
    pub count: usize,
    pub failures: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// A duration as milliseconds, for the tables.
/// VerifyKey for `key` with no scopes or address: the question most benchmarks ask.
pub fn verify_request(key: &str) -> keyhouse_proto::v1::VerifyKeyRequest {
    keyhouse_proto::v1::VerifyKeyRequest {
        api_key: key.to_owned(),
        ..Default::default()
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The `q` quantile of sorted latencies (zero when there are none).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn summarize(mut latencies: Vec<Duration>, failures: u64, elapsed: Duration) -> Outcome {
    latencies.sort_unstable();
    let at = |q: f64| quantile(&latencies, q);
    Outcome {
        count: latencies.len(),
        failures,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// `concurrency` requests in flight for `seconds`: each worker issues its calls back to back on
/// target `i % targets.len()`.
pub async fn closed<T: Clone + Send + 'static>(
    targets: &[T],
    call: CallOn<T>,
    concurrency: usize,
    seconds: u64,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let (target, call) = (targets[i % targets.len()].clone(), call.clone());
            tokio::spawn(async move {
                let (mut latencies, mut failures) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if call(target.clone()).await {
                        latencies.push(t.elapsed());
                    } else {
                        failures += 1;
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let (mut all, mut failures) = (Vec::new(), 0);
    for w in workers {
        if let Ok((l, f)) = w.await {
            all.extend(l);
            failures += f;
        }
    }
    summarize(all, failures, started.elapsed())
}

/// `closed` on targets it owns, for running beside another load in a task of its own.
pub async fn closed_owned<T: Clone + Send + 'static>(
    targets: Vec<T>,
    call: CallOn<T>,
    concurrency: usize,
    seconds: u64,
) -> Outcome {
    closed(&targets, call, concurrency, seconds).await
}

/// `rate` requests per second for `seconds`, each timed from when it was due.
pub async fn open(channels: &[Channel], call: Call, rate: f64, seconds: u64) -> Outcome {
    let started = Instant::now();
    let (latencies, failures) = open_latencies(channels, call, rate, seconds).await;
    summarize(latencies, failures, started.elapsed())
}

/// `open`'s latencies themselves (unsorted), to pool over turns, and its failures.
pub async fn open_latencies(
    channels: &[Channel],
    call: Call,
    rate: f64,
    seconds: u64,
) -> (Vec<Duration>, u64) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (rate * seconds as f64) as u64;
    let started = Instant::now();
    let mut calls = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (channel, call) = (channels[i as usize % channels.len()].clone(), call.clone());
        calls.push(tokio::spawn(async move {
            call(channel).await.then(|| due.elapsed())
        }));
    }
    let (mut all, mut failures) = (Vec::new(), 0);
    for c in calls {
        match c.await {
            Ok(Some(latency)) => all.push(latency),
            _ => failures += 1,
        }
    }
    (all, failures)
}

/// A saturated rate and the failures behind it, with the in-process server's CPU time per
/// call answered (see `server_cpu`).
pub struct Rate {
    pub per_second: f64,
    pub failures: u64,
    pub server_cpu_per_call: Duration,
}

/// The CPU time the threads named `server` (the in-process server's runtime, apart from the load
/// generator's `load` threads) have run so far, from each thread's scheduler statistics. Zero
/// where `/proc` is not there.
pub fn server_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let is_server = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|name| name.trim_end() == "server");
        if is_server && let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) {
            nanos += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}

/// Closed-loop rates of two calls or more (each on its own channels), taken in turns of 2 s for
/// `seconds` each, so that the drift of a shared machine falls on all alike.
pub async fn alternating<const N: usize>(
    sides: [(&[Channel], Call); N],
    concurrency: usize,
    seconds: u64,
) -> [Rate; N] {
    let turn = seconds.clamp(1, 2);
    let turns = (seconds / turn).max(1);
    let mut rates = [(); N].map(|_| Rate {
        per_second: 0.0,
        failures: 0,
        server_cpu_per_call: Duration::ZERO,
    });
    let mut cpu = [(Duration::ZERO, 0u64); N];
    for _ in 0..turns {
        for ((rate, cpu), (channels, call)) in rates.iter_mut().zip(&mut cpu).zip(&sides) {
            let before = server_cpu();
            let outcome = closed(channels, call.clone(), concurrency, turn).await;
            cpu.0 += server_cpu().saturating_sub(before);
            cpu.1 += outcome.count as u64 + outcome.failures;
            rate.per_second += outcome.per_second / turns as f64;
            rate.failures += outcome.failures;
        }
    }
    for (rate, (time, calls)) in rates.iter_mut().zip(cpu) {
        rate.server_cpu_per_call = time / calls.max(1) as u32;
    }
    rates
}
