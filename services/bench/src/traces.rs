//! Benchmark 8, the cost of traces: the same calls on a server exporting one span per request to
//! an OTLP collector (in this process, as a sidecar would be on the host) and on the untraced
//! server of the other benchmarks, taking turns in one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhouse_server::telemetry::{self, LogFormat};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::transport::Channel;

use crate::Args;
use crate::load::{self, Call};
use crate::setup::{self, Server};

/// Counts the spans it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Measures `untraced` (its channels and a cached key) against a traced server started here.
/// Installs the process's trace exporter: run it last.
pub async fn run(
    args: &Args,
    server_rt: &tokio::runtime::Handle,
    untraced: &[Channel],
    untraced_key: &str,
    verify: impl Fn(String) -> Call,
    empty: impl Fn() -> Call,
) -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let guard = telemetry::init_exporting_to(LogFormat::Pretty, "keyhouse-bench", &endpoint)?;

    let dir = std::env::temp_dir().join(format!(
        "keyhouse-bench-traced-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let traced: Server = setup::sqlite(&dir, args, server_rt).await?;
    let mut chans = Vec::new();
    for _ in 0..args.connections {
        chans.push(traced.channel().await?);
    }
    let key = traced
        .key(
            "bench",
            keyhouse_proto::v1::CreateKeyRequest {
                name: "bench".into(),
                ..Default::default()
            },
        )
        .await?
        .api_key;
    load::closed(&chans, verify(key.clone()), 1, 1).await;

    let before = collector.spans.load(Ordering::Relaxed);
    let [plain_verify, traced_verify] = load::alternating(
        [
            (untraced, verify(untraced_key.to_owned())),
            (&chans, verify(key.clone())),
        ],
        args.concurrency,
        args.seconds,
    )
    .await;
    let [plain_empty, traced_empty] = load::alternating(
        [(untraced, empty()), (&chans, empty())],
        args.concurrency,
        args.seconds,
    )
    .await;
    drop(guard); // flushes what is queued
    let exported = collector.spans.load(Ordering::Relaxed) - before;
    let requests = (traced_verify.per_second + traced_empty.per_second) * args.seconds as f64;

    let sampler = match std::env::var("OTEL_TRACES_SAMPLER") {
        Ok(s) => format!(
            "OTEL_TRACES_SAMPLER={s} OTEL_TRACES_SAMPLER_ARG={}",
            std::env::var("OTEL_TRACES_SAMPLER_ARG").unwrap_or_default()
        ),
        Err(_) => "every request sampled".to_owned(),
    };
    println!("## 8. Traces exported vs none (default batch settings, {sampler})\n");
    println!(
        "| RPC | untraced req/s | traced req/s | traced / untraced | failures |\n|---|---|---|---|---|"
    );
    for (name, plain, traced) in [
        ("VerifyKey (cached)", &plain_verify, &traced_verify),
        ("Health/Check (empty)", &plain_empty, &traced_empty),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | **{:.2}** | {} |",
            plain.per_second,
            traced.per_second,
            traced.per_second / plain.per_second,
            plain.failures + traced.failures
        );
    }
    println!(
        "\nSpans the collector received: {exported} for about {requests:.0} traced requests \
         ({:.0}%); the others were not sampled or were dropped by the exporter's bounded queue \
         (never a request).\n",
        100.0 * exported as f64 / requests.max(1.0)
    );
    drop(traced);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
