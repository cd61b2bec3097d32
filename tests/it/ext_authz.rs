//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`) on keyhouse's
//! port, called with the `envoy-types` client as Envoy calls it: every outcome, the headers
//! Envoy is told to add and remove, the statuses and bodies, the client address and the route's
//! scopes; and once through grpcurl, with reflection and no proto files.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use keyhouse_domain::caller::Role;
use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_proto::v1 as pb;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};
use crate::verify::{mint, named};

on_both_databases!(
    a_valid_key_is_let_through_with_its_identity_added_upstream,
    every_refusal_has_its_status_and_json_body,
    a_rate_limited_key_gets_429_with_retry_after,
    the_client_address_comes_from_the_attribute_context,
    the_required_scopes_come_from_the_routes_context_extensions,
    an_operators_header_carries_the_key_and_forwarding_keeps_it,
);

/// What Envoy would do with a request: let it through with these header changes, or answer it.
#[derive(Debug)]
enum Outcome {
    Allowed {
        /// Header name → (value, whether it overwrites what the request has).
        added: HashMap<String, (String, bool)>,
        removed: Vec<String>,
    },
    Denied {
        status: u16,
        headers: HashMap<String, String>,
        body: Value,
    },
}

fn outcome(answer: CheckResponse) -> Outcome {
    use envoy_types::ext_authz::v3::pb::HeaderAppendAction;
    let code = answer.status.as_ref().map_or(0, |s| s.code);
    match answer.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(code, 0, "an OK response with status {code}");
            let added = ok
                .headers
                .into_iter()
                .map(|h| {
                    let overwrite = h.append_action() == HeaderAppendAction::OverwriteIfExistsOrAdd;
                    let h = h.header.expect("a header");
                    (h.key, (h.value, overwrite))
                })
                .collect();
            Outcome::Allowed {
                added,
                removed: ok.headers_to_remove,
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = u16::try_from(denied.status.expect("an HTTP status").code).expect("u16");
            let grpc = match status {
                401 => 16,
                403 => 7,
                429 => 8,
                503 => 14,
                _ => 13,
            };
            assert_eq!(code, grpc, "the gRPC code of a {status}");
            let headers = denied
                .headers
                .into_iter()
                .map(|h| h.header.expect("a header"))
                .map(|h| (h.key, h.value))
                .collect();
            Outcome::Denied {
                status,
                headers,
                body: serde_json::from_str(&denied.body).expect("a JSON body"),
            }
        }
        other => panic!("no HTTP response in the answer: {other:?}"),
    }
}

