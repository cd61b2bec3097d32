//! The web console as a browser meets it: served by keyhouse itself under a strict policy, its
//! page paths answered with the app while the API keeps its 404s, signing in with a session
//! token turned into HttpOnly cookies, and the whole console driven in headless Chromium.

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use pb::verify_key_response::Reason;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, SET_COOKIE};
use serde_json::{Value, json};
use sha2::Digest;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(a_browser_signs_in_with_a_session_token_held_only_in_cookies);

fn header(res: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The cookies `POST /auth/session` sets, with `headers` on the request.
async fn sign_in_cookies(server: &TestServer, headers: &[(&str, &str)]) -> Vec<String> {
    let token = server.session("alice", Role::User).await;
    let mut req = server
        .http()
        .post(server.rest("/auth/session"))
        .json(&json!({ "token": token }));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.expect("POST /auth/session");
    assert_eq!(res.status(), StatusCode::OK);
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_secure_over_https_or_always_when_the_operator_says_so() {
    let secure = |cookies: &[String]| {
        assert_eq!(cookies.len(), 2, "{cookies:?}");
        cookies
            .iter()
            .all(|c| c.ends_with("; Secure") || c.contains("; Secure;"))
    };
    let plain = TestServer::start(Backend::Sqlite).await;
    let cookies = sign_in_cookies(&plain, &[]).await;
    assert!(
        cookies.iter().all(|c| !c.contains("Secure")),
        "plain http keeps cookies a browser sends back over http: {cookies:?}"
    );
    let cookies = sign_in_cookies(&plain, &[("x-forwarded-proto", "https")]).await;
    assert!(secure(&cookies), "behind an https proxy: {cookies:?}");

    let always = TestServer::start_with(Backend::Sqlite, |s| s.secure_cookies = true).await;
    let cookies = sign_in_cookies(&always, &[]).await;
    assert!(
        secure(&cookies),
        "KEYHOUSE_SECURE_COOKIES without X-Forwarded-Proto: {cookies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_at_the_root_and_page_paths_while_api_paths_keep_their_404s() {
    let server = TestServer::start(Backend::Sqlite).await;
    let http = server.http();
    let mut index = String::new();
    for page in ["/", "/keys", "/admin/platform-keys", "/keys/6d1f0c1e/usage"] {
        let res = http.get(server.rest(page)).send().await.expect("GET");
        assert_eq!(res.status(), StatusCode::OK, "{page}");
        assert!(
            header(&res, CONTENT_TYPE).starts_with("text/html"),
            "{page}"
        );
        let policy = header(&res, CONTENT_SECURITY_POLICY).to_owned();
        for rule in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(rule), "{page}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(header(&res, CACHE_CONTROL), "no-cache");
        index = res.text().await.expect("body");
    }
    assert!(!index.contains("<script>"), "inline script in index.html");
    // Every file the page names is served, with a type a browser will run under nosniff.
    let assets: Vec<&str> = index
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    for asset in &assets {
        let res = http.get(server.rest(asset)).send().await.expect("GET");
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        let kind = header(&res, CONTENT_TYPE);
        assert!(
            kind.starts_with("text/javascript") || kind.starts_with("text/css"),
            "{asset}: {kind}"
        );
        assert!(header(&res, CACHE_CONTROL).contains("immutable"), "{asset}");
    }
    for path in [
        "/api/v1/nothing-here",
        "/auth/nothing-here",
        "/assets/missing.js",
        "/keyhouse.v1.NoSuchService/Call",
        "/docs-missing",
        "/.env",
    ] {
        let res = http.get(server.rest(path)).send().await.expect("GET");
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = res.json().await.expect("a JSON 404");
        assert_eq!(body["detail"], "Not Found", "{path}");
    }
    let res = http.post(server.rest("/keys")).send().await.expect("POST");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

async fn a_browser_signs_in_with_a_session_token_held_only_in_cookies(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = server.http();
    let session = |cookie: Option<String>| {
        let mut req = http.get(server.rest("/auth/session"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        async move {
            let res = req.send().await.expect("GET /auth/session");
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.expect("JSON")
        }
    };
    assert_eq!(
        session(None).await,
        json!({"user": null, "oidc_login": false})
    );

    let token = server.session("dora", Role::Admin).await;
    let res = http
        .post(server.rest("/auth/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::OK);
    let cookies: Vec<String> = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["user"]["user_id"], "dora");
    assert_eq!(body["user"]["role"], "admin");
    assert_eq!(body["user"]["source"], "session");
    assert!(
        !body.to_string().contains(&token),
        "the token came back in the body"
    );
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("session_token="))
        .expect("session cookie");
    assert!(session_cookie.contains(&token));
    assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");
    assert!(session_cookie.contains("SameSite=Lax"), "{session_cookie}");
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("csrf_token="))
        .expect("csrf cookie");
    assert!(!csrf_cookie.contains("HttpOnly"), "the page must read it");
    let csrf = csrf_cookie["csrf_token=".len()..]
        .split(';')
        .next()
        .expect("value")
        .to_owned();
    let jar = format!("session_token={token}; csrf_token={csrf}");
    assert_eq!(
        session(Some(jar.clone())).await["user"]["email"],
        "dora@example.com"
    );

    // Bad input is named; nothing is set.
    for (body, status, detail) in [
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY, "token"),
        (
            json!({"token": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "token",
        ),
        (
            json!({"token": format!("uc_{}", "0".repeat(64))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "API key",
        ),
        (
            json!({"token": "ks_not-a-session"}),
            StatusCode::UNAUTHORIZED,
            "session",
        ),
    ] {
        let res = http
            .post(server.rest("/auth/session"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), status, "{body}");
        assert!(res.headers().get(SET_COOKIE).is_none(), "{body}");
        let text = res.text().await.expect("body");
        assert!(text.contains(detail), "{body}: {text}");
    }
    let res = http
        .post(server.rest("/auth/session"))
        .header("content-type", "text/plain")
        .body(token.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A browser already holding a session signs in again only with its CSRF token: another
    // site cannot swap the session under it.
    let other = server.session("eve", Role::User).await;
    let swap = |csrf: Option<&str>| {
        let mut req = http
            .post(server.rest("/auth/session"))
            .header("cookie", jar.clone())
            .json(&json!({ "token": other }));
        if let Some(csrf) = csrf {
            req = req.header("x-csrf-token", csrf);
        }
        req.send()
    };
    assert_eq!(
        swap(None).await.expect("POST").status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        swap(Some(&csrf)).await.expect("POST").status(),
        StatusCode::OK
    );

    // Signing out ends the session: the cookie no longer signs anyone in.
    let res = http
        .post(server.rest("/auth/logout"))
        .header("cookie", jar.clone())
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(session(Some(jar)).await["user"], Value::Null);
}

/// The console's whole round in headless Chromium (`tests/console/console.mjs`): sign in, make a
/// key by keyboard and use it, revoke it, test a BYOK key against the local provider stub, the
/// admin pages refused to a user, then as an admin update, roll back and reveal a platform key and
/// find it in the audit log; the key's health after a Test and its health history, and the LiteLLM
/// sync agent's last applied change; axe-core on every page, screenshots at two widths, and the
/// bundle size. The script stops after making and after revoking the key, so that the real gRPC
/// client can check what the gateway would hear at each point, and after updating openrouter, so
/// that the harness can report a sync of it as the agent would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    const GOOD: &str = "sk-proj-good-0123456789";
    const SYNC_TOKEN: &str = "svc_console_sync_0123456789abcdef";
    let stub = crate::stub::Provider::start(GOOD).await;
    let url = stub.url.clone();
    let digest = hex::encode(sha2::Sha256::digest(SYNC_TOKEN.as_bytes()));
    let server = TestServer::start_with(Backend::Sqlite, move |s| {
        // openrouter's live test meets the stub too, which refuses the values the script stores.
        s.domain.provider_base_urls = vec![format!("openai={url}"), format!("openrouter={url}")];
        s.service_tokens = vec![format!(
            "litellm-sync={digest}:WatchPlatformKeys+ReportPlatformKeySync"
        )];
        s.domain.outbound_allowed_networks = vec![crate::stub::NETWORK.into()];
    })
    .await;
    let user = server.session("alice", Role::User).await;
    let admin = server.session("root", Role::Admin).await;
    // Keys made elsewhere are listed beside the one the browser makes.
    let mut alice = server.user_client(Some(&user)).await;
    for (name, permissions, limit) in [
        ("laptop", vec!["llm:inference", "llm:models"], None),
        ("ci pipeline", vec!["llm:inference"], Some(600)),
    ] {
        alice
            .create_key(pb::CreateKeyRequest {
                name: name.into(),
                permissions: permissions.into_iter().map(str::to_owned).collect(),
                rate_limit_per_minute: limit,
                expires_in_days: Some(30),
                ..Default::default()
            })
            .await
            .expect("create a key");
    }
    let dir = crate::support::npm_installed("console");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let mut script = tokio::process::Command::new("node")
        .arg(dir.join("console.mjs"))
        .arg(server.url())
        .arg(&shots)
        .env("USER_TOKEN", &user)
        .env("ADMIN_TOKEN", &admin)
        .env("BYOK_PROVIDER", "openai")
        .env("BYOK_GOOD_KEY", GOOD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js 20) runs tests/console/console.mjs");
    let mut to_script = script.stdin.take().expect("stdin");
    let mut lines = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let verdict = |key: String| {
        let request = crate::verify::verify(&key, &["llm:inference"], "");
        let server = &server;
        async move {
            server
                .user_client(None)
                .await
                .verify_key(request)
                .await
                .expect("VerifyKey")
                .into_inner()
                .reason()
        }
    };
    let mut key = String::new();
    let done = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(300), lines.next_line())
            .await
            .expect("the browser script went quiet for 5 minutes")
            .expect("read the script")
            .unwrap_or_else(|| panic!("the browser script ended early; see its stderr above"));
        let step: Value = serde_json::from_str(&line).expect("one JSON object a line");
        match step["step"].as_str() {
            Some("created") => {
                key = step["api_key"].as_str().expect("api_key").to_owned();
                assert_eq!(verdict(key.clone()).await, Reason::Valid, "{line}");
            }
            Some("revoked") => {
                assert_eq!(verdict(key.clone()).await, Reason::Revoked);
            }
            Some("updated") => {
                // What the sync agent reports once LiteLLM holds this version.
                assert_eq!(step["name"], "openrouter", "{line}");
                let version = step["version"].as_i64().expect("version");
                server
                    .platform_client(Some(SYNC_TOKEN))
                    .await
                    .report_platform_key_sync(pb::ReportPlatformKeySyncRequest {
                        name: "openrouter".into(),
                        version,
                        target: "litellm".into(),
                        source: "database".into(),
                    })
                    .await
                    .expect("ReportPlatformKeySync with the service token");
            }
            Some("done") => break step,
            _ => panic!("unexpected line from the browser script: {line}"),
        }
        to_script
            .write_all(b"ok\n")
            .await
            .expect("answer the script");
    };
    let status = script.wait().await.expect("wait");
    assert!(status.success(), "the browser script failed: {status}");
    assert!(
        key.starts_with("uc_") && key.len() == 67,
        "the dialog showed no key"
    );

    // The numbers BENCHMARKS.md reports (with --nocapture); a time is never a pass or a fail.
    eprintln!(
        "console: JS+CSS {} bytes gzipped; first load {}",
        done["bundle_gzip_bytes"], done["load_ms"]
    );
    assert_eq!(
        done["violations"],
        json!([]),
        "axe-core found serious or critical violations"
    );
    let bundle = done["bundle_gzip_bytes"].as_u64().expect("bundle size");
    assert!(
        bundle > 0 && bundle <= 150 * 1024,
        "the console's JS and CSS are {bundle} bytes gzipped; the budget is 150 KB"
    );
    for page in [
        "sign-in",
        "keys",
        "key-usage",
        "create-dialog",
        "providers",
        "admin-only",
        "platform-keys",
        "versions",
        "platform-health",
        "audit",
    ] {
        for width in [1280, 390] {
            let shot = shots.join(format!("{page}-{width}.png"));
            assert!(shot.exists(), "no screenshot {}", shot.display());
        }
    }
    // What the browser did reached the server: the stub answered the BYOK test, and the admin's
    // rollback and reveal are in the audit trail under the admin's name.
    assert!(
        stub.requests() > 0,
        "the BYOK test never reached the provider"
    );
    let audit = server
        .platform_client(Some(&admin))
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            actor: "root".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    for action in [
        "platform_key.update",
        "platform_key.rollback",
        "platform_key.decrypt",
    ] {
        assert!(
            audit.iter().any(|e| e.action == action),
            "no {action} by the admin in the audit log"
        );
    }
}
