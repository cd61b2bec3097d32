//! Trust boundaries, tried the way an attacker would: a key that mints stronger keys, forged keys
//! that cost bcrypt, and an IP allowlist skipped for want of an address. Each call here was
//! accepted before keyhouse bounded keys by the key that made them.

use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_proto::v1 as pb;
use pb::verify_key_response::Reason;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;

use crate::binary::{self, Keyhouse};
use crate::on_both_databases;
use crate::support::{Backend, TestDb, TestServer};
use crate::verify::{mint, named, verify};

on_both_databases!(
    a_key_cannot_mint_or_regenerate_a_stronger_key,
    forged_keys_sharing_a_real_prefix_never_run_bcrypt,
    keys_made_before_tags_gain_one_when_they_verify,
    an_ip_limited_key_needs_an_address_inside_its_networks,
    an_unreadable_stored_allowlist_refuses_the_key,
    limits_on_keys_per_user_and_creates_per_minute,
    concurrent_creates_and_regenerated_expired_keys_stay_within_the_limit,
);

const KEYS: &str = "/api/v1/account/uc-api-keys";

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

async fn a_key_cannot_mint_or_regenerate_a_stronger_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let narrow = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "narrow".into(),
            expires_in_days: Some(2),
            permissions: scopes(&["keys:manage"]),
            rate_limit_per_minute: Some(50),
            ..Default::default()
        },
    )
    .await;
    let broad = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "broad".into(),
            permissions: scopes(&["keys:manage", "byok:manage", "llm:inference"]),
            ..Default::default()
        },
    )
    .await;
    let mut as_key = server.user_client(Some(&narrow.api_key)).await;
    let before = stored_keys(&server).await;

    // The attack as reported: more scopes and ten years.
    let refused = |req: pb::CreateKeyRequest| {
        let mut client = as_key.clone();
        async move {
            client
                .create_key(req)
                .await
                .expect_err("a key must not mint a stronger key")
        }
    };
    let err = refused(pb::CreateKeyRequest {
        name: "stolen".into(),
        expires_in_days: Some(3650),
        permissions: scopes(&["keys:manage", "byok:manage", "usage:read", "llm:inference"]),
        rate_limit_per_minute: Some(50),
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("permissions: 'byok:manage'"),
        "{}",
        err.message()
    );
    let err = refused(pb::CreateKeyRequest {
        name: "longer".into(),
        expires_in_days: Some(3650),
        permissions: scopes(&["keys:manage"]),
        rate_limit_per_minute: Some(50),
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("expires_in_days"),
        "{}",
        err.message()
    );
    let err = refused(pb::CreateKeyRequest {
        name: "unlimited".into(),
        expires_in_days: Some(1),
        permissions: scopes(&["keys:manage"]),
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("rate_limit_per_minute"),
        "{}",
        err.message()
    );
    let err = as_key
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: broad.key_id.clone(),
            expires_in_days: Some(1),
        })
        .await
        .expect_err("regenerating a broader key hands out its scopes");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("permissions"), "{}", err.message());

    // The same over REST.
    let res = server
        .http()
        .post(server.rest(KEYS))
        .header("authorization", format!("Bearer {}", narrow.api_key))
        .json(&json!({"name": "rest", "expires_in_days": 3650, "permissions": ["keys:manage", "byok:manage"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.expect("JSON");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("byok:manage")),
        "{body}"
    );
    assert_eq!(
        stored_keys(&server).await,
        before,
        "refused calls changed stored keys or audit rows"
    );
    // The broad key was not touched.
    assert!(
        server
            .user_client(None)
            .await
            .verify_key(verify(&broad.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );

    // Where only sessions are taken, a key is told so.
    let err = server
        .platform_client(Some(&narrow.api_key))
        .await
        .list_platform_keys(pb::ListPlatformKeysRequest {})
        .await
        .expect_err("no key on an admin path");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("API key is not accepted"),
        "{}",
        err.message()
    );

    // Within its bounds, the key may make a key, and the audit trail names it.
    let made = as_key
        .create_key(pb::CreateKeyRequest {
            name: "within".into(),
            expires_in_days: Some(1),
            permissions: scopes(&["keys:manage"]),
            rate_limit_per_minute: Some(10),
            ..Default::default()
        })
        .await
        .expect("a key within its bounds")
        .into_inner();
    let admin = server.session("root", Role::Admin).await;
    let events = server
        .platform_client(Some(&admin))
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "user_key.create".into(),
            target: made.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].via_key_id, narrow.key_id);
    assert_eq!(events[0].actor, "alice");
    assert_eq!(events[0].identity_source, "api_key");
    let by_session = server
        .platform_client(Some(&admin))
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "user_key.create".into(),
            target: narrow.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(by_session[0].via_key_id, "", "a session acted, not a key");
    assert_eq!(by_session[0].identity_source, "session");
    let res = server
        .http()
        .get(server.rest(&format!(
            "/api/v1/admin/audit-events?target={}",
            made.key_id
        )))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .expect("GET audit");
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body[0]["via_key_id"], json!(narrow.key_id));
    assert_eq!(body[0]["identity_source"], json!("api_key"));
}

