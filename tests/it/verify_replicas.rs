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
use crate::verify::{mint, verify};

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

    let answer = gateway
        .verify_key(verify(&cached.api_key, &[], ""))
        .await
        .expect("a cached key while the database is down")
        .into_inner();
    assert!(answer.valid, "a cached valid verdict is still served");
    let status = gateway
        .verify_key(verify(&uncached.api_key, &[], ""))
        .await
        .expect_err("a miss while the database is down");
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "never 'invalid': {status:?}"
    );

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.start()
    })
    .await
    .expect("start PostgreSQL again");
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(answer) = gateway.verify_key(verify(&uncached.api_key, &[], "")).await {
            assert!(answer.into_inner().valid);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "verification recovers when the database is back");
}
