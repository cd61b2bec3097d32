//! OIDC bearer tokens against a real OpenID provider: `oidc-provider` from npm
//! (`tests/oidc/provider.mjs`) on a loopback port, issuing client-credentials JWT access tokens.
//! Tokens that must be refused are made from the provider's real ones or signed here with
//! `jsonwebtoken`; each refusal is checked over gRPC and REST, beside a token signed the same way
//! that is accepted, so that a refusal is the claim's doing and not the test's.
//!
//! OIDC resolves callers without touching storage, so these tests run on SQLite only.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use crate::support::{Backend, TempDir, TestServer};

pub(crate) const AUDIENCE: &str = "https://keyhouse.test";
const KEYS: &str = "/api/v1/account/uc-api-keys";

/// `tests/oidc/provider.mjs`, running until dropped.
pub(crate) struct Provider {
    child: Child,
    pub(crate) issuer: String,
    /// The provider's current signing key, as `provider.mjs` describes it.
    keys: Value,
    /// Kept open: a write to a closed pipe would end the provider.
    _stdout: BufReader<std::process::ChildStdout>,
    _logs: TempDir,
}

fn provider_script() -> &'static std::path::Path {
    static READY: OnceLock<std::path::PathBuf> = OnceLock::new();
    READY.get_or_init(|| crate::support::npm_installed("oidc").join("provider.mjs"))
}

impl Provider {
    pub(crate) async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let logs = TempDir::new();
            let stderr = std::fs::File::create(logs.0.join("stderr")).expect("log file");
            let mut child = Command::new("node")
                .arg(provider_script())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("node (Node.js 20) is needed for the OIDC tests");
            let mut line = String::new();
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
            stdout.read_line(&mut line).expect("read");
            let keys: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the OIDC provider did not start: {line}\n{}",
                    std::fs::read_to_string(logs.0.join("stderr")).unwrap_or_default()
                )
            });
            Self {
                child,
                issuer: keys["issuer"].as_str().expect("issuer").to_owned(),
                keys,
                _stdout: stdout,
                _logs: logs,
            }
        })
        .await
        .expect("join")
    }

    /// A real access token for `client` (see provider.mjs for the clients and their roles),
    /// for the resource `audience`.
    async fn token(&self, client: &str, audience: &str) -> String {
        let res = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", &format!("secret-{client}")),
                ("resource", audience),
                ("scope", "keys"),
            ])
            .send()
            .await
            .expect("token request");
        let body: Value = res.json().await.expect("JSON");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {body}"))
            .to_owned()
    }

    /// Replaces the provider's signing key; the old one leaves its JWKS.
    async fn rotate(&mut self) {
        self.keys = reqwest::Client::new()
            .post(format!("{}/admin/rotate", self.issuer))
            .send()
            .await
            .expect("rotate")
            .json()
            .await
            .expect("JSON");
    }

    fn pem(&self, which: &str) -> &[u8] {
        self.keys[which].as_str().expect("a PEM").as_bytes()
    }

    fn kid(&self) -> String {
        self.keys["kid"].as_str().expect("kid").to_owned()
    }

    /// `claims` signed here with the provider's own key, as the provider would sign them.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(self.pem("private_pem")).expect("the provider's key");
        jsonwebtoken::encode(&self.header(Algorithm::RS256), claims, &key).expect("sign")
    }

    fn header(&self, alg: Algorithm) -> Header {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid());
        header
    }

    /// Claims the provider would issue to a keyhouse user now.
    pub(crate) fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "signed-here",
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": ["keyhouse-user"]},
        })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn keyhouse_for(issuer: &str, refresh_secs: u64) -> TestServer {
    let issuer = issuer.to_owned();
    TestServer::start_with(Backend::Sqlite, move |s| {
        s.oidc.issuer = Some(issuer);
        s.oidc.audience = Some(AUDIENCE.into());
        s.oidc.admin_roles = vec!["keyhouse-admin".into()];
        s.oidc.user_roles = vec!["keyhouse-user".into()];
        s.oidc.jwks_refresh_secs = refresh_secs;
    })
    .await
}

