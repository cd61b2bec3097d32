//! The outbound guard, as an attacker tries it: a user's endpoint (or a provider URL) aimed at
//! loopback, cloud metadata or a private network is refused before any request leaves, and a
//! live test of a refused URL reports why without a status or a latency from the address. The
//! stub provider on 127.0.0.1 counts the requests that reach it. Also the 1 KiB secret limit.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use crate::on_both_databases;
use crate::stub;
use crate::support::{Backend, TempDir, TestServer};

on_both_databases!(
    an_endpoint_is_refused_for_a_provider_that_takes_none,
    internal_and_malformed_endpoints_are_refused_before_they_are_stored,
    a_name_that_resolves_to_loopback_is_refused_when_tested,
    an_allowed_network_lets_a_local_endpoint_be_tested,
    a_configured_provider_url_on_loopback_is_refused_without_the_allowance,
    the_byok_rest_paths_refuse_internal_endpoints_naming_the_field,
    provider_secrets_are_at_most_one_kib,
);

const TOKEN: &str = "token-0123456789";

fn put_with_endpoint(provider: &str, endpoint: &str) -> pb::PutProviderKeyRequest {
    pb::PutProviderKeyRequest {
        provider: provider.into(),
        key: TOKEN.into(),
        endpoint: endpoint.into(),
        ..Default::default()
    }
}

fn test(provider: &str) -> pb::TestProviderKeyRequest {
    pb::TestProviderKeyRequest {
        provider: provider.into(),
    }
}

/// The port the stub listens on, to aim an endpoint at it.
fn port_of(stub: &stub::Provider) -> &str {
    stub.url.rsplit(':').next().expect("a port")
}

async fn stored_providers(client: &mut crate::support::UserClient) -> Vec<String> {
    client
        .list_provider_keys(pb::ListProviderKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.provider)
        .collect()
}

async fn an_endpoint_is_refused_for_a_provider_that_takes_none(backend: Backend) {
    let stub = stub::Provider::start(TOKEN).await;
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    // Hole 3 as reported: an OpenAI key aimed at an internal port, the `#` cutting off the path.
    let attack = format!("http://127.0.0.1:{}/#", port_of(&stub));
    for endpoint in [attack.as_str(), "https://api.example.com"] {
        let req = pb::PutProviderKeyRequest {
            provider: "openai".into(),
            key: "sk-proj-0123456789abcdef".into(),
            endpoint: endpoint.into(),
            ..Default::default()
        };
        let status = a.put_provider_key(req).await.expect_err(endpoint);
        assert_eq!(status.code(), Code::InvalidArgument, "{endpoint}");
        assert!(
            status.message().contains("OpenAI takes no endpoint")
                && status.message().contains("ollama, custom"),
            "{}",
            status.message()
        );
    }
    assert!(stored_providers(&mut a).await.is_empty(), "nothing stored");
    let status = a
        .test_provider_key(test("openai"))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(stub.requests(), 0);
}

