//! VerifyKey: every reason, limits, allowlists, usage, single-flight, and API keys as the
//! credential of the management paths.

use std::sync::Arc;
use std::time::Duration;

use keyhouse_domain::caller::Role;
use keyhouse_domain::change_feed::ChangeFeed;
use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_domain::crypto::key_tag::KeyTagger;
use keyhouse_domain::verify::Verifier;
use keyhouse_proto::v1 as pb;
use pb::verify_key_response::Reason;
use serde_json::{Value, json};
use tonic::Code;

use crate::on_both_databases;
use crate::support::{Backend, TestServer, UserClient};

on_both_databases!(
    every_reason_is_answered,
    concurrent_misses_for_one_key_run_one_bcrypt,
    a_verdict_past_its_time_to_live_is_read_again_without_bcrypt,
    rate_limits_count_per_replica_or_across_replicas_through_redis,
    ip_allowlists_take_ipv4_and_ipv6_networks,
    usage_counts_match_the_verifications_after_the_flush,
    api_keys_work_on_the_management_paths_with_the_right_scope,
    validate_key_answers_in_the_ops_center_shape,
);

pub fn verify(key: &str, scopes: &[&str], ip: &str) -> pb::VerifyKeyRequest {
    pb::VerifyKeyRequest {
        api_key: key.into(),
        required_scopes: scopes.iter().map(|s| (*s).into()).collect(),
        client_ip: ip.into(),
    }
}

pub async fn mint(client: &mut UserClient, req: pb::CreateKeyRequest) -> pb::IssuedKey {
    client
        .create_key(req)
        .await
        .expect("create a key")
        .into_inner()
}

/// Verifies a fresh key with `limit` once on each of `targets` in turn, all in one rate-limit
/// window: a minute boundary in between starts again with a new key, at most three times.
pub(crate) async fn in_one_window(
    owner: &mut UserClient,
    limit: i32,
    targets: &[&TestServer],
) -> Vec<pb::VerifyKeyResponse> {
    let limited = pb::CreateKeyRequest {
        name: format!("{limit} a minute"),
        rate_limit_per_minute: Some(limit),
        ..Default::default()
    };
    for _attempt in 0..3 {
        let key = mint(owner, limited.clone()).await;
        let mut results = Vec::new();
        for target in targets {
            results.push(
                target
                    .user_client(None)
                    .await
                    .verify_key(verify(&key.api_key, &[], ""))
                    .await
                    .expect("verify")
                    .into_inner(),
            );
        }
        if results.iter().all(|r| r.reset_at == results[0].reset_at) {
            return results;
        }
    }
    panic!("three attempts in a row straddled a minute boundary");
}

pub fn named(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    }
}

