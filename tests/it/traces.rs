//! Traces: the real `keyhouse serve` exports its spans over OTLP/gRPC to a collector this test
//! runs in process. Spans continue the caller's W3C trace, storage and bcrypt are child spans,
//! what is queued is flushed on SIGTERM, and no attribute holds a key, a token or a secret.

use std::sync::{Arc, Mutex};

use keyhouse_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use pb::platform_key_service_client::PlatformKeyServiceClient;
use pb::user_key_service_client::UserKeyServiceClient;
use tonic::{Request, Response, Status};

use crate::binary::{self, Keyhouse};

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received
            .lock()
            .expect("lock")
            .push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Listens on a free port, over TLS when given a certificate and key (PEM); returns the
    /// endpoint to give `OTEL_EXPORTER_OTLP_ENDPOINT`.
    async fn start(&self, tls: Option<(Vec<u8>, Vec<u8>)>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut server = tonic::transport::Server::builder();
        let scheme = match tls {
            Some((cert, key)) => {
                let identity = tonic::transport::Identity::from_pem(cert, key);
                server = server
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .expect("TLS config");
                "https"
            }
            None => "http",
        };
        tokio::spawn(
            server
                .add_service(TraceServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("{scheme}://{addr}")
    }

    /// Every span received, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let received = self.received.lock().expect("lock");
        let mut out = Vec::new();
        for request in received.iter() {
            for resource_spans in &request.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| text(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// A fresh W3C trace context: (trace id, parent span id, `traceparent` header value).
fn caller_context() -> ([u8; 16], [u8; 8], String) {
    let id = uuid::Uuid::new_v4();
    let trace_id = *id.as_bytes();
    let span_id: [u8; 8] = trace_id[..8].try_into().expect("8 bytes");
    let header = format!("00-{}-{}-01", hex::encode(trace_id), hex::encode(span_id));
    (trace_id, span_id, header)
}

/// True when `span` descends from the span `ancestor` in `trace`.
fn descends_from(span: &Span, ancestor: &Span, trace: &[&Span]) -> bool {
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        if parent == ancestor.span_id {
            return true;
        }
        parent = match trace.iter().find(|s| s.span_id == parent) {
            Some(s) => s.parent_span_id.clone(),
            None => return false,
        };
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_spans_reach_an_otlp_collector_under_the_callers_trace_without_secrets() {
    let collector = Collector::default();
    let endpoint = collector.start(None).await;
    let encryption_key = keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key();
    // The default 5 s batch delay is far longer than this test: every span below reaches the
    // collector only because SIGTERM flushes the queue.
    let kh = Keyhouse::on_sqlite()
        .env("KEYHOUSE_ENCRYPTION_KEYS", &encryption_key)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000");
    kh.run(&["migrate"]);
    let token = kh.session("alice", "user");
    let admin = kh.session("root", "admin");
    let (server, addr) = kh.serve().await;

    // CreateKey over native gRPC, as a call inside the caller's trace.
    let (grpc_trace, grpc_parent, traceparent) = caller_context();
    let mut users = UserKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&token),
    );
    let mut request = tonic::Request::new(pb::CreateKeyRequest {
        name: "traced".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    let issued = users
        .create_key(request)
        .await
        .expect("create")
        .into_inner();

    // The same over REST.
    let (rest_trace, rest_parent, traceparent) = caller_context();
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/account/uc-api-keys"))
        .header("authorization", format!("Bearer {token}"))
        .header("traceparent", traceparent)
        .json(&serde_json::json!({"name": "traced over REST"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let rest_key = res.json::<serde_json::Value>().await.expect("JSON")["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();

    // A key pasted into a path that matches no route: the path is not recorded.
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/keys/{}", issued.api_key))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);
    // And into a gRPC method name of a real service.
    let res = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an HTTP/2 client")
        .post(format!(
            "http://{addr}/keyhouse.v1.UserKeyService/{}",
            issued.api_key
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8; 5])
        .send()
        .await
        .expect("POST");
    assert_eq!(
        res.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..]),
        "an unknown method is UNIMPLEMENTED"
    );

    // A platform secret, written and read back, and a key verified: their values must not
    // appear in any span either.
    let platform_secret = "sk-or-v1-traced-platform-secret-0001";
    let mut platform = PlatformKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&admin),
    );
    platform
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openrouter".into(),
            api_key: platform_secret.into(),
        })
        .await
        .expect("update");
    platform
        .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
            name: "openrouter".into(),
            reason: "trace test".into(),
        })
        .await
        .expect("decrypt");
    let verdict = users
        .verify_key(pb::VerifyKeyRequest {
            api_key: issued.api_key.clone(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(verdict.valid);

    // A stream's span lasts as long as the stream, here until the caller hangs up.
    let mut stream = platform
        .watch_platform_keys(pb::WatchPlatformKeysRequest {
            include_secret: false,
        })
        .await
        .expect("watch")
        .into_inner();
    stream
        .message()
        .await
        .expect("event")
        .expect("an initial event");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
    binary::stop(server).await;

    let spans = collector.spans();
    // `service.name` defaults to the binary's name.
    let served: Vec<&(String, Span)> = spans.iter().filter(|(s, _)| s == "keyhouse").collect();

    // The gRPC call: one server span, child of the caller's span, with rpc.* attributes.
    let grpc: Vec<&Span> = served
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.trace_id == grpc_trace)
        .collect();
    let call: Vec<&&Span> = grpc
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(call.len(), 1, "one server span for CreateKey: {grpc:#?}");
    let call = *call[0];
    assert_eq!(call.name, "keyhouse.v1.UserKeyService/CreateKey");
    assert_eq!(
        call.parent_span_id, grpc_parent,
        "the caller's span is the parent"
    );
    let a = &call.attributes;
    assert_eq!(text(a, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        text(a, "rpc.service").as_deref(),
        Some("keyhouse.v1.UserKeyService")
    );
    assert_eq!(text(a, "rpc.method").as_deref(), Some("CreateKey"));
    assert_eq!(int(a, "rpc.grpc.status_code"), Some(0), "{a:?}");

    // Its storage and bcrypt work are spans below it, in the same trace.
    let storage = grpc
        .iter()
        .find(|s| s.name == "user_keys.insert")
        .unwrap_or_else(|| panic!("a storage span for the insert: {grpc:#?}"));
    assert_eq!(storage.kind, SpanKind::Client as i32);
    assert_eq!(
        text(&storage.attributes, "db.system.name").as_deref(),
        Some("sqlite")
    );
    let bcrypt = grpc
        .iter()
        .find(|s| s.name == "bcrypt")
        .unwrap_or_else(|| panic!("a bcrypt span: {grpc:#?}"));
    assert_eq!(
        text(&bcrypt.attributes, "bcrypt.operation").as_deref(),
        Some("hash")
    );
    for child in [storage, bcrypt] {
        assert!(
            descends_from(child, call, &grpc),
            "{} is inside the CreateKey span",
            child.name
        );
    }

    // The REST call: a server span named by its route, with http.* attributes.
    let rest: Vec<&Span> = served
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.trace_id == rest_trace && s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(
        rest.len(),
        1,
        "one server span for the REST call: {rest:#?}"
    );
    let rest = rest[0];
    assert_eq!(rest.name, "POST /api/v1/account/uc-api-keys");
    assert_eq!(rest.parent_span_id, rest_parent);
    assert_eq!(
        text(&rest.attributes, "http.route").as_deref(),
        Some("/api/v1/account/uc-api-keys")
    );
    assert_eq!(
        int(&rest.attributes, "http.response.status_code"),
        Some(201)
    );

    let watch = served
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "keyhouse.v1.PlatformKeyService/WatchPlatformKeys")
        .expect("a span for the watch");
    assert!(
        watch.end_time_unix_nano - watch.start_time_unix_nano >= 300_000_000,
        "the watch's span covers the stream, not just its first response"
    );

    // Nothing exported (names, attributes, events, resources) holds a secret.
    let exported = format!("{:?}", collector.received.lock().expect("lock"));
    for (what, secret) in [
        ("the gRPC-issued key", issued.api_key.as_str()),
        ("the REST-issued key", rest_key.as_str()),
        ("the user's session token", token.as_str()),
        ("the admin's session token", admin.as_str()),
        ("the platform secret", platform_secret),
        ("the encryption key", encryption_key.as_str()),
    ] {
        assert!(!exported.contains(secret), "{what} is in an exported span");
        assert!(
            !exported.contains(&secret[12..]),
            "part of {what} is in an exported span"
        );
    }
}

#[test]
fn an_otlp_protocol_other_than_grpc_is_refused_by_name() {
    let kh = Keyhouse::on_sqlite()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let out = kh.command(&["migrate"]).output().expect("run keyhouse");
    assert!(!out.status.success(), "keyhouse refuses to start");
    let log = kh.log_text();
    assert!(
        log.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf is not supported"),
        "the error names the variable: {log}"
    );
}

/// A CA and a certificate it signed for 127.0.0.1, made with the `openssl` command:
/// (CA certificate, server certificate, server key), all PEM.
fn test_certificates(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let openssl = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";
    openssl(&format!(
        "req -x509 {ec} -subj /CN=keyhouse-test-ca -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign -keyout ca.key -out ca.pem"
    ));
    openssl(&format!(
        "req {ec} -subj /CN=127.0.0.1 -keyout leaf.key -out leaf.csr"
    ));
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write");
    openssl(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile leaf.ext -out leaf.pem",
    );
    let read = |name: &str| std::fs::read(dir.join(name)).expect("read");
    (read("ca.pem"), read("leaf.pem"), read("leaf.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_tls_trusting_the_configured_ca() {
    let kh = Keyhouse::on_sqlite().env(
        "KEYHOUSE_ENCRYPTION_KEYS",
        &keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key(),
    );
    let (ca, cert, key) = test_certificates(&kh.dir.0);
    let collector = Collector::default();
    let endpoint = collector.start(Some((cert, key))).await;
    assert!(endpoint.starts_with("https://"));
    std::fs::write(kh.path("collector-ca.pem"), ca).expect("write");
    let ca_path = kh.path("collector-ca.pem");
    let kh = kh
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca_path.to_str().expect("utf-8"),
        )
        .env("OTEL_SERVICE_NAME", "keyhouse-over-tls");
    kh.run(&["migrate"]);
    let token = kh.session("alice", "user");
    let (server, addr) = kh.serve().await;
    let mut users = UserKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&token),
    );
    users
        .create_key(pb::CreateKeyRequest {
            name: "traced over TLS".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    binary::stop(server).await;

    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|(service, span)| service == "keyhouse-over-tls"
                && span.name == "keyhouse.v1.UserKeyService/CreateKey"),
        "the CreateKey span arrived over TLS under OTEL_SERVICE_NAME; log:\n{}",
        kh.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_one_warning_and_no_request() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let kh = Keyhouse::on_sqlite()
        .env(
            "KEYHOUSE_ENCRYPTION_KEYS",
            &keyhouse_domain::crypto::fernet_ring::KeyRing::generate_key(),
        )
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    kh.run(&["migrate"]);
    let token = kh.session("alice", "user");
    // What the server logs, after what the operator commands did (each warns once too).
    let start = kh.log_text().len();
    let served = || kh.log_text()[start..].to_owned();
    let (server, addr) = kh.serve().await;
    let mut users = UserKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&token),
    );
    let warning = "cannot export traces";
    let mut rounds = 0;
    // Calls keep succeeding while export fails, batch after batch.
    while rounds < 20 || !served().contains(warning) {
        let key = users
            .create_key(pb::CreateKeyRequest {
                name: format!("while the collector is down {rounds}"),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        let verdict = users
            .verify_key(pb::VerifyKeyRequest {
                api_key: key.api_key,
                ..Default::default()
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verdict.valid);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        rounds += 1;
        assert!(rounds < 400, "no export warning; log:\n{}", served());
    }
    binary::stop(server).await;
    let log = served();
    assert_eq!(
        log.matches(warning).count(),
        1,
        "one warning while the collector stays down; log:\n{log}"
    );
}
