//! Benchmark 15: overload is shed, not queued. A mix of cached VerifyKey (recording usage), cold
//! VerifyKey (one bcrypt), CreateKey (one bcrypt hash) and RevokeKey (a note on the change feed)
//! is run closed loop for its saturated rate, then open loop at three times that rate, each call
//! with a deadline as a gateway sets one. Every few seconds: the rate answered, the calls shed by
//! code, p50 and p99 of the answers (timed from when each was due), the process's resident memory
//! and the depth of each bounded queue from the server's `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, ms};
use crate::setup::{self, Server, authorized};

const CACHED_KEYS: usize = 50;
/// Keys never verified, each good for one cold VerifyKey (a shed one goes back).
const COLD_KEYS: usize = 250;
const USERS: usize = 20;
/// Of every `PERIOD` calls: one CreateKey, one cold VerifyKey, one RevokeKey (of a key the mix
/// made); the rest VerifyKey of cached keys.
const PERIOD: u64 = 1000;
/// Every call's deadline in the overload (`grpc-timeout`; tonic's client keeps the same timer
/// and answers CANCELLED when it fires first). Long enough for a bcrypt call that waits its
/// turn: with 1 s, on a busy two-core machine where one bcrypt took over a second, none could.
const DEADLINE: Duration = Duration::from_secs(5);
/// The load generator stops waiting for an answer after this: a call not answered at all.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Seconds per reported window.
const WINDOW: u64 = 5;
/// How many times the saturated rate is offered.
const OVERLOAD: f64 = 3.0;

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("keyhouse-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.display());
    let mut settings = setup::settings(url, args.bcrypt_cost);
    settings.domain.keys.max_key_creates_per_minute = 100_000;
    settings.domain.keys.max_active_keys_per_user = 100_000;
    let server = setup::start(settings, rt).await?;
    let outcome = measure(args, &server).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Cached,
    Cold,
    Create,
    Revoke,
}

#[derive(Clone)]
struct Mix {
    cached: Arc<Vec<String>>,
    cold: Arc<Mutex<Vec<String>>>,
    /// Keys the mix made, with their owner's token, for the revokes.
    made: Arc<Mutex<Vec<(String, String)>>>,
    tokens: Arc<Vec<String>>,
    deadline: Option<Duration>,
    channel: Channel,
}

