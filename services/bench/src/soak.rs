//! Benchmark 12: the soak. A mix of 90% VerifyKey (cached keys) and 10% management calls (list,
//! get, create and revoke, the admin's platform list) at half the mix's saturated rate, for
//! `--soak-seconds` (600 by default), on PostgreSQL. Each minute: the rate served, p50 and p99
//! (timed from when each request was due), failures, the process's resident memory, open files
//! and the database's connections; under the table, each minute's failures by kind (which call
//! of the mix, and its gRPC code and message). Latencies are kept one minute at a time, so the
//! load generator's own memory stays flat.

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

/// Which call of the mix a request was, to name its failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    ListKeys,
    GetKey,
    CreateKey,
    RevokeKey,
    ListPlatformKeys,
    VerifyKey,
}

/// How a call of the mix failed: the call and its gRPC code and message (the server's words,
/// which never hold a key or a secret), or the reason a VerifyKey answered not valid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Failure {
    call: Call,
    how: String,
}

impl Failure {
    fn status(call: Call, status: &tonic::Status) -> Self {
        let message: String = status.message().chars().take(80).collect();
        Self {
            call,
            how: format!("{:?}: {message}", status.code()),
        }
    }
}

/// A call's outcome: what the mix asked was answered, or how it failed.
type Outcome = Result<(), Failure>;

/// The failures of one minute, counted by kind.
type Failures = std::collections::BTreeMap<Failure, u64>;

/// A request of `call` carrying `token`.
fn authorized_as<T>(call: Call, message: T, token: &str) -> Result<tonic::Request<T>, Failure> {
    authorized(message, token).map_err(|_| Failure {
        call,
        how: "the session token is not a header value".into(),
    })
}

/// `Ok` when the call answered; the failure named after the call otherwise.
fn answered<T>(call: Call, answer: Result<T, tonic::Status>) -> Result<T, Failure> {
    answer.map_err(|status| Failure::status(call, &status))
}

impl Mix {
    async fn call(&self, i: u64) -> Outcome {
        let key = &self.keys[(i as usize) % self.keys.len()];
        let mut owner = UserKeyServiceClient::new(self.channel.clone());
        let token = &self.user;
        match i % 40 {
            0 => {
                let req = authorized_as(
                    Call::ListKeys,
                    pb::ListKeysRequest {
                        page_size: 20,
                        ..Default::default()
                    },
                    token,
                )?;
                answered(Call::ListKeys, owner.list_keys(req).await).map(drop)
            }
            10 => {
                let req = authorized_as(
                    Call::GetKey,
                    pb::GetKeyRequest {
                        key_id: key.key_id.clone(),
                    },
                    token,
                )?;
                answered(Call::GetKey, owner.get_key(req).await).map(drop)
            }
            20 => {
                let token = &self.churners[(i as usize / 40) % self.churners.len()];
                let create = pb::CreateKeyRequest {
                    name: "churn".into(),
                    ..Default::default()
                };
                let made = answered(
                    Call::CreateKey,
                    owner
                        .create_key(authorized_as(Call::CreateKey, create, token)?)
                        .await,
                )?;
                let revoke = pb::RevokeKeyRequest {
                    key_id: made.into_inner().key_id,
                };
                answered(
                    Call::RevokeKey,
                    owner
                        .revoke_key(authorized_as(Call::RevokeKey, revoke, token)?)
                        .await,
                )
                .map(drop)
            }
            30 => {
                let req = authorized_as(
                    Call::ListPlatformKeys,
                    pb::ListPlatformKeysRequest {},
                    &self.admin,
                )?;
                answered(
                    Call::ListPlatformKeys,
                    PlatformKeyServiceClient::new(self.channel.clone())
                        .list_platform_keys(req)
                        .await,
                )
                .map(drop)
            }
            _ => {
                let answer = answered(
                    Call::VerifyKey,
                    owner
                        .verify_key(pb::VerifyKeyRequest {
                            api_key: key.api_key.clone(),
                            ..Default::default()
                        })
                        .await,
                )?
                .into_inner();
                if answer.valid {
                    Ok(())
                } else {
                    Err(Failure {
                        call: Call::VerifyKey,
                        how: format!("answered not valid: {:?}", answer.reason()),
                    })
                }
            }
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
            Box::pin(async move { mix.call(i).await.is_ok() })
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
    let failures = Arc::new(std::sync::Mutex::new(Failures::new()));
    // Each minute's failures by kind, printed under the table.
    let mut failed_minutes = Vec::new();
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
                if let Err(failure) = mix.call(n).await {
                    *failures
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(failure)
                        .or_default() += 1;
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
        let failures = std::mem::take(
            &mut *failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        latencies.sort_unstable();
        let served = latencies.len() as f64 / window_start.elapsed().as_secs_f64();
        let (rss, files) = own_footprint();
        let connections = db_connections(&server, url).await?;
        println!(
            "| {minute} | {served:.0} | {} | {} | {} | {} MiB | {files} | {connections} |",
            ms(load::quantile(&latencies, 0.50)),
            ms(load::quantile(&latencies, 0.99)),
            failures.values().sum::<u64>(),
            rss / 1024,
        );
        if !failures.is_empty() {
            failed_minutes.push((minute, failures));
        }
    }
    println!();
    if failed_minutes.is_empty() {
        println!("Failures by kind: none.\n");
    } else {
        println!("Failures by kind:\n");
        for (minute, failures) in failed_minutes {
            let kinds: Vec<String> = failures
                .iter()
                .map(|(f, n)| format!("{n} × {:?} {}", f.call, f.how))
                .collect();
            println!("- minute {minute}: {}", kinds.join("; "));
        }
        println!();
    }
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
