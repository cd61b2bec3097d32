//! Failing closed: `/readyz` tells a stranger only ready or not; a key file others may read is
//! a refusal to start; no answer that carries a secret may be stored by a cache; a stored secret
//! copied into another row is refused, never handed out as that row's.

use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::rotation;
use keyhouse_proto::v1 as pb;
use prost::Message;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use sha2::Digest;
use tonic::Code;

use crate::binary::{self, Keyhouse};
use crate::on_both_databases;
use crate::support::{Backend, TempDir, TestServer};

on_both_databases!(
    readyz_tells_only_ready_or_not,
    answers_that_carry_a_secret_are_never_stored,
    a_ciphertext_copied_into_another_row_is_refused,
    rotate_binds_every_secret_stored_before_binding,
);

const GATEWAY_TOKEN: &str = "svc_gateway_fail_closed_0123456789";

async fn server_with_gateway(backend: Backend) -> TestServer {
    let digest = hex::encode(sha2::Sha256::digest(GATEWAY_TOKEN.as_bytes()));
    TestServer::start_with(backend, move |s| {
        s.service_tokens = vec![format!("gateway={digest}")]
    })
    .await
}

fn hand_out(user: &str, provider: &str) -> tonic::Request<pb::GetProviderKeyForUserRequest> {
    let mut req = tonic::Request::new(pb::GetProviderKeyForUserRequest {
        user_id: user.into(),
        provider: provider.into(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {GATEWAY_TOKEN}").parse().expect("ascii"),
    );
    req
}

fn put(provider: &str, key: &str) -> pb::PutProviderKeyRequest {
    pb::PutProviderKeyRequest {
        provider: provider.into(),
        key: key.into(),
        ..Default::default()
    }
}

fn decrypted(name: &str) -> pb::GetDecryptedPlatformKeyRequest {
    pb::GetDecryptedPlatformKeyRequest {
        name: name.into(),
        reason: String::new(),
    }
}

/// The newest migration this database has applied.
async fn newest_migration(server: &TestServer) -> String {
    let db = server.db();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT MAX(version) AS v FROM seaql_migrations",
        ))
        .await
        .expect("query")
        .expect("a row");
    row.try_get("", "v").expect("a version")
}

async fn readyz_tells_only_ready_or_not(backend: Backend) {
    let server = TestServer::start(backend).await;
    let readyz = || async {
        let res = server
            .http()
            .get(server.rest("/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        (res.status(), res.text().await.expect("body"))
    };
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"status": "ready"})
    );

    // A schema behind this build: not ready, and the body says nothing of why.
    let newest = newest_migration(&server).await;
    server
        .exec(&format!(
            "DELETE FROM seaql_migrations WHERE version = '{newest}'"
        ))
        .await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"status": "not ready"}),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_writes_why_it_is_not_ready_to_the_log() {
    let kh = Keyhouse::on_sqlite();
    let (child, addr) = kh.serve().await;
    let db = keyhouse_domain::db::connect(&kh.db_url)
        .await
        .expect("connect");
    let newest: String = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT MAX(version) AS v FROM seaql_migrations",
        ))
        .await
        .expect("query")
        .expect("a row")
        .try_get("", "v")
        .expect("a version");
    db.execute_unprepared(&format!(
        "DELETE FROM seaql_migrations WHERE version = '{newest}'"
    ))
    .await
    .expect("delete");
    let res = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("GET /readyz");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.text().await.expect("body");
    assert!(!body.contains(&newest), "{body}");
    binary::stop(child).await;
    let log = kh.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("not ready"))
        .expect("a log line for the failed probe");
    assert!(
        line.contains("migration(s) pending") && line.contains(&newest),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_open_to_group_or_others_is_a_refusal_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let kh = Keyhouse::on_sqlite();
    let key_file = kh.path("keyhouse.db.key");
    let key = kh.run(&["encryption", "generate-key"]).stdout;
    std::fs::write(&key_file, key).expect("write the key file");
    for mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        refused_to_start(&kh, &format!("with a key file of mode {mode:o}")).await;
        let log = kh.log_text();
        assert!(
            log.contains(&format!("(mode {mode:03o})"))
                && log.contains(&format!("chmod 600 {}", key_file.display())),
            "{log}"
        );
    }
    let rotate = kh
        .command(&["encryption", "rotate"])
        .output()
        .expect("keyhouse encryption rotate");
    assert!(
        !rotate.status.success(),
        "operator commands read the key file through the same check"
    );

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (child, _) = kh.serve().await;
    binary::stop(child).await;
}

