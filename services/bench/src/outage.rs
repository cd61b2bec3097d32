//! Benchmark 13: VerifyKey through a PostgreSQL outage. The server reaches its PostgreSQL
//! database through a TCP proxy of the benchmark's own; stopping the proxy closes its port (new
//! connections are refused, as by a stopped server) and drops every open connection, which is
//! what keyhouse sees of a stopped PostgreSQL. Cached keys' VerifyKey runs open loop at a fixed
//! rate throughout, each call timed from when it was due, while rounds of 10 s before, a 10 s
//! outage and 10 s after follow each other. During each outage, misses (keys minted but never
//! verified) and writes (CreateKey) are sent at a fixed rate once the breaker has opened; when the
//! proxy is back, well-formed unknown keys are asked every 10 ms until one is answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, ms};
use crate::setup::{self, Server, authorized};

const CACHED_KEYS: usize = 16;
/// Keys minted for each round and first asked during its outage.
const MISSES_PER_ROUND: usize = 4;
const ROUNDS: usize = 3;
/// Each of before, the outage and after.
const PHASE: Duration = Duration::from_secs(10);
/// The cached keys' steady load: a gateway's traffic, far below saturation, so that the
/// latencies show the outage rather than queueing.
const RATE: f64 = 2_000.0;
const MISS_EVERY: Duration = Duration::from_millis(20);
const WRITE_EVERY: Duration = Duration::from_millis(100);
const POLL_EVERY: Duration = Duration::from_millis(10);

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let url = setup::postgres_database(&args.postgres_url).await?;
    let outcome = measure(args, rt, &url).await;
    setup::drop_postgres_database(&args.postgres_url, &url).await?;
    outcome
}

async fn measure(args: &Args, rt: &tokio::runtime::Handle, url: &str) -> anyhow::Result<()> {
    let mut proxy = Proxy::start(url).await?;
    let server = setup::start(setup::settings(proxy.url.clone(), args.bcrypt_cost), rt).await?;
    let outcome = rounds(args, &server, &mut proxy).await;
    // An error may have left the database stopped: the server's drain needs it back.
    proxy.resume().await?;
    server.stop().await;
    outcome
}

/// What the cached keys' calls due in one phase of one round got.
#[derive(Default)]
struct Slot {
    latencies: Vec<Duration>,
    /// Calls not answered VALID, by how they were answered.
    failures: BTreeMap<String, u64>,
}

/// A miss's or a write's answer during an outage: its latency and gRPC code.
type Answer = (Duration, tonic::Code);

/// One outage's misses and writes.
struct Outage {
    /// The miss that finds the outage out (the breaker is still closed).
    first: Answer,
    misses: Vec<Answer>,
    writes: Vec<Answer>,
    /// From the database's return to the first miss answered: when it was sent, and when its
    /// answer came.
    recovered: (Duration, Duration),
    /// The server's bcrypt verifications in each phase.
    bcrypts: [u64; 3],
}

