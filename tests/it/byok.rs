//! BYOK: users' own provider keys over gRPC and REST, encrypted at rest, tested live against a
//! local stub, and handed only to internal services with a service token.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    users_never_see_each_others_provider_keys,
    keys_are_encrypted_at_rest_and_delete_removes_the_row,
    each_provider_enforces_its_format_and_endpoint,
    live_tests_report_valid_invalid_and_error,
    only_service_tokens_get_a_users_key,
    a_bound_service_token_reaches_only_its_rpcs,
    a_sync_report_with_a_bad_field_names_it_and_records_nothing,
    the_byok_rest_paths_answer_in_the_ops_center_shapes,
    byok_stats_count_the_callers_keys_in_ops_centers_fields,
);

const GATEWAY_TOKEN: &str = "svc_gateway_0123456789abcdef";

fn put(provider: &str, key: &str) -> pb::PutProviderKeyRequest {
    pb::PutProviderKeyRequest {
        provider: provider.into(),
        key: key.into(),
        ..Default::default()
    }
}

async fn server_with_gateway(backend: Backend) -> TestServer {
    let digest = hex::encode(sha2::Sha256::digest(GATEWAY_TOKEN.as_bytes()));
    TestServer::start_with(backend, move |s| {
        s.service_tokens = vec![format!("gateway={digest}")]
    })
    .await
}

const SYNC_TOKEN: &str = "svc_sync_0123456789abcdef";

/// The gateway's token may fetch users' keys and nothing else; the sync agent's may watch and
/// report, and not fetch users' keys.
async fn server_with_bound_tokens(backend: Backend) -> TestServer {
    let digest = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let (gateway, sync) = (digest(GATEWAY_TOKEN), digest(SYNC_TOKEN));
    TestServer::start_with(backend, move |s| {
        s.service_tokens = vec![
            format!("gateway={gateway}:GetProviderKeyForUser"),
            format!("litellm-sync={sync}:WatchPlatformKeys+ReportPlatformKeySync"),
        ]
    })
    .await
}

/// Alice's groq key, stored by her; and a client with no credential of its own.
async fn alices_groq_key_stored(
    server: &TestServer,
    alice: &str,
) -> keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient<tonic::transport::Channel> {
    server
        .user_client(Some(alice))
        .await
        .put_provider_key(put("groq", "gsk_alice_0123456789"))
        .await
        .expect("put");
    keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient::new(server.channel().await)
}

/// The audit trail's rows of `action` (e.g. `provider_key.hand_out`).
async fn audited(
    server: &TestServer,
    action: &str,
) -> Vec<keyhouse_domain::entities::audit_events::Model> {
    keyhouse_domain::storage::audit::list(
        server.db(),
        &keyhouse_domain::storage::audit::Filter {
            action: Some(action.into()),
            ..Default::default()
        },
        None,
        10,
    )
    .await
    .expect("audit")
}

fn hand_out(
    user: &str,
    provider: &str,
    token: Option<&str>,
) -> tonic::Request<pb::GetProviderKeyForUserRequest> {
    let mut req = tonic::Request::new(pb::GetProviderKeyForUserRequest {
        user_id: user.into(),
        provider: provider.into(),
    });
    if let Some(token) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    req
}

