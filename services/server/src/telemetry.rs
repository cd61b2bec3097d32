//! Logging, and traces over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The default log filter keeps sqlx quiet: it
//! would log every statement at INFO.
//!
//! Spans exported are keyhouse's own: one per request (`trace_request`), the service methods,
//! storage calls and bcrypt. Their fields are routes, method names, ids and counts; never a key,
//! a token or a secret value.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

pub const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,h2=warn,hyper=warn,tower=warn";

/// Set once traces are exported; until then no request gets a request span.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

pub fn traces_enabled() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// Keeps the trace exporter alive; dropping it exports the spans still queued.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    /// Held for its `Drop`.
    _traces: Option<Traces>,
}

/// Installs the global subscriber. `KEYHOUSE_LOG` (or `RUST_LOG`) sets the log filter; the
/// standard `OTEL_*` variables configure traces, and `service` is the default
/// `OTEL_SERVICE_NAME`. Fails on a trace configuration keyhouse cannot honour.
pub fn init(format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    Ok(install(format, Traces::from_env(service)?))
}

/// As `init`, but traces go to `endpoint` whatever the environment says: for benchmarks.
pub fn init_exporting_to(
    format: LogFormat,
    service: &str,
    endpoint: &str,
) -> anyhow::Result<Telemetry> {
    Ok(install(format, Some(Traces::to(endpoint, service)?)))
}

fn install(format: LogFormat, traces: Option<Traces>) -> Telemetry {
    let filter = std::env::var("KEYHOUSE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Pretty => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    // Only keyhouse's own spans: the exporter's own HTTP/2 client must not trace itself. Source
    // locations, thread names and busy/idle times are left out: they made every span larger to
    // encode and ship without saying more than the span's name does.
    let otel = traces.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.provider.tracer("keyhouse"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("keyhouse", tracing::Level::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
    TRACES_ON.store(traces.is_some(), Ordering::Relaxed);
    Telemetry { _traces: traces }
}

struct Traces {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Traces {
    fn from_env(service: &str) -> anyhow::Result<Option<Self>> {
        let Some((_, endpoint)) = first_env(&[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]) else {
            return Ok(None);
        };
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
        if disabled {
            return Ok(None);
        }
        if let Some((var, value)) = first_env(&[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]) && value != "grpc"
        {
            bail!("{var}={value} is not supported: keyhouse exports traces over OTLP/gRPC only");
        }
        Self::to(&endpoint, service).map(Some)
    }

    fn to(endpoint: &str, service: &str) -> anyhow::Result<Self> {
        let tls = tls_config(endpoint)?;
        // The SDK exports from its own thread, and the gRPC client needs a Tokio reactor: it
        // gets one of its own, so that export never queues behind the server's tasks and can
        // still flush while the server's runtime shuts down.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .context("cannot start the trace exporter")?;
        let built = {
            let _entered = runtime.enter();
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint);
            match tls {
                Some(tls) => builder.with_tls_config(tls).build(),
                None => builder.build(),
            }
        };
        let exporter = match built {
            Ok(exporter) => exporter,
            Err(e) => {
                runtime.shutdown_background();
                bail!("cannot export traces: {e}");
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(service))
            .with_batch_exporter(OnRuntime {
                inner: Arc::new(exporter),
                runtime: runtime.handle().clone(),
                failing: Arc::new(AtomicBool::new(false)),
            })
            .build();
        Ok(Self {
            provider,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "spans queued at shutdown may not have been exported");
        }
        // Not a blocking drop: the guard is dropped at the end of an async main.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `service.name` is the binary's name unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// names it.
fn resource(service: &str) -> Resource {
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named {
        builder.build()
    } else {
        builder.with_service_name(service.to_owned()).build()
    }
}

/// TLS for an `https` endpoint (or a schemeless one without `OTEL_EXPORTER_OTLP_INSECURE`): the
/// public web roots, plus the CA in `OTEL_EXPORTER_OTLP_CERTIFICATE` when one is given.
fn tls_config(endpoint: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
    let insecure = first_env(&[
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
    ])
    .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
    let https = endpoint.starts_with("https://") || !(endpoint.contains("://") || insecure);
    if !https {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new().with_webpki_roots();
    if let Some((var, path)) = first_env(&[
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]) {
        let pem = std::fs::read(&path).with_context(|| format!("{var}: cannot read {path}"))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    Ok(Some(tls))
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The first of `vars` that is set, with its value: signal-specific variables come first.
fn first_env(vars: &[&'static str]) -> Option<(&'static str, String)> {
    vars.iter()
        .find_map(|var| env(var).map(|value| (*var, value)))
}

/// The OTLP exporter, run on the exporter's own runtime.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    /// Whether the last export failed: a collector that is down is logged once, not per batch.
    failing: Arc<AtomicBool>,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let result = self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|e| {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    e.to_string(),
                ))
            });
        let failed = result.is_err();
        if self.failing.swap(failed, Ordering::Relaxed) != failed {
            match &result {
                Err(e) => tracing::warn!(error = %e, "cannot export traces; spans are dropped"),
                Ok(()) => tracing::info!("trace export resumed"),
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before the exporter is shared with any export.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// One server span per request, a child of the caller's W3C `traceparent` when it sent one.
/// gRPC calls (native and grpc-web) get `rpc.*` attributes and are named `service/method`; REST
/// requests get `http.*` attributes and are named by their route template. Requests for no known
/// method or route are named `unmatched` and keep no path: it is the caller's free text.
///
/// The span lasts until the response body ends, so a streaming call's span covers the stream and
/// takes its status from the trailers.
pub async fn trace_request(req: Request, next: Next) -> Response {
    let verb = req.method().clone();
    let grpc = crate::request_name::is_grpc(req.headers());
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let path = req.uri().path();
    let name = crate::request_name::method_label(grpc, route, path, &verb);
    let known = name != "unmatched";
    let span = if grpc {
        let (service, method) = if known {
            path.trim_start_matches('/').split_once('/').unzip()
        } else {
            (None, None)
        };
        tracing::info_span!(
            target: "keyhouse::request",
            "request",
            otel.name = name.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            http.request.method = verb.as_str(),
            http.response.status_code = Empty,
        )
    } else {
        tracing::info_span!(
            target: "keyhouse::request",
            "request",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = verb.as_str(),
            http.route = route.filter(|_| known),
            url.path = known.then_some(path),
            http.response.status_code = Empty,
        )
    };
    let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
    // Fails only when the span is disabled, and then there is nothing to attach the parent to.
    let _ = span.set_parent(parent);
    let response = next.run(req).instrument(span.clone()).await;
    match crate::request_name::grpc_status(grpc, &response) {
        Some(code) => record_grpc_status(&span, code),
        None => {
            span.record(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            );
            if response.status().is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
    }
    response.map(|body| axum::body::Body::new(UntilEnd { body, span }))
}

fn record_grpc_status(span: &tracing::Span, code: u16) {
    span.record("rpc.grpc.status_code", i64::from(code));
    // The codes that mean the server failed, not the caller.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "error");
    }
}

/// A response body that holds its request's span until the body ends, and records the gRPC
/// status its trailers carry.
struct UntilEnd {
    body: axum::body::Body,
    span: tracing::Span,
}

impl http_body::Body for UntilEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame
                .trailers_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        {
            record_grpc_status(&this.span, code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UntilEnd {
    fn drop(&mut self) {
        // An exported span ends when it is last exited: entering it once more makes that the
        // moment the body is done with (finished, or dropped because the caller hung up).
        let _entered = self.span.enter();
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
