//! Benchmark 12: the soak. A mix of 90% VerifyKey (cached keys) and 10% management calls (list,
//! get, create and revoke, the admin's platform list) at half the mix's saturated rate, for
//! `--soak-seconds` (600 by default), on PostgreSQL. Each minute: the rate served, p50 and p99
//! (timed from when each request was due), failures, the process's resident memory, open files
//! and the database's connections. Latencies are kept one minute at a time, so the load
//! generator's own memory stays flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use sea_orm::{ConnectionTrait, Statement};
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, ms};
use crate::setup::{self, Server, authorized};

const KEYS: usize = 200;
/// The users whose keys churn (create, then revoke): spread so that none passes the per-user
/// limits the soak sets.
const CHURNING_USERS: usize = 50;

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let url = setup::postgres_database(&args.postgres_url).await?;
    let outcome = measure(args, rt, &url).await;
    setup::drop_postgres_database(&args.postgres_url, &url).await?;
    outcome
}

/// The mix, one call: the `i`-th request of the run.
#[derive(Clone)]
struct Mix {
    keys: Arc<Vec<pb::IssuedKey>>,
    user: String,
    churners: Arc<Vec<String>>,
    admin: String,
    channel: Channel,
}

impl Mix {
    async fn call(&self, i: u64) -> bool {
        let key = &self.keys[(i as usize) % self.keys.len()];
        let mut owner = UserKeyServiceClient::new(self.channel.clone());
        let token = &self.user;
        match i % 40 {
            0 => match authorized(
                pb::ListKeysRequest {
                    page_size: 20,
                    ..Default::default()
                },
                token,
            ) {
                Ok(req) => owner.list_keys(req).await.is_ok(),
                Err(_) => false,
            },
            10 => match authorized(
                pb::GetKeyRequest {
                    key_id: key.key_id.clone(),
                },
                token,
            ) {
                Ok(req) => owner.get_key(req).await.is_ok(),
                Err(_) => false,
            },
            20 => {
                let token = &self.churners[(i as usize / 40) % self.churners.len()];
                let create = pb::CreateKeyRequest {
                    name: "churn".into(),
                    ..Default::default()
                };
                let Ok(made) = (match authorized(create, token) {
                    Ok(req) => owner.create_key(req).await,
                    Err(_) => return false,
                }) else {
                    return false;
                };
                match authorized(
                    pb::RevokeKeyRequest {
                        key_id: made.into_inner().key_id,
                    },
                    token,
                ) {
                    Ok(req) => owner.revoke_key(req).await.is_ok(),
                    Err(_) => false,
                }
            }
            30 => match authorized(pb::ListPlatformKeysRequest {}, &self.admin) {
                Ok(req) => PlatformKeyServiceClient::new(self.channel.clone())
                    .list_platform_keys(req)
                    .await
                    .is_ok(),
                Err(_) => false,
            },
            _ => owner
                .verify_key(pb::VerifyKeyRequest {
                    api_key: key.api_key.clone(),
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.into_inner().valid),
        }
    }
}

async fn measure(args: &Args, rt: &tokio::runtime::Handle, url: &str) -> anyhow::Result<()> {
    let mut settings = setup::settings(url.to_owned(), args.bulk_bcrypt_cost);
    settings.domain.keys.max_key_creates_per_minute = 1_000;
    settings.domain.keys.max_active_keys_per_user = 1_000;
    let server = setup::start(settings, rt).await?;
    let user = server.session("soak-user", Role::User).await?;
    let admin = server.session("soak-admin", Role::Admin).await?;
    let mut churners = Vec::with_capacity(CHURNING_USERS);
    for n in 0..CHURNING_USERS {
        churners.push(server.session(&format!("churn-{n}"), Role::User).await?);
    }
    let churners = Arc::new(churners);
    let mut keys = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        keys.push(
            server
                .key(
                    "soak-user",
                    pb::CreateKeyRequest {
                        name: format!("soak {i}"),
                        ..Default::default()
                    },
                )
                .await?,
        );
    }
    let channels = server.channels(args.connections).await?;
    let mixes: Vec<Mix> = channels
        .iter()
        .map(|channel| Mix {
            keys: Arc::new(keys.clone()),
            user: user.clone(),
            churners: churners.clone(),
            admin: admin.clone(),
            channel: channel.clone(),
        })
        .collect();

    // The mix's saturated rate, then half of it for the soak.
    let counter = Arc::new(AtomicU64::new(0));
    let saturated = {
        let counter = counter.clone();
        let call: load::CallOn<Mix> = Arc::new(move |mix: Mix| {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move { mix.call(i).await })
        });
        load::closed(&mixes, call, args.concurrency, args.seconds.min(10)).await
    };
    let rate = (saturated.per_second / 2.0).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / rate);

    println!("## 12. Soak: 90% VerifyKey, 10% management, at half saturation (PostgreSQL)\n");
    println!(
        "Saturated rate of the mix: {:.0} req/s; the soak runs at {rate:.0} req/s for {} s.\n",
        saturated.per_second, args.soak_seconds
    );
    println!(
        "| minute | req/s | p50 | p99 | failures | RSS | open files | database connections |\n|---|---|---|---|---|---|---|---|"
    );
    let started = Instant::now();
    let mut i: u64 = 0;
    let minutes = args.soak_seconds.div_ceil(60).max(1);
    // Each call adds its latency here when it ends; a minute's figures are taken out at its end
    // (a call still running then counts in the next minute). No per-call handle is kept.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    for minute in 1..=minutes {
        let window_end = started + Duration::from_secs((minute * 60).min(args.soak_seconds));
        let window_start = Instant::now();
        while Instant::now() < window_end {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            let mix = mixes[(i as usize) % mixes.len()].clone();
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let (latencies, failures) = (latencies.clone(), failures.clone());
            tokio::spawn(async move {
                let ok = mix.call(n).await;
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                let took = due.elapsed();
                latencies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(took);
            });
            i += 1;
        }
        let mut latencies = std::mem::take(
            &mut *latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let failures = failures.swap(0, Ordering::Relaxed);
        latencies.sort_unstable();
        let served = latencies.len() as f64 / window_start.elapsed().as_secs_f64();
        let (rss, files) = own_footprint();
        let connections = db_connections(&server, url).await?;
        println!(
            "| {minute} | {served:.0} | {} | {} | {} | {} MiB | {files} | {connections} |",
            ms(load::quantile(&latencies, 0.50)),
            ms(load::quantile(&latencies, 0.99)),
            failures,
            rss / 1024,
        );
    }
    println!();
    server.stop().await;
    Ok(())
}

/// This process's resident memory (KiB) and open files: the server runs in it, beside a load
/// generator whose memory does not grow.
pub(crate) fn own_footprint() -> (u64, usize) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let files = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    (rss, files)
}

async fn db_connections(server: &Server, url: &str) -> anyhow::Result<i64> {
    let name = url.rsplit('/').next().unwrap_or_default();
    let conn = keyhouse_domain::db::connect(&server.settings.domain.database_url).await?;
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{name}'"),
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count"))?;
    let n: i64 = row.try_get("", "n")?;
    conn.close().await?;
    // Less this query's own connection.
    Ok(n - 1)
}