async fn users_never_see_each_others_provider_keys(backend: Backend) {
    let server = server_with_gateway(backend).await;
    let alice = server.session("alice", Role::User).await;
    let bob = server.session("bob", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    let mut b = server.user_client(Some(&bob)).await;
    a.put_provider_key(put("openai", "sk-proj-alice-0123456789"))
        .await
        .expect("put");

    assert!(
        b.list_provider_keys(pb::ListProviderKeysRequest {})
            .await
            .expect("list")
            .into_inner()
            .keys
            .is_empty()
    );
    let providers = b
        .list_providers(pb::ListProvidersRequest {})
        .await
        .expect("providers")
        .into_inner()
        .providers;
    assert_eq!(providers.len(), 10, "every catalog provider is listed");
    assert!(
        providers.iter().all(|p| !p.configured),
        "bob has configured nothing"
    );
    for status in [
        b.test_provider_key(pb::TestProviderKeyRequest {
            provider: "openai".into(),
        })
        .await
        .expect_err("test"),
        b.delete_provider_key(pb::DeleteProviderKeyRequest {
            provider: "openai".into(),
        })
        .await
        .expect_err("delete"),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }
    let mut gateway = keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient::new(
        server.channel().await,
    );
    let status = gateway
        .get_provider_key_for_user(hand_out("bob", "openai", Some(GATEWAY_TOKEN)))
        .await
        .expect_err("bob has none");
    assert_eq!(status.code(), Code::NotFound);
    let alices = gateway
        .get_provider_key_for_user(hand_out("alice", "openai", Some(GATEWAY_TOKEN)))
        .await
        .expect("alice's")
        .into_inner();
    assert_eq!(alices.api_key, "sk-proj-alice-0123456789");
    let listed = a
        .list_provider_keys(pb::ListProviderKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 1, "bob's attempts left alice's key alone");
    assert_eq!(
        (
            listed[0].provider.as_str(),
            listed[0].provider_name.as_str(),
            listed[0].test_status.as_str()
        ),
        ("openai", "OpenAI", "unknown")
    );
}

async fn keys_are_encrypted_at_rest_and_delete_removes_the_row(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    let secret = "sk-ant-api03-very-secret-material";
    a.put_provider_key(pb::PutProviderKeyRequest {
        provider: "anthropic".into(),
        key: secret.into(),
        label: "work".into(),
        ..Default::default()
    })
    .await
    .expect("put");
    let dump = server.dump_all_tables().await;
    assert!(
        dump.contains("sk-ant-a...rial"),
        "the dump holds the stored preview, so it saw the row"
    );
    assert!(!dump.contains(secret) && !dump.contains("very-secret-material"));
    a.delete_provider_key(pb::DeleteProviderKeyRequest {
        provider: "anthropic".into(),
    })
    .await
    .expect("delete");
    let rows = keyhouse_domain::storage::provider_keys::list(server.db(), "alice")
        .await
        .expect("rows");
    assert!(rows.is_empty(), "delete removes the row");
    let events = keyhouse_domain::storage::audit::list(server.db(), &Default::default(), None, 50)
        .await
        .expect("audit");
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["provider_key.delete", "provider_key.put"]);
    assert!(
        events
            .iter()
            .all(|e| !e.details.to_string().contains(secret))
    );
}

async fn each_provider_enforces_its_format_and_endpoint(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    let cases = [
        ("openrouter", "sk-or-v1-0123456789", "sk-0123456789abc"),
        ("openai", "sk-proj-0123456789", "sk-or-v1-0123456789"),
        ("anthropic", "sk-ant-0123456789", "sk-0123456789abc"),
        ("huggingface", "hf_0123456789abc", "0123456789abcdef"),
        ("cohere", "co0123456789abcdef", "short"),
        ("together", "0123456789abcdef0123", "tiny"),
        ("perplexity", "pplx-0123456789abc", "sk-0123456789abc"),
        ("groq", "gsk_0123456789abc", "gsk-0123456789abc"),
        ("together", "0123456789abcdef0123", "0123456789\u{0}abcdef"),
        ("together", "0123456789abcdef0123", "0123456789ümlautkey"),
    ];
    for (provider, good, bad) in cases {
        let status = a.put_provider_key(put(provider, bad)).await.expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{provider}: {bad}");
        assert!(
            status.message().contains("Expected format"),
            "{provider}: {}",
            status.message()
        );
        a.put_provider_key(put(provider, good)).await.expect(good);
    }
    for provider in ["ollama", "custom"] {
        let status = a
            .put_provider_key(put(provider, "token-0123456789"))
            .await
            .expect_err("no endpoint");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("endpoint"),
            "{}",
            status.message()
        );
        let bad = pb::PutProviderKeyRequest {
            provider: provider.into(),
            key: "token-0123456789".into(),
            endpoint: "ftp://models.local".into(),
            ..Default::default()
        };
        assert!(
            a.put_provider_key(bad)
                .await
                .expect_err("ftp")
                .message()
                .contains("endpoint")
        );
        for secretive in [
            "http://user:pass@models.local",
            "http://models.local/v1?api_key=token-0123456789",
        ] {
            let bad = pb::PutProviderKeyRequest {
                provider: provider.into(),
                key: "token-0123456789".into(),
                endpoint: secretive.into(),
                ..Default::default()
            };
            let status = a.put_provider_key(bad).await.expect_err(secretive);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with("endpoint must not"),
                "{}",
                status.message()
            );
        }
        let good = pb::PutProviderKeyRequest {
            provider: provider.into(),
            key: "token-0123456789".into(),
            endpoint: "http://ollama.example.com:11434/".into(),
            ..Default::default()
        };
        a.put_provider_key(good).await.expect("with an endpoint");
    }
    let status = a
        .put_provider_key(put("mistral-unknown", "sk-0123456789abc"))
        .await
        .expect_err("unknown provider");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("provider"));
    assert_eq!(
        a.list_provider_keys(pb::ListProviderKeysRequest {})
            .await
            .expect("list")
            .into_inner()
            .keys
            .len(),
        10
    );
}