/// A request as Envoy describes it: its headers, the downstream peer and the route's context
/// extensions.
fn described(
    headers: &[(&str, &str)],
    client: Option<&str>,
    extensions: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: client.map(|ip| Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(PortSpecifier::PortValue(51234)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..Default::default()
        }),
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn envoy(server: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(server.channel().await)
}

async fn check(client: &mut AuthorizationClient<Channel>, req: CheckRequest) -> Outcome {
    outcome(client.check(req).await.expect("Check answers").into_inner())
}

#[track_caller]
fn assert_denied(outcome: &Outcome, status: u16, code: &str) {
    let Outcome::Denied {
        status: got,
        headers,
        body,
    } = outcome
    else {
        panic!("expected {status} {code}, got {outcome:?}");
    };
    assert_eq!((*got, body["error"]["code"].as_str()), (status, Some(code)));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    if status == 401 {
        assert_eq!(
            headers.get("www-authenticate").map(String::as_str),
            Some("Bearer")
        );
    }
}

async fn a_valid_key_is_let_through_with_its_identity_added_upstream(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.domain.verify.usage_flush_millis = 50).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let key = mint(&mut owner, named("gateway")).await;
    let mut envoy = envoy(&server).await;

    for carrier in ["authorization", "x-api-key"] {
        let value = if carrier == "authorization" {
            bearer(&key.api_key)
        } else {
            key.api_key.clone()
        };
        // A client's own x-keyhouse-* headers must not survive: each added header overwrites,
        // and the rate-limit pair of a key without a limit is removed.
        let answer = check(
            &mut envoy,
            described(
                &[
                    (carrier, &value),
                    ("x-keyhouse-user-id", "mallory"),
                    ("content-type", "application/json"),
                ],
                Some("203.0.113.7"),
                &[],
            ),
        )
        .await;
        let Outcome::Allowed { added, removed } = answer else {
            panic!("{carrier}: {answer:?}");
        };
        assert_eq!(
            added,
            HashMap::from([
                ("x-keyhouse-key-id".into(), (key.key_id.clone(), true)),
                ("x-keyhouse-user-id".into(), ("alice".into(), true)),
            ]),
            "{carrier}"
        );
        let mut removed = removed;
        removed.sort();
        let mut expected = vec![
            carrier.to_owned(),
            "x-keyhouse-ratelimit-limit".to_owned(),
            "x-keyhouse-ratelimit-remaining".to_owned(),
        ];
        expected.sort();
        assert_eq!(
            removed, expected,
            "{carrier}: the key stays out of the upstream request"
        );
    }

    // The scheme's case does not matter; another scheme is no key, and x-api-key is tried next.
    let answer = check(
        &mut envoy,
        described(
            &[("authorization", &format!("bearer {}", key.api_key))],
            None,
            &[],
        ),
    )
    .await;
    assert!(matches!(answer, Outcome::Allowed { .. }), "{answer:?}");
    let answer = check(
        &mut envoy,
        described(
            &[
                ("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
                ("x-api-key", &key.api_key),
            ],
            None,
            &[],
        ),
    )
    .await;
    let Outcome::Allowed { removed, .. } = answer else {
        panic!("{answer:?}");
    };
    assert!(removed.contains(&"x-api-key".to_owned()), "{removed:?}");
    assert!(
        !removed.contains(&"authorization".to_owned()),
        "another credential is left for the upstream: {removed:?}"
    );
    // The key sent twice is stripped from both headers, not only from the one it was read from.
    let bearer = format!("Bearer {}", key.api_key);
    let answer = check(
        &mut envoy,
        described(
            &[("authorization", &bearer), ("x-api-key", &key.api_key)],
            None,
            &[],
        ),
    )
    .await;
    let Outcome::Allowed { removed, .. } = answer else {
        panic!("{answer:?}");
    };
    for name in ["authorization", "x-api-key"] {
        assert!(
            removed.contains(&name.to_owned()),
            "{name} kept: {removed:?}"
        );
    }

    // Each use let through is counted, as a VerifyKey's is.
    let mut usage = pb::GetKeyUsageResponse::default();
    for _ in 0..100 {
        usage = owner
            .get_key_usage(pb::GetKeyUsageRequest {
                key_id: key.key_id.clone(),
                ..Default::default()
            })
            .await
            .expect("usage")
            .into_inner();
        if usage.total_requests >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(usage.total_requests, 5, "five checks let through");
}

async fn every_refusal_has_its_status_and_json_body(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let mut envoy = envoy(&server).await;

    // No key: no header, an empty one, a bearer without a token, no HTTP attributes at all.
    for headers in [
        &[][..],
        &[("x-api-key", "  ")][..],
        &[("authorization", "Bearer ")][..],
        &[("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")][..],
    ] {
        let answer = check(&mut envoy, described(headers, None, &[])).await;
        assert_denied(&answer, 401, "missing_key");
    }
    let answer = outcome(
        envoy
            .check(CheckRequest::default())
            .await
            .expect("Check answers")
            .into_inner(),
    );
    assert_denied(&answer, 401, "missing_key");

    let malformed = check(
        &mut envoy,
        described(&[("x-api-key", "uc_short")], None, &[]),
    )
    .await;
    assert_denied(&malformed, 401, "malformed_key");

    let unknown = ApiKey::generate().expect("key");
    let answer = check(
        &mut envoy,
        described(&[("authorization", &bearer(unknown.expose()))], None, &[]),
    )
    .await;
    assert_denied(&answer, 401, "key_not_found");

    let expiring = mint(&mut owner, named("expiring")).await;
    server
        .exec("UPDATE user_api_keys SET expires_at = created_at WHERE key_name = 'expiring'")
        .await;
    let answer = check(
        &mut envoy,
        described(&[("x-api-key", &expiring.api_key)], None, &[]),
    )
    .await;
    assert_denied(&answer, 401, "key_expired");

    let revoked = mint(&mut owner, named("revoked")).await;
    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
        })
        .await
        .expect("revoke");
    let answer = check(
        &mut envoy,
        described(&[("x-api-key", &revoked.api_key)], None, &[]),
    )
    .await;
    assert_denied(&answer, 401, "key_revoked");

    let models_only = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "models only".into(),
            permissions: vec!["llm:models".into()],
            ..Default::default()
        },
    )
    .await;
    let answer = check(
        &mut envoy,
        described(&[("x-api-key", &models_only.api_key)], None, &[]),
    )
    .await;
    assert_denied(&answer, 403, "insufficient_scope");

    let fenced = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "fenced".into(),
            allowed_ips: vec!["10.1.0.0/16".into()],
            ..Default::default()
        },
    )
    .await;
    let answer = check(
        &mut envoy,
        described(&[("x-api-key", &fenced.api_key)], Some("192.0.2.1"), &[]),
    )
    .await;
    assert_denied(&answer, 403, "ip_not_allowed");
}