async fn rounds(args: &Args, server: &Server, proxy: &mut Proxy) -> anyhow::Result<()> {
    let mut cached = Vec::with_capacity(CACHED_KEYS);
    for i in 0..CACHED_KEYS {
        cached.push(mint(server, &format!("outage-gateway-{i}")).await?);
    }
    let mut miss_keys = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut keys = Vec::with_capacity(MISSES_PER_ROUND);
        for j in 0..MISSES_PER_ROUND {
            keys.push(mint(server, &format!("outage-miss-{round}-{j}")).await?);
        }
        miss_keys.push(keys);
    }
    let writer = server.session("outage-writer", Role::User).await?;
    let mut gateway = UserKeyServiceClient::new(server.channel().await?);
    for key in &cached {
        let answer = gateway
            .verify_key(load::verify_request(key))
            .await?
            .into_inner();
        anyhow::ensure!(answer.valid, "a cached key did not verify");
    }
    let side = server.channel().await?;

    let slots: Arc<Vec<Mutex<Slot>>> =
        Arc::new((0..ROUNDS * 3).map(|_| Mutex::default()).collect());
    let phase = Arc::new(AtomicUsize::new(usize::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let generator = tokio::spawn(steady(
        server.channels(args.connections).await?,
        Arc::new(cached),
        slots.clone(),
        phase.clone(),
        stop.clone(),
    ));

    let mut outages = Vec::with_capacity(ROUNDS);
    for (round, keys) in miss_keys.iter().enumerate() {
        phase.store(round * 3, Ordering::Release);
        let counted = crate::flood::bcrypt_runs(server).await?;
        tokio::time::sleep(PHASE).await;

        let before = crate::flood::bcrypt_runs(server).await? - counted;
        proxy.stop().await;
        let down = Instant::now();
        phase.store(round * 3 + 1, Ordering::Release);
        let first = verify_timed(side.clone(), keys[0].clone()).await;
        let (misses, writes) = during(&side, keys, &writer, down + PHASE).await;
        tokio::time::sleep_until((down + PHASE).into()).await;

        let during_outage = crate::flood::bcrypt_runs(server).await? - counted - before;
        proxy.resume().await?;
        let up = Instant::now();
        phase.store(round * 3 + 2, Ordering::Release);
        let recovered = recovery(&side, up).await?;
        tokio::time::sleep_until((up + PHASE).into()).await;
        let after = crate::flood::bcrypt_runs(server).await? - counted - before - during_outage;
        outages.push(Outage {
            first,
            misses,
            writes,
            recovered,
            bcrypts: [before, during_outage, after],
        });
    }
    stop.store(true, Ordering::Release);
    generator.await?;
    // The last calls' answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(&slots, &outages);
    Ok(())
}

/// Cached keys' VerifyKey at `RATE`, each call timed from when it was due and kept in the slot
/// of the phase it was due in.
async fn steady(
    channels: Vec<Channel>,
    keys: Arc<Vec<String>>,
    slots: Arc<Vec<Mutex<Slot>>>,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let interval = Duration::from_secs_f64(1.0 / RATE);
    let started = Instant::now();
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let slot = phase.load(Ordering::Acquire);
        let (channel, key) = (
            channels[i % channels.len()].clone(),
            keys[i % keys.len()].clone(),
        );
        let slots = slots.clone();
        tokio::spawn(async move {
            let answer = UserKeyServiceClient::new(channel)
                .verify_key(load::verify_request(&key))
                .await;
            let took = due.elapsed();
            let Some(slot) = slots.get(slot) else {
                return;
            };
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match answer {
                Ok(answer) if answer.get_ref().valid => slot.latencies.push(took),
                Ok(answer) => {
                    let reason = answer.into_inner().reason();
                    *slot.failures.entry(format!("{reason:?}")).or_default() += 1;
                }
                Err(status) => {
                    *slot
                        .failures
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1
                }
            }
        });
        i += 1;
    }
}

/// Misses every `MISS_EVERY` and writes every `WRITE_EVERY` until `until`, open loop.
async fn during(
    channel: &Channel,
    keys: &[String],
    writer: &str,
    until: Instant,
) -> (Vec<Answer>, Vec<Answer>) {
    let started = Instant::now();
    let (mut misses, mut writes) = (Vec::new(), Vec::new());
    let ticks =
        (until.saturating_duration_since(started).as_millis() / MISS_EVERY.as_millis()) as u32;
    let writes_every = (WRITE_EVERY.as_millis() / MISS_EVERY.as_millis()) as u32;
    for tick in 0..ticks {
        let due = started + MISS_EVERY * tick;
        tokio::time::sleep_until(due.into()).await;
        let key = keys[tick as usize % keys.len()].clone();
        misses.push(tokio::spawn(verify_timed_from(channel.clone(), key, due)));
        if tick % writes_every == 0 {
            writes.push(tokio::spawn(create_timed_from(
                channel.clone(),
                writer.to_owned(),
                due,
            )));
        }
    }
    let (mut m, mut w) = (Vec::new(), Vec::new());
    for call in misses {
        m.extend(call.await.ok());
    }
    for call in writes {
        w.extend(call.await.ok());
    }
    (m, w)
}