/// Runs `keyhouse serve` until it exits, which it must do with a failure; should it start
/// serving instead, it is stopped and the test fails rather than waiting forever.
async fn refused_to_start(kh: &Keyhouse, case: &str) {
    let before = kh.log_text().len();
    let mut child = kh
        .command(&["serve"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("keyhouse serve");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "keyhouse serve exited 0 {case}");
            return;
        }
        if kh.log_text()[before..].contains("serving gRPC, grpc-web and REST") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyhouse serve started {case}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

fn no_store(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("cache-control")
        .is_some_and(|v| v.as_bytes() == b"no-store")
}

fn grpc_no_store<T>(res: &tonic::Response<T>) -> bool {
    res.metadata()
        .get("cache-control")
        .is_some_and(|v| v.to_str().is_ok_and(|v| v == "no-store"))
}

async fn answers_that_carry_a_secret_are_never_stored(backend: Backend) {
    let server = server_with_gateway(backend).await;
    let user = server.session("alice", Role::User).await;
    let admin = server.session("root", Role::Admin).await;
    let http = server.http();

    // REST: create, regenerate, an admin's decrypted read.
    let res = http
        .post(server.rest("/api/v1/account/uc-api-keys"))
        .bearer_auth(&user)
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(no_store(res.headers()), "REST CreateKey");
    let created: Value = res.json().await.expect("JSON");
    let key_id = created["key_id"].as_str().expect("key_id");
    let res = http
        .post(server.rest(&format!("/api/v1/account/uc-api-keys/{key_id}/regenerate")))
        .bearer_auth(&user)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(no_store(res.headers()), "REST RegenerateKey");
    let mut platform = server.platform_client(Some(&admin)).await;
    platform
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openrouter".into(),
            api_key: "sk-or-v1-no-store-000001".into(),
        })
        .await
        .expect("update");
    let res = http
        .get(server.rest("/api/v1/admin/platform-keys/openrouter/decrypted"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(no_store(res.headers()), "REST GetDecryptedPlatformKey");

    // Native gRPC: the same header, as response metadata.
    let mut users = server.user_client(Some(&user)).await;
    let issued = users
        .create_key(pb::CreateKeyRequest {
            name: "desktop".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    assert!(grpc_no_store(&issued), "gRPC CreateKey");
    let regenerated = users
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: issued.get_ref().key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("regenerate");
    assert!(grpc_no_store(&regenerated), "gRPC RegenerateKey");
    let read = platform
        .get_decrypted_platform_key(decrypted("openrouter"))
        .await
        .expect("decrypted");
    assert!(grpc_no_store(&read), "gRPC GetDecryptedPlatformKey");
    users
        .put_provider_key(put("openai", "sk-proj-no-store-0001"))
        .await
        .expect("put");
    let handed = server
        .user_client(None)
        .await
        .get_provider_key_for_user(hand_out("alice", "openai"))
        .await
        .expect("hand-out");
    assert_eq!(handed.get_ref().api_key, "sk-proj-no-store-0001");
    assert!(grpc_no_store(&handed), "gRPC GetProviderKeyForUser");

    // grpc-web, as a browser sends it.
    let message = pb::CreateKeyRequest {
        name: "browser".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    let res = http
        .post(server.rest("/keyhouse.v1.UserKeyService/CreateKey"))
        .bearer_auth(&user)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame)
        .send()
        .await
        .expect("grpc-web POST");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(no_store(res.headers()), "grpc-web CreateKey");
    let body = res.bytes().await.expect("body");
    assert_eq!(body[0], 0, "a data frame first");
    let len = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    let issued = pb::IssuedKey::decode(&body[5..5 + len]).expect("an IssuedKey");
    assert!(
        issued.api_key.starts_with("uc_"),
        "the answer holds the key"
    );

    // The documentation stays cacheable.
    for page in ["/openapi.json", "/docs/"] {
        let res = http.get(server.rest(page)).send().await.expect("GET");
        assert_eq!(res.status(), StatusCode::OK, "{page}");
        assert!(!no_store(res.headers()), "{page} may be cached");
    }
}

async fn copy(server: &TestServer, table: &str, column: &str, to: &str, from: &str) {
    server
        .exec(&format!(
            "UPDATE {table} SET {column} = (SELECT {column} FROM {table} WHERE {from}) WHERE {to}"
        ))
        .await;
}

async fn a_ciphertext_copied_into_another_row_is_refused(backend: Backend) {
    let server = server_with_gateway(backend).await;
    let alice_key = "sk-proj-alice-own-0001";
    let alice = server.session("alice", Role::User).await;
    let bob = server.session("bob", Role::User).await;
    let mut alices = server.user_client(Some(&alice)).await;
    alices
        .put_provider_key(put("openai", alice_key))
        .await
        .expect("alice's key");
    alices
        .put_provider_key(put("anthropic", "sk-ant-alice-own-0001"))
        .await
        .expect("alice's second key");
    let mut bobs = server.user_client(Some(&bob)).await;
    bobs.put_provider_key(put("openai", "sk-proj-bob-own-00001"))
        .await
        .expect("bob's key");

    // Someone with write access to the database copies alice's ciphertext into bob's row, and
    // into her own row of another provider.
    let alice_openai = "user_id = 'alice' AND provider = 'openai'";
    copy(
        &server,
        "user_provider_keys",
        "ciphertext",
        "user_id = 'bob' AND provider = 'openai'",
        alice_openai,
    )
    .await;
    copy(
        &server,
        "user_provider_keys",
        "ciphertext",
        "user_id = 'alice' AND provider = 'anthropic'",
        alice_openai,
    )
    .await;
    let gateway = || async { server.user_client(None).await };
    for (user, provider) in [("bob", "openai"), ("alice", "anthropic")] {
        let refused = gateway()
            .await
            .get_provider_key_for_user(hand_out(user, provider))
            .await
            .expect_err("a copied ciphertext is not handed out");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("does not belong to this record"),
            "{refused:?}"
        );
        assert!(!refused.message().contains(alice_key));
    }
    let tested = bobs
        .test_provider_key(pb::TestProviderKeyRequest {
            provider: "openai".into(),
        })
        .await
        .expect_err("nor tested as bob's");
    assert_eq!(tested.code(), Code::FailedPrecondition);
    let own = gateway()
        .await
        .get_provider_key_for_user(hand_out("alice", "openai"))
        .await
        .expect("alice's own row still reads")
        .into_inner();
    assert_eq!(own.api_key, alice_key);

    // Platform keys are bound to their name, current values and past versions alike.
    let admin = server.session("root", Role::Admin).await;
    let mut platform = server.platform_client(Some(&admin)).await;
    let openrouter_key = "sk-or-v1-bound-000001";
    for (name, value) in [
        ("openrouter", openrouter_key),
        ("anthropic", "sk-ant-bound-000001"),
    ] {
        platform
            .update_platform_key(pb::UpdatePlatformKeyRequest {
                name: name.into(),
                api_key: value.into(),
            })
            .await
            .expect("update");
    }
    copy(
        &server,
        "platform_settings",
        "value",
        "key = 'anthropic'",
        "key = 'openrouter'",
    )
    .await;
    copy(
        &server,
        "platform_key_versions",
        "ciphertext",
        "name = 'anthropic' AND version = 1",
        "name = 'openrouter' AND version = 1",
    )
    .await;
    let refused = platform
        .get_decrypted_platform_key(decrypted("anthropic"))
        .await
        .expect_err("a copied value is not read as anthropic's");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(!refused.message().contains(openrouter_key));
    let res = server
        .http()
        .get(server.rest("/api/v1/admin/platform-keys/anthropic/decrypted"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body = res.text().await.expect("body");
    assert!(
        body.contains("does not belong to this record") && !body.contains(openrouter_key),
        "{body}"
    );
    let rollback = platform
        .rollback_platform_key(pb::RollbackPlatformKeyRequest {
            name: "anthropic".into(),
            version: 1,
        })
        .await
        .expect_err("nor rolled back to");
    assert_eq!(rollback.code(), Code::FailedPrecondition);
    let mut watch = platform
        .watch_platform_keys(pb::WatchPlatformKeysRequest {
            include_secret: true,
        })
        .await
        .expect("watch")
        .into_inner();
    let ended = loop {
        match watch.message().await {
            Ok(Some(event)) => assert_ne!(
                (event.name.as_str(), event.api_key.as_str()),
                ("anthropic", openrouter_key),
                "the watch stream hands out a copied value"
            ),
            Ok(None) => panic!("the watch stream ended without refusing the copied value"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::FailedPrecondition);
    assert_eq!(
        platform
            .get_decrypted_platform_key(decrypted("openrouter"))
            .await
            .expect("openrouter's own row still reads")
            .into_inner()
            .api_key,
        openrouter_key
    );

    // Rotation leaves the copies as they are (rebinding would make them good) and counts them.
    let keys = server
        .settings
        .domain
        .encryption_keys
        .as_ref()
        .expect("a key");
    let ring = KeyRing::parse(keys.expose(), "test").expect("ring");
    let done = rotation::rotate(server.db(), &ring, 100, None, |_| {})
        .await
        .expect("rotate");
    let total = |f: fn(&rotation::Progress) -> usize| done.iter().map(f).sum::<usize>();
    assert_eq!(total(|p| p.refused), 4, "{done:?}");
    assert_eq!(total(|p| p.rotated), 0, "{done:?}");
    let still = gateway()
        .await
        .get_provider_key_for_user(hand_out("bob", "openai"))
        .await
        .expect_err("still refused after a rotation");
    assert_eq!(still.code(), Code::FailedPrecondition);
}

async fn rotate_binds_every_secret_stored_before_binding(backend: Backend) {
    let server = server_with_gateway(backend).await;
    let keys = server
        .settings
        .domain
        .encryption_keys
        .as_ref()
        .expect("a key")
        .expose()
        .to_owned();
    let alice = server.session("alice", Role::User).await;
    server
        .user_client(Some(&alice))
        .await
        .put_provider_key(put("openai", "sk-proj-placeholder-01"))
        .await
        .expect("put");
    let bob = server.session("bob", Role::User).await;
    server
        .user_client(Some(&bob))
        .await
        .put_provider_key(put("openai", "sk-proj-bob-legacy-0001"))
        .await
        .expect("put");
    let admin = server.session("root", Role::Admin).await;
    let mut platform = server.platform_client(Some(&admin)).await;
    platform
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openrouter".into(),
            api_key: "sk-or-v1-placeholder-01".into(),
        })
        .await
        .expect("update");

    // Rows as the build before binding wrote them: the secret alone under the key.
    let legacy = |secret: &str| {
        fernet::Fernet::new(&keys)
            .expect("the server's key")
            .encrypt(secret.as_bytes())
    };
    let alice_key = "sk-proj-alice-legacy-01";
    let platform_key = "sk-or-v1-legacy-000001";
    server
        .exec(&format!(
            "UPDATE user_provider_keys SET ciphertext = '{}' WHERE user_id = 'alice'",
            legacy(alice_key)
        ))
        .await;
    let old = legacy(platform_key);
    server
        .exec(&format!(
            "UPDATE platform_settings SET value = '{old}' WHERE key = 'openrouter'"
        ))
        .await;
    server
        .exec(&format!(
            "UPDATE platform_key_versions SET ciphertext = '{old}' WHERE name = 'openrouter'"
        ))
        .await;
    let gateway = || async { server.user_client(None).await };
    assert_eq!(
        gateway()
            .await
            .get_provider_key_for_user(hand_out("alice", "openai"))
            .await
            .expect("an unbound row still reads")
            .into_inner()
            .api_key,
        alice_key
    );
    assert_eq!(
        platform
            .get_decrypted_platform_key(decrypted("openrouter"))
            .await
            .expect("an unbound platform key still reads")
            .into_inner()
            .api_key,
        platform_key
    );

    let kh = Keyhouse::on(TempDir::new(), server.settings.domain.database_url.clone())
        .env("KEYHOUSE_ENCRYPTION_KEYS", &keys);
    kh.run(&["encryption", "rotate"]);
    let log = kh.log_text();
    assert!(
        log.contains(
            "rotation finished: 3 secret(s) re-encrypted under the primary key, 3 of them newly bound to their row"
        ),
        "{log}"
    );
    kh.run(&["encryption", "rotate"]);
    assert!(
        kh.log_text()
            .contains("rotation finished: 0 secret(s) re-encrypted"),
        "a second run finds everything bound"
    );

    // Bound now: the same copy into bob's row is refused; alice's own row reads as before.
    copy(
        &server,
        "user_provider_keys",
        "ciphertext",
        "user_id = 'bob' AND provider = 'openai'",
        "user_id = 'alice' AND provider = 'openai'",
    )
    .await;
    let refused = gateway()
        .await
        .get_provider_key_for_user(hand_out("bob", "openai"))
        .await
        .expect_err("a rewrapped secret is bound to its row");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        gateway()
            .await
            .get_provider_key_for_user(hand_out("alice", "openai"))
            .await
            .expect("alice's row")
            .into_inner()
            .api_key,
        alice_key
    );
    assert_eq!(
        platform
            .get_decrypted_platform_key(decrypted("openrouter"))
            .await
            .expect("openrouter")
            .into_inner()
            .api_key,
        platform_key
    );
}