async fn live_tests_report_valid_invalid_and_error(backend: Backend) {
    let stub = crate::stub::Provider::start("sk-proj-good-0123456789").await;
    // A provider that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openai={url}"), format!("groq={silent_url}")];
        s.domain.byok_test_timeout_secs = 1;
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    let test = |p: &str| pb::TestProviderKeyRequest { provider: p.into() };

    a.put_provider_key(put("openai", "sk-proj-good-0123456789"))
        .await
        .expect("put");
    let valid = a
        .test_provider_key(test("openai"))
        .await
        .expect("test")
        .into_inner();
    assert_eq!((valid.status.as_str(), valid.status_code), ("valid", 200));
    assert_eq!(stub.last_path().as_deref(), Some("/v1/models"));

    a.put_provider_key(put("openai", "sk-proj-revoked-0123456789"))
        .await
        .expect("replace");
    let invalid = a
        .test_provider_key(test("openai"))
        .await
        .expect("test")
        .into_inner();
    assert_eq!(
        (invalid.status.as_str(), invalid.status_code),
        ("invalid", 401)
    );

    a.put_provider_key(put("groq", "gsk_0123456789abcdef"))
        .await
        .expect("put");
    let timed_out = a
        .test_provider_key(test("groq"))
        .await
        .expect("test")
        .into_inner();
    assert_eq!(
        (timed_out.status.as_str(), timed_out.status_code),
        ("error", 0)
    );
    assert!(
        timed_out.message.contains("no answer"),
        "{}",
        timed_out.message
    );
    drop(silent);

    let keys = a
        .list_provider_keys(pb::ListProviderKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    let status_of = |p: &str| {
        keys.iter()
            .find(|k| k.provider == p)
            .map(|k| (k.test_status.clone(), k.last_tested.is_some()))
    };
    assert_eq!(
        status_of("openai"),
        Some(("invalid".into(), true)),
        "the result is stored on the row"
    );
    assert_eq!(status_of("groq"), Some(("error".into(), true)));

    let custom = pb::PutProviderKeyRequest {
        provider: "custom".into(),
        key: "sk-proj-good-0123456789".into(),
        endpoint: stub.url.clone(),
        ..Default::default()
    };
    a.put_provider_key(custom).await.expect("custom");
    assert_eq!(
        a.test_provider_key(test("custom"))
            .await
            .expect("test")
            .into_inner()
            .status,
        "valid",
        "custom endpoints are tested at the endpoint"
    );
}

async fn only_service_tokens_get_a_users_key(backend: Backend) {
    let server = server_with_gateway(backend).await;
    let alice = server.session("alice", Role::User).await;
    let admin = server.session("root", Role::Admin).await;
    let mut client = alices_groq_key_stored(&server, &alice).await;

    let got = client
        .get_provider_key_for_user(hand_out("alice", "groq", Some(GATEWAY_TOKEN)))
        .await
        .expect("the gateway")
        .into_inner();
    assert_eq!(
        (got.provider.as_str(), got.api_key.as_str()),
        ("groq", "gsk_alice_0123456789")
    );
    for (who, token, code) in [
        (
            "alice's own session",
            Some(alice.as_str()),
            Code::PermissionDenied,
        ),
        (
            "an admin session",
            Some(admin.as_str()),
            Code::PermissionDenied,
        ),
        (
            "an unknown token",
            Some("svc_not_configured_000"),
            Code::Unauthenticated,
        ),
        ("no token", None, Code::Unauthenticated),
    ] {
        let status = client
            .get_provider_key_for_user(hand_out("alice", "groq", token))
            .await
            .expect_err(who);
        assert_eq!(status.code(), code, "{who}");
    }
    let events = audited(&server, "provider_key.hand_out").await;
    assert_eq!(events.len(), 1, "only the successful hand-out is recorded");
    assert_eq!(
        (events[0].actor.as_str(), events[0].target.as_str()),
        ("service:gateway", "alice/groq")
    );
    assert_eq!(events[0].identity_source.as_deref(), Some("service_token"));
    assert!(!events[0].details.to_string().contains("gsk_alice"));
}

async fn the_byok_rest_paths_answer_in_the_ops_center_shapes(backend: Backend) {
    let stub = crate::stub::Provider::start("hf_0123456789abcdef").await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("huggingface={url}")];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    let alice = server.session("alice", Role::User).await;
    let http = server.http();
    let providers: Value = http
        .get(server.rest("/api/v1/byok/providers"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let list = providers.as_array().expect("an array");
    assert_eq!(list.len(), 10);
    for field in ["id", "name", "key_format", "configured"] {
        assert!(list[0].get(field).is_some(), "{field}");
    }
    let added = http
        .post(server.rest("/api/v1/byok/keys/add"))
        .bearer_auth(&alice)
        .json(
            &json!({"provider": "huggingface", "key": "hf_0123456789abcdef", "label": "research"}),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(added.status(), StatusCode::OK);
    assert_eq!(
        added.json::<Value>().await.expect("JSON"),
        json!({"message": "API key added successfully", "provider": "huggingface", "provider_name": "Hugging Face"})
    );
    let keys: Value = http
        .get(server.rest("/api/v1/byok/keys"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let key = &keys[0];
    for field in [
        "provider",
        "provider_name",
        "key_preview",
        "label",
        "added_date",
        "last_tested",
        "test_status",
    ] {
        assert!(key.get(field).is_some(), "{field}: {key}");
    }
    assert_eq!(
        (key["label"].as_str(), key["test_status"].as_str()),
        (Some("research"), Some("unknown"))
    );
    let tested = http
        .post(server.rest("/api/v1/byok/keys/test/huggingface"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("POST");
    let tested: Value = tested.json().await.expect("JSON");
    for field in ["provider", "status", "message", "details"] {
        assert!(tested.get(field).is_some(), "{field}");
    }
    assert_eq!(
        (tested["provider"].as_str(), tested["status"].as_str()),
        (Some("huggingface"), Some("valid")),
        "tested against the stub, which knows this key: {tested}"
    );
    assert!(stub.last_path().is_some(), "the test reached the stub");
    let deleted = http
        .delete(server.rest("/api/v1/byok/keys/huggingface"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), StatusCode::OK);

    let bad = [
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/add",
            r#"{"provider": "openai"}"#,
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/add",
            r#"{"provider": "openai", "key": null}"#,
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/add",
            r#"{"provider": "nope", "key": "sk-0123456789abc"}"#,
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/add",
            r#"{"provider": "openai", "key": "short"}"#,
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/add",
            r#"{"provider": "custom", "key": "k-0123456789", "endpoint": "not a url"}"#,
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/add",
            r#"{"provider": "openai", "key": "sk-0123456789abc", "label": 7}"#,
            422,
        ),
        (reqwest::Method::POST, "/api/v1/byok/keys/add", "[", 422),
        (
            reqwest::Method::POST,
            "/api/v1/byok/keys/test/openai",
            "",
            404,
        ),
        (reqwest::Method::DELETE, "/api/v1/byok/keys/openai", "", 404),
        (reqwest::Method::PUT, "/api/v1/byok/keys/add", "{}", 405),
    ];
    for (method, path, body, expected) in bad {
        let res = http
            .request(method.clone(), server.rest(path))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status().as_u16(), expected, "{method} {path} {body}");
        assert!(
            res.json::<Value>()
                .await
                .expect("a JSON body")
                .get("detail")
                .is_some()
        );
    }
    let anonymous = http
        .get(server.rest("/api/v1/byok/keys"))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

async fn byok_stats_count_the_callers_keys_in_ops_centers_fields(backend: Backend) {
    let stub = crate::stub::Provider::start("sk-proj-stats-good-0123456789").await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openai={url}")];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    let alice = server.session("alice", Role::User).await;
    let bob = server.session("bob", Role::User).await;
    let stats = async |token: &str| -> Value {
        let response = server
            .http()
            .get(server.rest("/api/v1/byok/stats"))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET stats");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON")
    };
    let total = keyhouse_domain::providers::catalog::byok().count();
    assert_eq!(
        stats(&alice).await,
        json!({"total_providers": total, "configured_providers": 0, "tested_providers": 0, "valid_providers": 0})
    );

    let mut a = server.user_client(Some(&alice)).await;
    a.put_provider_key(put("openai", "sk-proj-stats-good-0123456789"))
        .await
        .expect("put");
    a.put_provider_key(put("anthropic", "sk-ant-stats-0123456789"))
        .await
        .expect("put");
    a.test_provider_key(pb::TestProviderKeyRequest {
        provider: "openai".into(),
    })
    .await
    .expect("test");
    server
        .user_client(Some(&bob))
        .await
        .put_provider_key(put("groq", "gsk_stats_0123456789"))
        .await
        .expect("bob's key");

    assert_eq!(
        stats(&alice).await,
        json!({"total_providers": total, "configured_providers": 2, "tested_providers": 1, "valid_providers": 1}),
        "alice's own keys only"
    );
    let anonymous = server
        .http()
        .get(server.rest("/api/v1/byok/stats"))
        .send()
        .await
        .expect("GET stats");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.expect("JSON");
    assert!(body["detail"].is_string(), "{body}");
}

async fn a_bound_service_token_reaches_only_its_rpcs(backend: Backend) {
    let server = server_with_bound_tokens(backend).await;
    let alice = server.session("alice", Role::User).await;
    let mut users = alices_groq_key_stored(&server, &alice).await;
    let got = users
        .get_provider_key_for_user(hand_out("alice", "groq", Some(GATEWAY_TOKEN)))
        .await
        .expect("the gateway's token is bound to GetProviderKeyForUser")
        .into_inner();
    assert_eq!(got.api_key, "gsk_alice_0123456789");
    let refused = users
        .get_provider_key_for_user(hand_out("alice", "groq", Some(SYNC_TOKEN)))
        .await
        .expect_err("the sync agent's token is not bound to GetProviderKeyForUser");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("`litellm-sync`")
            && refused.message().contains("GetProviderKeyForUser"),
        "{}",
        refused.message()
    );

    let watch = pb::WatchPlatformKeysRequest {
        include_secret: true,
    };
    let refused = server
        .platform_client(Some(GATEWAY_TOKEN))
        .await
        .watch_platform_keys(watch)
        .await
        .expect_err("the gateway's token cannot watch platform secrets");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("`gateway`") && refused.message().contains("WatchPlatformKeys"),
        "{}",
        refused.message()
    );
    let mut stream = server
        .platform_client(Some(SYNC_TOKEN))
        .await
        .watch_platform_keys(watch)
        .await
        .expect("the sync agent's token is bound to WatchPlatformKeys")
        .into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("an event in time")
        .expect("a healthy stream")
        .expect("an open stream");
    assert!(first.initial, "the watch starts with the current state");

    let events = audited(&server, "provider_key.hand_out").await;
    assert_eq!(events.len(), 1, "the refused hand-out is not recorded");
}

async fn a_sync_report_with_a_bad_field_names_it_and_records_nothing(backend: Backend) {
    let server = server_with_bound_tokens(backend).await;
    let mut agent = server.platform_client(Some(SYNC_TOKEN)).await;
    let good = pb::ReportPlatformKeySyncRequest {
        name: "openrouter".into(),
        version: 3,
        target: "litellm".into(),
        source: "database".into(),
    };
    for (bad, code, named) in [
        (
            pb::ReportPlatformKeySyncRequest {
                name: String::new(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            pb::ReportPlatformKeySyncRequest {
                name: "no-such-key".into(),
                ..good.clone()
            },
            Code::NotFound,
            "no-such-key",
        ),
        (
            pb::ReportPlatformKeySyncRequest {
                version: -1,
                ..good.clone()
            },
            Code::InvalidArgument,
            "version",
        ),
        (
            pb::ReportPlatformKeySyncRequest {
                target: "LiteLLM proxy".into(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "target",
        ),
        (
            pb::ReportPlatformKeySyncRequest {
                target: "x".repeat(101),
                ..good.clone()
            },
            Code::InvalidArgument,
            "target",
        ),
        (
            pb::ReportPlatformKeySyncRequest {
                source: "cache".into(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "source",
        ),
    ] {
        let status = agent
            .report_platform_key_sync(bad.clone())
            .await
            .expect_err("a bad report is refused");
        assert_eq!(status.code(), code, "{bad:?}: {}", status.message());
        assert!(
            status.message().contains(named),
            "{bad:?}: the message names `{named}`: {}",
            status.message()
        );
    }
    assert!(
        audited(&server, "platform_key.synced").await.is_empty(),
        "refused reports leave no row"
    );
    agent
        .report_platform_key_sync(good)
        .await
        .expect("a good report");
    let rows = audited(&server, "platform_key.synced").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].actor.as_str(), rows[0].target.as_str()),
        ("service:litellm-sync", "openrouter")
    );
}
