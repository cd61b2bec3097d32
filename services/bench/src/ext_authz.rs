//! Benchmark 18: Envoy's ext_authz `Check` and VerifyKey, for one cached key, each against the
//! empty unary RPC (grpc.health.v1.Health/Check), in turns in one run. `Check` is what an Envoy
//! gateway sends for every request it admits (Envoy caches no verdict): once with the dozen
//! headers Envoy sends by default (every request header), once with only `authorization`, as
//! the README's configuration (`allowed_headers`) sends it. Every request is encoded once,
//! before the run, so that the generator's cost per call is the same for all four.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use keyhouse_proto::v1 as pb;

use crate::load::{self, Call, ms};
use crate::setup;
use crate::{Args, encoded};

/// A chat completion as Envoy describes it to the check: the peer, the route, and the request's
/// headers, all of them (Envoy's default) or only the key's.
fn check_request(key: &str, every_header: bool) -> CheckRequest {
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
    .filter(|(name, _)| every_header || *name == "authorization")
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
fn check_call(key: &str, every_header: bool) -> Call {
    encoded::call(
        "/envoy.service.auth.v3.Authorization/Check",
        &check_request(key, every_header),
        |answer: &CheckResponse| matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
    )
}

/// A VerifyKey with the same scope and address, counted a success only when valid.
fn verify_call(key: &str) -> Call {
    encoded::call(
        "/keyhouse.v1.UserKeyService/VerifyKey",
        &pb::VerifyKeyRequest {
            api_key: key.to_owned(),
            required_scopes: vec!["llm:inference".into()],
            client_ip: "10.1.2.3".into(),
        },
        |answer: &pb::VerifyKeyResponse| answer.valid,
    )
}

/// The empty RPC, encoded the same way.
fn empty_call() -> Call {
    encoded::call(
        "/grpc.health.v1.Health/Check",
        &tonic_health::pb::HealthCheckRequest::default(),
        |_: &tonic_health::pb::HealthCheckResponse| true,
    )
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
    for every_header in [true, false] {
        anyhow::ensure!(
            load::closed(&chans, check_call(&key.api_key, every_header), 1, 1)
                .await
                .failures
                == 0,
            "Check did not let the benchmark's key through"
        );
    }
    let sides = [
        ("Health/Check (empty)", empty_call()),
        (
            "Authorization/Check, every header (Envoy's default: 12)",
            check_call(&key.api_key, true),
        ),
        (
            "Authorization/Check, `authorization` only (`allowed_headers`)",
            check_call(&key.api_key, false),
        ),
        ("VerifyKey (cached)", verify_call(&key.api_key)),
    ];
    let saturated = load::alternating(
        sides
            .each_ref()
            .map(|(_, call)| (chans.as_slice(), call.clone())),
        args.concurrency,
        args.seconds,
    )
    .await;
    let mut halves = Vec::new();
    for ((_, call), sat) in sides.iter().zip(&saturated) {
        halves.push(load::open(&chans, call.clone(), sat.per_second / 2.0, args.seconds).await);
    }
    println!(
        "## 18. Envoy ext_authz Check and VerifyKey (cached) vs an empty unary RPC (grpc.health.v1.Health/Check), requests encoded once\n"
    );
    println!(
        "| RPC | saturated req/s | server CPU per call | at half saturation: req/s | p50 | p99 | failures |\n|---|---|---|---|---|---|---|"
    );
    for (((name, _), sat), half) in sides.iter().zip(&saturated).zip(&halves) {
        println!(
            "| {name} | {:.0} | {:.1} µs | {:.0} | {} | {} | {} |",
            sat.per_second,
            sat.server_cpu_per_call.as_secs_f64() * 1e6,
            half.per_second,
            ms(half.p50),
            ms(half.p99),
            sat.failures + half.failures
        );
    }
    let cpu = |i: usize| saturated[i].server_cpu_per_call.as_secs_f64();
    println!(
        "\nServer CPU per call over the empty RPC's: Check with every header **{:.2}×**, Check with `authorization` only **{:.2}×**, VerifyKey **{:.2}×**",
        cpu(1) / cpu(0),
        cpu(2) / cpu(0),
        cpu(3) / cpu(0)
    );
    let empty = saturated[0].per_second;
    println!(
        "\nThroughput ratios to the empty RPC: Check with every header **{:.2}**, Check with `authorization` only **{:.2}**, VerifyKey **{:.2}** (goal ≥ 0.8)\n",
        saturated[1].per_second / empty,
        saturated[2].per_second / empty,
        saturated[3].per_second / empty
    );
    Ok(())
}