async fn a_rate_limited_key_gets_429_with_retry_after(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let mut envoy = envoy(&server).await;
    // Two checks in one minute's window; a minute boundary in between starts over with a new key.
    for _attempt in 0..3 {
        let key = mint(
            &mut owner,
            pb::CreateKeyRequest {
                name: "two a minute".into(),
                rate_limit_per_minute: Some(2),
                ..Default::default()
            },
        )
        .await;
        let request = || described(&[("x-api-key", &key.api_key)], None, &[]);
        let mut remaining = Vec::new();
        for _ in 0..2 {
            let Outcome::Allowed { added, removed } = check(&mut envoy, request()).await else {
                panic!("the first two checks are let through");
            };
            assert_eq!(added["x-keyhouse-ratelimit-limit"], ("2".into(), true));
            assert_eq!(
                removed,
                ["x-api-key"],
                "the limit headers are set, not removed"
            );
            remaining.push(added["x-keyhouse-ratelimit-remaining"].0.clone());
        }
        let third = check(&mut envoy, request()).await;
        if remaining != ["1", "0"] || matches!(third, Outcome::Allowed { .. }) {
            continue;
        }
        assert_denied(&third, 429, "rate_limited");
        let Outcome::Denied { headers, .. } = third else {
            unreachable!("denied above");
        };
        let retry_after: u64 = headers["retry-after"].parse().expect("seconds");
        assert!(
            (1..=60).contains(&retry_after),
            "Retry-After is the seconds until the window resets: {retry_after}"
        );
        assert_eq!(headers["x-keyhouse-ratelimit-limit"], "2");
        assert_eq!(headers["x-keyhouse-ratelimit-remaining"], "0");
        return;
    }
    panic!("three attempts in a row straddled a minute boundary");
}

async fn the_client_address_comes_from_the_attribute_context(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let mut envoy = envoy(&server).await;
    let fenced = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "office".into(),
            allowed_ips: vec!["10.1.0.0/16".into(), "2001:db8::/32".into()],
            ..Default::default()
        },
    )
    .await;
    let from = |client: Option<&str>, forwarded: &str| {
        described(
            &[
                ("x-api-key", &fenced.api_key),
                // Only Envoy's view of the peer counts, never a header the client sent.
                ("x-forwarded-for", forwarded),
            ],
            client,
            &[],
        )
    };
    for inside in ["10.1.2.3", "2001:db8::7", "::ffff:10.1.200.1"] {
        let answer = check(&mut envoy, from(Some(inside), "192.0.2.1")).await;
        assert!(
            matches!(answer, Outcome::Allowed { .. }),
            "{inside}: {answer:?}"
        );
    }
    for outside in [
        Some("10.2.0.1"),
        Some("2001:db9::1"),
        Some("not an address"),
        None,
    ] {
        let answer = check(&mut envoy, from(outside, "10.1.2.3")).await;
        assert_denied(&answer, 403, "ip_not_allowed");
    }
}