/// What a refused call must not change: every key's stored secret and limits, and the audit
/// trail (not `last_used`, which verifying the calling key moves on).
async fn stored_keys(server: &TestServer) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT key_hash || ' ' || key_prefix || ' ' || CAST(permissions AS TEXT) || ' ' || COALESCE(CAST(expires_at AS TEXT), '-') || ' ' || CAST(is_active AS TEXT) || ' ' || COALESCE(CAST(rate_limit_per_minute AS TEXT), '-') AS t FROM user_api_keys ORDER BY 1",
        "SELECT action || ' ' || target || ' ' || request_id AS t FROM audit_events ORDER BY 1",
    ] {
        rows.extend(query_texts(server, sql).await);
    }
    rows
}

async fn query_texts(server: &TestServer, sql: &str) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Statement};
    let db = server.db();
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect(sql)
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("text"))
        .collect()
}

/// Keys that share `real`'s lookup prefix and carry a correct checksum: well formed, not stored.
fn forgeries(real: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let head = format!("{}{:044x}", &real[..15], i + 1);
            let crc = crc32fast::hash(head.as_bytes());
            let key = format!("{head}{crc:08x}");
            assert!(ApiKey::parse(&key).is_some());
            key
        })
        .collect()
}

/// `keyhouse serve` in a process of its own, so that the bcrypt count in its metrics is its own
/// work only, whatever other tests run meanwhile.
pub(crate) struct OwnProcess {
    pub db: TestDb,
    pub keyhouse: Keyhouse,
    pub child: Option<std::process::Child>,
    pub addr: String,
}

impl OwnProcess {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        // SQLite makes its own key file; PostgreSQL needs the ring set.
        let mut keyhouse = Keyhouse::on(crate::support::TempDir::new(), db.url.clone()).env(
            "KEYHOUSE_ENCRYPTION_KEYS",
            &keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key(),
        );
        for (name, value) in env {
            keyhouse = keyhouse.env(name, value);
        }
        let (child, addr) = keyhouse.serve().await;
        Self {
            db,
            keyhouse,
            child: Some(child),
            addr,
        }
    }

    /// Stops and starts the process again: nothing is cached any more.
    pub async fn restart(&mut self) {
        if let Some(child) = self.child.take() {
            binary::stop(child).await;
        }
        let (child, addr) = self.keyhouse.serve().await;
        self.child = Some(child);
        self.addr = addr;
    }

    pub async fn client(
        &self,
        token: &str,
    ) -> UserKeyServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor + Clone + use<>,
        >,
    > {
        UserKeyServiceClient::with_interceptor(
            binary::channel(&self.addr).await,
            binary::bearer(token),
        )
    }

    pub async fn gateway(&self) -> UserKeyServiceClient<tonic::transport::Channel> {
        UserKeyServiceClient::new(binary::channel(&self.addr).await)
    }

    pub async fn bcrypt_verifications(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"keyhouse_bcrypt_duration_seconds_count{operation="verify"} "#)
            })
            .map_or(0.0, |n| n.parse().expect("a number"))
    }

    pub async fn exec(&self, sql: &str) {
        use sea_orm::ConnectionTrait;
        self.db
            .connect()
            .await
            .execute_unprepared(sql)
            .await
            .expect(sql);
    }
}

