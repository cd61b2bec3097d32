//! A minute of mixed traffic against `keyhouse serve` in a process of its own: 90% VerifyKey of
//! cached keys, 10% management calls (list, get, create and revoke, the admin's platform list).
//! Nothing may fail, and after the warm-up the process must not grow: resident memory by under
//! 10%, open files and database connections not at all. The ten-minute version, with latency
//! figures, is benchmark 12 in BENCHMARKS.md; this one asserts only what does not depend on
//! the machine's speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;

use crate::binary;
use crate::on_both_databases;
use crate::support::Backend;
use crate::trust::OwnProcess;
use crate::verify::{named, verify};

on_both_databases!(a_minute_of_mixed_traffic_fails_nothing_and_grows_nothing);

const SECONDS: u64 = 60;
const WARM_UP: u64 = 20;
/// Requests a second: well under what two shared cores serve, so the run measures leaks, not
/// saturation.
const RATE: u64 = 200;
const KEYS: usize = 50;

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    open_files: usize,
    db_connections: u64,
}

async fn footprint(server: &OwnProcess, pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count();
    let db_connections = if server.db.url.starts_with("postgres") {
        use sea_orm::{ConnectionTrait, Statement};
        let name = server
            .db
            .url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let conn = server.db.connect().await;
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                format!("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{name}'"),
            ))
            .await
            .expect("pg_stat_activity")
            .expect("a row");
        // This query's own connection is one of them.
        u64::try_from(row.try_get::<i64>("", "n").expect("count")).unwrap_or(0) - 1
    } else {
        // SQLite's connections are files: the open-file count holds them.
        0
    };
    Footprint {
        rss_kib,
        open_files,
        db_connections,
    }
}

async fn a_minute_of_mixed_traffic_fails_nothing_and_grows_nothing(backend: Backend) {
    let server = OwnProcess::start_with(
        backend,
        &[
            ("KEYHOUSE_LOG", "info"),
            ("KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE", "100000"),
            ("KEYHOUSE_USAGE_FLUSH_MILLIS", "1000"),
        ],
    )
    .await;
    let pid = server.child.as_ref().expect("running").id();
    let user = server.keyhouse.session("soak-user", "user");
    let admin = server.keyhouse.session("soak-admin", "admin");
    let mut owner = server.client(&user).await;
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let key = owner
            .create_key(named(&format!("soak {i}")))
            .await
            .expect("create")
            .into_inner();
        keys.push(key);
    }
    let keys = Arc::new(keys);
    let failures = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);

    // One task per tick, at a fixed rate: request i is a management call when i % 10 == 0.
    let load = {
        let (keys, failures, calls) = (keys.clone(), failures.clone(), calls.clone());
        let gateway = server.gateway().await;
        let owner = server.client(&user).await;
        let platform = PlatformKeyServiceClient::with_interceptor(
            binary::channel(&server.addr).await,
            binary::bearer(&admin),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut i: u64 = 0;
            let mut running = Vec::new();
            while Instant::now() < deadline {
                tick.tick().await;
                i += 1;
                let (keys, failures, calls) = (keys.clone(), failures.clone(), calls.clone());
                let (mut gateway, mut owner, mut platform) =
                    (gateway.clone(), owner.clone(), platform.clone());
                running.push(tokio::spawn(async move {
                    let key = &keys[(i as usize) % keys.len()];
                    let ok = match i % 40 {
                        0 => owner
                            .list_keys(pb::ListKeysRequest {
                                page_size: 20,
                                ..Default::default()
                            })
                            .await
                            .is_ok(),
                        10 => owner
                            .get_key(pb::GetKeyRequest {
                                key_id: key.key_id.clone(),
                            })
                            .await
                            .is_ok(),
                        20 => match owner.create_key(named("churn")).await {
                            Ok(made) => owner
                                .revoke_key(pb::RevokeKeyRequest {
                                    key_id: made.into_inner().key_id,
                                })
                                .await
                                .is_ok(),
                            Err(_) => false,
                        },
                        30 => platform
                            .list_platform_keys(pb::ListPlatformKeysRequest {})
                            .await
                            .is_ok(),
                        _ => gateway
                            .verify_key(verify(&key.api_key, &[], ""))
                            .await
                            .is_ok_and(|r| r.into_inner().valid),
                    };
                    calls.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }));
                running.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
            }
            for t in running {
                let _ = t.await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(WARM_UP)).await;
    let warm = footprint(&server, pid).await;
    let mut peak = warm;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = footprint(&server, pid).await;
        peak.rss_kib = peak.rss_kib.max(now.rss_kib);
        peak.open_files = peak.open_files.max(now.open_files);
        peak.db_connections = peak.db_connections.max(now.db_connections);
    }
    load.await.expect("load");
    let end = footprint(&server, pid).await;

    let made = calls.load(Ordering::Relaxed);
    assert!(
        made >= RATE * (SECONDS - 5),
        "only {made} calls were made in {SECONDS} s"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "calls failed during the soak"
    );
    assert!(
        end.rss_kib * 10 <= warm.rss_kib * 11,
        "resident memory grew by more than 10% after the warm-up: {warm:?} -> {end:?} (peak {peak:?})"
    );
    assert!(
        peak.open_files <= warm.open_files + 4,
        "open files grew: {warm:?} -> peak {peak:?}"
    );
    // The pool may open a connection or two it had not needed yet; it must not keep growing.
    assert!(
        end.db_connections <= warm.db_connections.max(1) + 2,
        "database connections grew: {warm:?} -> {end:?}"
    );
    println!("soak: {made} calls, 0 failures; warm {warm:?}, end {end:?}, peak {peak:?}");
}