async fn internal_and_malformed_endpoints_are_refused_before_they_are_stored(backend: Backend) {
    let stub = stub::Provider::start(TOKEN).await;
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    let port = port_of(&stub);
    let cases = [
        (
            format!("http://127.0.0.1:{port}/#"),
            "must not have a fragment",
        ),
        (
            format!("http://127.0.0.1:{port}/"),
            "is 127.0.0.1, a loopback address",
        ),
        // Other spellings of 127.0.0.1 are the same address.
        (
            format!("http://2130706433:{port}/"),
            "is 127.0.0.1, a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "a loopback address",
        ),
        (
            "http://169.254.169.254/".into(),
            "is 169.254.169.254, a link-local address",
        ),
        ("http://10.0.0.1/".into(), "is 10.0.0.1, a private address"),
        ("http://192.168.1.20:11434".into(), "a private address"),
        ("http://100.64.0.1/".into(), "a carrier-grade NAT address"),
        ("http://[::1]/".into(), "is ::1, a loopback address"),
        ("http://[fd00::1]/".into(), "a unique-local address"),
        ("http://0.0.0.0/".into(), "an unspecified address"),
        (
            "http://user:secret@models.example.com/".into(),
            "must not hold credentials",
        ),
        (
            "http://models.example.com/v1?api_key=x".into(),
            "must not have a query string",
        ),
        (
            "http://models.example.com/v1#x".into(),
            "must not have a fragment",
        ),
        (
            "gopher://models.example.com/".into(),
            "must be an http(s) URL",
        ),
        ("file:///etc/passwd".into(), "must be an http(s) URL"),
    ];
    for provider in ["custom", "ollama"] {
        for (endpoint, why) in &cases {
            let status = a
                .put_provider_key(put_with_endpoint(provider, endpoint))
                .await
                .expect_err(endpoint);
            assert_eq!(status.code(), Code::InvalidArgument, "{endpoint}");
            assert!(
                status.message().starts_with("endpoint ") && status.message().contains(why),
                "{endpoint}: {}",
                status.message()
            );
        }
    }
    let status = a
        .put_provider_key(put_with_endpoint("custom", "http://10.0.0.1/"))
        .await
        .expect_err("private");
    assert!(
        status
            .message()
            .contains("an operator may allow its network with KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS"),
        "{}",
        status.message()
    );
    assert!(stored_providers(&mut a).await.is_empty(), "nothing stored");
    assert_eq!(stub.requests(), 0);
}

