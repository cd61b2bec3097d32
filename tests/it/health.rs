//! Health checks of provider keys against the local provider stub: scheduled tests on two
//! replicas of one database turn a key unhealthy and healthy again with one audit event per
//! change of state, BYOK keys are checked only when their owner opted in, manual tests are
//! recorded too, and no key ever reaches the health tables. Each wait polls the database or the
//! API until a bounded deadline; nothing is timed.

use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use serde_json::Value;

use crate::on_both_databases;
use crate::support::{Backend, PlatformClient, TestServer};

on_both_databases!(
    a_platform_key_turns_unhealthy_and_healthy_again_with_one_event_per_change_on_two_replicas,
    byok_keys_are_checked_only_when_their_owner_opted_in,
    manual_tests_are_recorded_as_health_and_history,
);

/// How long a scheduled test may take to come round: many periods of one second.
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it holds; fails the test naming `what` if it has not by `DEADLINE`.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {DEADLINE:?}");
}

/// A server whose live tests of `provider` go to the stub, checking keys every second.
async fn server_with_stub(backend: Backend, provider: &str, stub: &str, secs: u64) -> TestServer {
    let pair = format!("{provider}={stub}");
    TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![pair];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
        s.domain.health.check_secs = secs;
    })
    .await
}

async fn admin(server: &TestServer) -> PlatformClient {
    let token = server.session("root", Role::Admin).await;
    server.platform_client(Some(&token)).await
}

async fn listed(c: &mut PlatformClient, name: &str) -> pb::PlatformKey {
    c.list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys
        .into_iter()
        .find(|k| k.name == name)
        .expect("in the catalog")
}

async fn history(c: &mut PlatformClient, name: &str) -> Vec<pb::KeyHealthCheck> {
    let mut checks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_platform_key_health(pb::ListPlatformKeyHealthRequest {
                name: name.into(),
                page_size: 500,
                page_token,
            })
            .await
            .expect("history")
            .into_inner();
        checks.extend(page.checks);
        if page.next_page_token.is_empty() {
            return checks;
        }
        page_token = page.next_page_token;
    }
}