async fn the_required_scopes_come_from_the_routes_context_extensions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let mut envoy = envoy(&server).await;
    let models_only = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "models only".into(),
            permissions: vec!["llm:models".into()],
            ..Default::default()
        },
    )
    .await;
    let inference = mint(&mut owner, named("default grant")).await;
    let on_route = |key: &str, scopes: Option<&str>| {
        let extensions: Vec<(&str, &str)> =
            scopes.map(|s| ("keyhouse_scopes", s)).into_iter().collect();
        described(&[("x-api-key", key)], None, &extensions)
    };
    let cases = [
        // (key, the route's keyhouse_scopes, allowed)
        (&models_only, None, false),
        (&models_only, Some("llm:models"), true),
        (&models_only, Some(" llm:models , "), true),
        (&models_only, Some("llm:models,llm:inference"), false),
        (&models_only, Some(""), true),
        (&inference, None, true),
        (&inference, Some("llm:inference,llm:models"), true),
        (&inference, Some("keys:manage"), false),
        (&inference, Some("no:such-scope"), false),
    ];
    for (key, scopes, allowed) in cases {
        let answer = check(&mut envoy, on_route(&key.api_key, scopes)).await;
        if allowed {
            assert!(
                matches!(answer, Outcome::Allowed { .. }),
                "{} on {scopes:?}: {answer:?}",
                key.key_name
            );
        } else {
            assert_denied(&answer, 403, "insufficient_scope");
        }
    }
}

async fn an_operators_header_carries_the_key_and_forwarding_keeps_it(backend: Backend) {
    let server = TestServer::start_with(backend, |s| {
        s.ext_authz.key_header = Some("X-LLM-Key".into());
        s.ext_authz.forward_key = true;
    })
    .await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let key = mint(&mut owner, named("gateway")).await;
    let mut envoy = envoy(&server).await;
    // The configured header is tried first: the upstream's own bearer token stays untouched.
    let answer = check(
        &mut envoy,
        described(
            &[
                ("x-llm-key", &key.api_key),
                ("authorization", "Bearer sk-upstream-provider-token"),
            ],
            None,
            &[],
        ),
    )
    .await;
    let Outcome::Allowed { added, removed } = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(added["x-keyhouse-user-id"].0, "alice");
    assert!(
        !removed
            .iter()
            .any(|h| h == "x-llm-key" || h == "authorization"),
        "forwarding keeps the key header: {removed:?}"
    );
    // Bearer and x-api-key still work beside it.
    for (name, value) in [
        ("authorization", bearer(&key.api_key)),
        ("x-api-key", key.api_key.clone()),
    ] {
        let answer = check(&mut envoy, described(&[(name, &value)], None, &[])).await;
        assert!(
            matches!(answer, Outcome::Allowed { .. }),
            "{name}: {answer:?}"
        );
    }

    // Not a header name: a refusal to start that names the setting.
    let refusal = crate::support::refusal_to_serve({
        let mut settings = server.settings.clone();
        settings.ext_authz.key_header = Some("x key".into());
        settings
    })
    .await;
    assert!(
        refusal.contains("KEYHOUSE_EXT_AUTHZ_KEY_HEADER"),
        "{refusal}"
    );
}

/// With the database down, a key no replica has cached is a 503 denial, never a pass and never a
/// gRPC error that Envoy's `failure_mode_allow` could turn into one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_storage_down_is_a_503_denial() {
    let pg = std::sync::Arc::new(
        tokio::task::spawn_blocking(crate::verify_replicas::ThrowawayPostgres::start_new)
            .await
            .expect("start a throwaway PostgreSQL"),
    );
    let mut settings = keyhouse_server::ServerSettings::new(pg.url());
    settings.domain.keys.bcrypt_cost = 4;
    settings.domain.encryption_keys = Some(keyhouse_domain::config::Secret::new(
        keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key(),
    ));
    settings.domain.platform_env = Some(keyhouse_domain::platform_keys::EnvFallback::default());
    let server = TestServer::serve(settings, None).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let cached = mint(&mut owner, named("cached")).await;
    let uncached = mint(&mut owner, named("uncached")).await;
    let mut envoy = envoy(&server).await;
    let request = |key: &str| described(&[("x-api-key", key)], None, &[]);
    let answer = check(&mut envoy, request(&cached.api_key)).await;
    assert!(matches!(answer, Outcome::Allowed { .. }), "{answer:?}");

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.stop()
    })
    .await
    .expect("stop PostgreSQL");

    let answer = check(&mut envoy, request(&uncached.api_key)).await;
    assert_denied(&answer, 503, "unavailable");
    let Outcome::Denied { headers, .. } = answer else {
        unreachable!("denied above");
    };
    assert_eq!(headers["retry-after"], "1");
    // A cached key is still let through.
    let answer = check(&mut envoy, request(&cached.api_key)).await;
    assert!(matches!(answer, Outcome::Allowed { .. }), "{answer:?}");
}