impl Mix {
    fn timed<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline);
        }
        request
    }

    fn verify(&self, key: &str) -> tonic::Request<pb::VerifyKeyRequest> {
        self.timed(tonic::Request::new(pb::VerifyKeyRequest {
            api_key: key.to_owned(),
            ..Default::default()
        }))
    }

    /// The `i`-th call of the mix: what it was and its answer's code.
    async fn call(&self, i: u64) -> (Kind, tonic::Code) {
        let mut client = UserKeyServiceClient::new(self.channel.clone());
        let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
        match i % PERIOD {
            0 => {
                let token = &self.tokens[(i / PERIOD) as usize % self.tokens.len()];
                let create = pb::CreateKeyRequest {
                    name: "overload".into(),
                    ..Default::default()
                };
                let Ok(request) = authorized(create, token) else {
                    return (Kind::Create, tonic::Code::Internal);
                };
                match client.create_key(self.timed(request)).await {
                    Ok(made) => {
                        lock(&self.made).push((made.into_inner().key_id, token.clone()));
                        (Kind::Create, tonic::Code::Ok)
                    }
                    Err(s) => (Kind::Create, s.code()),
                }
            }
            500 => {
                let Some(key) = lock(&self.cold).pop() else {
                    return self.cached_verify(i).await;
                };
                let answer = client.verify_key(self.verify(&key)).await;
                if answer.is_err() {
                    // Shed: still cold, for a later call.
                    lock(&self.cold).push(key);
                }
                (Kind::Cold, code(answer.map(drop)))
            }
            250 => {
                let Some((key_id, token)) = lock(&self.made).pop() else {
                    return self.cached_verify(i).await;
                };
                let Ok(request) = authorized(pb::RevokeKeyRequest { key_id }, &token) else {
                    return (Kind::Revoke, tonic::Code::Internal);
                };
                (
                    Kind::Revoke,
                    code(client.revoke_key(self.timed(request)).await.map(drop)),
                )
            }
            _ => self.cached_verify(i).await,
        }
    }

    async fn cached_verify(&self, i: u64) -> (Kind, tonic::Code) {
        let key = &self.cached[i as usize % self.cached.len()];
        let answer = UserKeyServiceClient::new(self.channel.clone())
            .verify_key(self.verify(key))
            .await;
        (
            Kind::Cached,
            answer.err().map_or(tonic::Code::Ok, |s| s.code()),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the calls of one window came to.
#[derive(Default)]
struct Tally {
    answered: Vec<Duration>,
    cached: Vec<Duration>,
    codes: BTreeMap<String, u64>,
    /// Cold VerifyKey and CreateKey answered, and shed.
    bcrypt_answered: u64,
    bcrypt_shed: u64,
}

async fn measure(args: &Args, server: &Server) -> anyhow::Result<()> {
    let mut tokens = Vec::with_capacity(USERS);
    for n in 0..USERS {
        tokens.push(server.session(&format!("overload-{n}"), Role::User).await?);
    }
    let keys = mint(server, &tokens, CACHED_KEYS + COLD_KEYS).await?;
    let (cached, cold) = keys.split_at(CACHED_KEYS);
    let mut check = UserKeyServiceClient::new(server.channel().await?);
    for key in cached {
        let answer = check
            .verify_key(pb::VerifyKeyRequest {
                api_key: key.clone(),
                ..Default::default()
            })
            .await?;
        anyhow::ensure!(answer.into_inner().valid, "a cached key did not verify");
    }
    let channels = server.channels(args.connections).await?;
    let (cached, cold) = (
        Arc::new(cached.to_vec()),
        Arc::new(Mutex::new(cold.to_vec())),
    );
    let (made, tokens) = (Arc::new(Mutex::new(Vec::new())), Arc::new(tokens));
    let mix = |deadline| -> Vec<Mix> {
        channels
            .iter()
            .map(|channel| Mix {
                cached: cached.clone(),
                cold: cold.clone(),
                made: made.clone(),
                tokens: tokens.clone(),
                deadline,
                channel: channel.clone(),
            })
            .collect()
    };

    // The saturated rate: closed loop, no deadline, so that every bcrypt call waits its turn.
    let counter = Arc::new(AtomicU64::new(0));
    let saturating = mix(None);
    let saturated = {
        let counter = counter.clone();
        let call: load::CallOn<Mix> = Arc::new(move |mix: Mix| {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move { mix.call(i).await.1 == tonic::Code::Ok })
        });
        load::closed(&saturating, call, args.concurrency, args.seconds).await
    };
    let rate = saturated.per_second * OVERLOAD;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));

    println!("## 15. Overload: the mix at {OVERLOAD}× its saturated rate, open loop\n");
    println!(
        "Saturated rate of the mix (closed loop, {} in flight, {} s, no deadline): {:.0} req/s \
         ({} failures); offered now: {rate:.0} req/s for {} s, every call with a {} ms deadline.\n",
        args.concurrency,
        args.seconds,
        saturated.per_second,
        saturated.failures,
        args.overload_seconds,
        DEADLINE.as_millis(),
    );
    println!(
        "| s | answered/s | shed by code | bcrypt calls answered / shed | p50 | p99 | cached VerifyKey p99 | in flight (client) | RSS | bcrypt queue | usage | change feed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mixes = mix(Some(DEADLINE));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let (mut total, mut shed_total) = (0u64, BTreeMap::<String, u64>::new());
    let mut rss_seen = Vec::new();
    let started = Instant::now();
    let mut i: u64 = 0;
    let windows = args.overload_seconds.div_ceil(WINDOW).max(1);
    for window in 1..=windows {
        let window_end =
            started + Duration::from_secs((window * WINDOW).min(args.overload_seconds));
        let window_start = Instant::now();
        while Instant::now() < window_end {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            let mix = mixes[(i as usize) % mixes.len()].clone();
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let (tally, in_flight) = (tally.clone(), in_flight.clone());
            in_flight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let answer = tokio::time::timeout(GIVE_UP, mix.call(n)).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let took = due.elapsed();
                let mut t = lock(&tally);
                let (kind, code) = match answer {
                    Ok(done) => done,
                    Err(_) => {
                        *t.codes.entry("no answer".into()).or_default() += 1;
                        return;
                    }
                };
                let bcrypt = matches!(kind, Kind::Cold | Kind::Create);
                if code == tonic::Code::Ok {
                    t.answered.push(took);
                    if kind == Kind::Cached {
                        t.cached.push(took);
                    }
                    t.bcrypt_answered += u64::from(bcrypt);
                } else {
                    *t.codes.entry(format!("{code:?}")).or_default() += 1;
                    t.bcrypt_shed += u64::from(bcrypt);
                }
            });
            i += 1;
        }
        let mut t = std::mem::take(&mut *lock(&tally));
        t.answered.sort_unstable();
        t.cached.sort_unstable();
        total += t.answered.len() as u64;
        for (code, n) in &t.codes {
            *shed_total.entry(code.clone()).or_default() += n;
        }
        let (rss, _) = crate::soak::own_footprint();
        rss_seen.push(rss);
        let depth = queue_depths(server).await?;
        println!(
            "| {} | {:.0} | {} | {} / {} | {} | {} | {} | {} | {} MiB | {} | {} | {} |",
            (window * WINDOW).min(args.overload_seconds),
            t.answered.len() as f64 / window_start.elapsed().as_secs_f64(),
            codes(&t.codes),
            t.bcrypt_answered,
            t.bcrypt_shed,
            ms(load::quantile(&t.answered, 0.50)),
            ms(load::quantile(&t.answered, 0.99)),
            ms(load::quantile(&t.cached, 0.99)),
            in_flight.load(Ordering::Relaxed),
            rss / 1024,
            depth("bcrypt"),
            depth("usage"),
            depth("change_feed"),
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let shed: u64 = shed_total.values().sum();
    println!(
        "\nOffered {i} calls ({:.0}/s); answered {total} ({:.0}/s); shed {shed}: {}; cold keys \
         left unverified: {} of {COLD_KEYS} (when none is left, a cold call verifies a cached key).\n",
        i as f64 / elapsed,
        total as f64 / elapsed,
        codes(&shed_total),
        lock(&cold).len(),
    );
    // Let the calls still running end before the server stops.
    tokio::time::sleep(GIVE_UP).await;
    Ok(())
}

