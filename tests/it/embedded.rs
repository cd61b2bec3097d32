//! The embedded default's encryption key: created beside a SQLite database on first start
//! (mode 0600) and reused, never on PostgreSQL; a malformed key is always a refusal.

use keyhouse_proto::v1 as pb;
use pb::platform_key_service_client::PlatformKeyServiceClient;

use crate::binary::{self, Keyhouse};
use crate::support::{Backend, TempDir, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_sqlite_without_a_key_creates_one_beside_the_database_and_reuses_it() {
    let kh = Keyhouse::on_sqlite();
    let key_file = kh.path("keyhouse.db.key");
    let (server, addr) = kh.serve().await;
    assert!(key_file.exists(), "the key file is beside the database");
    assert_eq!(binary::mode_of(&key_file), 0o600);
    let log = kh.log_text();
    assert!(
        log.contains(&key_file.display().to_string()) && log.contains("back this file up"),
        "the log says where the key is"
    );
    let original = std::fs::read_to_string(&key_file).expect("key file");

    let admin = kh.session("root", "admin");
    let secret = "sk-litellm-embedded-key-01";
    let mut c = PlatformKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&admin),
    );
    c.update_platform_key(pb::UpdatePlatformKeyRequest {
        name: "litellm".into(),
        api_key: secret.into(),
    })
    .await
    .expect("update");
    binary::stop(server).await;

    let (server, addr) = kh.serve().await;
    assert_eq!(
        std::fs::read_to_string(&key_file).expect("key file"),
        original,
        "the key is reused, not replaced"
    );
    let mut c = PlatformKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&admin),
    );
    let read = c
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "litellm".into(),
            reason: String::new(),
        })
        .await
        .expect("decrypt after a restart")
        .into_inner();
    assert_eq!(read.api_key, secret);
    binary::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_without_a_key_refuses_to_start() {
    let db = TestDb::new(Backend::Postgres).await;
    let kh = Keyhouse::on(TempDir::new(), db.url.clone());
    let out = kh.command(&["serve"]).output().expect("keyhouse serve");
    assert!(
        !out.status.success(),
        "keyhouse serve started on PostgreSQL without a key"
    );
    let stderr = kh.log_text();
    assert!(
        stderr.contains("KEYHOUSE_ENCRYPTION_KEYS is not set")
            && stderr.contains("keyhouse encryption generate-key"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&kh.dir.0)
            .expect("dir")
            .filter(|e| e
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "key")))
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_is_a_refusal_even_on_sqlite() {
    let kh = Keyhouse::on_sqlite().env("ENCRYPTION_KEY", "definitely-not-fernet");
    let out = kh.command(&["serve"]).output().expect("keyhouse serve");
    assert!(!out.status.success());
    let stderr = kh.log_text();
    assert!(
        stderr.contains("ENCRYPTION_KEY") && stderr.contains("not a Fernet key"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("definitely-not-fernet"),
        "the refusal echoes the key"
    );
    assert!(
        !kh.path("keyhouse.db.key").exists(),
        "no key file is made when a key is configured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_key_prints_a_key_the_ring_accepts() {
    let kh = Keyhouse::on_sqlite();
    let out = kh.run(&["encryption", "generate-key"]);
    let key = String::from_utf8(out.stdout).expect("utf-8");
    keyhouse_domain::crypto::fernet_ring::KeyRing::parse(key.trim(), "generated")
        .expect("a valid Fernet key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_token_create_prints_a_fresh_random_token() {
    let kh = Keyhouse::on_sqlite();
    let first = String::from_utf8(kh.run(&["service-token", "create"]).stdout).expect("utf-8");
    let second = String::from_utf8(kh.run(&["service-token", "create"]).stdout).expect("utf-8");
    assert!(
        first.starts_with("svc_") && first.trim().len() == 68,
        "{first:?}"
    );
    assert_ne!(first, second);
}
