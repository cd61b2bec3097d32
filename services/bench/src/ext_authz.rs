//! Benchmark 18: Envoy's ext_authz `Check` and VerifyKey, for one cached key, each against the
//! empty unary RPC (grpc.health.v1.Health/Check), in turns in one run. `Check` is what an Envoy
//! gateway sends for every request it admits (Envoy caches no verdict), carrying the request's
//! headers as Envoy describes them.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tonic::transport::Channel;

use crate::load::{self, Call, ms};
use crate::setup;
use crate::{Args, scenarios};

/// A chat completion as Envoy describes it to the check: a dozen headers, the peer, the route.
fn check_request(key: &str) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", "gateway.example.com"),
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":scheme", "https"),
        ("authorization", &format!("Bearer {key}")),
        ("content-type", "application/json"),
        ("content-length", "187"),
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("x-request-id", "0b6f3c1e-6a7d-4a55-9d0e-5f1c2b3a4d5e"),
        ("x-forwarded-proto", "https"),
        ("x-envoy-expected-rq-timeout-ms", "60000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.1.2.3".into(),
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
                    host: "gateway.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([(
                "keyhouse_scopes".to_owned(),
                "llm:inference".to_owned(),
            )]),
            ..Default::default()
        }),
    }
}

/// A Check that counts as a success only when the key is let through.
fn check_call(key: &str) -> Call {
    let request = check_request(key);
    Arc::new(move |channel: Channel| {
        let request = request.clone();
        Box::pin(async move {
            AuthorizationClient::new(channel)
                .check(request)
                .await
                .is_ok_and(|r| {
                    matches!(
                        r.into_inner().http_response,
                        Some(HttpResponse::OkResponse(_))
                    )
                })
        })
    })
}

/// A VerifyKey with the same scope and address, counted a success only when valid.
fn verify_call(key: &str) -> Call {
    let request = pb::VerifyKeyRequest {
        api_key: key.to_owned(),
        required_scopes: vec!["llm:inference".into()],
        client_ip: "10.1.2.3".into(),
    };
    Arc::new(move |channel: Channel| {
        let request = request.clone();
        Box::pin(async move {
            UserKeyServiceClient::new(channel)
                .verify_key(request)
                .await
                .is_ok_and(|r| r.into_inner().valid)
        })
    })
}

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("keyhouse-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let outcome = run_in(args, rt, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run_in(
    args: &Args,
    rt: &tokio::runtime::Handle,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let server = setup::sqlite(dir, args, rt).await?;
    let chans = server.channels(args.connections).await?;
    let key = server
        .key(
            "envoy",
            pb::CreateKeyRequest {
                name: "envoy".into(),
                ..Default::default()
            },
        )
        .await?;
    // Warm the cache; and a Check that is not let through is a broken benchmark, not a number.
    anyhow::ensure!(
        load::closed(&chans, check_call(&key.api_key), 1, 1)
            .await
            .failures
            == 0,
        "Check did not let the benchmark's key through"
    );
    let [empty, check, verify] = load::alternating(
        [
            (&chans, scenarios::empty_call()),
            (&chans, check_call(&key.api_key)),
            (&chans, verify_call(&key.api_key)),
        ],
        args.concurrency,
        args.seconds,
    )
    .await;
    let halves = [
        load::open(
            &chans,
            scenarios::empty_call(),
            empty.per_second / 2.0,
            args.seconds,
        )
        .await,
        load::open(
            &chans,
            check_call(&key.api_key),
            check.per_second / 2.0,
            args.seconds,
        )
        .await,
        load::open(
            &chans,
            verify_call(&key.api_key),
            verify.per_second / 2.0,
            args.seconds,
        )
        .await,
    ];
    println!(
        "## 18. Envoy ext_authz Check and VerifyKey (cached) vs an empty unary RPC (grpc.health.v1.Health/Check)\n"
    );
    println!(
        "| RPC | saturated req/s | at half saturation: req/s | p50 | p99 | failures |\n|---|---|---|---|---|---|"
    );
    for ((name, sat), half) in [
        ("Health/Check (empty)", &empty),
        ("Authorization/Check (ext_authz, cached key)", &check),
        ("VerifyKey (cached)", &verify),
    ]
    .into_iter()
    .zip(&halves)
    {
        println!(
            "| {name} | {:.0} | {:.0} | {} | {} | {} |",
            sat.per_second,
            half.per_second,
            ms(half.p50),
            ms(half.p99),
            sat.failures + half.failures
        );
    }
    println!(
        "\nThroughput ratio Check / empty RPC: **{:.2}**, VerifyKey / empty RPC: **{:.2}** (goal ≥ 0.8)\n",
        check.per_second / empty.per_second,
        verify.per_second / empty.per_second
    );
    Ok(())
}
