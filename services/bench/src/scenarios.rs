//! The measurements of the verification path, printed as Markdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhouse_domain::change_feed::ChangeFeed;
use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_domain::crypto::key_tag::KeyTagger;
use keyhouse_domain::verify::cache::Cache;
use keyhouse_domain::verify::{KeyInfo, Verifier};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use keyhouse_proto::v1::verify_key_response::Reason;
use tonic::transport::Channel;

use crate::load::{self, Call, ms};
use crate::setup;
use crate::{Args, alloc};

fn verify_call(key: String) -> Call {
    let request = pb::VerifyKeyRequest {
        api_key: key,
        ..Default::default()
    };
    Arc::new(move |channel: Channel| {
        let request = request.clone();
        Box::pin(async move {
            UserKeyServiceClient::new(channel)
                .verify_key(request)
                .await
                .is_ok()
        })
    })
}

/// Keys from a list, one per call in turn (for floods of distinct keys).
fn verify_each(keys: Vec<String>) -> Call {
    let keys = Arc::new(keys);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Arc::new(move |channel: Channel| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % keys.len();
        let request = pb::VerifyKeyRequest {
            api_key: keys[i].clone(),
            ..Default::default()
        };
        Box::pin(async move {
            UserKeyServiceClient::new(channel)
                .verify_key(request)
                .await
                .is_ok()
        })
    })
}

pub fn empty_call() -> Call {
    Arc::new(|channel: Channel| {
        Box::pin(async move {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok()
        })
    })
}

