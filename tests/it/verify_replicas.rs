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
async fn within_a_second(mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("not seen by the other replica within a second");
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
struct ThrowawayPostgres {
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

    fn start_new() -> Self {
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

    fn stop(&self) {
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

    fn url(&self) -> String {
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

/// Asks one question and returns the answer with how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let answer = call.await;
    (answer, started.elapsed())
}

/// The bound on each answer during an outage: generous, since this checks that nothing waits
/// for the pool or for Redis, not how fast the answer is.
const PROMPTLY: Duration = Duration::from_secs(1);

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
    let server = TestServer::serve(settings, None).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
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
    let mut gateway = server.user_client(None).await;
    assert!(
        gateway
            .verify_key(verify(&cached.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.stop()
    })
    .await
    .expect("stop PostgreSQL");

    // The first miss finds the outage out (waiting at most the pool's acquire timeout).
    let status = gateway
        .verify_key(verify(&uncached.api_key, &[], ""))
        .await
        .expect_err("a miss while the database is down");
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "never 'invalid': {status:?}"
    );

    let outage = Instant::now();
    let mut rounds = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        rounds += 1;
        let (answer, took) = timed(gateway.verify_key(verify(&cached.api_key, &[], ""))).await;
        let answer = answer.expect("a cached key while the database is down");
        assert!(
            answer.into_inner().valid,
            "a cached valid verdict is served"
        );
        assert!(took < PROMPTLY, "a cached key answered in {took:?}");

        let (answer, took) = timed(gateway.verify_key(verify(&uncached.api_key, &[], ""))).await;
        let status = answer.expect_err("a miss while the database is down");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "never 'invalid': {status:?}"
        );
        assert!(
            status.message().contains("database unavailable"),
            "{status:?}"
        );
        assert!(took < PROMPTLY, "a miss answered in {took:?}");

        let (answer, took) = timed(owner.create_key(pb::CreateKeyRequest {
            name: "during the outage".into(),
            ..Default::default()
        }))
        .await;
        let status = answer.expect_err("a write while the database is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("database unavailable"),
            "a write says why: {status:?}"
        );
        assert!(took < PROMPTLY, "a write answered in {took:?}");

        let (answer, took) = timed(owner.revoke_key(pb::RevokeKeyRequest {
            key_id: cached.key_id.clone(),
        }))
        .await;
        let status = answer.expect_err("a revocation while the database is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(took < PROMPTLY, "a revocation answered in {took:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rounds > 5, "the outage was exercised ({rounds} rounds)");

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.start()
    })
    .await
    .expect("start PostgreSQL again");
    let back = Instant::now();
    let mut recovered = false;
    while back.elapsed() < Duration::from_secs(5) {
        if let Ok(answer) = gateway.verify_key(verify(&uncached.api_key, &[], "")).await {
            assert!(answer.into_inner().valid, "a miss is answered again");
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        recovered,
        "verification recovers, without a restart, when the database is back"
    );
    mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "after the outage".into(),
            ..Default::default()
        },
    )
    .await;
    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: cached.key_id.clone(),
        })
        .await
        .expect("a revocation right after the database returned");
    assert_eq!(
        gateway
            .verify_key(verify(&cached.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason(),
        Reason::Revoked,
        "the revocation made on recovery is seen"
    );
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
        let mut results = Vec::new();
        for replica in [0, 0, 0, 0, 0, 1, 1] {
            let (answer, took) =
                timed(gateways[replica].verify_key(verify(&key.api_key, &[], ""))).await;
            let answer = answer.expect("verify while Redis is down").into_inner();
            assert!(
                took < Duration::from_millis(500),
                "a rate-limited key answered in {took:?} while Redis is down"
            );
            results.push(answer);
        }
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
