//! Bad input on every REST path: each request gets its documented 4xx with a JSON `detail`,
//! never a 5xx.

use keyhouse_domain::caller::Role;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    bad_requests_get_their_documented_4xx_and_never_a_5xx,
    an_audit_filter_holding_a_nul_matches_nothing
);

/// (method, path, content type, body, expected status, field named in a 422's `loc`). The `loc`
/// must also say where the field was: `query` when the path's query string names it, `path` for
/// a field written `path.<name>`, else `body`.
type Case = (
    Method,
    String,
    Option<&'static str>,
    String,
    u16,
    Option<&'static str>,
);

fn cases(key_id: &str) -> Vec<Case> {
    let keys = "/api/v1/account/uc-api-keys".to_owned();
    let one = format!("{keys}/{key_id}");
    let regen = format!("{one}/regenerate");
    let pk = "/api/v1/admin/platform-keys".to_owned();
    let json = Some("application/json");
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(70 * 1024));
    let c =
        |m: Method, p: &str, ct: Option<&'static str>, b: &str, s: u16, f: Option<&'static str>| {
            (m, p.to_owned(), ct, b.to_owned(), s, f)
        };
    vec![
        c(Method::POST, &keys, json, "{", 422, None),
        c(Method::POST, &keys, json, "", 422, None),
        c(Method::POST, &keys, json, "[]", 422, None),
        c(Method::POST, &keys, json, "\"name\"", 422, None),
        c(Method::POST, &keys, json, "null", 422, None),
        c(Method::POST, &keys, json, "{}", 422, Some("name")),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": null}"#,
            422,
            Some("name"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": 42}"#,
            422,
            Some("name"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": ""}"#,
            422,
            Some("name"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "   "}"#,
            422,
            Some("name"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            &format!(r#"{{"name": "{}"}}"#, "n".repeat(256)),
            422,
            Some("name"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "expires_in_days": "ten"}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "expires_in_days": 0}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "expires_in_days": -5}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "expires_in_days": 3651}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "expires_in_days": 99999999999999999999}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "expires_in_days": 1.5}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "permissions": "llm:models"}"#,
            422,
            Some("permissions"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "permissions": [1, 2]}"#,
            422,
            Some("permissions"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "permissions": ["nope"]}"#,
            422,
            Some("permissions"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "permissions": ["keys:read", "keys:read"]}"#,
            422,
            Some("permissions"),
        ),
        c(
            Method::POST,
            &keys,
            json,
            r#"{"name": "k", "permissions": [null]}"#,
            422,
            Some("permissions"),
        ),
        c(Method::POST, &keys, json, &huge, 413, None),
        c(
            Method::POST,
            &keys,
            Some("text/plain"),
            r#"{"name": "k"}"#,
            415,
            None,
        ),
        c(Method::POST, &keys, None, r#"{"name": "k"}"#, 415, None),
        c(
            Method::POST,
            &keys,
            Some("application/x-www-form-urlencoded"),
            "name=k",
            415,
            None,
        ),
        c(Method::PUT, &keys, json, "{}", 405, None),
        c(Method::PATCH, &one, json, "{}", 405, None),
        c(
            Method::GET,
            &format!("{keys}?page_size="),
            None,
            "",
            422,
            Some("page_size"),
        ),
        c(
            Method::GET,
            &format!("{keys}?page_size=abc"),
            None,
            "",
            422,
            Some("page_size"),
        ),
        c(
            Method::GET,
            &format!("{keys}?page_size=501"),
            None,
            "",
            422,
            Some("page_size"),
        ),
        c(
            Method::GET,
            &format!("{keys}?page_size=-1"),
            None,
            "",
            422,
            Some("page_size"),
        ),
        c(
            Method::GET,
            &format!("{keys}?status=deleted"),
            None,
            "",
            422,
            Some("status"),
        ),
        c(
            Method::GET,
            &format!("{keys}?page_token=%00%01"),
            None,
            "",
            422,
            Some("page_token"),
        ),
        c(
            Method::GET,
            &format!("{keys}/not-a-uuid"),
            None,
            "",
            400,
            None,
        ),
        c(
            Method::GET,
            &format!("{keys}/{}", uuid::Uuid::new_v4()),
            None,
            "",
            404,
            None,
        ),
        c(
            Method::DELETE,
            &format!("{keys}/12345"),
            None,
            "",
            400,
            None,
        ),
        c(
            Method::POST,
            &format!("{keys}/x/regenerate"),
            json,
            "{}",
            400,
            None,
        ),
        c(
            Method::POST,
            &regen,
            json,
            r#"{"expires_in_days": "soon"}"#,
            422,
            Some("expires_in_days"),
        ),
        c(
            Method::POST,
            &regen,
            json,
            r#"{"expires_in_days": 4000}"#,
            422,
            Some("expires_in_days"),
        ),
        c(Method::POST, &regen, json, "{not json", 422, None),
        c(Method::POST, &regen, Some("text/plain"), "{}", 415, None),
        c(
            Method::PUT,
            &format!("{pk}/openrouter"),
            json,
            "{}",
            422,
            Some("api_key"),
        ),
        c(
            Method::PUT,
            &format!("{pk}/openrouter"),
            json,
            r#"{"api_key": null}"#,
            422,
            Some("api_key"),
        ),
        c(
            Method::PUT,
            &format!("{pk}/openrouter"),
            json,
            r#"{"api_key": "sk-short"}"#,
            422,
            Some("api_key"),
        ),
        c(
            Method::PUT,
            &format!("{pk}/openrouter"),
            json,
            r#"{"api_key": "sk-ant-0123456789"}"#,
            422,
            Some("api_key"),
        ),
        c(
            Method::PUT,
            &format!("{pk}/openrouter"),
            json,
            r#"{"api_key": ["sk-or-v1-0123456789"]}"#,
            422,
            Some("api_key"),
        ),
        c(
            Method::PUT,
            &format!("{pk}/unknown-provider"),
            json,
            r#"{"api_key": "sk-or-v1-0123456789"}"#,
            404,
            None,
        ),
        c(
            Method::PUT,
            &format!("{pk}/openrouter"),
            Some("text/xml"),
            "<key/>",
            415,
            None,
        ),
        c(
            Method::POST,
            &format!("{pk}/openrouter/rollback"),
            json,
            r#"{"version": "one"}"#,
            422,
            Some("version"),
        ),
        c(
            Method::POST,
            &format!("{pk}/openrouter/rollback"),
            json,
            "{}",
            422,
            Some("version"),
        ),
        c(
            Method::POST,
            &format!("{pk}/openrouter/rollback"),
            json,
            r#"{"version": 7}"#,
            404,
            None,
        ),
        c(
            Method::GET,
            &format!("{pk}/unknown/decrypted"),
            None,
            "",
            404,
            None,
        ),
        c(
            Method::GET,
            &format!("{pk}/openrouter/decrypted?reason={}", "r".repeat(600)),
            None,
            "",
            422,
            Some("reason"),
        ),
        // PostgreSQL refuses a NUL outright: it must be a 422, never a 500.
        c(
            Method::GET,
            &format!("{pk}/openrouter/decrypted?reason=x%00"),
            None,
            "",
            422,
            Some("reason"),
        ),
        c(
            Method::POST,
            &format!("{pk}/provisioning/test"),
            None,
            "",
            409,
            None,
        ),
        c(Method::DELETE, &format!("{pk}/openai"), None, "", 404, None),
        c(
            Method::GET,
            "/api/v1/admin/audit-events?since=yesterday",
            None,
            "",
            422,
            Some("since"),
        ),
        c(
            Method::GET,
            "/api/v1/admin/audit-events?page_size=x",
            None,
            "",
            422,
            Some("page_size"),
        ),
        c(
            Method::GET,
            "/api/v1/admin/audit-events?page_token=zz",
            None,
            "",
            422,
            Some("page_token"),
        ),
        c(
            Method::GET,
            &format!("{keys}/%FF%FE"),
            None,
            "",
            422,
            Some("path.key_id"),
        ),
        c(
            Method::POST,
            "/api/v1/byok/keys/test/%FF",
            None,
            "",
            422,
            Some("path.provider"),
        ),
        c(
            Method::DELETE,
            "/api/v1/byok/keys/no-such-provider",
            None,
            "",
            422,
            Some("path.provider"),
        ),
        c(
            Method::GET,
            &format!("{pk}/%C0/versions"),
            None,
            "",
            422,
            Some("path.name"),
        ),
        c(
            Method::GET,
            &format!("{keys}?status=active&status=revoked"),
            None,
            "",
            422,
            Some("status"),
        ),
        c(
            Method::GET,
            &format!("{one}/usage?from=tomorrow"),
            None,
            "",
            422,
            Some("from"),
        ),
        c(Method::GET, "/api/v1/no-such-path", None, "", 404, None),
        c(Method::DELETE, &pk, None, "", 405, None),
    ]
}

