//! The restore drill: `keyhouse backup` taken from the real binary on SQLite while clients keep
//! creating keys, restored into a fresh directory and served there. Every key acknowledged before
//! the backup began verifies, and every secret stored before it decrypts and is handed out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keyhouse_proto::v1 as pb;
use pb::platform_key_service_client::PlatformKeyServiceClient;
use pb::user_key_service_client::UserKeyServiceClient;
use sha2::Digest as _;

use crate::binary::{self, Keyhouse};
use crate::support::TempDir;

const BYOK: &str = "sk-proj-backup-drill-0123456789";
const PLATFORM: &str = "sk-litellm-backup-drill-01";

fn failure_of(kh: &Keyhouse, args: &[&str]) -> String {
    let before = kh.log_text().len();
    let out = kh.command(args).output().expect("run keyhouse");
    assert!(!out.status.success(), "keyhouse {args:?} should refuse");
    kh.log_text()[before..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_acknowledged_key_and_secret() {
    let gateway = "svc_backup-drill-gateway-token";
    let digest = hex::encode(sha2::Sha256::digest(gateway.as_bytes()));
    let tokens = format!("gateway={digest}");
    // The load outruns the per-user limits, which are not what this drill is about.
    let kh = Keyhouse::on_sqlite()
        .env("KEYHOUSE_SERVICE_TOKENS", &tokens)
        .env("KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE", "100000")
        .env("KEYHOUSE_MAX_ACTIVE_KEYS_PER_USER", "100000");
    kh.run(&["migrate"]);
    let alice = kh.session("alice", "user");
    let admin = kh.session("root", "admin");
    let (server, addr) = kh.serve().await;
    let channel = binary::channel(&addr).await;

    let mut users = UserKeyServiceClient::with_interceptor(channel.clone(), binary::bearer(&alice));
    users
        .put_provider_key(pb::PutProviderKeyRequest {
            provider: "openai".into(),
            key: BYOK.into(),
            ..Default::default()
        })
        .await
        .expect("put a BYOK key");
    PlatformKeyServiceClient::with_interceptor(channel.clone(), binary::bearer(&admin))
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "litellm".into(),
            api_key: PLATFORM.into(),
        })
        .await
        .expect("put a platform key");

    // Two clients create keys until told to stop. A key counts as acknowledged before the backup
    // only when its answer arrived while the backup had not started yet.
    let backup_started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let mut client = users.clone();
            let (backup_started, stop, acknowledged) =
                (backup_started.clone(), stop.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut before_backup = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = client
                        .create_key(pb::CreateKeyRequest {
                            name: format!("writer {w} key {i}"),
                            ..Default::default()
                        })
                        .await
                        .expect("create a key under load")
                        .into_inner();
                    if !backup_started.load(Ordering::SeqCst) {
                        before_backup.push(key.api_key);
                    }
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                before_backup
            })
        })
        .collect();
    while acknowledged.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let backup_dir = TempDir::new();
    let target = backup_dir.0.join("drill");
    let target_arg = target.to_str().expect("utf-8").to_owned();
    backup_started.store(true, Ordering::SeqCst);
    let backup = {
        let cmd = kh.command(&["backup", &target_arg]);
        tokio::task::spawn_blocking(move || {
            let mut cmd = cmd;
            cmd.output()
        })
    }
    .await
    .expect("join")
    .expect("run keyhouse backup");
    assert!(
        backup.status.success(),
        "keyhouse backup failed; log:\n{}",
        kh.log_text()
    );
    stop.store(true, Ordering::SeqCst);
    let mut before_backup = Vec::new();
    for w in writers {
        before_backup.extend(w.await.expect("writer"));
    }
    assert!(
        before_backup.len() >= 20,
        "keys were acknowledged before the backup"
    );
    binary::stop(server).await;
    assert_eq!(binary::mode_of(&target.join("keyhouse.db.key")), 0o600);
    assert!(
        failure_of(&kh, &["backup", &target_arg]).contains("never overwrites"),
        "a second backup into the same directory is refused"
    );

    let restored = Keyhouse::on_sqlite().env("KEYHOUSE_SERVICE_TOKENS", &tokens);
    restored.run(&["restore", &target_arg]);
    let key_file = restored.path("keyhouse.db.key");
    assert_eq!(binary::mode_of(&key_file), 0o600);
    assert_eq!(
        std::fs::read(&key_file).expect("restored key file"),
        std::fs::read(kh.path("keyhouse.db.key")).expect("original key file"),
    );
    assert!(
        failure_of(&restored, &["restore", &target_arg]).contains("--force"),
        "restore does not replace a database unless forced"
    );
    restored.run(&["restore", "--force", &target_arg]);

    let (server, addr) = restored.serve().await;
    let channel = binary::channel(&addr).await;
    let mut verifier = UserKeyServiceClient::new(channel.clone());
    for key in &before_backup {
        let verdict = verifier
            .verify_key(pb::VerifyKeyRequest {
                api_key: key.clone(),
                ..Default::default()
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(
            verdict.valid,
            "a key acknowledged before the backup verifies after the restore: {verdict:?}"
        );
    }
    let handed = UserKeyServiceClient::with_interceptor(channel.clone(), binary::bearer(gateway))
        .get_provider_key_for_user(pb::GetProviderKeyForUserRequest {
            user_id: "alice".into(),
            provider: "openai".into(),
        })
        .await
        .expect("hand out the restored BYOK key")
        .into_inner();
    assert_eq!(handed.api_key, BYOK);
    let platform = PlatformKeyServiceClient::with_interceptor(channel, binary::bearer(&admin))
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "litellm".into(),
            reason: String::new(),
        })
        .await
        .expect("decrypt the restored platform key")
        .into_inner();
    assert_eq!(platform.api_key, PLATFORM);
    binary::stop(server).await;
}

#[tokio::test]
async fn backup_of_postgres_points_to_pg_dump() {
    let kh = Keyhouse::on(
        TempDir::new(),
        "postgres://postgres@127.0.0.1:5432/keyhouse".into(),
    );
    let target = kh.path("backup");
    let target = target.to_str().expect("utf-8");
    for args in [vec!["backup", target], vec!["restore", target]] {
        let refusal = failure_of(&kh, &args);
        assert!(
            refusal.contains("pg_dump") && refusal.contains("KEYHOUSE_ENCRYPTION_KEYS"),
            "{args:?} on PostgreSQL names the pg_dump recipe: {refusal}"
        );
    }
    assert!(!kh.path("backup").exists(), "nothing was written");
}