async fn health_events(c: &mut PlatformClient, action: &str, target: &str) -> Vec<pb::AuditEvent> {
    let mut events = c
        .list_audit_events(pb::ListAuditEventsRequest {
            action: action.into(),
            target: target.into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("audit events")
        .into_inner()
        .events;
    events.reverse();
    events
}

fn details(event: &pb::AuditEvent) -> Value {
    serde_json::from_str(&event.details_json).expect("details are JSON")
}

/// The rows of the health tables, as text.
async fn health_rows(server: &TestServer) -> Vec<String> {
    server
        .rows()
        .await
        .into_iter()
        .filter(|r| r.starts_with("key_health"))
        .collect()
}

async fn a_platform_key_turns_unhealthy_and_healthy_again_with_one_event_per_change_on_two_replicas(
    backend: Backend,
) {
    // A provider no other test checks, one per database: the gauge is the process's.
    let (name, good, bad): (&str, &'static str, &str) = match backend {
        Backend::Sqlite => (
            "huggingface",
            "hf_health_good_0123456789",
            "hf_health_bad_0123456789",
        ),
        Backend::Postgres => (
            "xai",
            "xai-health-good-0123456789",
            "xai-health-bad-0123456789",
        ),
    };
    let stub = crate::stub::Provider::start(good).await;
    let first = server_with_stub(backend, name, &stub.url, 1).await;
    let second = first.replica().await;
    let mut one = admin(&first).await;
    let mut two = admin(&second).await;

    one.update_platform_key(pb::UpdatePlatformKeyRequest {
        name: name.into(),
        api_key: good.into(),
    })
    .await
    .expect("store the good key");
    eventually("the key is healthy", async || {
        listed(&mut two, name).await.health_status == "healthy"
    })
    .await;

    one.update_platform_key(pb::UpdatePlatformKeyRequest {
        name: name.into(),
        api_key: bad.into(),
    })
    .await
    .expect("store a key the provider rejects");
    eventually("the key is unhealthy", async || {
        listed(&mut two, name).await.health_status == "unhealthy"
    })
    .await;
    // It keeps failing, test after test, without another event.
    eventually("three failed tests in a row", async || {
        let h = history(&mut one, name).await;
        h.len() >= 3 && h[..3].iter().all(|c| c.status == "unhealthy")
    })
    .await;
    let key = listed(&mut one, name).await;
    assert_eq!(key.health_error, "auth");
    assert!(key.last_tested.is_some());

    two.update_platform_key(pb::UpdatePlatformKeyRequest {
        name: name.into(),
        api_key: good.into(),
    })
    .await
    .expect("store the good key again");
    eventually("three passed tests in a row", async || {
        let h = history(&mut two, name).await;
        h.len() >= 3 && h[..3].iter().all(|c| c.status == "healthy")
    })
    .await;

    let events = health_events(&mut one, "platform_key.health_changed", name).await;
    let changes: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let d = details(e);
            (
                d["from"].as_str().unwrap_or("").to_owned(),
                d["to"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("healthy".to_owned(), "unhealthy".to_owned()),
            ("unhealthy".to_owned(), "healthy".to_owned())
        ],
        "one event per change of state, none for unknown -> healthy or a repeated failure"
    );
    assert_eq!(details(&events[0])["error_class"], "auth");
    for e in &events {
        assert_eq!(e.actor, "keyhouse:health-check");
        assert_eq!(e.identity_source, "system");
    }

    let checks = history(&mut one, name).await;
    assert!(checks.iter().all(|c| c.trigger == "schedule"), "{checks:?}");
    let failed = checks
        .iter()
        .find(|c| c.status == "unhealthy")
        .expect("a failure");
    assert_eq!(
        (failed.status_code, failed.error_class.as_str()),
        (401, "auth")
    );
    let passed = checks
        .iter()
        .find(|c| c.status == "healthy")
        .expect("a pass");
    assert_eq!((passed.status_code, passed.error_class.as_str()), (200, ""));

    let metrics = second
        .http()
        .get(second.rest("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "keyhouse_provider_key_healthy{{provider=\"{name}\"}} 1"
        )),
        "the gauge shows the key healthy: {}",
        metrics
            .lines()
            .filter(|l| l.contains("provider_key_healthy"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let rows = health_rows(&first).await;
    assert!(rows.len() > 3, "the health tables hold the tests: {rows:?}");
    for row in &rows {
        assert!(
            !row.contains(good) && !row.contains(bad),
            "a health row holds a key: {row}"
        );
    }
}

async fn byok_keys_are_checked_only_when_their_owner_opted_in(backend: Backend) {
    let stub = crate::stub::Provider::start("sk-proj-byok-good-0123456789").await;
    let server = server_with_stub(backend, "openai", &stub.url, 1).await;
    let alice = server.session("alice", Role::User).await;
    let bob = server.session("bob", Role::User).await;
    let mut a = server.user_client(Some(&alice)).await;
    let mut b = server.user_client(Some(&bob)).await;
    let bad = "sk-proj-byok-bad-0123456789";
    a.put_provider_key(pb::PutProviderKeyRequest {
        provider: "openai".into(),
        key: bad.into(),
        health_checks: Some(true),
        ..Default::default()
    })
    .await
    .expect("alice opts in");
    b.put_provider_key(pb::PutProviderKeyRequest {
        provider: "openai".into(),
        key: bad.into(),
        ..Default::default()
    })
    .await
    .expect("bob does not");

    let alices = async |a: &mut crate::support::UserClient| {
        a.list_provider_keys(pb::ListProviderKeysRequest {})
            .await
            .expect("list")
            .into_inner()
            .keys
            .remove(0)
    };
    eventually("alice's key is unhealthy", async || {
        alices(&mut a).await.health_status == "unhealthy"
    })
    .await;
    let key = alices(&mut a).await;
    assert!(key.health_checks);
    assert_eq!(key.health_error, "auth");
    assert_eq!(
        key.test_status, "invalid",
        "the scheduled test is the key's last test"
    );

    // Bob's key was stored at the same time and never comes due: a second scheduled test of
    // alice's key came round since.
    let alices_tests = async || {
        let rows = health_rows(&server).await;
        rows.iter()
            .filter(|r| r.starts_with("key_health_history") && r.contains("alice"))
            .count()
    };
    eventually("alice's key is tested again", async || {
        alices_tests().await >= 2
    })
    .await;
    let bobs = b
        .list_provider_keys(pb::ListProviderKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys
        .remove(0);
    assert!(!bobs.health_checks);
    assert_eq!(
        (bobs.health_status.as_str(), bobs.test_status.as_str()),
        ("unknown", "unknown")
    );
    assert!(
        !health_rows(&server).await.iter().any(|r| r.contains("bob")),
        "bob's key was not tested"
    );

    let admin_token = server.session("root", Role::Admin).await;
    let mut root = server.platform_client(Some(&admin_token)).await;
    let events = health_events(&mut root, "provider_key.health_changed", "alice/openai").await;
    assert_eq!(events.len(), 1, "unknown -> unhealthy, once: {events:?}");
    assert_eq!(details(&events[0])["to"], "unhealthy");

    // Replacing the key keeps the opt-in when the request leaves it unset.
    a.put_provider_key(pb::PutProviderKeyRequest {
        provider: "openai".into(),
        key: "sk-proj-byok-good-0123456789".into(),
        ..Default::default()
    })
    .await
    .expect("replace");
    assert!(alices(&mut a).await.health_checks);
    eventually("alice's new key is healthy", async || {
        alices(&mut a).await.health_status == "healthy"
    })
    .await;
    // A new key starts unknown: turning healthy is no change of state.
    let events = health_events(&mut root, "provider_key.health_changed", "alice/openai").await;
    assert_eq!(events.len(), 1, "{events:?}");

    for row in health_rows(&server).await {
        assert!(
            !row.contains("sk-proj-byok"),
            "a health row holds a key: {row}"
        );
    }
}

async fn manual_tests_are_recorded_as_health_and_history(backend: Backend) {
    let stub = crate::stub::Provider::start("sk-or-v1-manual-good-0123456789").await;
    // Scheduled checks off: every row here comes from a manual test.
    let server = server_with_stub(backend, "openrouter", &stub.url, 0).await;
    let token = server.session("root", Role::Admin).await;
    let mut c = server.platform_client(Some(&token)).await;
    assert_eq!(listed(&mut c, "openrouter").await.health_status, "unknown");

    c.update_platform_key(pb::UpdatePlatformKeyRequest {
        name: "openrouter".into(),
        api_key: "sk-or-v1-manual-bad-0123456789".into(),
    })
    .await
    .expect("update");
    let tested = c
        .test_platform_key(pb::TestPlatformKeyRequest {
            name: "openrouter".into(),
            api_key: None,
        })
        .await
        .expect("test")
        .into_inner();
    assert!(!tested.ok);
    let key = listed(&mut c, "openrouter").await;
    assert_eq!(
        (key.health_status.as_str(), key.health_error.as_str()),
        ("unhealthy", "auth")
    );
    let events = health_events(&mut c, "platform_key.health_changed", "openrouter").await;
    assert_eq!(events.len(), 1, "unknown -> unhealthy is a change");
    assert_eq!(events[0].actor, "root", "the admin who tested");

    c.update_platform_key(pb::UpdatePlatformKeyRequest {
        name: "openrouter".into(),
        api_key: "sk-or-v1-manual-good-0123456789".into(),
    })
    .await
    .expect("update");
    c.test_platform_key(pb::TestPlatformKeyRequest {
        name: "openrouter".into(),
        api_key: None,
    })
    .await
    .expect("test");
    assert_eq!(listed(&mut c, "openrouter").await.health_status, "healthy");
    assert_eq!(
        health_events(&mut c, "platform_key.health_changed", "openrouter")
            .await
            .len(),
        2
    );

    let page = c
        .list_platform_key_health(pb::ListPlatformKeyHealthRequest {
            name: "openrouter".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(page.checks.len(), 1);
    assert_eq!(
        (
            page.checks[0].status.as_str(),
            page.checks[0].trigger.as_str()
        ),
        ("healthy", "manual"),
        "newest first"
    );
    assert!(!page.next_page_token.is_empty());

    // The REST path answers the same, with the next page's token in a header.
    let response = server
        .http()
        .get(server.rest("/api/v1/admin/platform-keys/openrouter/health?page_size=1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET health");
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-next-page-token"));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body[0]["status"], "healthy");
    assert_eq!(body[0]["trigger"], "manual");
    assert_eq!(body[0]["status_code"], 200);
    assert_eq!(body[0]["error_class"], Value::Null);

    let listed_rest: Value = server
        .http()
        .get(server.rest("/api/v1/admin/platform-keys"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET list")
        .json()
        .await
        .expect("JSON");
    let openrouter = listed_rest["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == "openrouter")
        .expect("listed");
    assert_eq!(openrouter["health_status"], "healthy");

    let user = server.session("dave", Role::User).await;
    let refused = server
        .http()
        .get(server.rest("/api/v1/admin/platform-keys/openrouter/health"))
        .bearer_auth(&user)
        .send()
        .await
        .expect("GET health");
    assert_eq!(refused.status(), 403);

    for row in health_rows(&server).await {
        assert!(
            !row.contains("sk-or-v1-manual"),
            "a health row holds a key: {row}"
        );
    }
}