async fn a_name_that_resolves_to_loopback_is_refused_when_tested(backend: Backend) {
    let stub = stub::Provider::start(TOKEN).await;
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    // A name is resolved when a request is made, not when it is stored.
    let endpoint = format!("http://localhost:{}", port_of(&stub));
    a.put_provider_key(put_with_endpoint("custom", &endpoint))
        .await
        .expect("a name is stored");
    let out = a
        .test_provider_key(test("custom"))
        .await
        .expect("a refusal is a test result")
        .into_inner();
    assert_eq!(
        (out.status.as_str(), out.status_code, out.latency_ms),
        ("error", 0, 0),
        "{out:?}"
    );
    assert_eq!(
        out.message,
        "endpoint resolves to a loopback address; an operator may allow its network with \
         KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS"
    );
    assert_eq!(stub.requests(), 0, "no request reached the address");
    let keys = a
        .list_provider_keys(pb::ListProviderKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert_eq!(
        keys[0].test_status, "error",
        "the refusal is the stored result"
    );
}

async fn an_allowed_network_lets_a_local_endpoint_be_tested(backend: Backend) {
    let stub = stub::Provider::start(TOKEN).await;
    let server = TestServer::start_with(backend, |s| {
        s.domain.outbound_allowed_networks = vec![stub::NETWORK.into()];
    })
    .await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    // The documented local Ollama: a literal address in the allowed network is stored...
    a.put_provider_key(put_with_endpoint("ollama", &stub.url))
        .await
        .expect("an allowed literal address");
    let out = a
        .test_provider_key(test("ollama"))
        .await
        .expect("test")
        .into_inner();
    assert_eq!((out.status.as_str(), out.status_code), ("valid", 200));
    assert_eq!(stub.last_path().as_deref(), Some("/api/tags"));
    assert_eq!(stub.requests(), 1);
    // ...and a name is reached at the allowed address it resolves to (`localhost` may also
    // resolve to ::1, which stays refused and is never tried).
    let by_name = format!("http://localhost:{}/", port_of(&stub));
    a.put_provider_key(put_with_endpoint("custom", &by_name))
        .await
        .expect("a name");
    let out = a
        .test_provider_key(test("custom"))
        .await
        .expect("test")
        .into_inner();
    assert_eq!((out.status.as_str(), out.status_code), ("valid", 200));
    assert_eq!(stub.requests(), 2);
    // Only the allowed network: other internal addresses stay refused.
    let status = a
        .put_provider_key(put_with_endpoint("custom", "http://169.254.169.254/"))
        .await
        .expect_err("metadata");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn a_configured_provider_url_on_loopback_is_refused_without_the_allowance(backend: Backend) {
    let stub = stub::Provider::start("sk-proj-good-0123456789").await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openai={url}")];
    })
    .await;
    let alice = server.session("alice", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    a.put_provider_key(pb::PutProviderKeyRequest {
        provider: "openai".into(),
        key: "sk-proj-good-0123456789".into(),
        ..Default::default()
    })
    .await
    .expect("put");
    let out = a
        .test_provider_key(test("openai"))
        .await
        .expect("test")
        .into_inner();
    assert_eq!(
        (out.status.as_str(), out.status_code, out.latency_ms),
        ("error", 0, 0)
    );
    assert!(
        out.message
            .starts_with("the provider URL is 127.0.0.1, a loopback address"),
        "{}",
        out.message
    );

    let root = server.session("root", Role::Admin).await;
    let mut admin = server.platform_client(Some(&root)).await;
    admin
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openai".into(),
            api_key: "sk-proj-good-0123456789".into(),
        })
        .await
        .expect("update");
    let platform = admin
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: "openai".into(),
            api_key: None,
        })
        .await
        .expect("test")
        .into_inner();
    assert_eq!(
        (platform.ok, platform.status_code, platform.latency_ms),
        (false, 0, 0)
    );
    assert!(
        platform.detail.contains("a loopback address")
            && platform
                .detail
                .contains("KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS"),
        "{}",
        platform.detail
    );
    assert_eq!(stub.requests(), 0, "no request reached the stub");
    drop(server);

    // The same server allowed the stub's network reaches it.
    let url = stub.url.clone();
    let allowed = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openai={url}")];
        s.domain.outbound_allowed_networks = vec![stub::NETWORK.into()];
    })
    .await;
    let root = allowed.session("root", Role::Admin).await;
    let mut admin = allowed.platform_client(Some(&root)).await;
    admin
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openai".into(),
            api_key: "sk-proj-good-0123456789".into(),
        })
        .await
        .expect("update");
    let platform = admin
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: "openai".into(),
            api_key: None,
        })
        .await
        .expect("test")
        .into_inner();
    assert_eq!((platform.ok, platform.status_code), (true, 200));
    assert_eq!(stub.requests(), 1);
    assert_eq!(stub.last_path().as_deref(), Some("/v1/models"));
}

