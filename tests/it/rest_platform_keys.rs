//! The Ops-Center platform-key and audit REST paths with a real HTTP client.

use keyhouse_domain::caller::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    the_platform_key_paths_answer_in_the_ops_center_shapes,
    platform_paths_are_for_admins_only
);

const PATH: &str = "/api/v1/admin/platform-keys";

async fn the_platform_key_paths_answer_in_the_ops_center_shapes(backend: Backend) {
    let stub = crate::stub::Provider::start("sk-or-v1-good-key-000000").await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openrouter={url}")];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    let admin = server.session("root", Role::Admin).await;
    let http = server.http();

    let list: Value = http
        .get(server.rest(PATH))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(list["total"], 9);
    let first = &list["keys"][0];
    for field in [
        "id",
        "key_name",
        "description",
        "has_key",
        "key_preview",
        "last_updated",
        "source",
        "version",
    ] {
        assert!(
            first.get(field).is_some(),
            "list items have {field}: {first}"
        );
    }
    assert_eq!(
        (first["id"].as_str(), first["key_name"].as_str()),
        (Some("openrouter"), Some("OpenRouter"))
    );

    let values = [
        ("openrouter", "OpenRouter", "sk-or-v1-good-key-000000"),
        (
            "provisioning",
            "OpenRouter Provisioning",
            "mu-prov-0123456789",
        ),
        ("litellm", "LiteLLM Master Key", "sk-litellm-0123456789"),
        ("openai", "OpenAI", "sk-proj-0123456789"),
        ("anthropic", "Anthropic", "sk-ant-api03-0123456789"),
        ("huggingface", "Hugging Face", "hf_0123456789abc"),
        ("groq", "Groq", "gsk_0123456789abc"),
        ("xai", "xAI", "xai-0123456789abc"),
        ("google", "Google AI", "AIzaSy0123456789abc"),
    ];
    for (name, display, value) in values {
        let res = http
            .put(server.rest(&format!("{PATH}/{name}")))
            .bearer_auth(&admin)
            .json(&json!({"api_key": value}))
            .send()
            .await
            .expect("PUT");
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        let body: Value = res.json().await.expect("JSON");
        assert_eq!(body["success"], true);
        assert_eq!(body["message"], format!("{display} updated successfully"));
        assert!(
            body["key_preview"]
                .as_str()
                .expect("preview")
                .contains("...")
        );
        assert!(body["next_steps"].is_array());
    }

    let secret: Value = http
        .get(server.rest(&format!(
            "{PATH}/openrouter/decrypted?reason=configure%20LiteLLM"
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET decrypted")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        secret,
        json!({"api_key": "sk-or-v1-good-key-000000", "source": "database", "warning": "This is the full API key. Keep it secure."})
    );

    let tested: Value = http
        .post(server.rest(&format!("{PATH}/openrouter/test")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("POST test")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        (tested["ok"].as_bool(), tested["status_code"].as_i64()),
        (Some(true), Some(200))
    );

    http.put(server.rest(&format!("{PATH}/openrouter")))
        .bearer_auth(&admin)
        .json(&json!({"api_key": "sk-or-v1-second-value-00"}))
        .send()
        .await
        .expect("PUT");
    let versions: Value = http
        .get(server.rest(&format!("{PATH}/openrouter/versions")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(versions["versions"].as_array().expect("versions").len(), 2);
    assert_eq!(versions["versions"][0]["is_current"], true);
    let rolled: Value = http
        .post(server.rest(&format!("{PATH}/openrouter/rollback")))
        .bearer_auth(&admin)
        .json(&json!({"version": 1}))
        .send()
        .await
        .expect("POST rollback")
        .json()
        .await
        .expect("JSON");
    assert_eq!(rolled["version"], 3);

    let deleted = http
        .delete(server.rest(&format!("{PATH}/openrouter")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(
        deleted.json::<Value>().await.expect("JSON")["source"],
        "not_set"
    );
    let res = http
        .get(server.rest(&format!("{PATH}/openrouter/decrypted")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.json::<Value>().await.expect("JSON")["detail"],
        "OpenRouter not configured"
    );

    let audit: Value = http
        .get(
            server.rest("/api/v1/admin/audit-events?action=platform_key.decrypt&target=openrouter"),
        )
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET audit")
        .json()
        .await
        .expect("JSON");
    let events = audit.as_array().expect("a page is a JSON array");
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0]["actor"].as_str(),
            events[0]["details"]["reason"].as_str()
        ),
        (Some("root"), Some("configure LiteLLM"))
    );
    // Pages like every REST list: an array, and the next page's token in X-Next-Page-Token.
    let first = http
        .get(server.rest("/api/v1/admin/audit-events?page_size=2"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    let token = first
        .headers()
        .get("x-next-page-token")
        .and_then(|v| v.to_str().ok())
        .expect("more events follow")
        .to_owned();
    let first: Value = first.json().await.expect("JSON");
    assert_eq!(first.as_array().expect("array").len(), 2);
    let second = http
        .get(server.rest(&format!(
            "/api/v1/admin/audit-events?page_size=2&page_token={token}"
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    let second: Value = second.json().await.expect("JSON");
    let second = second.as_array().expect("array");
    assert!(!second.is_empty());
    assert!(
        second
            .iter()
            .all(|e| !first.as_array().expect("array").contains(e)),
        "the second page repeats none of the first"
    );
}

async fn platform_paths_are_for_admins_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let user = server.session("dave", Role::User).await;
    let http = server.http();
    let requests = [
        http.get(server.rest(PATH)),
        http.put(server.rest(&format!("{PATH}/openrouter")))
            .json(&json!({"api_key": "sk-or-v1-0123456789"})),
        http.get(server.rest(&format!("{PATH}/openrouter/decrypted"))),
        http.delete(server.rest(&format!("{PATH}/openrouter"))),
        http.get(server.rest(&format!("{PATH}/openrouter/versions"))),
        http.post(server.rest(&format!("{PATH}/openrouter/rollback")))
            .json(&json!({"version": 1})),
        http.post(server.rest(&format!("{PATH}/openrouter/test"))),
        http.get(server.rest("/api/v1/admin/audit-events")),
    ];
    for req in requests {
        let anonymous = req.try_clone().expect("clone").send().await.expect("send");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let res = req.bearer_auth(&user).send().await.expect("send");
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.json::<Value>().await.expect("JSON")["detail"],
            "Admin access required"
        );
    }
}
