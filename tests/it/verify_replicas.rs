//! VerifyKey across replicas and through a database outage (PostgreSQL only: on SQLite there is
//! one process and nothing to lose).

use std::process::Command;
use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use keyhouse_server::ServerSettings;
use pb::verify_key_response::Reason;
use tonic::Code;

use crate::support::{Backend, TempDir, TestServer};
use crate::verify::{in_one_window, mint, verify};

/// Polls `check` until it holds, for at most a second: how long "at once" may take between
/// replicas (NOTIFY is delivered on commit; the benchmark measures the real figure).
async fn within_a_second(check: impl AsyncFnMut() -> bool) {
    assert!(
        within(Duration::from_secs(1), check).await,
        "not seen by the other replica within a second"
    );
}

/// Polls `check` until it holds or `limit` passes; false if it never held.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_revocation_and_regeneration_are_seen_at_once_by_another_replica() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.replica().await;
    let token = first.session("alice", Role::User).await;
    let mut owner = first.user_client(Some(&token)).await;
    let mut gateway = second.user_client(None).await;

    let key = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "replicated".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        gateway
            .verify_key(verify(&key.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid,
        "cached on the second replica"
    );
    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke on the first");
    within_a_second(async || {
        gateway
            .verify_key(verify(&key.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason()
            == Reason::Revoked
    })
    .await;

    let other = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "rotated".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        gateway
            .verify_key(verify(&other.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );
    let new = owner
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: other.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect("regenerate on the first")
        .into_inner();
    within_a_second(async || {
        gateway
            .verify_key(verify(&other.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason()
            == Reason::NotFound
    })
    .await;
    assert!(
        gateway
            .verify_key(verify(&new.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );
}

/// A PostgreSQL server of the test's own, which it can stop and start.
pub(crate) struct ThrowawayPostgres {
    dir: TempDir,
    port: u16,
}

impl ThrowawayPostgres {
    fn bin(name: &str) -> std::path::PathBuf {
        let root = std::path::Path::new("/usr/lib/postgresql");
        let mut versions: Vec<_> = std::fs::read_dir(root)
            .expect("PostgreSQL server binaries")
            .flatten()
            .map(|e| e.path())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("a PostgreSQL version")
            .join("bin")
            .join(name)
    }

    /// As the `postgres` user: the server refuses to run as root.
    fn run(args: &[&str]) {
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .status()
            .expect("runuser");
        assert!(status.success(), "{args:?} failed");
    }

    pub(crate) fn start_new() -> Self {
        let dir = TempDir::new();
        let data = dir.0.join("data");
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir.0)
            .status()
            .expect("chown");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let initdb = Self::bin("initdb");
        Self::run(&[
            initdb.to_str().expect("path"),
            "-D",
            data.to_str().expect("path"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        let pg = Self { dir, port };
        pg.start();
        pg
    }

    fn data(&self) -> String {
        self.dir.0.join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.0.display()
        );
        let log = self.dir.0.join("pg.log");
        let pg_ctl = Self::bin("pg_ctl");
        Self::run(&[
            pg_ctl.to_str().expect("path"),
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            log.to_str().expect("path"),
            "-w",
            "start",
        ]);
    }

    pub(crate) fn stop(&self) {
        let pg_ctl = Self::bin("pg_ctl");
        Self::run(&[
            pg_ctl.to_str().expect("path"),
            "-D",
            &self.data(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let pg_ctl = Self::bin("pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_ctl)
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .status();
    }
}

/// The breaker's answer: the database is down and the call did not wait for the pool.
const BREAKER_OPEN: &str = "database unavailable; answering at once";

/// A counter on `/metrics` (all servers of the test share the process's metrics), 0 before
/// its first event.
async fn counter(server: &TestServer, series: &str) -> f64 {
    let (_, samples) = crate::metrics::scrape(server).await;
    samples.get(series).copied().unwrap_or(0.0)
}

const REFUSALS: &str = "keyhouse_db_breaker_refusals_total";

/// Asserts that `answer` is the open breaker's: UNAVAILABLE, saying the database is down.
fn refused_by_breaker<T: std::fmt::Debug>(what: &str, answer: Result<T, tonic::Status>) {
    let status = answer.expect_err(what);
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status.message().starts_with(BREAKER_OPEN),
        "{what} is answered by the open breaker: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cached_keys_are_served_while_the_database_is_down_and_misses_are_unavailable() {
    let pg = std::sync::Arc::new(
        tokio::task::spawn_blocking(ThrowawayPostgres::start_new)
            .await
            .expect("start a throwaway PostgreSQL"),
    );
    let mut settings = ServerSettings::new(pg.url());
    settings.domain.keys.bcrypt_cost = 4;
    settings.domain.encryption_keys = Some(keyhouse_domain::config::Secret::new(
        keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key(),
    ));
    settings.domain.platform_env = Some(keyhouse_domain::platform_keys::EnvFallback::default());
    // Sessions resolved before the outage stay resolved through it, so that each call below
    // reaches its own reads rather than being refused at the session lookup.
    settings.session_cache_secs = 600;
    let replicas = [
        TestServer::serve(settings.clone(), None).await,
        TestServer::serve(settings.clone(), None).await,
        TestServer::serve(settings, None).await,
    ];
    let first = &replicas[0];
    let token = first.session("alice", Role::User).await;
    let admin_token = first.session("admin", Role::Admin).await;
    let mut owner = first.user_client(Some(&token)).await;
    let mut admin = first.platform_client(Some(&admin_token)).await;
    let cached = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "cached".into(),
            ..Default::default()
        },
    )
    .await;
    let uncached = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "uncached".into(),
            ..Default::default()
        },
    )
    .await;
    admin
        .list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect("the admin's session is resolved before the outage");
    let mut gateways = Vec::new();
    for replica in &replicas {
        let mut gateway = replica.user_client(None).await;
        assert!(
            gateway
                .verify_key(verify(&cached.api_key, &[], ""))
                .await
                .expect("verify")
                .into_inner()
                .valid,
            "cached as VALID on every replica"
        );
        gateways.push(gateway);
    }

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.stop()
    })
    .await
    .expect("stop PostgreSQL");

    // The first miss finds the outage out (waiting at most the pool's acquire timeout).
    let status = gateways[0]
        .verify_key(verify(&uncached.api_key, &[], ""))
        .await
        .expect_err("a miss while the database is down");
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "never 'invalid': {status:?}"
    );

    let http = first.http();
    let rest_refused = async |path: &str, token: &str| {
        let res = http
            .get(first.rest(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("REST call");
        assert_eq!(res.status(), 503, "{path} while the database is down");
        let body: serde_json::Value = res.json().await.expect("a JSON body");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(BREAKER_OPEN)),
            "{path} says the database is unavailable: {body}"
        );
    };
    // Ten seconds of outage: long enough for every reconnecting pool to have backed off.
    let outage = Instant::now();
    let mut round = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        round += 1;
        let before = counter(first, REFUSALS).await;
        let mut refused = 0.0;
        for gateway in &mut gateways {
            let answer = gateway
                .verify_key(verify(&cached.api_key, &[], ""))
                .await
                .expect("a cached key while the database is down");
            assert!(
                answer.into_inner().valid,
                "a cached valid verdict is served"
            );
            let miss = gateway.verify_key(verify(&uncached.api_key, &[], "")).await;
            refused_by_breaker("a miss on every replica", miss);
            refused += 1.0;
        }
        let write = owner
            .create_key(pb::CreateKeyRequest {
                name: "during the outage".into(),
                ..Default::default()
            })
            .await;
        refused_by_breaker("a write", write);
        let revocation = owner
            .revoke_key(pb::RevokeKeyRequest {
                key_id: cached.key_id.clone(),
            })
            .await;
        refused_by_breaker("a revocation", revocation);
        let list = owner.list_keys(pb::ListKeysRequest::default()).await;
        refused_by_breaker("ListKeys", list);
        let get = owner
            .get_key(pb::GetKeyRequest {
                key_id: cached.key_id.clone(),
            })
            .await;
        refused_by_breaker("GetKey", get);
        let usage = owner
            .get_key_usage(pb::GetKeyUsageRequest {
                key_id: cached.key_id.clone(),
                ..Default::default()
            })
            .await;
        refused_by_breaker("GetKeyUsage", usage);
        let byok = owner
            .list_provider_keys(pb::ListProviderKeysRequest {})
            .await;
        refused_by_breaker("ListProviderKeys", byok);
        let platform = admin
            .list_platform_keys(pb::ListPlatformKeysRequest {})
            .await;
        refused_by_breaker("ListPlatformKeys", platform);
        let decrypted = admin
            .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
                name: "openrouter".into(),
                reason: "outage drill".into(),
            })
            .await;
        refused_by_breaker("GetDecryptedPlatformKey", decrypted);
        refused += 8.0;
        rest_refused("/api/v1/account/uc-api-keys", &token).await;
        rest_refused("/api/v1/admin/platform-keys", &admin_token).await;
        refused += 2.0;
        // Other work of the process (a usage flush) may be refused too: at least these were.
        let counted = counter(first, REFUSALS).await - before;
        assert!(
            counted >= refused,
            "round {round}: the open breaker answered each of the {refused} refused calls, \
             not the pool ({counted} counted)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(round > 5, "the outage was exercised ({round} rounds)");
    assert!(
        counter(first, "keyhouse_db_breaker_open").await >= 1.0,
        "operators see the breaker open"
    );

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.start()
    })
    .await
    .expect("start PostgreSQL again");
    // Revoked as soon as writes work again: during the recovery, while the other replicas may
    // still be reopening their LISTEN connections.
    let revoked = within(Duration::from_secs(10), async || {
        owner
            .revoke_key(pb::RevokeKeyRequest {
                key_id: cached.key_id.clone(),
            })
            .await
            .is_ok()
    })
    .await;
    assert!(
        revoked,
        "writes work again, without a restart, when the database is back"
    );
    for (i, gateway) in gateways.iter_mut().enumerate() {
        // A LISTEN connection lost in the outage is tried again every second.
        let seen = within(Duration::from_secs(3), async || {
            gateway
                .verify_key(verify(&cached.api_key, &[], ""))
                .await
                .is_ok_and(|answer| answer.into_inner().reason() == Reason::Revoked)
        })
        .await;
        assert!(
            seen,
            "replica {i} sees the revocation made during the recovery"
        );
    }
    for gateway in &mut gateways {
        let answer = gateway
            .verify_key(verify(&uncached.api_key, &[], ""))
            .await
            .expect("a miss is answered again");
        assert!(answer.into_inner().valid, "a miss is answered again");
    }
    mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "after the outage".into(),
            ..Default::default()
        },
    )
    .await;
}