async fn every_reason_is_answered(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut c = server.user_client(Some(&token)).await;
    let mut gateway = server.user_client(None).await;
    let mut reason = async |req: pb::VerifyKeyRequest| {
        gateway.verify_key(req).await.expect("verify").into_inner()
    };

    let key = mint(
        &mut c,
        pb::CreateKeyRequest {
            name: "k".into(),
            permissions: vec!["llm:inference".into()],
            ..Default::default()
        },
    )
    .await;
    let ok = reason(verify(&key.api_key, &["llm:inference"], "")).await;
    assert!(ok.valid);
    assert_eq!(ok.reason(), Reason::Valid);
    assert_eq!(
        (ok.key_id.as_str(), ok.user_id.as_str()),
        (key.key_id.as_str(), "alice")
    );
    assert_eq!(ok.permissions, ["llm:inference"]);
    assert_eq!(
        ok.expires_at.map(|t| t.seconds),
        key.expires_at.map(|t| t.seconds)
    );
    // Cached now: the same answer again.
    assert_eq!(
        reason(verify(&key.api_key, &[], "")).await.reason(),
        Reason::Valid
    );

    let mut typo = key.api_key.clone();
    typo.replace_range(20..21, if &typo[20..21] == "0" { "1" } else { "0" });
    for bad in ["", "uc_short", &typo, &key.api_key.to_uppercase()] {
        if bad.is_empty() {
            let status = gateway
                .verify_key(verify(bad, &[], ""))
                .await
                .expect_err("empty");
            assert_eq!(status.code(), Code::InvalidArgument);
            continue;
        }
        let answer = gateway
            .verify_key(verify(bad, &[], ""))
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(
            (answer.valid, answer.reason()),
            (false, Reason::Malformed),
            "{bad}"
        );
    }
    let unknown = ApiKey::generate().expect("key");
    assert_eq!(
        gateway
            .verify_key(verify(unknown.expose(), &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason(),
        Reason::NotFound
    );

    let answer = gateway
        .verify_key(verify(&key.api_key, &["keys:manage"], ""))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(
        (answer.valid, answer.reason()),
        (false, Reason::InsufficientScope)
    );
    assert_eq!(
        gateway
            .verify_key(verify(&key.api_key, &["no:such-scope"], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason(),
        Reason::InsufficientScope
    );

    // Expiry: a key whose time has passed, before anything cached it.
    let expiring = mint(&mut c, named("expiring")).await;
    server
        .exec("UPDATE user_api_keys SET expires_at = created_at WHERE key_name = 'expiring'")
        .await;
    assert_eq!(
        gateway
            .verify_key(verify(&expiring.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason(),
        Reason::Expired
    );

    // Revocation and regeneration take effect at once on this replica, cached or not.
    c.revoke_key(pb::RevokeKeyRequest {
        key_id: key.key_id.clone(),
    })
    .await
    .expect("revoke");
    let answer = gateway
        .verify_key(verify(&key.api_key, &[], ""))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!((answer.valid, answer.reason()), (false, Reason::Revoked));
    let other = mint(&mut c, named("rotated")).await;
    assert!(
        gateway
            .verify_key(verify(&other.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );
    let new = c
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: other.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect("regenerate")
        .into_inner();
    assert_eq!(
        gateway
            .verify_key(verify(&other.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .reason(),
        Reason::NotFound
    );
    assert!(
        gateway
            .verify_key(verify(&new.api_key, &[], ""))
            .await
            .expect("verify")
            .into_inner()
            .valid
    );

    let window = in_one_window(&mut c, 1, &[&server, &server]).await;
    let (first, second) = (&window[0], &window[1]);
    assert!(first.valid && (first.limit, first.remaining) == (1, 0));
    assert_eq!(
        (second.valid, second.reason()),
        (false, Reason::RateLimited)
    );
    let reset_at = second.reset_at.expect("reset_at").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!(
        reset_at % 60 == 0 && now - 60 < reset_at && reset_at <= now + 60,
        "the window resets at the end of the minute of the hits: {reset_at} vs now {now}"
    );

    let fenced = mint(
        &mut c,
        pb::CreateKeyRequest {
            name: "fenced".into(),
            allowed_ips: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    )
    .await;
    let answer = gateway
        .verify_key(verify(&fenced.api_key, &[], "192.168.0.1"))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(
        (answer.valid, answer.reason()),
        (false, Reason::IpNotAllowed)
    );
}

async fn concurrent_misses_for_one_key_run_one_bcrypt(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let key = mint(
        &mut server.user_client(Some(&token)).await,
        named("popular"),
    )
    .await;
    // A verifier of its own on the server's database, to count its bcrypt runs.
    let feed = ChangeFeed::start(server.db(), &server.settings.domain.database_url)
        .await
        .expect("feed");
    let verifier = Verifier::start(
        server.db().clone(),
        &server.settings.domain.keys.scopes,
        &server.settings.domain.verify,
        &feed,
        KeyTagger::from_ring(&server.settings.domain.required_key_ring().expect("ring")),
    )
    .await
    .expect("verifier");
    let request = Arc::new(verify(&key.api_key, &[], ""));
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let (verifier, request) = (verifier.clone(), request.clone());
            tokio::spawn(async move { verifier.verify(&request).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.expect("join").expect("verify").valid);
    }
    assert_eq!(
        verifier.bcrypt_runs(),
        1,
        "1000 concurrent misses ran one bcrypt"
    );

    let unknown = ApiKey::generate().expect("key");
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let verifier = verifier.clone();
            let request = verify(unknown.expose(), &[], "");
            tokio::spawn(async move { verifier.verify(&request).await })
        })
        .collect();
    for call in flood {
        assert_eq!(
            call.await.expect("join").expect("verify").reason(),
            Reason::NotFound
        );
    }
    assert_eq!(
        verifier.bcrypt_runs(),
        1,
        "unknown keys cost no bcrypt (no stored prefix matches)"
    );

    // A change re-reads the key by id: the cached proof that this is its secret still holds.
    server
        .user_client(Some(&token))
        .await
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke");
    verifier.invalidate(uuid::Uuid::parse_str(&key.key_id).expect("uuid"));
    assert_eq!(
        verifier.verify(&request).await.expect("verify").reason(),
        Reason::Revoked
    );
    assert_eq!(
        verifier.bcrypt_runs(),
        1,
        "seeing a revocation costs no bcrypt"
    );
}

/// A verifier of its own on `server`'s database, with a cache time to live of `ttl_secs`, to
/// count its bcrypt runs. Its change feed is its own (keep it: the verifier hears changes while
/// it lives): on SQLite it hears of no change the server makes, on PostgreSQL it listens like a
/// replica.
pub async fn own_verifier(server: &TestServer, ttl_secs: u64) -> (Verifier, ChangeFeed) {
    let feed = ChangeFeed::start(server.db(), &server.settings.domain.database_url)
        .await
        .expect("feed");
    let mut settings = server.settings.domain.verify.clone();
    settings.cache_ttl_secs = ttl_secs;
    let verifier = Verifier::start(
        server.db().clone(),
        &server.settings.domain.keys.scopes,
        &settings,
        &feed,
        KeyTagger::from_ring(&server.settings.domain.required_key_ring().expect("ring")),
    )
    .await
    .expect("verifier");
    (verifier, feed)
}

async fn a_verdict_past_its_time_to_live_is_read_again_without_bcrypt(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let kept = mint(&mut owner, named("kept")).await;
    let revoked = mint(&mut owner, named("revoked")).await;
    let regenerated = mint(&mut owner, named("regenerated")).await;
    let (verifier, _feed) = own_verifier(&server, 1).await;
    let reason = |key: &str| {
        let (verifier, request) = (verifier.clone(), verify(key, &[], ""));
        async move { verifier.verify(&request).await.expect("verify").reason() }
    };
    for key in [&kept, &revoked, &regenerated] {
        assert_eq!(reason(&key.api_key).await, Reason::Valid);
    }
    assert_eq!(verifier.bcrypt_runs(), 3, "one bcrypt per key");

    // Past the time to live each verdict is read again by id: a burst of expiries is a burst
    // of row reads, not of bcrypts.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(reason(&kept.api_key).await, Reason::Valid);
    assert_eq!(
        verifier.bcrypt_runs(),
        3,
        "an expired verdict costs no bcrypt"
    );

    // On SQLite this verifier hears of no change: only the re-read shows them.
    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
        })
        .await
        .expect("revoke");
    owner
        .regenerate_key(pb::RegenerateKeyRequest {
            key_id: regenerated.key_id.clone(),
            expires_in_days: None,
        })
        .await
        .expect("regenerate");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(reason(&revoked.api_key).await, Reason::Revoked);
    assert_eq!(
        reason(&regenerated.api_key).await,
        Reason::NotFound,
        "the secret a regenerate replaced"
    );
    assert_eq!(reason(&kept.api_key).await, Reason::Valid);
    assert_eq!(verifier.bcrypt_runs(), 3, "re-reading costs no bcrypt");
}

async fn rate_limits_count_per_replica_or_across_replicas_through_redis(backend: Backend) {
    let server = TestServer::start(backend).await;
    let replica = server.replica().await;
    let token = server.session("alice", Role::User).await;
    let mut c = server.user_client(Some(&token)).await;
    // Per replica: each counts its own three.
    let results = in_one_window(
        &mut c,
        3,
        &[
            &server, &server, &server, &server, &replica, &replica, &replica,
        ],
    )
    .await;
    let valid: Vec<bool> = results.iter().map(|r| r.valid).collect();
    assert_eq!(valid, [true, true, true, false, true, true, true]);
    assert_eq!(results[3].reason(), Reason::RateLimited);

    // Through Redis: one count for every replica.
    let mut shared = server.settings.clone();
    shared.domain.verify.redis_url = Some("redis://127.0.0.1:6379".into());
    let (a, b) = (
        TestServer::serve(shared.clone(), None).await,
        TestServer::serve(shared, None).await,
    );
    let results = in_one_window(&mut c, 3, &[&a, &b, &a, &b]).await;
    let valid: Vec<bool> = results.iter().map(|r| r.valid).collect();
    assert_eq!(
        valid,
        [true, true, true, false],
        "the fourth request, on either replica, is over the limit"
    );
    assert_eq!(
        results.iter().map(|r| r.remaining).collect::<Vec<_>>(),
        [2, 1, 0, 0]
    );
}

async fn ip_allowlists_take_ipv4_and_ipv6_networks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut c = server.user_client(Some(&token)).await;
    let status = c
        .create_key(pb::CreateKeyRequest {
            name: "bad".into(),
            allowed_ips: vec!["10.0.0.0/33".into()],
            ..Default::default()
        })
        .await
        .expect_err("a bad network");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("allowed_ips"));

    let networks = vec![
        "10.0.0.0/8".into(),
        "2001:db8::/32".into(),
        "192.168.1.7".into(),
    ];
    let key = mint(
        &mut c,
        pb::CreateKeyRequest {
            name: "fenced".into(),
            allowed_ips: networks,
            ..Default::default()
        },
    )
    .await;
    let listed = c
        .get_key(pb::GetKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        listed.allowed_ips,
        ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]
    );
    let mut gateway = server.user_client(None).await;
    for (ip, allowed) in [
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("192.168.1.7", true),
        ("192.168.1.8", false),
        ("2001:db8::1", true),
        ("2001:db9::1", false),
        ("::ffff:8.8.8.8", false),
        // No address, no pass: there is nothing to check against the networks.
        ("", false),
    ] {
        let answer = gateway
            .verify_key(verify(&key.api_key, &[], ip))
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(answer.valid, allowed, "{ip}");
        if !allowed {
            assert_eq!(answer.reason(), Reason::IpNotAllowed);
        }
    }
    let status = gateway
        .verify_key(verify(&key.api_key, &[], "not-an-ip"))
        .await
        .expect_err("bad client_ip");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn usage_counts_match_the_verifications_after_the_flush(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.domain.verify.usage_flush_millis = 50).await;
    let token = server.session("alice", Role::User).await;
    let mut c = server.user_client(Some(&token)).await;
    let key = mint(&mut c, named("counted")).await;
    let mut gateway = server.user_client(None).await;
    for _ in 0..25 {
        assert!(
            gateway
                .verify_key(verify(&key.api_key, &[], ""))
                .await
                .expect("verify")
                .into_inner()
                .valid
        );
    }
    gateway
        .verify_key(verify(&key.api_key, &["keys:manage"], ""))
        .await
        .expect("a refused one does not count");
    let mut usage = pb::GetKeyUsageResponse::default();
    for _ in 0..100 {
        usage = c
            .get_key_usage(pb::GetKeyUsageRequest {
                key_id: key.key_id.clone(),
                ..Default::default()
            })
            .await
            .expect("usage")
            .into_inner();
        if usage.total_requests >= 25 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(usage.total_requests, 25);
    assert_eq!(usage.hours.iter().map(|h| h.requests).sum::<i64>(), 25);
    assert!(usage.last_used.is_some());
    let listed = c
        .get_key(pb::GetKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(
        listed.last_used.is_some(),
        "last_used is written behind too"
    );

    let bob = server.session("bob", Role::User).await;
    let status = server
        .user_client(Some(&bob))
        .await
        .get_key_usage(pb::GetKeyUsageRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("not bob's");
    assert_eq!(status.code(), Code::NotFound);
    let admin = server.session("root", Role::Admin).await;
    let seen = server
        .user_client(Some(&admin))
        .await
        .get_key_usage(pb::GetKeyUsageRequest {
            key_id: key.key_id,
            ..Default::default()
        })
        .await
        .expect("an admin sees any key");
    assert_eq!(seen.into_inner().total_requests, 25);
}

async fn api_keys_work_on_the_management_paths_with_the_right_scope(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut c = server.user_client(Some(&token)).await;
    let manage = mint(
        &mut c,
        pb::CreateKeyRequest {
            name: "automation".into(),
            permissions: vec!["keys:read".into(), "keys:manage".into()],
            ..Default::default()
        },
    )
    .await;
    let read = mint(
        &mut c,
        pb::CreateKeyRequest {
            name: "dashboard".into(),
            permissions: vec!["keys:read".into()],
            ..Default::default()
        },
    )
    .await;
    let plain = mint(&mut c, named("inference only")).await;
    let http = server.http();
    let keys = server.rest("/api/v1/account/uc-api-keys");

    let created = http
        .post(&keys)
        .bearer_auth(&manage.api_key)
        // Within the key's own bounds: its scopes, and no later expiry than its own 90 days.
        .json(
            &json!({"name": "made by a key", "permissions": ["keys:read"], "expires_in_days": 89}),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(created.status(), 201, "keys:manage may create");
    let listed: Value = http
        .get(&keys)
        .bearer_auth(&read.api_key)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        listed.as_array().expect("array").len(),
        4,
        "keys:read lists the owner's keys"
    );
    let refused = http
        .post(&keys)
        .bearer_auth(&read.api_key)
        .json(&json!({"name": "nope"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.json::<Value>().await.expect("JSON")["detail"],
        "this API key lacks the keys:manage scope"
    );
    let refused = http
        .get(&keys)
        .bearer_auth(&plain.api_key)
        .send()
        .await
        .expect("GET");
    assert_eq!(refused.status(), 403);
    // A key limited to IP addresses: keyhouse does not know the caller's, so it refuses.
    let pinned = mint(
        &mut c,
        pb::CreateKeyRequest {
            name: "pinned".into(),
            permissions: vec!["keys:read".into()],
            allowed_ips: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    )
    .await;
    let refused = http
        .get(&keys)
        .bearer_auth(&pinned.api_key)
        .send()
        .await
        .expect("GET");
    assert_eq!(refused.status(), 403, "an IP-limited key manages nothing");
    assert!(
        refused.json::<Value>().await.expect("JSON")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("limited to IP addresses"))
    );
    c.revoke_key(pb::RevokeKeyRequest {
        key_id: manage.key_id.clone(),
    })
    .await
    .expect("revoke");
    let revoked = http
        .get(&keys)
        .bearer_auth(&manage.api_key)
        .send()
        .await
        .expect("GET");
    assert_eq!(revoked.status(), 401, "a revoked key is no credential");
    // Never for admin paths.
    let admin_path = http
        .get(server.rest("/api/v1/admin/platform-keys"))
        .bearer_auth(&read.api_key)
        .send()
        .await
        .expect("GET");
    assert_eq!(admin_path.status(), 401);
}

async fn validate_key_answers_in_the_ops_center_shape(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let key = mint(
        &mut server.user_client(Some(&token)).await,
        named("validated"),
    )
    .await;
    let http = server.http();
    let url = server.rest("/api/v1/auth/validate-key");
    let ok: Value = http
        .post(&url)
        .json(&json!({"api_key": key.api_key}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ok["valid"], true);
    assert_eq!(
        (ok["user"]["id"].as_str(), ok["user"]["key_id"].as_str()),
        (Some("alice"), Some(key.key_id.as_str()))
    );
    assert_eq!(
        ok["user"]["permissions"],
        json!(["llm:inference", "llm:models"])
    );
    let unknown = ApiKey::generate().expect("key");
    let no: Value = http
        .post(&url)
        .json(&json!({"api_key": unknown.expose()}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(no, json!({"valid": false, "reason": "NOT_FOUND"}));
    let malformed: Value = http
        .post(&url)
        .json(&json!({"api_key": "sk-nope"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(malformed["valid"], false);
    let unscoped: Value = http
        .post(&url)
        .json(&json!({"api_key": key.api_key, "required_scopes": ["llm:inference", "keys:manage"]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        unscoped,
        json!({"valid": false, "reason": "INSUFFICIENT_SCOPE"})
    );
    let limited = mint(
        &mut server.user_client(Some(&token)).await,
        pb::CreateKeyRequest {
            rate_limit_per_minute: Some(5),
            ..named("limited")
        },
    )
    .await;
    let windowed: Value = http
        .post(&url)
        .json(&json!({"api_key": limited.api_key, "required_scopes": ["llm:inference"]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(windowed["valid"], true);
    assert_eq!(
        (
            &windowed["rate_limit"]["limit"],
            &windowed["rate_limit"]["remaining"]
        ),
        (&json!(5), &json!(4))
    );
    assert!(
        windowed["rate_limit"]["reset_at"]
            .as_str()
            .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()),
        "{windowed}"
    );
    let too_many: Value = http
        .post(&url)
        .json(&json!({"api_key": key.api_key, "required_scopes": vec!["x"; 65]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        too_many["detail"][0]["loc"],
        json!(["body", "required_scopes"]),
        "{too_many}"
    );
}
