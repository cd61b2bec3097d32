//! The LLM Hub's provider-key paths (`/api/v1/llm/providers`), driven with the bodies
//! Ops-Center's front end sends. They sit on the platform keys: one secret, one storage.

use keyhouse_domain::caller::Role;
use keyhouse_domain::platform_keys::EnvFallback;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    llm_hub_paths_are_for_admins_only,
    llm_hub_keys_are_the_platform_keys,
    llm_hub_tests_report_refuse_and_rate_limit
);

const KEYS: &str = "/api/v1/llm/providers/keys";
const GOOD: &str = "sk-proj-good-key-000000";
const FROM_ENV: &str = "sk-proj-from-the-environment-00";
const SUPPORTED: &str = "Invalid provider type. Supported: openrouter, openai, anthropic, huggingface, groq, xai, google";

async fn server(backend: Backend) -> (TestServer, crate::stub::Provider) {
    let stub = crate::stub::Provider::start(GOOD).await;
    let url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = vec![format!("openai={url}")];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
        s.domain.platform_env = Some(EnvFallback::from_lookup(|var| {
            (var == "OPENAI_API_KEY").then(|| FROM_ENV.to_owned())
        }));
    })
    .await;
    (server, stub)
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("send");
    let status = res.status();
    (status, res.json().await.expect("JSON"))
}

fn provider<'a>(list: &'a Value, provider_type: &str) -> &'a Value {
    list["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["provider_type"] == provider_type)
        .expect("listed")
}

async fn llm_hub_paths_are_for_admins_only(backend: Backend) {
    let (server, _stub) = server(backend).await;
    let user = server.session("dave", Role::User).await;
    let http = server.http();
    let id = "5b0f1c44-0000-5000-8000-000000000000";
    let requests = [
        http.get(server.rest(KEYS)),
        http.post(server.rest(KEYS))
            .json(&json!({"provider_type": "openai", "api_key": GOOD, "name": "OpenAI"})),
        http.post(server.rest(&format!("{KEYS}/test")))
            .json(&json!({"provider_type": "openai"})),
        http.post(server.rest(&format!("{KEYS}/test")))
            .json(&json!({"provider_type": "mistral", "api_key": GOOD})),
        http.delete(server.rest(&format!("{KEYS}/{id}"))),
        http.get(server.rest("/api/v1/llm/providers/info")),
    ];
    for req in requests {
        let anonymous = req.try_clone().expect("clone").send().await.expect("send");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let (status, body) = send(req.bearer_auth(&user)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["detail"], "Admin access required");
    }
}

