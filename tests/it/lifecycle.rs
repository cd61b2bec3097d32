//! Start-up and shutdown as Kubernetes does them: SIGTERM under load drains and loses nothing
//! acknowledged, SIGTERM during start-up exits cleanly, an open watch stream does not hold the
//! drain, replicas migrating together take turns, and a lost LISTEN connection is made good.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::db;
use keyhouse_proto::v1 as pb;
use pb::platform_key_service_client::PlatformKeyServiceClient;
use pb::user_key_service_client::UserKeyServiceClient;
use pb::verify_key_response::Reason;
use sea_orm::sqlx::{self, Connection, PgConnection};
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

use crate::binary::{self, Keyhouse};
use crate::support::{Backend, TempDir, TestDb, TestServer};
use crate::verify::{mint, named, own_verifier, verify};

crate::on_both_databases!(sigterm_under_load_drains_and_loses_no_acknowledged_write);

async fn sigterm_under_load_drains_and_loses_no_acknowledged_write(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The key limits have tests of their own; here they would stop the load early.
    let kh = Keyhouse::on(TempDir::new(), db.url.clone())
        .env("KEYHOUSE_ENCRYPTION_KEYS", &KeyRing::generate_key())
        .env("KEYHOUSE_MAX_ACTIVE_KEYS_PER_USER", "100000")
        .env("KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE", "100000");
    kh.run(&["migrate"]);
    let token = kh.session("alice", "user");
    let (server, addr) = kh.serve().await;
    let channel = binary::channel(&addr).await;
    let signalled = Arc::new(AtomicBool::new(false));

    // Writers keep creating keys until the server stops answering.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut client =
                UserKeyServiceClient::with_interceptor(channel.clone(), binary::bearer(&token));
            let signalled = signalled.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    let req = pb::CreateKeyRequest {
                        name: format!("writer {w} key {i}"),
                        ..Default::default()
                    };
                    match client.create_key(req).await {
                        Ok(key) => acknowledged.push(key.into_inner().key_id),
                        Err(status) => {
                            assert!(
                                signalled.load(Ordering::SeqCst),
                                "writer {w} failed before the signal: {status:?}"
                            );
                            // Calls in flight finish; later ones are refused: UNAVAILABLE once
                            // the listener is closed, or cancelled by the client before it was
                            // sent, when the connection closed under a queued call.
                            assert!(
                                status.code() == Code::Unavailable || never_sent(&status),
                                "writer {w} after the signal: {status:?}"
                            );
                            break;
                        }
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signalled.store(true, Ordering::SeqCst);
    binary::stop(server).await;
    let mut acknowledged = Vec::new();
    for w in writers {
        let keys = tokio::time::timeout(binary::GRACE_PERIOD, w)
            .await
            .expect("every writer ends once the server is gone")
            .expect("writer");
        acknowledged.extend(keys);
    }
    assert!(
        acknowledged.len() >= 8,
        "the writers got answers before the shutdown: {}",
        acknowledged.len()
    );

    // Every key the server acknowledged is stored.
    let conn = db.connect().await;
    for id in &acknowledged {
        let row = keyhouse_domain::storage::user_keys::find(
            &conn,
            uuid::Uuid::parse_str(id).expect("uuid"),
        )
        .await
        .expect("query");
        assert!(row.is_some(), "acknowledged key {id} was lost");
    }
}

/// The client's own CANCELLED for a call it never sent: the connection it was queued on closed
/// (after the server's GOAWAY). Nothing of it reached the server, so a retry is safe.
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error;
    status.code() == Code::Cancelled
        && status
            .source()
            .and_then(|e| e.source())
            .is_some_and(|e| format!("{e:?}") == r#"hyper::Error(Canceled, "connection closed")"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_connecting_to_the_database_exits_0_without_serving() {
    // A "database" that takes the connection and never answers: start-up waits on it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "postgres://postgres@{}/keyhouse",
        silent.local_addr().expect("addr")
    );
    let kh =
        Keyhouse::on(TempDir::new(), url).env("KEYHOUSE_ENCRYPTION_KEYS", &KeyRing::generate_key());
    let child = kh
        .command(&["serve"])
        .stdout(Stdio::null())
        .spawn()
        .expect("keyhouse serve");
    let _connection = tokio::time::timeout(binary::GRACE_PERIOD, silent.accept())
        .await
        .expect("keyhouse serve connects to the database")
        .expect("accept");
    binary::stop(child).await;
    let log = kh.log_text();
    assert!(
        log.contains("SIGTERM received") && log.contains("shutdown requested during start-up"),
        "{log}"
    );
    assert!(!log.contains("serving gRPC"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_stream_ends_at_sigterm_and_the_process_exits_0() {
    let kh = Keyhouse::on_sqlite();
    let (server, addr) = kh.serve().await;
    let admin = kh.session("root", "admin");
    let mut client = PlatformKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&admin),
    );
    let mut stream = client
        .watch_platform_keys(pb::WatchPlatformKeysRequest {
            include_secret: false,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("the initial state")
        .expect("an event");
    assert!(first.initial);

    binary::terminate(&server);
    let end = tokio::time::timeout(binary::GRACE_PERIOD, async {
        loop {
            match stream.message().await {
                Ok(Some(event)) => assert!(event.initial, "no change was made: {event:?}"),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch stream ends within the grace period");
    let status = end.expect("the stream ends with a status that tells the client to come back");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "server shutting down");
    let exit = binary::exit_status(server).await;
    assert!(exit.success(), "exits 0 on SIGTERM, got {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_migrating_at_once_take_turns() {
    let fresh = TestDb::new(Backend::Postgres).await;
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = fresh.url.clone();
            tokio::spawn(async move {
                let conn = db::connect(&url).await.expect("connect");
                db::migrate(&conn).await
            })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        applied += run
            .await
            .expect("join")
            .expect("every replica's migration succeeds");
    }
    let conn = fresh.connect().await;
    db::ensure_schema_current(&conn)
        .await
        .expect("the schema is current");
    let recorded = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM seaql_migrations",
        ))
        .await
        .expect("count")
        .expect("a row")
        .try_get::<i64>("", "n")
        .expect("n");
    assert_eq!(
        applied as i64, recorded,
        "each migration was applied by exactly one replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_revocation_made_while_listen_is_down_is_seen_once_it_returns() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.replica().await;
    let token = first.session("alice", Role::User).await;
    let mut owner = second.user_client(Some(&token)).await;
    let mut gateway = first.user_client(None).await;
    let key = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "watched".into(),
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
        "the first replica caches a VALID verdict"
    );

    let (cut, ended) = FeedCut::start(&first).await;
    assert_eq!(ended, 2, "one LISTEN connection per replica");

    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke through the second replica while the feed is down");
    cut.restore().await;

    // The feed retries every second; once it listens again, the first replica's cached verdicts
    // are stale and the revocation shows (the cached verdict would otherwise last five minutes).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reason = gateway
            .verify_key(verify(&key.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason();
        if reason == Reason::Revoked {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first replica still answers {reason:?} after the feed returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_after_a_lost_listen_cached_keys_are_read_again_without_bcrypt() {
    let server = TestServer::start(Backend::Postgres).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let kept = mint(&mut owner, named("kept")).await;
    let revoked = mint(&mut owner, named("revoked")).await;
    // Its own verifier, with its own LISTEN connection, to count its bcrypt runs.
    let (verifier, _feed) = own_verifier(&server, 300).await;
    let reason = |key: &str| {
        let (verifier, request) = (verifier.clone(), verify(key, &[], ""));
        async move { verifier.verify(&request).await.expect("verify").reason() }
    };
    assert_eq!(reason(&kept.api_key).await, Reason::Valid);
    assert_eq!(reason(&revoked.api_key).await, Reason::Valid);
    assert_eq!(verifier.bcrypt_runs(), 2, "one bcrypt per key");

    let (cut, ended) = FeedCut::start(&server).await;
    assert_eq!(
        ended, 2,
        "the server's LISTEN connection and the verifier's"
    );
    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
        })
        .await
        .expect("revoke while the feed is down");
    cut.restore().await;

    // Once the feed listens again every cached verdict is stale: the revocation shows, and
    // neither key is checked by bcrypt again.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = reason(&revoked.api_key).await;
        if now == Reason::Revoked {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the verifier still answers {now:?} after the feed returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reason(&kept.api_key).await, Reason::Valid);
    assert_eq!(
        verifier.bcrypt_runs(),
        2,
        "a resync re-reads cached keys by id, without bcrypt"
    );
}

/// A test database that refuses new connections, with its LISTEN connections ended: the change
/// feed stays down until `restore` (the pools' open connections keep working).
struct FeedCut {
    admin: PgConnection,
    name: String,
}

impl FeedCut {
    /// Cuts `server`'s database's feed; returns the cut and how many LISTEN connections it ended.
    async fn start(server: &TestServer) -> (Self, usize) {
        let url = &server.settings.domain.database_url;
        let name = url.rsplit_once('/').expect("a database name").1.to_owned();
        // A connection to another database says what this one allows.
        let admin = PgConnection::connect(&crate::support::postgres_url())
            .await
            .expect("connect");
        let mut cut = Self { admin, name };
        cut.allow(false).await;
        let ended = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query ILIKE 'LISTEN%'",
        )
        .bind(&cut.name)
        .fetch_all(&mut cut.admin)
        .await
        .expect("end the LISTEN connections");
        (cut, ended.len())
    }

    async fn allow(&mut self, yes: bool) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {yes}",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .expect("ALTER DATABASE ... ALLOW_CONNECTIONS");
    }

    async fn restore(mut self) {
        self.allow(true).await;
    }
}