/// grpcurl, through reflection alone: it lists the service, describes it and calls Check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_check_through_reflection() {
    let grpcurl = grpcurl();
    let server = TestServer::start(Backend::Sqlite).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let key = mint(&mut owner, named("grpcurl")).await;
    let target = server.addr.to_string();
    let run = |args: &[&str]| {
        let grpcurl = grpcurl.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(grpcurl)
                    .args(&args)
                    .output()
                    .expect("run grpcurl")
            })
            .await
            .expect("join")
        }
    };

    let listed = run(&["-plaintext", &target, "list"]).await;
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        listed_text
            .lines()
            .any(|l| l.trim() == "envoy.service.auth.v3.Authorization"),
        "{listed_text}"
    );

    let call = |key: &str| {
        json!({
            "attributes": {
                "source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 51234}}},
                "request": {"http": {"method": "POST", "path": "/v1/chat/completions",
                                      "headers": {"authorization": format!("Bearer {key}")}}},
                "contextExtensions": {"keyhouse_scopes": "llm:inference"}
            }
        })
        .to_string()
    };
    let answer = run(&[
        "-plaintext",
        "-d",
        &call(&key.api_key),
        &target,
        "envoy.service.auth.v3.Authorization/Check",
    ])
    .await;
    assert!(answer.status.success(), "{answer:?}");
    let body: Value = serde_json::from_slice(&answer.stdout).expect("grpcurl prints JSON");
    let headers = body["okResponse"]["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("an OK response: {body}"));
    assert!(
        headers
            .iter()
            .any(|h| h["header"]["key"] == "x-keyhouse-user-id" && h["header"]["value"] == "alice"),
        "{body}"
    );

    let unknown = ApiKey::generate().expect("key");
    let answer = run(&[
        "-plaintext",
        "-d",
        &call(unknown.expose()),
        &target,
        "envoy.service.auth.v3.Authorization/Check",
    ])
    .await;
    assert!(answer.status.success(), "{answer:?}");
    let body: Value = serde_json::from_slice(&answer.stdout).expect("grpcurl prints JSON");
    assert_eq!(
        body["deniedResponse"]["status"]["code"], "Unauthorized",
        "{body}"
    );
}

/// The version of grpcurl-rs the test installs.
const GRPCURL_VERSION: &str = "0.2.1";

/// grpcurl (the Rust port, `grpcurl-rs` on crates.io), installed with `cargo install --locked`
/// once per version into the build's scratch directory, never into the source tree. A failed
/// install fails the test.
fn grpcurl() -> std::path::PathBuf {
    static INSTALLED: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("grpcurl-rs-{GRPCURL_VERSION}"));
            let binary = root.join("bin/grpcurl");
            if !binary.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = std::process::Command::new(cargo)
                    .args(["install", "--locked", "--quiet", "grpcurl-rs", "--version"])
                    .arg(GRPCURL_VERSION)
                    .arg("--root")
                    .arg(&root)
                    // Its own build directory: the suite's may be locked by the running build.
                    .env("CARGO_TARGET_DIR", root.join("build"))
                    .stdin(std::process::Stdio::null())
                    .status()
                    .expect("cargo, to install grpcurl-rs");
                assert!(
                    status.success() && binary.exists(),
                    "cargo install grpcurl-rs {GRPCURL_VERSION} failed; the test needs it"
                );
                let _ = std::fs::remove_dir_all(root.join("build"));
            }
            binary
        })
        .clone()
}