async fn llm_hub_keys_are_the_platform_keys(backend: Backend) {
    let (server, _stub) = server(backend).await;
    let admin = server.session("root", Role::Admin).await;
    let http = server.http();

    let (status, info) = send(
        http.get(server.rest("/api/v1/llm/providers/info"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (info["success"].as_bool(), info["total"].as_u64()),
        (Some(true), Some(7))
    );
    let openai = provider(&info, "openai");
    assert_eq!(
        openai,
        &json!({"provider_type": "openai", "display_name": "OpenAI", "description": "OpenAI API key",
            "key_format": "sk-... (not sk-or-)", "supports_test": true, "auth_type": "bearer"})
    );
    assert_eq!(provider(&info, "google")["auth_type"], "header");

    let (_, list) = send(http.get(server.rest(KEYS)).bearer_auth(&admin)).await;
    assert_eq!(
        (list["success"].as_bool(), list["total"].as_u64()),
        (Some(true), Some(7))
    );
    assert_eq!(
        list["providers"][0]["provider_type"], "openai",
        "those with a key first: {list}"
    );
    let openai = provider(&list, "openai");
    assert_eq!(
        (
            &openai["has_key"],
            &openai["key_source"],
            &openai["enabled"]
        ),
        (&json!(true), &json!("environment"), &json!(true))
    );
    assert_eq!(
        (
            &openai["health_status"],
            &openai["test_status"],
            &openai["last_tested"]
        ),
        (&json!("unknown"), &Value::Null, &Value::Null)
    );
    assert_eq!(openai["config"], json!({}));
    let groq = provider(&list, "groq");
    assert_eq!(
        (&groq["has_key"], &groq["key_source"], &groq["key_preview"]),
        (&json!(false), &json!("not_set"), &Value::Null)
    );
    let ids: std::collections::HashSet<_> = list["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 7, "ids are distinct");

    // The body the LLM Hub's "add key" form sends.
    let (status, saved) = send(http.post(server.rest(KEYS)).bearer_auth(&admin).json(
        &json!({"provider_type": "openai", "api_key": GOOD, "name": "OpenAI", "config": {}}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(
        saved,
        json!({"success": true, "provider_id": openai["id"], "name": "OpenAI", "provider_type": "openai",
            "has_key": true, "enabled": true, "test_result": null, "message": "API key saved successfully"})
    );

    let (_, list) = send(http.get(server.rest(KEYS)).bearer_auth(&admin)).await;
    let openai = provider(&list, "openai");
    assert_eq!(openai["key_source"], "database");
    assert!(
        openai["key_preview"]
            .as_str()
            .is_some_and(|p| p.contains("...") && !p.contains(GOOD)),
        "{openai}"
    );

    // The same secret is the platform key, as a new version with its audit event.
    let platform = "/api/v1/admin/platform-keys/openai";
    let (_, versions) = send(
        http.get(server.rest(&format!("{platform}/versions")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(versions["versions"].as_array().expect("versions").len(), 1);
    let (_, secret) = send(
        http.get(server.rest(&format!("{platform}/decrypted")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(secret["api_key"], GOOD);
    let (_, events) = send(
        http.get(
            server.rest("/api/v1/admin/audit-events?action=platform_key.update&target=openai"),
        )
        .bearer_auth(&admin),
    )
    .await;
    assert_eq!(events.as_array().expect("events").len(), 1);

    // Bad bodies: 422 naming the field.
    let bad = [
        (json!({"provider_type": "openai"}), "api_key"),
        (
            json!({"provider_type": "openai", "api_key": "short"}),
            "api_key",
        ),
        (json!({"api_key": GOOD}), "provider_type"),
        (
            json!({"provider_type": "openai", "api_key": 12345678901_i64}),
            "api_key",
        ),
    ];
    for (body, field) in bad {
        let (status, answer) =
            send(http.post(server.rest(KEYS)).bearer_auth(&admin).json(&body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["detail"][0]["loc"], json!(["body", field]), "{body}");
    }
    let (status, answer) = send(
        http.post(server.rest(KEYS))
            .bearer_auth(&admin)
            .json(&json!({"provider_type": "provisioning", "api_key": "mu-prov-0123456789"})),
    )
    .await;
    assert_eq!(
        (status, &answer["detail"]),
        (StatusCode::BAD_REQUEST, &json!(SUPPORTED))
    );

    // Delete: the environment applies again.
    let id = openai["id"].as_str().expect("id");
    let (status, deleted) = send(
        http.delete(server.rest(&format!("{KEYS}/{id}")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(
        deleted,
        json!({"success": true, "provider_id": id, "message": "API key deleted successfully (will fall back to environment variable if configured)"})
    );
    let (_, list) = send(http.get(server.rest(KEYS)).bearer_auth(&admin)).await;
    let openai = provider(&list, "openai");
    assert_eq!(
        (&openai["has_key"], &openai["key_source"]),
        (&json!(true), &json!("environment"))
    );
    let (_, secret) = send(
        http.get(server.rest(&format!("{platform}/decrypted")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(secret["api_key"], FROM_ENV);

    for unknown in [
        "00000000-0000-5000-8000-000000000000",
        "openai",
        "not-a-uuid",
    ] {
        let (status, answer) = send(
            http.delete(server.rest(&format!("{KEYS}/{unknown}")))
                .bearer_auth(&admin),
        )
        .await;
        assert_eq!(
            (status, &answer["detail"]),
            (StatusCode::NOT_FOUND, &json!("Provider not found")),
            "{unknown}"
        );
    }
}

async fn llm_hub_tests_report_refuse_and_rate_limit(backend: Backend) {
    let (server, stub) = server(backend).await;
    let admin = server.session("root", Role::Admin).await;
    let other = server.session("ops", Role::Admin).await;
    let http = server.http();
    let test = |who: &str, body: Value| {
        http.post(server.rest(&format!("{KEYS}/test")))
            .bearer_auth(who)
            .json(&body)
    };

    // Refusals, by another admin so that they stay out of the count below.
    let (status, answer) = send(test(&other, json!({"provider_type": "mistral"}))).await;
    assert_eq!(
        (status, &answer["detail"]),
        (StatusCode::BAD_REQUEST, &json!(SUPPORTED))
    );
    let (status, answer) = send(test(&other, json!({"provider_type": "groq"}))).await;
    assert_eq!(
        (status, &answer["detail"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("No API key configured for provider: groq")
        )
    );
    let (status, answer) = send(test(&other, json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["detail"][0]["loc"], json!(["body", "provider_type"]));
    let (status, answer) = send(test(
        &other,
        json!({"provider_type": "openai", "api_key": ""}),
    ))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["detail"][0]["loc"], json!(["body", "api_key"]));

    // The environment's key, which the stub refuses: a result, not an error.
    let (status, failed) = send(test(&admin, json!({"provider_type": "openai"}))).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(
        (&failed["success"], &failed["models_found"]),
        (&json!(false), &Value::Null)
    );
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    let (_, list) = send(http.get(server.rest(KEYS)).bearer_auth(&admin)).await;
    let openai = provider(&list, "openai");
    assert_eq!(
        (&openai["health_status"], &openai["test_status"]),
        (&json!("unhealthy"), &json!("failed"))
    );
    assert!(openai["last_tested"].is_string());

    // A supplied key is tested, not stored, and is not the stored key's health.
    let (status, ok) = send(test(
        &admin,
        json!({"provider_type": "openai", "api_key": GOOD}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ok,
        json!({"success": true, "latency_ms": ok["latency_ms"], "models_found": null, "error": null})
    );
    assert!(ok["latency_ms"].is_i64());
    assert!(stub.requests() >= 2);
    let (_, list) = send(http.get(server.rest(KEYS)).bearer_auth(&admin)).await;
    let openai = provider(&list, "openai");
    assert_eq!(
        (&openai["key_source"], &openai["health_status"]),
        (&json!("environment"), &json!("unhealthy"))
    );
    let (_, versions) = send(
        http.get(server.rest("/api/v1/admin/platform-keys/openai/versions"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(versions["versions"], json!([]), "nothing was stored");
    let (_, wrong) = send(test(
        &admin,
        json!({"provider_type": "openai", "api_key": "sk-proj-wrong-key-00000"}),
    ))
    .await;
    assert_eq!(wrong["success"], false);

    // Ten tests a minute for each admin: three so far.
    for n in 4..=10 {
        let (status, _) = send(test(&admin, json!({"provider_type": "openai"}))).await;
        assert_eq!(status, StatusCode::OK, "test {n}");
    }
    let (status, answer) = send(test(&admin, json!({"provider_type": "openai"}))).await;
    assert_eq!(
        (status, &answer["detail"]),
        (
            StatusCode::TOO_MANY_REQUESTS,
            &json!("Rate limit exceeded. Maximum 10 tests per minute.")
        )
    );
    let (status, _) = send(test(&other, json!({"provider_type": "openai"}))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another admin has a count of their own"
    );
}
