//! The real `keyhouse` binary at trace level, called on every RPC over gRPC and on every REST
//! path, the refusals included (a malformed key, a forged key, a refused provider key, an API key
//! or a session where neither belongs, the service-token hand-out, Ops-Center sessions from Redis,
//! one of them malformed): the log must hold none of the secrets the calls created or sent, nor the
//! encryption key, nor a stored ciphertext.

use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::providers::catalog;
use keyhouse_proto::v1 as pb;
use pb::platform_key_service_client::PlatformKeyServiceClient;
use pb::user_key_service_client::UserKeyServiceClient;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use tonic::Code;

use crate::binary::{self, Keyhouse};
use crate::on_both_databases;
use crate::support::{Backend, TempDir, TestDb};

on_both_databases!(every_rpc_and_rest_path_at_trace_level_logs_no_secret);

/// The secrets a test created or sent, by what they are.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, value: &str) -> String {
        assert!(value.len() >= 16, "{what} is long enough to search for");
        self.0.push((what.to_owned(), value.to_owned()));
        value.to_owned()
    }

    /// Fails naming each secret found in `log`, whole or in an obviously derived form: without
    /// its prefix (`uc_`, `ks_`, `sk-`...) and its last 20 characters alone.
    fn assert_absent_from(&self, log: &str) {
        let mut found = Vec::new();
        for (what, secret) in &self.0 {
            let forms = [
                ("itself", secret.as_str()),
                ("without its prefix", &secret[3..]),
                ("its last 20 characters", &secret[secret.len() - 20..]),
            ];
            for (form, text) in forms {
                if log.contains(text) {
                    found.push(format!("{what} ({form})"));
                }
            }
        }
        assert!(found.is_empty(), "in the log: {found:?}");
    }
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// A well-formed key (right length, hex and checksum) that shares `key`'s lookup prefix but
/// was never issued: it reaches storage and a bcrypt, and must fail there.
fn forged_sharing_prefix_of(key: &str) -> String {
    let fresh = ApiKey::generate().expect("rng");
    let head = format!("{}{}", &key[..15], &fresh.expose()[15..59]);
    format!("{head}{:08x}", crc32fast::hash(head.as_bytes()))
}