impl Drop for OwnProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn forged_keys_sharing_a_real_prefix_never_run_bcrypt(backend: Backend) {
    let server = OwnProcess::start(backend).await;
    let token = server.keyhouse.session("alice", "user");
    let real = server
        .client(&token)
        .await
        .create_key(named("real"))
        .await
        .expect("create")
        .into_inner();
    let mut gateway = server.gateway().await;
    let before = server.bcrypt_verifications().await;
    for forged in forgeries(&real.api_key, 32) {
        let answer = gateway
            .verify_key(verify(&forged, &[], ""))
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(answer.reason(), Reason::NotFound);
    }
    // As management credentials too.
    for forged in forgeries(&real.api_key, 4) {
        let err = server
            .client(&forged)
            .await
            .list_keys(pb::ListKeysRequest::default())
            .await
            .expect_err("a forged key is no credential");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert_eq!(
        server.bcrypt_verifications().await,
        before,
        "forged keys ran bcrypt"
    );
    // The real key still verifies: one bcrypt, on its first miss.
    let answer = gateway
        .verify_key(verify(&real.api_key, &[], ""))
        .await
        .expect("verify")
        .into_inner();
    assert!(answer.valid);
    assert_eq!(server.bcrypt_verifications().await, before + 1.0);
}

async fn keys_made_before_tags_gain_one_when_they_verify(backend: Backend) {
    let mut server = OwnProcess::start(backend).await;
    let token = server.keyhouse.session("alice", "user");
    let old = server
        .client(&token)
        .await
        .create_key(named("old"))
        .await
        .expect("create")
        .into_inner();
    let prefix = &old.api_key[..15];
    server
        .exec(&format!(
            "UPDATE user_api_keys SET key_tag = NULL WHERE key_prefix = '{prefix}'"
        ))
        .await;
    server.restart().await;
    let mut gateway = server.gateway().await;
    let before = server.bcrypt_verifications().await;
    // Untagged, a forged key can only be told apart by bcrypt.
    let mut forged = forgeries(&old.api_key, 8).into_iter();
    let answer = gateway
        .verify_key(verify(&forged.next().expect("one"), &[], ""))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(answer.reason(), Reason::NotFound);
    assert_eq!(server.bcrypt_verifications().await, before + 1.0);
    assert!(
        gateway
            .verify_key(verify(&old.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );
    // Tagged now, in storage: after a restart the next forgeries cost nothing.
    server.restart().await;
    let mut gateway = server.gateway().await;
    let after_tagging = server.bcrypt_verifications().await;
    for forged in forged {
        let answer = gateway
            .verify_key(verify(&forged, &[], ""))
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(answer.reason(), Reason::NotFound);
    }
    assert_eq!(server.bcrypt_verifications().await, after_tagging);
}

async fn an_ip_limited_key_needs_an_address_inside_its_networks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let key = mint(
        &mut server.user_client(Some(&token)).await,
        pb::CreateKeyRequest {
            name: "office".into(),
            allowed_ips: scopes(&["10.0.0.0/8"]),
            ..Default::default()
        },
    )
    .await;
    let mut gateway = server.user_client(None).await;
    for (ip, valid) in [("", false), ("192.168.1.1", false), ("10.1.2.3", true)] {
        let answer = gateway
            .verify_key(verify(&key.api_key, &[], ip))
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(answer.valid, valid, "client_ip {ip:?}");
        if !valid {
            assert_eq!(answer.reason(), Reason::IpNotAllowed, "client_ip {ip:?}");
        }
    }
    let http = server.http();
    for (body, valid) in [
        (json!({"api_key": key.api_key}), false),
        (
            json!({"api_key": key.api_key, "client_ip": "192.168.1.1"}),
            false,
        ),
        (
            json!({"api_key": key.api_key, "client_ip": "10.9.9.9"}),
            true,
        ),
    ] {
        let res = http
            .post(server.rest("/api/v1/auth/validate-key"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), StatusCode::OK);
        let answer: Value = res.json().await.expect("JSON");
        assert_eq!(answer["valid"], json!(valid), "{body}: {answer}");
        if !valid {
            assert_eq!(answer["reason"], json!("IP_NOT_ALLOWED"), "{body}");
        }
    }
}

async fn an_unreadable_stored_allowlist_refuses_the_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let key = mint(
        &mut server.user_client(Some(&token)).await,
        pb::CreateKeyRequest {
            name: "office".into(),
            allowed_ips: scopes(&["10.0.0.0/8"]),
            ..Default::default()
        },
    )
    .await;
    server
        .exec(&format!(
            r#"UPDATE user_api_keys SET allowed_ips = '["10.0.0.0/8", "not a network"]' WHERE key_prefix = '{}'"#,
            &key.api_key[..15]
        ))
        .await;
    let fresh = server.replica().await;
    let answer = fresh
        .user_client(None)
        .await
        .verify_key(verify(&key.api_key, &[], "10.1.2.3"))
        .await
        .expect("verify")
        .into_inner();
    assert!(!answer.valid);
    assert_eq!(answer.reason(), Reason::IpNotAllowed);
}

async fn limits_on_keys_per_user_and_creates_per_minute(backend: Backend) {
    let server = TestServer::start_with(backend, |s| {
        s.domain.keys.max_active_keys_per_user = 2;
        s.domain.keys.max_key_creates_per_minute = 3;
    })
    .await;
    let token = server.session("alice", Role::User).await;
    let mut alice = server.user_client(Some(&token)).await;
    let first = mint(&mut alice, named("one")).await;
    mint(&mut alice, named("two")).await;
    let before = stored_keys(&server).await;
    let err = alice
        .create_key(named("three"))
        .await
        .expect_err("over the active-keys limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("KEYHOUSE_MAX_ACTIVE_KEYS_PER_USER"),
        "{}",
        err.message()
    );
    let res = server
        .http()
        .post(server.rest(KEYS))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"name": "three"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stored_keys(&server).await, before);