/// A Redis server of the test's own on a free port, which it can kill and start again there
/// (the shared one other tests count in is left alone).
struct ThrowawayRedis {
    port: u16,
    process: Option<std::process::Child>,
}

impl ThrowawayRedis {
    fn start_new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.start();
        redis
    }

    fn start(&mut self) {
        let process = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        self.process = Some(process);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().expect("kill redis-server");
            process.wait().expect("reap redis-server");
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

const NOT_TRIED: &str = r#"keyhouse_rate_limit_counts_total{counted="replica_redis_down"}"#;
const FAILED: &str = r#"keyhouse_rate_limit_counts_total{counted="replica_redis_failed"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_locally_at_once_while_redis_is_down_and_shared_again_when_it_returns() {
    let mut redis = ThrowawayRedis::start_new();
    let server = TestServer::start(Backend::Sqlite).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let mut shared = server.settings.clone();
    shared.domain.verify.redis_url = Some(redis.url());
    let (a, b) = (
        TestServer::serve(shared.clone(), None).await,
        TestServer::serve(shared, None).await,
    );
    let counted_across = |results: &[pb::VerifyKeyResponse]| {
        results.iter().map(|r| r.remaining).collect::<Vec<_>>() == [2, 1, 0, 0]
            && results.iter().map(|r| r.valid).collect::<Vec<_>>() == [true, true, true, false]
    };
    assert!(
        counted_across(&in_one_window(&mut owner, 3, &[&a, &b, &a, &b]).await),
        "one count for both replicas while Redis is up"
    );

    redis.kill();
    let limited = pb::CreateKeyRequest {
        name: "3 a minute".into(),
        rate_limit_per_minute: Some(3),
        ..Default::default()
    };
    let mut gateways = [a.user_client(None).await, b.user_client(None).await];
    let mut counted_here = false;
    for _attempt in 0..3 {
        let key = mint(&mut owner, limited.clone()).await;
        let down_before = counter(&a, NOT_TRIED).await;
        let failed_before = counter(&a, FAILED).await;
        let mut results = Vec::new();
        for replica in [0, 0, 0, 0, 0, 1, 1] {
            let answer = gateways[replica]
                .verify_key(verify(&key.api_key, &[], ""))
                .await
                .expect("verify while Redis is down")
                .into_inner();
            results.push(answer);
        }
        // Each replica tries Redis at most once in the outage (the hit that finds it down);
        // every other hit is counted here without waiting for it. Other tests sharing the
        // process's metrics only add.
        let not_tried = counter(&a, NOT_TRIED).await - down_before;
        let tried = counter(&a, FAILED).await - failed_before;
        assert!(
            not_tried >= 7.0 - tried && tried <= 2.0,
            "the hits were counted on the replica without trying Redis ({not_tried} not \
             tried, {tried} tried and failed)"
        );
        if results.iter().any(|r| r.reset_at != results[0].reset_at) {
            continue;
        }
        let valid: Vec<bool> = results.iter().map(|r| r.valid).collect();
        assert_eq!(
            valid,
            [true, true, true, false, false, true, true],
            "each replica counts its own while Redis is down"
        );
        assert_eq!(results[3].reason(), Reason::RateLimited);
        counted_here = true;
        break;
    }
    assert!(
        counted_here,
        "three attempts in a row straddled a minute boundary"
    );

    redis.start();
    let back = Instant::now();
    let mut shared_again = false;
    while back.elapsed() < Duration::from_secs(10) {
        if counted_across(&in_one_window(&mut owner, 3, &[&a, &b, &a, &b]).await) {
            shared_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        shared_again,
        "both replicas count in Redis again within seconds of its return"
    );
}