async fn the_byok_rest_paths_refuse_internal_endpoints_naming_the_field(backend: Backend) {
    let stub = stub::Provider::start(TOKEN).await;
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let http = server.http();
    let attack = format!("http://127.0.0.1:{}/#", port_of(&stub));
    for (body, why) in [
        (
            json!({"provider": "custom", "key": TOKEN, "endpoint": "http://169.254.169.254/"}),
            "link-local",
        ),
        (
            json!({"provider": "ollama", "key": TOKEN, "endpoint": "http://[::1]:11434"}),
            "loopback",
        ),
        (
            json!({"provider": "custom", "key": TOKEN, "endpoint": attack}),
            "fragment",
        ),
        (
            json!({"provider": "openai", "key": "sk-proj-0123456789abcdef", "endpoint": "http://10.0.0.1/"}),
            "takes no endpoint",
        ),
    ] {
        let res = http
            .post(server.rest("/api/v1/byok/keys/add"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let detail = &res.json::<Value>().await.expect("JSON")["detail"][0];
        assert_eq!(detail["loc"], json!(["body", "endpoint"]), "{body}");
        assert!(
            detail["msg"].as_str().is_some_and(|m| m.contains(why)),
            "{body}: {detail}"
        );
    }
    // A name that resolves inside is stored, and refused when tested.
    let added = http
        .post(server.rest("/api/v1/byok/keys/add"))
        .bearer_auth(&alice)
        .json(&json!({"provider": "custom", "key": TOKEN,
            "endpoint": format!("http://localhost:{}", port_of(&stub))}))
        .send()
        .await
        .expect("POST");
    assert_eq!(added.status(), StatusCode::OK);
    let tested = http
        .post(server.rest("/api/v1/byok/keys/test/custom"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("POST");
    assert_eq!(tested.status(), StatusCode::OK);
    let tested: Value = tested.json().await.expect("JSON");
    assert_eq!(tested["status"], "error");
    assert!(
        tested["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("endpoint resolves to a loopback address")),
        "{tested}"
    );
    assert_eq!(stub.requests(), 0);
}

async fn provider_secrets_are_at_most_one_kib(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.session("alice", Role::User).await;
    let root = server.session("root", Role::Admin).await;
    let mut a = server.user_client(Some(&alice)).await;
    let mut admin = server.platform_client(Some(&root)).await;
    let sized = |prefix: &str, len: usize| format!("{prefix}{}", "k".repeat(len - prefix.len()));

    let status = a
        .put_provider_key(pb::PutProviderKeyRequest {
            provider: "openai".into(),
            key: sized("sk-proj-", 1025),
            ..Default::default()
        })
        .await
        .expect_err("over 1 KiB");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "key must be at most 1024 bytes (1 KiB), got 1025"
    );
    assert!(stored_providers(&mut a).await.is_empty());
    a.put_provider_key(pb::PutProviderKeyRequest {
        provider: "openai".into(),
        key: sized("sk-proj-", 1024),
        ..Default::default()
    })
    .await
    .expect("exactly 1 KiB");

    let status = admin
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "groq".into(),
            api_key: sized("gsk_", 1025),
        })
        .await
        .expect_err("over 1 KiB");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "api_key must be at most 1024 bytes (1 KiB), got 1025"
    );
    let versions = admin
        .list_platform_key_versions(pb::ListPlatformKeyVersionsRequest {
            name: "groq".into(),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert!(versions.is_empty(), "nothing stored");
    admin
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "groq".into(),
            api_key: sized("gsk_", 1024),
        })
        .await
        .expect("exactly 1 KiB");

    let http = server.http();
    let res = http
        .post(server.rest("/api/v1/byok/keys/add"))
        .bearer_auth(&alice)
        .json(&json!({"provider": "anthropic", "key": sized("sk-ant-", 2048)}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let detail = &res.json::<Value>().await.expect("JSON")["detail"][0];
    assert_eq!(detail["loc"], json!(["body", "key"]));
    assert!(
        detail["msg"]
            .as_str()
            .is_some_and(|m| m.contains("at most 1024 bytes")),
        "{detail}"
    );
    let res = http
        .put(server.rest("/api/v1/admin/platform-keys/xai"))
        .bearer_auth(&root)
        .json(&json!({"api_key": sized("xai-", 1025)}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let detail = &res.json::<Value>().await.expect("JSON")["detail"][0];
    assert_eq!(detail["loc"], json!(["body", "api_key"]));
    assert!(
        detail["msg"]
            .as_str()
            .is_some_and(|m| m.contains("at most 1024 bytes")),
        "{detail}"
    );
}

#[tokio::test]
async fn a_bad_allowed_network_refuses_to_start_naming_the_variable() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/keyhouse.db?mode=rwc", dir.0.display());
    let mut settings = keyhouse_server::ServerSettings::new(url);
    settings.domain.keys.bcrypt_cost = 4;
    settings.domain.platform_env = Some(Default::default());
    settings.domain.outbound_allowed_networks = vec!["127.0.0.1/32".into(), "10.0.0/8".into()];
    let text = crate::support::refusal_to_serve(settings).await;
    assert!(
        text.contains("KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS: '10.0.0/8' is not a network"),
        "{text}"
    );
}