async fn bad_requests_get_their_documented_4xx_and_never_a_5xx(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.session("root", Role::Admin).await;
    let http = server.http();
    let key: Value = http
        .post(server.rest("/api/v1/account/uc-api-keys"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "target"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    let all = cases(key["key_id"].as_str().expect("id"));
    assert!(all.len() >= 40);
    for (method, path, content_type, body, expected, field) in all {
        let mut req = http
            .request(method.clone(), server.rest(&path))
            .bearer_auth(&admin)
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.expect("send");
        let status = res.status();
        let text = res.text().await.expect("body");
        let shown = format!(
            "{method} {} {}",
            &path[..path.len().min(80)],
            &body[..body.len().min(80)]
        );
        assert!(status.as_u16() < 500, "{shown} -> {status}: {text}");
        assert_eq!(
            status,
            StatusCode::from_u16(expected).expect("status"),
            "{shown}: {text}"
        );
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{shown}: not JSON: {text}"));
        assert!(json.get("detail").is_some(), "{shown}: no detail: {text}");
        if let Some(field) = field {
            let (place, field) = match field.strip_prefix("path.") {
                Some(name) => ("path", name),
                None if path.contains(&format!("?{field}="))
                    || path.contains(&format!("&{field}=")) =>
                {
                    ("query", field)
                }
                None => ("body", field),
            };
            let loc = &json["detail"][0]["loc"];
            assert_eq!(
                (loc[0].as_str(), loc[1].as_str()),
                (Some(place), Some(field)),
                "{shown}: {text}"
            );
        }
    }
    // Nothing a bad request sent was stored.
    let listed: Value = http
        .get(server.rest("/api/v1/account/uc-api-keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed.as_array().expect("array").len(), 1);
}

/// PostgreSQL cannot hold a NUL in text, so no stored actor, action or target has one: such a
/// filter finds nothing on either database, rather than failing the query.
async fn an_audit_filter_holding_a_nul_matches_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.session("root", Role::Admin).await;
    let http = server.http();
    http.put(server.rest("/api/v1/admin/platform-keys/openrouter"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"api_key": "sk-or-v1-0123456789abcdef"}))
        .send()
        .await
        .expect("PUT")
        .error_for_status()
        .expect("stored");
    for filter in ["actor=root%00", "action=%00", "target=openrouter%00x"] {
        let res = http
            .get(server.rest(&format!("/api/v1/admin/audit-events?{filter}")))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), StatusCode::OK, "{filter}");
        let events: Value = res.json().await.expect("JSON");
        assert_eq!(events, serde_json::json!([]), "{filter}");
    }
    let all: Value = http
        .get(server.rest("/api/v1/admin/audit-events?actor=root"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
}