/// Benchmarks 1-8, with `before_traces` (the others) run before 8: benchmark 8 installs the
/// process's tracing subscriber, which then stays and would log and trace every later call.
pub async fn run(
    args: &Args,
    server_rt: tokio::runtime::Handle,
    before_traces: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let wanted = |n: u32| args.wanted(n);
    let dir =
        std::env::temp_dir().join(format!("keyhouse-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let server = setup::sqlite(&dir, args, &server_rt).await?;
    let chans = server.channels(args.connections).await?;
    let key = server
        .key(
            "bench",
            pb::CreateKeyRequest {
                name: "bench".into(),
                ..Default::default()
            },
        )
        .await?;
    // Warm the cache.
    load::closed(&chans, verify_call(key.api_key.clone()), 1, 1).await;

    let mut cached_rate = 0.0;
    if wanted(1) || wanted(7) {
        let [empty, cached] = load::alternating(
            [
                (&chans, empty_call()),
                (&chans, verify_call(key.api_key.clone())),
            ],
            args.concurrency,
            args.seconds,
        )
        .await;
        cached_rate = cached.per_second;
        if wanted(1) {
            let empty_half =
                load::open(&chans, empty_call(), empty.per_second / 2.0, args.seconds).await;
            let cached_half = load::open(
                &chans,
                verify_call(key.api_key.clone()),
                cached.per_second / 2.0,
                args.seconds,
            )
            .await;
            println!(
                "## 1. Cached VerifyKey vs an empty unary RPC (grpc.health.v1.Health/Check)\n"
            );
            println!(
                "| RPC | saturated req/s | at half saturation: req/s | p50 | p99 | failures |\n|---|---|---|---|---|---|"
            );
            for (name, sat, half) in [
                ("Health/Check (empty)", &empty, &empty_half),
                ("VerifyKey (cached)", &cached, &cached_half),
            ] {
                println!(
                    "| {name} | {:.0} | {:.0} | {} | {} | {} |",
                    sat.per_second,
                    half.per_second,
                    ms(half.p50),
                    ms(half.p99),
                    sat.failures + half.failures
                );
            }
            println!(
                "\nThroughput ratio VerifyKey / empty RPC: **{:.2}** (goal ≥ 0.8)\n",
                cached.per_second / empty.per_second
            );
        }
    }

    if wanted(2) {
        let mut keys = Vec::new();
        for i in 0..5 {
            keys.push(
                server
                    .key(
                        "cold",
                        pb::CreateKeyRequest {
                            name: format!("cold {i}"),
                            ..Default::default()
                        },
                    )
                    .await?,
            );
        }
        let hash = bcrypt::hash(&keys[0].api_key, args.bcrypt_cost)?;
        let started = Instant::now();
        for k in &keys {
            let (key, hash) = (k.api_key.clone(), hash.clone());
            tokio::task::spawn_blocking(move || bcrypt::verify(key, &hash)).await??;
        }
        let bare = started.elapsed() / keys.len() as u32;
        let mut client = UserKeyServiceClient::new(chans[0].clone());
        let started = Instant::now();
        for k in &keys {
            let answer = client
                .verify_key(pb::VerifyKeyRequest {
                    api_key: k.api_key.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::ensure!(answer.valid, "a cold key did not verify");
        }
        let cold = started.elapsed() / keys.len() as u32;
        println!(
            "## 2. Cold VerifyKey vs a bare bcrypt verify (cost {})\n",
            args.bcrypt_cost
        );
        println!(
            "| | mean of {} |\n|---|---|\n| bare `bcrypt::verify` | {} |\n| cold VerifyKey over gRPC | {} |",
            keys.len(),
            ms(bare),
            ms(cold)
        );
        println!(
            "\nRatio cold / bare: **{:.3}** (goal ≤ 1.1)\n",
            cold.as_secs_f64() / bare.as_secs_f64()
        );
    }

    let feed = ChangeFeed::start(
        &keyhouse_domain::db::connect(&server.settings.domain.database_url).await?,
        &server.settings.domain.database_url,
    )
    .await?;
    let verifier = Verifier::start(
        keyhouse_domain::db::connect(&server.settings.domain.database_url).await?,
        &server.settings.domain.keys.scopes,
        &server.settings.domain.verify,
        &feed,
        KeyTagger::from_ring(&server.settings.domain.required_key_ring()?),
    )
    .await?;

    if wanted(3) {
        let fresh = server
            .key(
                "flight",
                pb::CreateKeyRequest {
                    name: "single flight".into(),
                    ..Default::default()
                },
            )
            .await?;
        let request = Arc::new(pb::VerifyKeyRequest {
            api_key: fresh.api_key.clone(),
            ..Default::default()
        });
        let before = verifier.bcrypt_runs();
        let started = Instant::now();
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                let (verifier, request) = (verifier.clone(), request.clone());
                tokio::spawn(async move {
                    verifier
                        .verify(&request)
                        .await
                        .map(|r| r.valid)
                        .unwrap_or(false)
                })
            })
            .collect();
        let mut valid = 0;
        for c in calls {
            valid += usize::from(c.await?);
        }
        println!("## 3. 1,000 concurrent VerifyKey calls for one uncached key\n");
        println!(
            "{valid} of 1000 valid; bcrypt runs: **{}** (goal: exactly 1); all answered in {}\n",
            verifier.bcrypt_runs() - before,
            ms(started.elapsed())
        );
    }

    if wanted(4) {
        let malformed: Vec<String> = (0..10_000).map(|i| format!("uc_{:064x}", i)).collect();
        let unknown: Vec<String> = (0..10_000)
            .map(|_| ApiKey::generate().map(|k| k.expose().to_owned()))
            .collect::<Result<_, _>>()?;
        // Each flood takes turns with cached VerifyKey, so that the machine's drift falls on both.
        let [cached_vs_bad, bad] = load::alternating(
            [
                (&chans, verify_call(key.api_key.clone())),
                (&chans, verify_each(malformed.clone())),
            ],
            args.concurrency,
            args.seconds,
        )
        .await;
        let [cached_vs_missing, missing] = load::alternating(
            [
                (&chans, verify_call(key.api_key.clone())),
                (&chans, verify_each(unknown.clone())),
            ],
            args.concurrency,
            args.seconds,
        )
        .await;
        let before = verifier.bcrypt_runs();
        for k in unknown.iter().take(1000).chain(malformed.iter().take(1000)) {
            let answer = verifier
                .verify(&pb::VerifyKeyRequest {
                    api_key: k.clone(),
                    ..Default::default()
                })
                .await?;
            anyhow::ensure!(
                matches!(answer.reason(), Reason::NotFound | Reason::Malformed),
                "a bad key was accepted"
            );
        }
        println!("## 4. A flood of malformed and of unknown (well-formed) keys\n");
        println!(
            "| flood | req/s | cached VerifyKey in turns with it, req/s | flood / cached | failures |\n|---|---|---|---|---|"
        );
        for (name, o, cached) in [
            (
                "malformed (bad checksum), 10,000 distinct",
                &bad,
                &cached_vs_bad,
            ),
            (
                "unknown, well-formed, 10,000 distinct",
                &missing,
                &cached_vs_missing,
            ),
        ] {
            println!(
                "| {name} | {:.0} | {:.0} | **{:.2}** | {} |",
                o.per_second,
                cached.per_second,
                o.per_second / cached.per_second,
                o.failures + cached.failures
            );
        }
        println!(
            "\nbcrypt runs for 2,000 bad keys through a verifier: **{}** (goal 0). Goal ≥ 0.8× the cached path.\n",
            verifier.bcrypt_runs() - before
        );
    }

    if wanted(5) {
        replicas(args, &server_rt).await?;
    }

    if wanted(6) {
        memory();
    }

    if wanted(7) {
        let hash = bcrypt::hash(&key.api_key, args.bcrypt_cost)?;
        let seconds = 5u64.min(args.seconds.max(1));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (key, hash) = (key.api_key.clone(), hash.clone());
                tokio::task::spawn_blocking(move || {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        if bcrypt::verify(&key, &hash).unwrap_or(false) {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let mut n = 0;
        for w in workers {
            n += w.await?;
        }
        let per_second = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "## 7. The Ops-Center way: bcrypt on every verification (cost {}, both cores)\n",
            args.bcrypt_cost
        );
        println!(
            "| | verifications/s |\n|---|---|\n| bcrypt per request | {per_second:.1} |\n| keyhouse cached VerifyKey | {cached_rate:.0} |"
        );
        println!(
            "\nkeyhouse answers **{:.0}×** as many verifications per second.\n",
            cached_rate / per_second.max(0.001)
        );
    }
    before_traces.await?;
    if wanted(8) {
        crate::traces::run(
            args,
            &server_rt,
            &chans,
            &key.api_key,
            verify_call,
            empty_call,
        )
        .await?;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Benchmark 5: revocation on one replica seen by another on the same PostgreSQL database,
/// which is dropped afterwards.
async fn replicas(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let url = setup::postgres_database(&args.postgres_url).await?;
    let outcome = replicas_on(args, rt, &url).await;
    setup::drop_postgres_database(&args.postgres_url, &url).await?;
    outcome
}

async fn replicas_on(args: &Args, rt: &tokio::runtime::Handle, url: &str) -> anyhow::Result<()> {
    let settings = setup::settings(url.to_owned(), args.bcrypt_cost);
    let first = setup::start(settings.clone(), rt).await?;
    let second = setup::start(settings, rt).await?;
    let mut owner_token = None;
    let mut gateway = UserKeyServiceClient::new(second.channel().await?);
    let mut owner = UserKeyServiceClient::new(first.channel().await?);
    let mut seen = Vec::new();
    for i in 0..100 {
        let key = first
            .key(
                "replica",
                pb::CreateKeyRequest {
                    name: format!("trial {i}"),
                    ..Default::default()
                },
            )
            .await?;
        let token = match &owner_token {
            Some(t) => t,
            None => {
                let conn =
                    keyhouse_domain::db::connect(&first.settings.domain.database_url).await?;
                let t = keyhouse_domain::storage::sessions::create(
                    &conn,
                    "replica",
                    "",
                    keyhouse_domain::caller::Role::User,
                    chrono::Duration::hours(1),
                )
                .await?;
                owner_token.insert(t.as_str().to_owned())
            }
        };
        let check = pb::VerifyKeyRequest {
            api_key: key.api_key.clone(),
            ..Default::default()
        };
        anyhow::ensure!(
            gateway.verify_key(check.clone()).await?.into_inner().valid,
            "not valid on the second replica"
        );
        let mut revoke = tonic::Request::new(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        });
        revoke
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        owner.revoke_key(revoke).await?;
        let returned = Instant::now();
        loop {
            if gateway
                .verify_key(check.clone())
                .await?
                .into_inner()
                .reason()
                == Reason::Revoked
            {
                seen.push(returned.elapsed());
                break;
            }
            anyhow::ensure!(
                returned.elapsed() < Duration::from_secs(5),
                "trial {i}: revocation not seen within 5 s"
            );
        }
    }
    seen.sort_unstable();
    let at = |q: f64| seen[((seen.len() - 1) as f64 * q).round() as usize];
    println!(
        "## 5. Revocation seen by a second replica (PostgreSQL LISTEN/NOTIFY), {} trials\n",
        seen.len()
    );
    println!(
        "Time from RevokeKey returning on replica A to VerifyKey on replica B answering REVOKED:\n"
    );
    println!(
        "| p50 | p99 | max |\n|---|---|---|\n| {} | **{}** | {} |\n\nGoal: p99 < 100 ms.\n",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
    first.stop().await;
    second.stop().await;
    Ok(())
}

/// 6. Heap bytes per cached key, with 1,000,000 keys cached.
fn memory() {
    const N: usize = 1_000_000;
    alloc::counting(true);
    let before = alloc::live_bytes();
    let cache: Cache<Arc<KeyInfo>> = Cache::new(N, Duration::from_secs(300));
    let now = Instant::now();
    for i in 0..N {
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        digest[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        let user = format!("user-{:08}", i % 50_000);
        let info = KeyInfo::active(uuid::Uuid::new_v4(), &user, 0b11, Some(1_900_000_000));
        cache.insert(digest, Arc::new(info), now);
    }
    let after = alloc::live_bytes();
    alloc::counting(false);
    let held = cache.len();
    println!("## 6. Memory per cached key\n");
    println!(
        "{held} keys cached: {:.1} MiB of heap, **{:.0} bytes per key** (goal ≤ 300), counted by the allocator (table, entries, shared key info and user id).\n",
        after.wrapping_sub(before) as f64 / 1048576.0,
        after.wrapping_sub(before) as f64 / held as f64
    );
    drop(cache);
}
