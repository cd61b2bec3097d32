//! Signing in with Ops-Center's sessions: written to the real Redis at 127.0.0.1:6379
//! (`KEYHOUSE_TEST_REDIS_URL`) exactly as Ops-Center's `RedisSessionManager.set` writes them (the
//! JSON of the session, with SETEX), each test under a key prefix of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhouse_domain::caller::Role;
use keyhouse_domain::config::Secret;
use keyhouse_proto::v1 as pb;
use keyhouse_server::ServerSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, TestDb, TestServer};

on_both_databases!(an_ops_center_session_lists_and_creates_keys_and_the_audit_log_names_it);

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const ADMIN_GROUP: &str = "ops-center-admin";
const USER_GROUP: &str = "keyhouse-users";

pub fn redis_url() -> String {
    std::env::var("KEYHOUSE_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// Ops-Center's side: its Redis, under a prefix no other test uses.
pub struct OpsCenter {
    pub prefix: String,
    redis: redis::aio::MultiplexedConnection,
}

impl OpsCenter {
    pub async fn new() -> Self {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let redis = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Ops-Center tests need Redis at {url} (set KEYHOUSE_TEST_REDIS_URL): {e}. \
                     They never pass without one."
                )
            });
        Self {
            prefix: format!("keyhouse-test-{}:session:", uuid::Uuid::new_v4().simple()),
            redis,
        }
    }

    /// keyhouse configured to read this Ops-Center's sessions, with one admin and one user group.
    pub fn configure(&self, s: &mut ServerSettings) {
        s.ops_center.redis_url = Some(Secret::new(redis_url()));
        s.ops_center.prefix = self.prefix.clone();
        s.ops_center.admin_groups = vec![ADMIN_GROUP.to_owned()];
        s.ops_center.user_groups = vec![USER_GROUP.to_owned()];
    }

    /// A session for `user` as Ops-Center's login stores it: `json.dumps` of the session dict
    /// (its separators included), set with SETEX. Returns the `session_token` cookie's value.
    pub async fn login(&self, user: Value, ttl_secs: u64) -> String {
        let csrf = uuid::Uuid::new_v4().simple();
        let value = format!(
            r#"{{"user": {}, "csrf_token": "{csrf}", "created": 1764680000.123456}}"#,
            python_json(&user)
        );
        self.put(&value, ttl_secs).await
    }

    /// Stores `value` as a session's value as it is, under a new token.
    pub async fn put(&self, value: &str, ttl_secs: u64) -> String {
        // Shaped like Python's `secrets.token_urlsafe(32)`.
        let token = format!(
            "{}-{}_",
            uuid::Uuid::new_v4().simple(),
            &uuid::Uuid::new_v4().simple().to_string()[..9]
        );
        let _: () = redis::cmd("SETEX")
            .arg(format!("{}{token}", self.prefix))
            .arg(ttl_secs)
            .arg(value)
            .query_async(&mut self.redis.clone())
            .await
            .expect("SETEX");
        token
    }

    pub async fn logout(&self, token: &str) {
        let _: () = redis::cmd("DEL")
            .arg(format!("{}{token}", self.prefix))
            .query_async(&mut self.redis.clone())
            .await
            .expect("DEL");
    }
}

/// JSON as Python's `json.dumps` writes it: `", "` and `": "` between items.
fn python_json(value: &Value) -> String {
    match value {
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), python_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.map_or_else(|s| s.code(), |_| Code::Ok)
}

fn new_key(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    }
}