fn codes(codes: &BTreeMap<String, u64>) -> String {
    if codes.is_empty() {
        return "none".into();
    }
    codes
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` keys minted through CreateKey, spread over the users, 8 at a time.
async fn mint(server: &Server, tokens: &[String], n: usize) -> anyhow::Result<Vec<String>> {
    let channel = server.channel().await?;
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (channel, next, tokens) = (channel.clone(), next.clone(), tokens.to_vec());
            tokio::spawn(async move {
                let mut keys = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return anyhow::Ok(keys);
                    }
                    let request = authorized(
                        pb::CreateKeyRequest {
                            name: format!("minted {i}"),
                            ..Default::default()
                        },
                        &tokens[i % tokens.len()],
                    )?;
                    // Refused at once when the bcrypt queue's wait would be long: a shed
                    // caller tries again a moment later.
                    let made = loop {
                        match UserKeyServiceClient::new(channel.clone())
                            .create_key(clone_request(&request))
                            .await
                        {
                            Err(s) if s.code() == tonic::Code::Unavailable => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            made => break made?,
                        }
                    };
                    keys.push(made.into_inner().api_key);
                }
            })
        })
        .collect();
    let mut keys = Vec::with_capacity(n);
    for w in workers {
        keys.extend(w.await??);
    }
    Ok(keys)
}

fn clone_request<T: Clone>(request: &tonic::Request<T>) -> tonic::Request<T> {
    let mut copy = tonic::Request::new(request.get_ref().clone());
    *copy.metadata_mut() = request.metadata().clone();
    copy
}

/// The server's `keyhouse_queue_depth` gauges, by queue ("-" when not yet reported).
pub async fn queue_depths(server: &Server) -> anyhow::Result<impl Fn(&str) -> String> {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .text()
        .await?;
    Ok(move |queue: &str| {
        let line = format!("keyhouse_queue_depth{{queue=\"{queue}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or("-")
            .to_owned()
    })
}