/// A provider key no log could hold by chance: the prefix the provider wants and random hex.
fn provider_key(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

async fn every_rpc_and_rest_path_at_trace_level_logs_no_secret(backend: Backend) {
    let mut secrets = Secrets::default();
    // A database of this test's own; the binary migrates it and the test reads ciphertexts
    // from it at the end.
    let db = TestDb::new(backend).await;
    let stub = crate::stub::Provider::start("sk-never-matches-0000").await;
    let encryption_key = secrets.add("the encryption key", &KeyRing::generate_key());
    let mut kh = Keyhouse::on(TempDir::new(), db.url.clone())
        .env("KEYHOUSE_ENCRYPTION_KEYS", &encryption_key)
        .env(
            "KEYHOUSE_PROVIDER_BASE_URLS",
            &catalog::platform()
                .chain(catalog::byok())
                .map(|p| format!("{}={}", p.id, stub.url))
                .collect::<Vec<_>>()
                .join(","),
        )
        // The live tests go to the local stand-in above.
        .env("KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8");
    kh.run(&["migrate"]);
    let service_token = String::from_utf8(kh.run(&["service-token", "create"]).stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let service_token = secrets.add("the service token", &service_token);
    {
        use sha2::Digest as _;
        let digest = hex::encode(sha2::Sha256::digest(service_token.as_bytes()));
        kh = kh.env("KEYHOUSE_SERVICE_TOKENS", &format!("gateway={digest}"));
    }
    // Ops-Center's sessions too: one that signs in, and one whose value is refused (and logged).
    let ops = crate::ops_center::OpsCenter::new().await;
    kh = kh
        .env(
            "KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL",
            &crate::ops_center::redis_url(),
        )
        .env("KEYHOUSE_OPS_CENTER_SESSION_PREFIX", &ops.prefix);
    let ops_session = secrets.add(
        "an Ops-Center session token",
        &ops.login(json!({ "user_id": "olivia", "role": "viewer" }), 600)
            .await,
    );
    let ops_malformed = secrets.add(
        "a malformed Ops-Center session's token",
        &ops.put("{\"user\": ", 600).await,
    );
    let token = secrets.add("the user's session token", &kh.session("alice", "user"));
    let admin = secrets.add("the admin's session token", &kh.session("root", "admin"));
    let unknown_session = secrets.add(
        "a session token never issued",
        &format!(
            "ks_{}",
            hex::encode(uuid::Uuid::new_v4().as_bytes()).repeat(2)
        ),
    );
    let unknown_service_token = secrets.add(
        "a service token never configured",
        &format!("kst_{}", uuid::Uuid::new_v4().simple()),
    );

    let (server, addr) = kh.serve().await;
    let channel = binary::channel(&addr).await;
    let users = |bearer: &str| {
        UserKeyServiceClient::with_interceptor(channel.clone(), binary::bearer(bearer))
    };
    let platforms = |bearer: &str| {
        PlatformKeyServiceClient::with_interceptor(channel.clone(), binary::bearer(bearer))
    };
    let mut user = users(&token);
    let mut platform = platforms(&admin);

    // UserKeyService: keys.
    let first = user
        .create_key(pb::CreateKeyRequest {
            name: "logs".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    secrets.add("a created key", &first.api_key);
    let manager = user
        .create_key(pb::CreateKeyRequest {
            name: "manager".into(),
            permissions: ["keys:read", "keys:manage", "byok:manage", "usage:read"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let manager_key = secrets.add("a key used as a bearer", &manager.api_key);
    let narrow = user
        .create_key(pb::CreateKeyRequest {
            name: "narrow".into(),
            allowed_ips: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let narrow_key = secrets.add("a key without management scopes", &narrow.api_key);
    assert_eq!(
        code(user.list_keys(pb::ListKeysRequest::default()).await),
        Code::Ok
    );
    let get = |key_id: &str| pb::GetKeyRequest {
        key_id: key_id.to_owned(),
    };
    assert_eq!(code(user.get_key(get(&first.key_id)).await), Code::Ok);
    assert_eq!(
        code(
            user.get_key_usage(pb::GetKeyUsageRequest {
                key_id: first.key_id.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::Ok
    );
    let regenerated = user
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: first.key_id.clone(),
            expires_in_days: Some(30),
        })
        .await
        .expect("regenerate")
        .into_inner();
    secrets.add("a regenerated key", &regenerated.api_key);
    assert_eq!(
        code(
            user.revoke_key(pb::RevokeKeyRequest {
                key_id: first.key_id.clone(),
            })
            .await
        ),
        Code::Ok
    );

    // VerifyKey: valid, malformed, forged (unknown prefix, then a real key's prefix), replaced
    // by regeneration, revoked.
    let mut malformed = manager_key.clone();
    malformed.replace_range(20..21, if &malformed[20..21] == "a" { "b" } else { "a" });
    let malformed = secrets.add("a malformed key", &malformed);
    let forged = secrets.add(
        "a well-formed key never issued",
        ApiKey::generate().expect("rng").expose(),
    );
    let forged_prefix = secrets.add(
        "a well-formed key sharing a real key's prefix",
        &forged_sharing_prefix_of(&manager_key),
    );
    for (key, valid) in [
        (&manager_key, true),
        (&malformed, false),
        (&forged, false),
        (&forged_prefix, false),
        (&first.api_key, false),
        (&regenerated.api_key, false),
        (&narrow_key, false),
    ] {
        let verdict = users(&token)
            .verify_key(pb::VerifyKeyRequest {
                api_key: key.clone(),
                required_scopes: vec!["keys:read".into()],
                client_ip: "192.0.2.7".into(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(verdict.valid, valid, "{:?}", verdict.reason());
    }

    // Keys and sessions where they do not belong.
    let mut as_key = users(&manager_key);
    assert_eq!(
        code(as_key.list_keys(pb::ListKeysRequest::default()).await),
        Code::Ok
    );
    assert_eq!(
        code(
            users(&narrow_key)
                .create_key(pb::CreateKeyRequest {
                    name: "refused".into(),
                    ..Default::default()
                })
                .await
        ),
        Code::PermissionDenied
    );
    for bearer in [&forged, &malformed, &unknown_session] {
        assert_eq!(
            code(
                users(bearer)
                    .list_keys(pb::ListKeysRequest::default())
                    .await
            ),
            Code::Unauthenticated,
            "a credential never issued"
        );
    }
    assert_ne!(
        code(
            platforms(&manager_key)
                .list_platform_keys(pb::ListPlatformKeysRequest {})
                .await
        ),
        Code::Ok,
        "admin paths never accept keys"
    );
    assert_eq!(
        code(
            platforms(&token)
                .list_platform_keys(pb::ListPlatformKeysRequest {})
                .await
        ),
        Code::PermissionDenied
    );

    // BYOK, and the service-token hand-out.
    let openai_key = secrets.add("a user's provider key", &provider_key("sk-proj-"));
    assert_eq!(
        code(user.list_providers(pb::ListProvidersRequest {}).await),
        Code::Ok
    );
    assert_eq!(
        code(
            user.put_provider_key(pb::PutProviderKeyRequest {
                provider: "openai".into(),
                key: openai_key.clone(),
                label: "logs".into(),
                endpoint: String::new(),
                health_checks: None,
            })
            .await
        ),
        Code::Ok
    );
    let refused_key = secrets.add(
        "a provider key of the wrong shape",
        &provider_key("sk-proj-"),
    );
    assert_eq!(
        code(
            user.put_provider_key(pb::PutProviderKeyRequest {
                provider: "anthropic".into(),
                key: refused_key.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            user.list_provider_keys(pb::ListProviderKeysRequest {})
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            user.test_provider_key(pb::TestProviderKeyRequest {
                provider: "openai".into(),
            })
            .await
        ),
        Code::Ok
    );
    let hand_out = || pb::GetProviderKeyForUserRequest {
        user_id: "alice".into(),
        provider: "openai".into(),
    };
    let handed = users(&service_token)
        .get_provider_key_for_user(hand_out())
        .await
        .expect("hand-out")
        .into_inner();
    assert_eq!(handed.api_key, openai_key);
    for bearer in [&token, &admin, &unknown_service_token, &manager_key] {
        assert_ne!(
            code(users(bearer).get_provider_key_for_user(hand_out()).await),
            Code::Ok,
            "only a service token gets a user's key"
        );
    }

    // PlatformKeyService, every RPC.
    assert_eq!(
        code(
            platform
                .list_platform_keys(pb::ListPlatformKeysRequest {})
                .await
        ),
        Code::Ok
    );
    let platform_first = secrets.add("a platform key", &provider_key("sk-or-v1-"));
    let platform_second = secrets.add("a platform key's second value", &provider_key("sk-or-v1-"));
    for value in [&platform_first, &platform_second] {
        assert_eq!(
            code(
                platform
                    .update_platform_key(pb::UpdatePlatformKeyRequest {
                        name: "openrouter".into(),
                        api_key: value.clone(),
                    })
                    .await
            ),
            Code::Ok
        );
    }
    let refused_platform = secrets.add(
        "a platform key refused for its shape",
        &format!("bad key {}", uuid::Uuid::new_v4().simple()),
    );
    assert_eq!(
        code(
            platform
                .update_platform_key(pb::UpdatePlatformKeyRequest {
                    name: "openrouter".into(),
                    api_key: refused_platform.clone(),
                })
                .await
        ),
        Code::InvalidArgument
    );
    let decrypted = platform
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "openrouter".into(),
            reason: "logs".into(),
        })
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(decrypted.api_key, platform_second);
    assert_eq!(
        code(
            platform
                .list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
                    name: "openrouter".into(),
                })
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            platform
                .rollback_platform_key(pb::RollbackPlatformKeyRequest {
                    name: "openrouter".into(),
                    version: 1,
                })
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            platform
                .test_platform_key(pb::TestPlatformKeyRequest {
                    name: "openrouter".into(),
                    api_key: None,
                })
                .await
        ),
        Code::Ok
    );
    {
        let mut watch = platform
            .watch_platform_keys(pb::WatchPlatformKeysRequest {
                include_secret: true,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut seen_secret = false;
        while let Some(event) = watch.message().await.expect("event") {
            if event.name == "openrouter" {
                seen_secret = event.api_key == platform_first;
                break;
            }
        }
        assert!(seen_secret, "the watch stream carried the decrypted value");
    }
    assert_eq!(
        code(
            platform
                .list_audit_events(pb::ListAuditEventsRequest::default())
                .await
        ),
        Code::Ok
    );

    // The REST paths: each once as it should go, and the refusals.
    let http = reqwest::Client::new();
    let rest = |path: &str| format!("http://{addr}{path}");
    let send = |req: reqwest::RequestBuilder| async move {
        let res = req.send().await.expect("send");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    let keys = "/api/v1/account/uc-api-keys";
    let (status, created) = send(
        http.post(rest(keys))
            .bearer_auth(&token)
            .json(&json!({"name": "rest"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let rest_key = secrets.add(
        "a key created over REST",
        created["api_key"].as_str().expect("key"),
    );
    let id = created["key_id"].as_str().expect("id").to_owned();
    for path in [
        keys.to_owned(),
        format!("{keys}/{id}"),
        format!("{keys}/{id}/usage"),
    ] {
        let (status, _) = send(http.get(rest(&path)).bearer_auth(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, again) = send(
        http.post(rest(&format!("{keys}/{id}/regenerate")))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    secrets.add(
        "a key regenerated over REST",
        again["api_key"].as_str().expect("key"),
    );
    let (status, _) = send(
        http.delete(rest(&format!("{keys}/{id}")))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for (key, valid) in [
        (&manager_key, true),
        (&rest_key, false),
        (&malformed, false),
        (&forged_prefix, false),
    ] {
        let (status, verdict) = send(
            http.post(rest("/api/v1/auth/validate-key"))
                .json(&json!({"api_key": key})),
        )
        .await;
        assert_eq!(
            (status, verdict["valid"].as_bool()),
            (StatusCode::OK, Some(valid))
        );
    }
    let (status, _) = send(http.get(rest(keys)).bearer_auth(&manager_key)).await;
    assert_eq!(status, StatusCode::OK, "a key with keys:read lists");
    let (status, _) = send(
        http.post(rest(keys))
            .bearer_auth(&narrow_key)
            .json(&json!({"name": "refused"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a key without keys:manage");
    let (status, _) = send(http.get(rest(keys)).bearer_auth(&unknown_session)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(
        http.post(rest(keys))
            .header("cookie", format!("session_token={token}; csrf_token=one"))
            .header("x-csrf-token", "other")
            .json(&json!({"name": "csrf"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the CSRF check");

    let byok_key = secrets.add(
        "a provider key added over REST",
        &provider_key("sk-ant-api03-"),
    );
    for (provider, key, expected) in [
        ("anthropic", &byok_key, StatusCode::OK),
        ("anthropic", &refused_key, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, _) = send(
            http.post(rest("/api/v1/byok/keys/add"))
                .bearer_auth(&token)
                .json(&json!({"provider": provider, "key": key})),
        )
        .await;
        assert_eq!(status, expected);
    }
    for path in ["/api/v1/byok/providers", "/api/v1/byok/keys"] {
        let (status, _) = send(http.get(rest(path)).bearer_auth(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _) = send(
        http.post(rest("/api/v1/byok/keys/test/anthropic"))
            .bearer_auth(&manager_key),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        http.delete(rest("/api/v1/byok/keys/anthropic"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let pk = "/api/v1/admin/platform-keys";
    let platform_rest = secrets.add("a platform key stored over REST", &provider_key("sk-"));
    let (status, _) = send(
        http.put(rest(&format!("{pk}/openai")))
            .bearer_auth(&admin)
            .json(&json!({"api_key": platform_rest})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, shown) = send(
        http.get(rest(&format!("{pk}/openai/decrypted?reason=logs")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(
        (status, shown["api_key"].as_str()),
        (StatusCode::OK, Some(platform_rest.as_str()))
    );
    // A secret sent in the wrong field's type: serde's message quotes it back to the caller.
    let (status, _) = send(
        http.post(rest(&format!("{pk}/openai/rollback")))
            .bearer_auth(&admin)
            .json(&json!({"version": platform_rest})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for (method, path, body) in [
        (reqwest::Method::GET, pk.to_owned(), None),
        (reqwest::Method::GET, format!("{pk}/openai/versions"), None),
        (
            reqwest::Method::POST,
            format!("{pk}/openrouter/rollback"),
            Some(json!({"version": 2})),
        ),
        (reqwest::Method::POST, format!("{pk}/openai/test"), None),
        (
            reqwest::Method::GET,
            "/api/v1/admin/audit-events".to_owned(),
            None,
        ),
        (reqwest::Method::DELETE, format!("{pk}/openai"), None),
    ] {
        let mut req = http
            .request(method.clone(), rest(&path))
            .bearer_auth(&admin);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let (status, answer) = send(req).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
    }
    let (status, _) = send(http.get(rest(pk)).bearer_auth(&manager_key)).await;
    assert!(
        status.is_client_error(),
        "admin paths never accept keys: {status}"
    );

    // What is stored encrypted must not be in the log in its stored form either.
    let conn = db.connect().await;
    let backend_kind = conn.get_database_backend();
    for (table, column) in [
        ("platform_settings", "value"),
        ("platform_key_versions", "ciphertext"),
        ("user_provider_keys", "ciphertext"),
    ] {
        let rows = conn
            .query_all_raw(Statement::from_string(
                backend_kind,
                format!("SELECT {column} AS c FROM {table}"),
            ))
            .await
            .expect("read ciphertexts");
        for row in rows {
            let ciphertext: String = row.try_get("", "c").expect("text");
            secrets.add(&format!("a Fernet ciphertext from {table}"), &ciphertext);
        }
    }
    assert!(
        secrets
            .0
            .iter()
            .filter(|(w, _)| w.contains("Fernet"))
            .count()
            >= 3,
        "ciphertexts were stored"
    );

    assert_eq!(
        code(
            platform
                .delete_platform_key(pb::DeletePlatformKeyRequest {
                    name: "openrouter".into(),
                })
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            user.delete_provider_key(pb::DeleteProviderKeyRequest {
                provider: "openai".into(),
            })
            .await
        ),
        Code::Ok
    );
    for (session, expected) in [
        (&ops_session, Code::Ok),
        (&ops_malformed, Code::Unauthenticated),
    ] {
        assert_eq!(
            code(
                users(session)
                    .list_keys(pb::ListKeysRequest::default())
                    .await
            ),
            expected
        );
    }
    binary::stop(server).await;

    let text = kh.log_text();
    assert!(
        text.contains("\"level\":\"TRACE\""),
        "the log is at trace level"
    );
    for line in [
        "API key created",
        "API key regenerated",
        "platform key decrypted",
        "an Ops-Center session in Redis is not JSON",
    ] {
        assert!(text.contains(line), "the log covers the calls: no {line:?}");
    }
    secrets.assert_absent_from(&text);
}