/// Asks a new unknown key every `POLL_EVERY` from `up` until one is answered: when the first
/// answered call was sent, and when its answer came, after `up`.
async fn recovery(channel: &Channel, up: Instant) -> anyhow::Result<(Duration, Duration)> {
    loop {
        let sent = Instant::now();
        let key = ApiKey::generate()?.expose().to_owned();
        let (_, code) = verify_timed(channel.clone(), key).await;
        if code == tonic::Code::Ok {
            return Ok((sent - up, up.elapsed()));
        }
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(60),
            "misses still unanswered a minute after the database returned"
        );
        tokio::time::sleep_until((sent + POLL_EVERY).into()).await;
    }
}

async fn verify_timed(channel: Channel, key: String) -> Answer {
    verify_timed_from(channel, key, Instant::now()).await
}

async fn verify_timed_from(channel: Channel, key: String, due: Instant) -> Answer {
    let answer = UserKeyServiceClient::new(channel)
        .verify_key(load::verify_request(&key))
        .await;
    (
        due.elapsed(),
        answer.map_or_else(|s| s.code(), |_| tonic::Code::Ok),
    )
}

async fn create_timed_from(channel: Channel, token: String, due: Instant) -> Answer {
    let create = pb::CreateKeyRequest {
        name: "during the outage".into(),
        ..Default::default()
    };
    let code = match authorized(create, &token) {
        Ok(req) => UserKeyServiceClient::new(channel)
            .create_key(req)
            .await
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        Err(_) => tonic::Code::Internal,
    };
    (due.elapsed(), code)
}

