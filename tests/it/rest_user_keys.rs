//! The Ops-Center user-key REST paths with a real HTTP client: shapes, status codes, headers,
//! cookies with the CSRF double submit, CORS, and agreement with gRPC.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    the_user_key_paths_answer_in_the_ops_center_shapes,
    rest_and_grpc_return_the_same_values,
    cookie_sessions_need_the_csrf_header_to_change_anything,
    cors_allows_only_configured_origins,
);

const KEYS: &str = "/api/v1/account/uc-api-keys";

async fn the_user_key_paths_answer_in_the_ops_center_shapes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let http = server.http();
    let auth = format!("Bearer {token}");

    let res = http
        .post(server.rest(KEYS))
        .header("authorization", &auth)
        .json(&json!({"name": "laptop", "expires_in_days": 30, "permissions": ["llm:inference"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.expect("JSON");
    for field in [
        "key_id",
        "api_key",
        "key_name",
        "key_preview",
        "permissions",
        "created_at",
        "expires_at",
        "warning",
    ] {
        assert!(
            created.get(field).is_some(),
            "create answers {field}: {created}"
        );
    }
    assert_eq!(
        created["warning"],
        "Save this API key now. You won't be able to see it again."
    );
    assert!(
        created["created_at"].as_str().expect("time").ends_with('Z'),
        "RFC 3339 UTC"
    );
    let key_id = created["key_id"].as_str().expect("id").to_owned();
    let second: Value = http
        .post(server.rest(KEYS))
        .header("authorization", &auth)
        .json(&json!({"name": "second", "an_unknown_field": [1, 2]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");

    let res = http
        .get(server.rest(&format!("{KEYS}?page_size=1")))
        .header("authorization", &auth)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::OK);
    let next = res
        .headers()
        .get("x-next-page-token")
        .expect("a next page token header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let page: Value = res.json().await.expect("JSON");
    assert_eq!(page.as_array().expect("an array").len(), 1);
    assert_eq!(page[0]["key_id"], second["key_id"], "newest first");
    for field in [
        "key_id",
        "key_name",
        "key_preview",
        "permissions",
        "created_at",
        "last_used",
        "expires_at",
        "is_active",
        "status",
    ] {
        assert!(page[0].get(field).is_some(), "list items have {field}");
    }
    let res = http
        .get(server.rest(&format!("{KEYS}?page_size=1&page_token={next}")))
        .header("authorization", &auth)
        .send()
        .await
        .expect("GET");
    assert!(
        res.headers().get("x-next-page-token").is_none(),
        "the last page has no token"
    );
    let page: Value = res.json().await.expect("JSON");
    assert_eq!(page[0]["key_id"], key_id);

    let item: Value = http
        .get(server.rest(&format!("{KEYS}/{key_id}")))
        .header("authorization", &auth)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        (item["key_name"].as_str(), item["status"].as_str()),
        (Some("laptop"), Some("active"))
    );

    let res = http
        .post(server.rest(&format!("{KEYS}/{key_id}/regenerate")))
        .header("authorization", &auth)
        .send()
        .await
        .expect("regenerate without a body");
    assert_eq!(res.status(), StatusCode::OK);
    let regenerated: Value = res.json().await.expect("JSON");
    assert_eq!(
        regenerated["warning"],
        "Key regenerated! Save this new API key now. The old key is now invalid."
    );
    assert_ne!(regenerated["api_key"], created["api_key"]);

    let res = http
        .delete(server.rest(&format!("{KEYS}/{key_id}")))
        .header("authorization", &auth)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.expect("JSON"),
        json!({"success": true, "message": "API key revoked successfully", "key_id": key_id})
    );

    let checks = [
        (
            http.post(server.rest(&format!("{KEYS}/{key_id}/regenerate")))
                .header("authorization", &auth)
                .json(&json!({})),
            StatusCode::CONFLICT,
            Some("Cannot regenerate a revoked key. Generate a new key instead."),
        ),
        (
            http.get(server.rest(&format!("{KEYS}/{}", uuid::Uuid::new_v4())))
                .header("authorization", &auth),
            StatusCode::NOT_FOUND,
            Some("API key not found"),
        ),
        (
            http.get(server.rest(&format!("{KEYS}/not-a-uuid")))
                .header("authorization", &auth),
            StatusCode::BAD_REQUEST,
            Some("Invalid key_id format"),
        ),
        (
            http.get(server.rest(KEYS)),
            StatusCode::UNAUTHORIZED,
            Some("Not authenticated - no session token"),
        ),
        (
            http.get(server.rest(KEYS))
                .header("authorization", "Bearer ks_nope"),
            StatusCode::UNAUTHORIZED,
            Some("Invalid session - please login again"),
        ),
        (
            http.get(server.rest(KEYS))
                .header("cookie", "session_token=ks_nope"),
            StatusCode::UNAUTHORIZED,
            Some("Invalid session - please login again"),
        ),
    ];
    for (req, status, detail) in checks {
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), status);
        let body: Value = res.json().await.expect("a JSON error body");
        if let Some(detail) = detail {
            assert_eq!(body["detail"], detail);
        }
    }
}

async fn rest_and_grpc_return_the_same_values(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let http = server.http();
    let created: Value = http
        .post(server.rest(KEYS))
        .bearer_auth(&token)
        .json(&json!({"name": "both", "permissions": ["llm:models", "usage:read"]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let key_id = created["key_id"].as_str().expect("id").to_owned();
    let rest: Value = http
        .get(server.rest(&format!("{KEYS}/{key_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let grpc = server
        .user_client(Some(&token))
        .await
        .get_key(pb::GetKeyRequest {
            key_id: key_id.clone(),
        })
        .await
        .expect("gRPC")
        .into_inner();

    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| {
            chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
                .expect("time")
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })
    };
    assert_eq!(rest["key_id"], grpc.key_id);
    assert_eq!(rest["key_name"], grpc.key_name);
    assert_eq!(rest["key_preview"], grpc.key_preview);
    assert_eq!(rest["permissions"], json!(grpc.permissions));
    assert_eq!(rest["status"], grpc.status);
    assert_eq!(rest["is_active"], grpc.is_active);
    assert_eq!(
        rest["created_at"].as_str().map(str::to_owned),
        time(&grpc.created_at)
    );
    assert_eq!(
        rest["expires_at"].as_str().map(str::to_owned),
        time(&grpc.expires_at)
    );
    assert_eq!(rest["last_used"], Value::Null);
}

async fn cookie_sessions_need_the_csrf_header_to_change_anything(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let http = server.http();
    let cookie = format!("session_token={token}; csrf_token=c5rf-value");
    let body = json!({"name": "from the browser"});

    let refused = http
        .post(server.rest(KEYS))
        .header("cookie", &cookie)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused.json::<Value>().await.expect("JSON")["detail"]
            .as_str()
            .expect("detail")
            .contains("CSRF")
    );
    let wrong = http
        .post(server.rest(KEYS))
        .header("cookie", &cookie)
        .header("x-csrf-token", "other")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let no_cookie = http
        .post(server.rest(KEYS))
        .header("cookie", format!("session_token={token}"))
        .header("x-csrf-token", "")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(
        no_cookie.status(),
        StatusCode::FORBIDDEN,
        "an empty token never matches"
    );

    let listed: Value = http
        .get(server.rest(KEYS))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        listed,
        json!([]),
        "reads need no CSRF header, and the refused POSTs created nothing"
    );

    let created = http
        .post(server.rest(KEYS))
        .header("cookie", &cookie)
        .header("x-csrf-token", "c5rf-value")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(created.status(), StatusCode::CREATED);
    let key_id = created.json::<Value>().await.expect("JSON")["key_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let delete = http
        .delete(server.rest(&format!("{KEYS}/{key_id}")))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    let put = http
        .post(server.rest(&format!("{KEYS}/{key_id}/regenerate")))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("regenerate");
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    let delete = http
        .delete(server.rest(&format!("{KEYS}/{key_id}")))
        .header("cookie", &cookie)
        .header("x-csrf-token", "c5rf-value")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), StatusCode::OK);
    // Bearer requests are not exposed to CSRF.
    let bearer = http
        .post(server.rest(KEYS))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(bearer.status(), StatusCode::CREATED);
}

async fn cors_allows_only_configured_origins(backend: Backend) {
    let server = TestServer::start_with(backend, |s| {
        s.cors_origins = vec!["https://ops.example.com".into()]
    })
    .await;
    let http = server.http();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, server.rest(KEYS))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-csrf-token",
            )
            .send()
    };
    let allowed = preflight("https://ops.example.com")
        .await
        .expect("preflight");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().expect("ascii")),
        Some("https://ops.example.com")
    );
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-credentials")
            .map(|v| v.to_str().expect("ascii")),
        Some("true")
    );
    let other = preflight("https://evil.example.net")
        .await
        .expect("preflight");
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "another origin gets no CORS grant"
    );

    let default = TestServer::start(backend).await;
    let res = default
        .http()
        .request(reqwest::Method::OPTIONS, default.rest(KEYS))
        .header("origin", "https://ops.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(
        res.headers().get("access-control-allow-origin").is_none(),
        "no origins are allowed by default"
    );
}
