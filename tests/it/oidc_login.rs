//! The browser login (`/auth/login`, `/auth/callback`, `/auth/logout`) against the real OpenID
//! provider of `oidc.rs`, driven by headless Chromium (`tests/oidc/browser-login.mjs`, Debian's
//! `chromium` through `playwright-core`) through the provider's own login and consent pages.

use std::time::Duration;

use keyhouse_domain::config::Secret;
use reqwest::StatusCode;
use serde_json::Value;

use crate::oidc::{AUDIENCE, Provider};
use crate::support::{Backend, TestServer};

const KEYS: &str = "/api/v1/account/uc-api-keys";

/// keyhouse signing browsers in through `issuer` as the provider's `keyhouse-web` client.
async fn keyhouse_with_login(issuer: &str) -> TestServer {
    let issuer = issuer.to_owned();
    TestServer::start_at(Backend::Sqlite, move |s, addr| {
        s.oidc.issuer = Some(issuer);
        s.oidc.audience = Some(AUDIENCE.into());
        s.oidc.admin_roles = vec!["keyhouse-admin".into()];
        s.oidc.user_roles = vec!["keyhouse-user".into()];
        s.oidc.client_id = Some("keyhouse-web".into());
        s.oidc.client_secret = Some(Secret::new("secret-keyhouse-web"));
        s.oidc.redirect_url = Some(format!("http://{addr}/auth/callback"));
    })
    .await
}

/// `browser-login.mjs`: Chromium signs `login` in on `server` and lands on `next`.
async fn browser_login(server: &TestServer, login: &str, next: &str) -> Value {
    let dir = crate::support::npm_installed("oidc");
    let base = format!("http://{}", server.addr);
    let (login, next) = (login.to_owned(), next.to_owned());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(dir.join("browser-login.mjs"))
            .args([&base, &login, &next])
            .stdin(std::process::Stdio::null())
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser login finishes within two minutes")
        .expect("join")
        .expect("node (Node.js 20) runs the browser login");
    assert!(
        output.status.success(),
        "the browser login failed (Debian's chromium is needed):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

fn cookie<'a>(result: &'a Value, name: &str) -> Option<&'a Value> {
    result["cookies"]
        .as_array()
        .expect("cookies")
        .iter()
        .find(|c| c["name"] == name)
}

async fn sessions_count(server: &TestServer) -> usize {
    use sea_orm::EntityTrait as _;
    keyhouse_domain::entities::sessions::Entity::find()
        .all(server.db())
        .await
        .expect("sessions")
        .len()
}