fn report(slots: &[Mutex<Slot>], outages: &[Outage]) {
    let slot = |i: usize| {
        slots[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    println!("## 13. VerifyKey through a PostgreSQL outage\n");
    println!(
        "Cached keys ({CACHED_KEYS}) at {RATE:.0} req/s open loop throughout; {ROUNDS} rounds of {} s before, a {} s outage, {} s after.\n",
        PHASE.as_secs(),
        PHASE.as_secs(),
        PHASE.as_secs()
    );
    println!(
        "| round | before p50 / p99 | during p50 / p99 / max | during p99 / before p99 | after p50 / p99 / max | not VALID (before, during, after) |\n|---|---|---|---|---|---|"
    );
    let mut pooled: [Vec<Duration>; 3] = Default::default();
    let mut all_failures: [BTreeMap<String, u64>; 3] = Default::default();
    let row = |label: String, phases: [Vec<Duration>; 3], failures: [String; 3]| {
        let [before, during, after] = phases.map(|mut l| {
            l.sort_unstable();
            l
        });
        let q = |l: &[Duration], p: f64| load::quantile(l, p);
        println!(
            "| {label} | {} / {} | {} / {} / {} | **{:.2}** | {} / {} / {} | {} |",
            ms(q(&before, 0.5)),
            ms(q(&before, 0.99)),
            ms(q(&during, 0.5)),
            ms(q(&during, 0.99)),
            ms(q(&during, 1.0)),
            q(&during, 0.99).as_secs_f64() / q(&before, 0.99).as_secs_f64(),
            ms(q(&after, 0.5)),
            ms(q(&after, 0.99)),
            ms(q(&after, 1.0)),
            failures.join(", "),
        );
    };
    for round in 0..ROUNDS {
        let phases: [Vec<Duration>; 3] =
            std::array::from_fn(|p| slot(round * 3 + p).latencies.clone());
        let failures: [String; 3] = std::array::from_fn(|p| {
            let failures = slot(round * 3 + p).failures.clone();
            for (kind, n) in &failures {
                *all_failures[p].entry(kind.clone()).or_default() += n;
            }
            named(&failures)
        });
        for (all, phase) in pooled.iter_mut().zip(&phases) {
            all.extend(phase);
        }
        row(format!("{}", round + 1), phases, failures);
    }
    row(
        "all".into(),
        pooled,
        std::array::from_fn(|p| named(&all_failures[p])),
    );
    println!();

    println!(
        "Misses (keys never verified) every {} ms and writes (CreateKey) every {} ms during each outage, once the breaker is open; the time from the database's return until a miss is answered (unknown keys asked every {} ms):\n",
        MISS_EVERY.as_millis(),
        WRITE_EVERY.as_millis(),
        POLL_EVERY.as_millis()
    );
    println!(
        "| round | first miss (finds the outage) | misses p50 / p99 / max | misses answered | writes p50 / p99 / max | writes answered | miss answered again after the return | bcrypt checks (before, during, after) |\n|---|---|---|---|---|---|---|---|"
    );
    let (mut all_misses, mut all_writes) = (Vec::new(), Vec::new());
    for (round, outage) in outages.iter().enumerate() {
        all_misses.extend(outage.misses.iter().copied());
        all_writes.extend(outage.writes.iter().copied());
        println!(
            "| {} | {} {:?} | {} | {} | {} | {} | sent at {}, answered at {} | {} |",
            round + 1,
            ms(outage.first.0),
            outage.first.1,
            spread(&outage.misses),
            codes(&outage.misses),
            spread(&outage.writes),
            codes(&outage.writes),
            ms(outage.recovered.0),
            ms(outage.recovered.1),
            outage.bcrypts.map(|n| n.to_string()).join(", "),
        );
    }
    println!(
        "| all | | {} | {} | {} | {} | | |\n",
        spread(&all_misses),
        codes(&all_misses),
        spread(&all_writes),
        codes(&all_writes),
    );
    println!(
        "Goals: cached keys VALID throughout, their p99 during the outage ≤ 2× before; misses and writes answered UNAVAILABLE within 50 ms once the breaker is open.\n"
    );
}

/// p50 / p99 / max of the answers' latencies.
fn spread(answers: &[Answer]) -> String {
    let mut l: Vec<Duration> = answers.iter().map(|a| a.0).collect();
    l.sort_unstable();
    format!(
        "{} / {} / {}",
        ms(load::quantile(&l, 0.5)),
        ms(load::quantile(&l, 0.99)),
        ms(load::quantile(&l, 1.0))
    )
}

/// How many answers had each gRPC code.
fn codes(answers: &[Answer]) -> String {
    let mut counted = BTreeMap::new();
    for (_, code) in answers {
        *counted.entry(format!("{code:?}")).or_insert(0u64) += 1;
    }
    named(&counted)
}

fn named(counted: &BTreeMap<String, u64>) -> String {
    if counted.is_empty() {
        return "0".into();
    }
    counted
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A key for `user`, minted through the API: one user each, within the per-user create limit.
async fn mint(server: &Server, user: &str) -> anyhow::Result<String> {
    let key = server
        .key(
            user,
            pb::CreateKeyRequest {
                name: "outage".into(),
                ..Default::default()
            },
        )
        .await?;
    Ok(key.api_key)
}

/// A TCP proxy in front of the PostgreSQL server that can be stopped: stopped, its port refuses
/// connections and every connection through it is dropped.
struct Proxy {
    /// The database's URL through the proxy.
    url: String,
    addr: SocketAddr,
    upstream: String,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(database_url: &str) -> anyhow::Result<Self> {
        let mut url = reqwest::Url::parse(database_url)?;
        let upstream = format!(
            "{}:{}",
            url.host_str()
                .ok_or_else(|| anyhow::anyhow!("no host in the PostgreSQL URL"))?,
            url.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        url.set_host(Some("127.0.0.1"))?;
        url.set_port(Some(addr.port()))
            .map_err(|()| anyhow::anyhow!("cannot set the proxy's port"))?;
        Ok(Self {
            url: url.to_string(),
            addr,
            serving: Some(tokio::spawn(forward(listener, upstream.clone()))),
            upstream,
        })
    }

    /// The outage: the port closes and every open connection is dropped.
    async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
            let _ = serving.await;
        }
    }

    /// The database back, on the same port.
    async fn resume(&mut self) -> anyhow::Result<()> {
        if self.serving.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.serving = Some(tokio::spawn(forward(listener, self.upstream.clone())));
        }
        Ok(())
    }
}

async fn forward(listener: TcpListener, upstream: String) {
    // The connections belong to this task: aborting it drops them all.
    let mut open = tokio::task::JoinSet::new();
    loop {
        while open.try_join_next().is_some() {}
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let upstream = upstream.clone();
        open.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