    // Revoking one makes room, but not more than three creates a minute.
    alice
        .revoke_key(pb::RevokeKeyRequest {
            key_id: first.key_id,
        })
        .await
        .expect("revoke");
    mint(&mut alice, named("three")).await;
    let err = server
        .user_client(Some(&token))
        .await
        .revoke_key(pb::RevokeKeyRequest {
            key_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("no such key");
    assert_eq!(err.code(), Code::NotFound);
    let listed = alice
        .list_keys(pb::ListKeysRequest {
            status: "active".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .keys;
    for k in listed {
        alice
            .revoke_key(pb::RevokeKeyRequest { key_id: k.key_id })
            .await
            .expect("revoke");
    }
    let err = alice
        .create_key(named("four"))
        .await
        .expect_err("over the creates-a-minute limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE"),
        "{}",
        err.message()
    );

    // A VerifyKey that requires too many scopes names the field.
    let many: Vec<String> = (0..65).map(|i| format!("scope{i}")).collect();
    let err = server
        .user_client(None)
        .await
        .verify_key(pb::VerifyKeyRequest {
            api_key: "uc_x".into(),
            required_scopes: many,
            client_ip: String::new(),
        })
        .await
        .expect_err("too many scopes");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("required_scopes"),
        "{}",
        err.message()
    );
}

async fn concurrent_creates_and_regenerated_expired_keys_stay_within_the_limit(backend: Backend) {
    let server = TestServer::start_with(backend, |s| {
        s.domain.keys.max_active_keys_per_user = 3;
    })
    .await;
    let token = server.session("alice", Role::User).await;
    let alice = server.user_client(Some(&token)).await;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = alice.clone();
            tokio::spawn(async move { client.create_key(named(&format!("race {i}"))).await })
        })
        .collect();
    let mut made = Vec::new();
    for call in calls {
        match call.await.expect("join") {
            Ok(key) => made.push(key.into_inner()),
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert_eq!(made.len(), 3, "the limit held under concurrent creates");

    // An expired key regenerated is active again: it counts against the limit.
    let expired = &made[0];
    server
        .exec(&format!(
            "UPDATE user_api_keys SET expires_at = '2001-01-01T00:00:00+00:00' WHERE key_prefix = '{}'",
            &expired.api_key[..15]
        ))
        .await;
    let mut alice = alice;
    let fourth = mint(&mut alice, named("room again")).await;
    let err = alice
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: expired.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect_err("a fourth active key");
    assert_eq!(err.code(), Code::ResourceExhausted);
    alice
        .revoke_key(pb::RevokeKeyRequest {
            key_id: fourth.key_id,
        })
        .await
        .expect("revoke");
    alice
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: expired.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect("room for it now");
}