async fn list_with_cookie(server: &TestServer, session: &str) -> StatusCode {
    server
        .http()
        .get(server.rest(KEYS))
        .header("cookie", format!("session_token={session}"))
        .send()
        .await
        .expect("GET")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_at_the_provider_gets_a_session_cookie_and_signs_out() {
    let provider = Provider::start().await;
    let server = keyhouse_with_login(&provider.issuer).await;

    let result = browser_login(&server, "alice", KEYS).await;
    // The browser came back to `next` with a session: the page is alice's (empty) key list.
    assert_eq!(result["final_url"], server.rest(KEYS), "{result}");
    assert_eq!(result["final_status"], 200, "{result}");
    let page: Value = serde_json::from_str(result["body"].as_str().expect("body")).expect("JSON");
    assert!(page.is_array(), "{page}");

    let session = cookie(&result, "session_token").expect("a session_token cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert_eq!(session["path"], "/");
    // Plain http on loopback: not Secure, or the browser would not send it back.
    assert_eq!(session["secure"], false);
    let csrf = cookie(&result, "csrf_token").expect("a csrf_token cookie");
    assert_eq!(csrf["httpOnly"], false, "the page's script reads it");
    assert!(
        cookie(&result, "keyhouse_login").is_none(),
        "the sign-in cookie is cleared"
    );
    let session = session["value"].as_str().expect("value").to_owned();
    let csrf = csrf["value"].as_str().expect("value").to_owned();
    assert_eq!(list_with_cookie(&server, &session).await, StatusCode::OK);
    assert_eq!(sessions_count(&server).await, 1);

    // The same callback again, with the sign-in cookie the browser held: the code is spent.
    let replayed = server
        .http()
        .get(result["callback_url"].as_str().expect("callback_url"))
        .header(
            "cookie",
            format!(
                "keyhouse_login={}",
                result["login_cookie"].as_str().expect("login_cookie")
            ),
        )
        .send()
        .await
        .expect("GET");
    assert_eq!(replayed.status(), StatusCode::BAD_REQUEST);
    assert!(replayed.headers().get("set-cookie").is_none());
    assert_eq!(sessions_count(&server).await, 1, "no second session");

    // Logout is a cookie call: without the CSRF header it is refused and changes nothing.
    let cookies = format!("session_token={session}; csrf_token={csrf}");
    let logout = |with_csrf: bool| {
        let mut req = server
            .http()
            .post(server.rest("/auth/logout"))
            .header("cookie", cookies.clone());
        if with_csrf {
            req = req.header("x-csrf-token", csrf.clone());
        }
        req.send()
    };
    assert_eq!(
        logout(false).await.expect("POST").status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(list_with_cookie(&server, &session).await, StatusCode::OK);
    let out = logout(true).await.expect("POST");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared: Vec<&str> = out
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("session_token=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    // At once, on the replica that had just resolved it (its session cache must not keep it).
    assert_eq!(
        list_with_cookie(&server, &session).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(sessions_count(&server).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_role_is_not_mapped_gets_no_session() {
    let provider = Provider::start().await;
    let server = keyhouse_with_login(&provider.issuer).await;
    let result = browser_login(&server, "unmapped-bob", KEYS).await;
    assert_eq!(result["final_status"], 403, "{result}");
    assert!(cookie(&result, "session_token").is_none(), "{result}");
    assert_eq!(sessions_count(&server).await, 0);
}

/// `/auth/login` on `server`: where it sends the browser, and the sign-in cookie it sets.
async fn start_login(server: &TestServer) -> (reqwest::Url, String) {
    let res = server
        .http()
        .get(server.rest("/auth/login"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = res.headers()["location"].to_str().expect("location");
    let to = reqwest::Url::parse(to).expect("a URL");
    let set = res.headers()["set-cookie"].to_str().expect("set-cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let value = set
        .strip_prefix("keyhouse_login=")
        .and_then(|rest| rest.split(';').next())
        .expect("the keyhouse_login cookie");
    (to, value.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sends_the_browser_to_the_issuer_with_pkce_and_a_wrong_state_is_refused() {
    let provider = Provider::start().await;
    let server = keyhouse_with_login(&provider.issuer).await;
    let (to, login_cookie) = start_login(&server).await;
    assert!(to.as_str().starts_with(&provider.issuer), "{to}");
    let param = |name: &str| {
        to.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("{name} in {to}"))
    };
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), "keyhouse-web");
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("code_challenge").len(), 43, "a SHA-256, base64url");
    let state = param("state");
    assert!(!param("nonce").is_empty());
    // The state, nonce and verifier are sealed: none is readable in the cookie.
    assert!(!login_cookie.contains(&state));

    // Another replica (the callback may land anywhere) opens the sign-in cookie and refuses a
    // state that is not its own, before any code is traded.
    let replica = server.replica().await;
    let callback = |server: &TestServer, state: &str, cookie: Option<&str>| {
        let mut req = server
            .http()
            .get(server.rest("/auth/callback"))
            .query(&[("code", "any-code"), ("state", state)]);
        if let Some(cookie) = cookie {
            req = req.header("cookie", format!("keyhouse_login={cookie}"));
        }
        req.send()
    };
    let wrong = callback(&replica, "not-the-state", Some(&login_cookie))
        .await
        .expect("GET");
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let body: Value = wrong.json().await.expect("JSON");
    assert!(
        body["detail"].as_str().expect("detail").contains("state"),
        "{body}"
    );
    // Without the cookie, or with an altered one, there is no sign-in to finish.
    for cookie in [None, Some(format!("{login_cookie}x"))] {
        let res = callback(&replica, &state, cookie.as_deref())
            .await
            .expect("GET");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: Value = res.json().await.expect("JSON");
        assert!(
            body["detail"]
                .as_str()
                .expect("detail")
                .contains("no sign-in in progress"),
            "{body}"
        );
    }
    assert_eq!(sessions_count(&server).await, 0);

    // `next` must stay on this site.
    for next in ["https://evil.example/", "//evil.example/x"] {
        let res = server
            .http()
            .get(server.rest("/auth/login"))
            .query(&[("next", next)])
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{next}");
        assert!(res.headers().get("location").is_none());
    }
}

#[tokio::test]
async fn browser_login_settings_come_together_or_keyhouse_refuses_to_start() {
    type Change = fn(&mut keyhouse_server::oidc::OidcSettings);
    let cases: [(&str, Change); 6] = [
        ("KEYHOUSE_OIDC_REDIRECT_URL", |o| o.redirect_url = None),
        // ID tokens would pass as bearer tokens.
        ("KEYHOUSE_OIDC_CLIENT_ID", |o| {
            o.client_id = o.audience.clone()
        }),
        ("KEYHOUSE_OIDC_REDIRECT_URL", |o| {
            o.redirect_url = Some("http://keyhouse.example/auth/callback".into())
        }),
        ("KEYHOUSE_OIDC_REDIRECT_URL", |o| {
            o.redirect_url = Some("https://keyhouse.example/elsewhere".into())
        }),
        ("KEYHOUSE_OIDC_CLIENT_SECRET", |o| o.client_id = None),
        ("KEYHOUSE_OIDC_CLIENT_ID", |o| {
            o.issuer = None;
            o.audience = None;
        }),
    ];
    for (setting, change) in cases {
        let dir = crate::support::TempDir::new();
        let url = format!("sqlite://{}/keyhouse.db?mode=rwc", dir.0.display());
        let mut settings = keyhouse_server::ServerSettings::new(url);
        settings.domain.platform_env = Some(Default::default());
        settings.oidc.issuer = Some("https://id.example/realms/ops".into());
        settings.oidc.audience = Some(AUDIENCE.into());
        settings.oidc.user_roles = vec!["keyhouse-user".into()];
        settings.oidc.client_id = Some("keyhouse-web".into());
        settings.oidc.client_secret = Some(Secret::new("s3cret-value"));
        settings.oidc.redirect_url = Some("https://keyhouse.example/auth/callback".into());
        change(&mut settings.oidc);
        let text = crate::support::refusal_to_serve(settings).await;
        assert!(text.contains(setting), "{setting}: {text}");
        assert!(!text.contains("s3cret-value"), "{text}");
    }
}

/// The ID token check itself, on tokens signed with the provider's own key: the login client's
/// id as `aud` (a token for the API audience is no ID token for keyhouse) and the `nonce` this
/// sign-in sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_needs_the_client_as_audience_and_the_sign_ins_nonce() {
    let provider = Provider::start().await;
    let settings = keyhouse_server::oidc::OidcSettings {
        issuer: Some(provider.issuer.clone()),
        audience: Some(AUDIENCE.into()),
        user_roles: vec!["keyhouse-user".into()],
        client_id: Some("keyhouse-web".into()),
        redirect_url: Some("http://127.0.0.1:1/auth/callback".into()),
        ..Default::default()
    };
    let oidc = settings.build().expect("valid").expect("configured");
    let id_token = |aud: &str, nonce: &str| {
        let mut claims = provider.claims();
        claims["aud"] = aud.into();
        claims["nonce"] = nonce.into();
        provider.sign(&claims)
    };
    let principal = oidc
        .id_token_principal(&id_token("keyhouse-web", "n-1"), "n-1")
        .await
        .expect("the sign-in's own ID token");
    assert_eq!(principal.user_id, "signed-here");
    for (what, token) in [
        ("another sign-in's nonce", id_token("keyhouse-web", "n-2")),
        ("the API audience", id_token(AUDIENCE, "n-1")),
    ] {
        let refused = oidc.id_token_principal(&token, "n-1").await;
        assert!(
            matches!(refused, Err(keyhouse_domain::Error::Unauthenticated(_))),
            "{what}: {refused:?}"
        );
    }
}