async fn rest_get(server: &TestServer, path: &str, token: &str) -> (StatusCode, Value) {
    let response = server
        .http()
        .get(server.rest(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("the server answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What a caller may do: list their keys, and list the platform's keys.
async fn reach(server: &TestServer, token: &str) -> (Code, Code, StatusCode, StatusCode) {
    let keys = code(
        server
            .user_client(Some(token))
            .await
            .list_keys(pb::ListKeysRequest::default())
            .await,
    );
    let platform = code(
        server
            .platform_client(Some(token))
            .await
            .list_platform_keys(pb::ListPlatformKeysRequest {})
            .await,
    );
    let rest_keys = rest_get(server, "/api/v1/account/uc-api-keys", token)
        .await
        .0;
    let rest_platform = rest_get(server, "/api/v1/admin/platform-keys", token)
        .await
        .0;
    (keys, platform, rest_keys, rest_platform)
}

const USER_REACH: (Code, Code, StatusCode, StatusCode) = (
    Code::Ok,
    Code::PermissionDenied,
    StatusCode::OK,
    StatusCode::FORBIDDEN,
);
const ADMIN_REACH: (Code, Code, StatusCode, StatusCode) =
    (Code::Ok, Code::Ok, StatusCode::OK, StatusCode::OK);
const NO_REACH: (Code, Code, StatusCode, StatusCode) = (
    Code::PermissionDenied,
    Code::PermissionDenied,
    StatusCode::FORBIDDEN,
    StatusCode::FORBIDDEN,
);
const SIGNED_OUT: (Code, Code, StatusCode, StatusCode) = (
    Code::Unauthenticated,
    Code::Unauthenticated,
    StatusCode::UNAUTHORIZED,
    StatusCode::UNAUTHORIZED,
);

async fn an_ops_center_session_lists_and_creates_keys_and_the_audit_log_names_it(backend: Backend) {
    let ops = OpsCenter::new().await;
    let server = TestServer::start_with(backend, |s| ops.configure(s)).await;
    // A viewer: in Ops-Center a viewer manages their own API keys.
    let alice = ops
        .login(
            json!({ "user_id": "alice", "email": "alice@example.com", "username": "alice",
                    "role": "viewer", "groups": [] }),
            7200,
        )
        .await;

    let mut client = server.user_client(Some(&alice)).await;
    let made = client
        .create_key(new_key("over gRPC"))
        .await
        .expect("alice creates a key over gRPC")
        .into_inner();
    let listed = client
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("alice lists her keys over gRPC")
        .into_inner();
    let made_id = made.key_id.clone();
    assert!(listed.keys.iter().any(|k| k.key_id == made_id));

    let response = server
        .http()
        .post(server.rest("/api/v1/account/uc-api-keys"))
        .bearer_auth(&alice)
        .json(&json!({ "name": "over REST" }))
        .send()
        .await
        .expect("the server answers");
    assert!(response.status().is_success(), "{}", response.status());
    let (status, body) = rest_get(&server, "/api/v1/account/uc-api-keys", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.to_string();
    assert!(
        text.contains("over gRPC") && text.contains("over REST"),
        "{text}"
    );

    // An admin of keyhouse's own acts too, and the audit log tells the two sign-ins apart.
    let root = server.session("root", Role::Admin).await;
    server
        .user_client(Some(&root))
        .await
        .create_key(new_key("root's"))
        .await
        .expect("root creates a key");
    let events = server
        .platform_client(Some(&root))
        .await
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("the audit log")
        .into_inner()
        .events;
    let source_of = |actor: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.actor == actor)
            .map(|e| e.identity_source.clone())
            .collect()
    };
    assert_eq!(source_of("alice"), vec!["ops_center_session"; 2]);
    assert_eq!(source_of("root"), vec!["session"]);
    let (status, body) = rest_get(&server, "/api/v1/admin/audit-events?actor=alice", &root).await;
    assert_eq!(status, StatusCode::OK);
    let rest_sources: Vec<&Value> = body
        .as_array()
        .expect("a list of events")
        .iter()
        .map(|e| &e["identity_source"])
        .collect();
    assert_eq!(rest_sources, vec![&json!("ops_center_session"); 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_come_from_role_or_from_the_operators_group_mapping_never_by_default() {
    let ops = OpsCenter::new().await;
    let server = TestServer::start_with(Backend::Sqlite, |s| ops.configure(s)).await;
    let cases = [
        (
            "role admin",
            json!({ "sub": "a1", "role": "admin" }),
            ADMIN_REACH,
        ),
        (
            "role power_user",
            json!({ "sub": "u1", "role": "power_user", "groups": [ADMIN_GROUP] }),
            USER_REACH,
        ),
        (
            "role user",
            json!({ "sub": "u2", "role": "user" }),
            USER_REACH,
        ),
        (
            "Keycloak realm roles",
            json!({ "id": "kc1", "realm_access": { "roles": ["offline_access", ADMIN_GROUP] } }),
            ADMIN_REACH,
        ),
        (
            "groups as objects",
            json!({ "user_id": "g1", "groups": [{ "name": "staff" }, { "name": USER_GROUP }] }),
            USER_REACH,
        ),
        (
            "Authentik groups",
            json!({ "user_id": "ak1", "ak_groups": [ADMIN_GROUP] }),
            ADMIN_REACH,
        ),
        // Ops-Center's own admin groups and admin usernames mean nothing unless configured.
        (
            "groups matching nothing",
            json!({ "user_id": "admin", "username": "admin", "preferred_username": "admin",
                    "groups": ["admins", "admin", "administrators", "uc1-admins"],
                    "realm_access": { "roles": ["admin"] } }),
            NO_REACH,
        ),
        (
            "no groups at all",
            json!({ "user_id": "n1", "email": "n1@example.com" }),
            NO_REACH,
        ),
        (
            "an unknown role",
            json!({ "user_id": "r1", "role": "superuser" }),
            NO_REACH,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, user, expected) in cases {
        let token = ops.login(user, 600).await;
        let got = reach(&server, &token).await;
        if got != expected {
            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deleted_malformed_and_userless_sessions_are_signed_out() {
    let ops = OpsCenter::new().await;
    // The default session cache (5 s): an expired key must not outlive its TTL in it.
    let server = TestServer::start_with(Backend::Sqlite, |s| ops.configure(s)).await;
    let user = json!({ "user_id": "alice", "role": "user" });

    let brief = ops.login(user.clone(), 1).await;
    assert_eq!(
        reach(&server, &brief).await.0,
        Code::Ok,
        "before it expires"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        reach(&server, &brief).await,
        SIGNED_OUT,
        "after SETEX's 1 s"
    );

    let deleted = ops.login(user.clone(), 600).await;
    ops.logout(&deleted).await;
    assert_eq!(reach(&server, &deleted).await, SIGNED_OUT, "a deleted key");

    let malformed = ops
        .put(r#"{"user": {"user_id": "alice", "role": "user""#, 600)
        .await;
    assert_eq!(
        reach(&server, &malformed).await,
        SIGNED_OUT,
        "malformed JSON"
    );

    let anonymous = ops
        .put(r#"{"user": null, "csrf_token": "x", "created": 1.0}"#, 600)
        .await;
    assert_eq!(
        reach(&server, &anonymous).await,
        SIGNED_OUT,
        "\"user\": null"
    );

    let never = format!("{}-never-stored", uuid::Uuid::new_v4().simple());
    assert_eq!(
        reach(&server, &never).await,
        SIGNED_OUT,
        "a token never stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_session_is_logged_without_its_token() {
    let ops = OpsCenter::new().await;
    let kh = crate::binary::Keyhouse::on_sqlite()
        .env("KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL", &redis_url())
        .env("KEYHOUSE_OPS_CENTER_SESSION_PREFIX", &ops.prefix);
    let token = ops.put("{\"user\": {\"user_id\": ", 600).await;
    let (child, addr) = kh.serve().await;
    let status = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/account/uc-api-keys"))
        .header("cookie", format!("session_token={token}"))
        .send()
        .await
        .expect("the server answers")
        .status();
    crate::binary::stop(child).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let log = kh.log_text();
    assert!(
        log.contains("an Ops-Center session in Redis is not JSON"),
        "the refusal is logged:\n{log}"
    );
    assert!(!log.contains(&token), "the token is never logged");
}

/// A stand-in for the network between keyhouse and Redis, which the test can cut.
struct Link {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Link {
    async fn to_redis() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let redis = redis_url().trim_start_matches("redis://").to_owned();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let redis = redis.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(redis).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().expect("lock").push(task.abort_handle());
            }
        });
        tasks.lock().expect("lock").push(accept.abort_handle());
        Self { addr, tasks }
    }

    /// Closes every connection and stops listening: Redis is gone.
    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_unavailable_and_leaves_keyhouse_sessions_working() {
    let ops = OpsCenter::new().await;
    let link = Link::to_redis().await;
    let url = format!("redis://{}", link.addr);
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        ops.configure(s);
        s.ops_center.redis_url = Some(Secret::new(url));
    })
    .await;
    let alice = ops
        .login(json!({ "user_id": "alice", "role": "user" }), 600)
        .await;
    let own = server.session("bob", Role::User).await;
    assert_eq!(
        reach(&server, &alice).await.0,
        Code::Ok,
        "while Redis answers"
    );

    link.cut();
    let stranger = ops
        .login(json!({ "user_id": "carol", "role": "user" }), 600)
        .await;
    let (grpc, _, rest, _) = reach(&server, &stranger).await;
    assert_eq!(
        (grpc, rest),
        (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        "not signed out: the session store is down"
    );
    assert_eq!(
        reach(&server, &own).await,
        USER_REACH,
        "keyhouse's own sessions still work"
    );
}

/// What makes good settings bad.
type Spoil = fn(&mut ServerSettings);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_center_settings_refuse_to_start_naming_the_setting() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ops = OpsCenter::new().await;
    let mut good = ServerSettings::new(db.url.clone());
    good.domain.encryption_keys = Some(Secret::new(
        keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key(),
    ));
    ops.configure(&mut good);
    let cases: [(&str, Spoil, &[&str]); 4] = [
        (
            "not a Redis URL",
            |s| s.ops_center.redis_url = Some(Secret::new("http://127.0.0.1:6379")),
            &["KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL"],
        ),
        (
            "no Redis there",
            |s| s.ops_center.redis_url = Some(Secret::new("redis://127.0.0.1:1")),
            &["KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL"],
        ),
        (
            "an empty prefix",
            |s| s.ops_center.prefix = String::new(),
            &["KEYHOUSE_OPS_CENTER_SESSION_PREFIX"],
        ),
        (
            "a group given both roles",
            |s| s.ops_center.user_groups.push(ADMIN_GROUP.to_owned()),
            &[
                "KEYHOUSE_OPS_CENTER_ADMIN_GROUPS",
                "KEYHOUSE_OPS_CENTER_USER_GROUPS",
            ],
        ),
    ];
    for (what, spoil, names) in cases {
        let mut settings = good.clone();
        spoil(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let err = keyhouse::serve(settings, listener, std::future::pending())
            .await
            .expect_err(what);
        let message = format!("{err:#}");
        for name in names {
            assert!(message.contains(name), "{what}: {message}");
        }
    }
}