/// The gRPC code and the REST status of listing keys with `token`.
async fn list_keys(server: &TestServer, token: &str) -> (Code, StatusCode) {
    let grpc = server
        .user_client(Some(token))
        .await
        .list_keys(pb::ListKeysRequest::default())
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok);
    let rest = server
        .http()
        .get(server.rest(KEYS))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET")
        .status();
    (grpc, rest)
}

/// A JWT's part, decoded.
fn part(token: &str, index: usize) -> Value {
    use base64::Engine as _;
    let text = token.split('.').nth(index).expect("a JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

fn encode_part(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_issuer_lists_and_creates_keys_over_grpc_and_rest() {
    let provider = Provider::start().await;
    let server = keyhouse_for(&provider.issuer, 30).await;
    let token = provider.token("service-user", AUDIENCE).await;

    let created: Value = server
        .http()
        .post(server.rest(KEYS))
        .bearer_auth(&token)
        .json(&json!({"name": "from a service"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let key_id = created["key_id"].as_str().expect("created").to_owned();

    let listed = server
        .user_client(Some(&token))
        .await
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("the token lists keys over gRPC")
        .into_inner();
    assert_eq!(
        listed.keys.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
        [&key_id]
    );
    let rest = server
        .http()
        .get(server.rest(KEYS))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(rest.status(), StatusCode::OK);
    assert!(rest.text().await.expect("body").contains(&key_id));

    // The key belongs to the token's `sub`: a session for that user sees it.
    let session = server.session("service-user", Role::User).await;
    let as_session = server
        .user_client(Some(&session))
        .await
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(as_session.keys.len(), 1);

    // An ES256 token from the provider's P-256 key works too.
    let es256 = provider.token("service-user-es256", AUDIENCE).await;
    assert_eq!(part(&es256, 0)["alg"], "ES256");
    assert_eq!(list_keys(&server, &es256).await, (Code::Ok, StatusCode::OK));

    // The admin role reaches the platform keys; the user role does not.
    let admin = provider.token("service-admin", AUDIENCE).await;
    let platform = |token: String| {
        let server = &server;
        async move {
            server
                .platform_client(Some(&token))
                .await
                .list_platform_keys(pb::ListPlatformKeysRequest {})
                .await
                .map_or_else(|s| s.code(), |_| Code::Ok)
        }
    };
    assert_eq!(platform(admin.clone()).await, Code::Ok);
    assert_eq!(platform(token).await, Code::PermissionDenied);

    // The audit log says the key was made by a caller signed in through the OIDC issuer.
    let events = server
        .platform_client(Some(&admin))
        .await
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("the audit log")
        .into_inner()
        .events;
    let created_by: Vec<_> = events
        .iter()
        .filter(|e| e.actor == "service-user" && e.target == key_id)
        .map(|e| e.identity_source.as_str())
        .collect();
    assert_eq!(created_by, ["oidc"], "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_check_are_refused_over_grpc_and_rest() {
    let provider = Provider::start().await;
    let server = keyhouse_for(&provider.issuer, 30).await;
    let real = provider.token("service-user", AUDIENCE).await;
    let now = chrono::Utc::now().timestamp();

    // The control: signed here with the provider's key, and accepted.
    let signed_here = provider.sign(&provider.claims());
    assert_eq!(
        list_keys(&server, &signed_here).await,
        (Code::Ok, StatusCode::OK),
        "a token signed with the provider's key is accepted"
    );
    assert_eq!(list_keys(&server, &real).await, (Code::Ok, StatusCode::OK));

    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = provider.claims();
        change(&mut claims);
        provider.sign(&claims)
    };
    let real_header = part(&real, 0);
    let real_payload = real.split('.').nth(1).expect("payload").to_owned();
    let mut none_header = real_header.clone();
    none_header["alg"] = json!("none");
    let mut other_role = part(&real, 1);
    other_role["realm_access"]["roles"] = json!(["keyhouse-admin"]);

    let refused: Vec<(&str, String)> = vec![
        (
            "for another audience",
            provider.token("service-user", "https://other.test").await,
        ),
        (
            "from another issuer",
            with(&|c| c["iss"] = json!("https://elsewhere.test")),
        ),
        (
            "expired beyond the clock skew",
            with(&|c| {
                c["iat"] = json!(now - 3600);
                c["exp"] = json!(now - 600);
            }),
        ),
        (
            "not valid until later",
            with(&|c| c["nbf"] = json!(now + 600)),
        ),
        ("without an audience", with(&|c| c["aud"] = Value::Null)),
        (
            "naming an internal service as its subject",
            with(&|c| c["sub"] = json!("service:gateway")),
        ),
        (
            "with alg none",
            format!("{}.{real_payload}.", encode_part(&none_header)),
        ),
        ("HS256 keyed with the provider's public key", {
            let key = EncodingKey::from_secret(provider.pem("public_pem")).expect("key");
            jsonwebtoken::encode(&provider.header(Algorithm::HS256), &provider.claims(), &key)
                .expect("sign")
        }),
        ("signed by another key under the provider's kid", {
            let key = EncodingKey::from_rsa_pem(provider.pem("stranger_pem")).expect("key");
            jsonwebtoken::encode(&provider.header(Algorithm::RS256), &provider.claims(), &key)
                .expect("sign")
        }),
        ("whose claims were changed after signing", {
            let signature = real.split('.').nth(2).expect("signature");
            format!(
                "{}.{}.{signature}",
                encode_part(&real_header),
                encode_part(&other_role)
            )
        }),
    ];
    for (what, token) in refused {
        assert_eq!(
            list_keys(&server, &token).await,
            (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            "a token {what} is refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_picked_up_without_a_restart() {
    let mut provider = Provider::start().await;
    let server = keyhouse_for(&provider.issuer, 1).await;
    // The same, but fetching keys at most once an hour.
    let bounded = keyhouse_for(&provider.issuer, 3600).await;
    let before = provider.token("service-user", AUDIENCE).await;
    for keyhouse in [&server, &bounded] {
        assert_eq!(
            list_keys(keyhouse, &before).await,
            (Code::Ok, StatusCode::OK)
        );
    }

    provider.rotate().await;
    let after = provider.token("service-user", AUDIENCE).await;
    assert_ne!(part(&before, 0)["kid"], part(&after, 0)["kid"]);
    // An unknown key id fetches the keys again only once the bound allows: within the hour, the
    // new key is unknown there and the old one still checks.
    assert_eq!(
        list_keys(&bounded, &after).await,
        (Code::Unauthenticated, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        list_keys(&bounded, &before).await,
        (Code::Ok, StatusCode::OK)
    );
    // The new key is fetched once the refresh bound (1 s here) allows.
    let mut answer = list_keys(&server, &after).await;
    for _ in 0..50 {
        if answer == (Code::Ok, StatusCode::OK) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer = list_keys(&server, &after).await;
    }
    assert_eq!(answer, (Code::Ok, StatusCode::OK), "the new key is used");
    // The withdrawn key went with the fetch.
    assert_eq!(
        list_keys(&server, &before).await,
        (Code::Unauthenticated, StatusCode::UNAUTHORIZED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_role_is_not_mapped_gets_no_access() {
    let provider = Provider::start().await;
    let server = keyhouse_for(&provider.issuer, 30).await;
    let token = provider.token("service-unmapped", AUDIENCE).await;
    assert_eq!(
        list_keys(&server, &token).await,
        (Code::PermissionDenied, StatusCode::FORBIDDEN)
    );
    let platform = server
        .platform_client(Some(&token))
        .await
        .list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect_err("no platform keys");
    assert_eq!(platform.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_is_down_answers_unavailable_and_sessions_still_work() {
    let provider = Provider::start().await;
    let token = provider.token("service-user", AUDIENCE).await;
    let issuer = provider.issuer.clone();
    drop(provider);
    let server = keyhouse_for(&issuer, 30).await;

    // Twice: the second answer comes from the remembered failure, without another fetch.
    for _ in 0..2 {
        assert_eq!(
            list_keys(&server, &token).await,
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        );
    }
    let session = server.session("alice", Role::User).await;
    assert_eq!(
        list_keys(&server, &session).await,
        (Code::Ok, StatusCode::OK)
    );
}

#[tokio::test]
async fn bad_oidc_settings_refuse_to_start_naming_the_setting() {
    type Change = fn(&mut keyhouse_server::oidc::OidcSettings);
    let cases: [(&str, Change); 6] = [
        ("KEYHOUSE_OIDC_AUDIENCE", |o| o.issuer = None),
        ("KEYHOUSE_OIDC_AUDIENCE", |o| o.audience = None),
        ("KEYHOUSE_OIDC_ISSUER", |o| {
            o.issuer = Some("http://keycloak:8080/realms/ops".into())
        }),
        ("KEYHOUSE_OIDC_ISSUER", |o| {
            o.issuer = Some("keycloak".into())
        }),
        ("KEYHOUSE_OIDC_ROLE_CLAIM", |o| {
            o.role_claim = "realm_access..roles".into()
        }),
        ("KEYHOUSE_OIDC_USER_ROLES", |o| {
            o.admin_roles.clear();
            o.user_roles = vec![" ".into()];
        }),
    ];
    for (setting, change) in cases {
        let dir = TempDir::new();
        let url = format!("sqlite://{}/keyhouse.db?mode=rwc", dir.0.display());
        let mut settings = keyhouse_server::ServerSettings::new(url);
        settings.domain.platform_env = Some(Default::default());
        settings.oidc.issuer = Some("https://id.example/realms/ops".into());
        settings.oidc.audience = Some(AUDIENCE.into());
        settings.oidc.user_roles = vec!["keyhouse-user".into()];
        change(&mut settings.oidc);
        let text = crate::support::refusal_to_serve(settings).await;
        assert!(text.contains(setting), "{setting}: {text}");
    }
}

/// The same refusals from the environment, as an operator sets them: `keyhouse serve` exits
/// non-zero and its log names the variable.
#[test]
fn bad_oidc_variables_stop_keyhouse_serve_naming_the_variable() {
    let cases: [(&str, &[(&str, &str)]); 3] = [
        (
            "KEYHOUSE_OIDC_ISSUER 'http://keycloak:8080/realms/ops' must be an https URL",
            &[
                ("KEYHOUSE_OIDC_ISSUER", "http://keycloak:8080/realms/ops"),
                ("KEYHOUSE_OIDC_AUDIENCE", "keyhouse"),
                ("KEYHOUSE_OIDC_USER_ROLES", "keyhouse-user"),
            ],
        ),
        (
            "KEYHOUSE_OIDC_AUDIENCE is set without KEYHOUSE_OIDC_ISSUER",
            &[("KEYHOUSE_OIDC_AUDIENCE", "keyhouse")],
        ),
        (
            "KEYHOUSE_OIDC_REDIRECT_URL is required with KEYHOUSE_OIDC_CLIENT_ID",
            &[
                ("KEYHOUSE_OIDC_ISSUER", "https://id.example/realms/ops"),
                ("KEYHOUSE_OIDC_AUDIENCE", "keyhouse"),
                ("KEYHOUSE_OIDC_USER_ROLES", "keyhouse-user"),
                ("KEYHOUSE_OIDC_CLIENT_ID", "keyhouse-web"),
                ("KEYHOUSE_OIDC_CLIENT_SECRET", "s3cret-value"),
            ],
        ),
    ];
    for (expected, vars) in cases {
        let kh = vars
            .iter()
            .fold(crate::binary::Keyhouse::on_sqlite(), |kh, (name, value)| {
                kh.env(name, value)
            });
        let mut child = kh.command(&["serve"]).spawn().expect("run keyhouse");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keyhouse serve started with {vars:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success());
        let log = kh.log_text();
        assert!(log.contains(expected), "{expected}:\n{log}");
    }
}
