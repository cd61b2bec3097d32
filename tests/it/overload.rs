//! What keeps the listener standing under abuse and spreads load: callers' gRPC deadlines,
//! size limits on headers and messages, slow and idle clients cut off (while idle gRPC channels
//! and silent watch streams are kept), and a maximum connection age that makes clients reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::binary::Keyhouse;
use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(a_call_past_its_deadline_answers_deadline_exceeded_and_writes_nothing);

/// CreateKey sent as a bare HTTP/2 request, so the answer can only come from the server: the
/// generated client enforces the deadline itself as well and would answer CANCELLED first.
async fn create_key_with_deadline(server: &TestServer, token: &str, timeout: &str) -> String {
    let message = pb::CreateKeyRequest {
        name: "late".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let res = client
        .post(server.rest("/keyhouse.v1.UserKeyService/CreateKey"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .bearer_auth(token)
        .body(frame)
        .send()
        .await
        .expect("an answer");
    assert_eq!(res.status(), 200);
    res.headers()
        .get("grpc-status")
        .expect("a trailers-only answer carries grpc-status in its headers")
        .to_str()
        .expect("ascii")
        .to_owned()
}

async fn a_call_past_its_deadline_answers_deadline_exceeded_and_writes_nothing(backend: Backend) {
    // At cost 12 one bcrypt takes far longer than the 20 ms the caller allows.
    let server = TestServer::start_with(backend, |s| s.domain.keys.bcrypt_cost = 12).await;
    let token = server.session("alice", Role::User).await;
    let deadline_exceeded = (Code::DeadlineExceeded as i32).to_string();
    assert_eq!(
        create_key_with_deadline(&server, &token, "20m").await,
        deadline_exceeded
    );
    // A deadline already spent never reaches the service.
    assert_eq!(
        create_key_with_deadline(&server, &token, "0n").await,
        deadline_exceeded
    );

    // A key made in full after them: by the time it exists, the cancelled hash has finished too,
    // and still only this key is stored.
    let mut user = server.user_client(Some(&token)).await;
    let made = user
        .create_key(pb::CreateKeyRequest {
            name: "on time".into(),
            ..Default::default()
        })
        .await
        .expect("a call with no deadline completes")
        .into_inner();
    let listed = user
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = listed.keys.iter().map(|k| k.key_id.clone()).collect();
    assert_eq!(ids, [made.key_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_over_the_limit_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start(Backend::Sqlite).await;
    let token = server.session("alice", Role::User).await;
    let mut user = server.user_client(Some(&token)).await;
    let err = user
        .create_key(pb::CreateKeyRequest {
            name: "x".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .expect_err("a 100 KiB message is over the limit");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let listed = user
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("the server still answers")
        .into_inner();
    assert!(listed.keys.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_are_refused_on_http1_and_http2() {
    let server = TestServer::start(Backend::Sqlite).await;
    let big = "x".repeat(100 * 1024);

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nhost: keyhouse\r\nx-big: {big}\r\n\r\n");
    // The server may stop reading (and close) before the whole request is written.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("x-big", big.parse().expect("ascii"));
    health
        .check(request)
        .await
        .expect_err("100 KiB of HTTP/2 headers is over the limit");

    let res = server
        .http()
        .get(server.rest("/healthz"))
        .send()
        .await
        .expect("the server still answers");
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_headers_is_disconnected() {
    let server = TestServer::start_with(Backend::Sqlite, |s| s.header_read_timeout_secs = 1).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: keyhouse\r\nx-slow: ")
        .await
        .expect("write part of the headers");
    assert_http1_closed_by_server(tcp, "part of the headers").await;
    // One that sends nothing at all is cut off the same way.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    assert_http1_closed_by_server(tcp, "nothing").await;
}

async fn assert_http1_closed_by_server(tcp: TcpStream, sent: &str) {
    let answer = closed_by_server(tcp, sent).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

/// What the server wrote before it closed the connection.
async fn closed_by_server(mut tcp: TcpStream, sent: &str) -> Vec<u8> {
    // Well under the 10 s default, so only the configured timeout can end the connection here.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("a client that sent {sent} is still connected"));
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    // hyper's header read timeout does this, not keyhouse's own code: the test pins it.
    let server = TestServer::start_with(Backend::Sqlite, |s| s.header_read_timeout_secs = 1).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    // Two requests on one connection: it is kept alive, then left idle.
    for _ in 0..2 {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: keyhouse\r\n\r\n")
            .await
            .expect("send a request");
        let answer = read_http1_response(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_http1_closed_by_server(tcp, "two requests and then nothing").await;
}

/// One whole HTTP/1 response (headers and a `content-length` body) from a kept-alive connection.
async fn read_http1_response(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().expect("a length"))
                })
                .expect("a content-length");
            if answer.len() >= end + 4 + length {
                return text;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(8), tcp.read(&mut chunk))
            .await
            .expect("an answer within 8 s")
            .expect("read");
        assert!(n > 0, "closed in the middle of an answer");
        answer.extend_from_slice(&chunk[..n]);
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_inside_its_http2_greeting_is_disconnected() {
    let server = TestServer::start_with(Backend::Sqlite, |s| s.header_read_timeout_secs = 1).await;
    // The header of a SETTINGS frame holding one setting (6 bytes), which never comes.
    let settings_head: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0];
    for (sent, bytes) in [
        ("part of the HTTP/2 preface", H2_PREFACE[..16].to_vec()),
        ("the preface without SETTINGS", H2_PREFACE.to_vec()),
        (
            "the preface and part of SETTINGS",
            [H2_PREFACE, settings_head].concat(),
        ),
    ] {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(&bytes).await.expect("write");
        // Whatever the server said first (its own SETTINGS), it must then close.
        closed_by_server(tcp, sent).await;
    }
}

/// A connector that counts the connections a tonic channel opens.
async fn counted_channel(
    server: &TestServer,
    connections: Arc<AtomicUsize>,
) -> tonic::transport::Channel {
    Endpoint::from_shared(server.url())
        .expect("url")
        .connect_with_connector(tower::service_fn(move |uri: http::Uri| {
            connections.fetch_add(1, Ordering::SeqCst);
            async move {
                let addr = format!(
                    "{}:{}",
                    uri.host().expect("host"),
                    uri.port_u16().expect("port")
                );
                TcpStream::connect(addr)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_outlives_the_header_timeout() {
    let server = TestServer::start_with(Backend::Sqlite, |s| s.header_read_timeout_secs = 1).await;
    let connections = Arc::new(AtomicUsize::new(0));
    let channel = counted_channel(&server, connections.clone()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    // Idle before its first call and again after it, each time past the header timeout.
    for call in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("call {call} failed: {e:?}"));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the idle connection was closed and the client reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_watch_stream_outlives_the_header_timeout_on_grpc_and_grpc_web() {
    let server = TestServer::start_with(Backend::Sqlite, |s| s.header_read_timeout_secs = 1).await;
    let token = server.session("root", Role::Admin).await;
    let mut admin = server.platform_client(Some(&token)).await;
    let connections = Arc::new(AtomicUsize::new(0));
    let mut watcher = pb::platform_key_service_client::PlatformKeyServiceClient::new(
        counted_channel(&server, connections.clone()).await,
    );
    let mut request = tonic::Request::new(pb::WatchPlatformKeysRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let mut grpc = watcher
        .watch_platform_keys(request)
        .await
        .expect("watch over gRPC")
        .into_inner();
    // grpc-web as a browser sends it: HTTP/1.1, one long response.
    let mut grpc_web = server
        .http()
        .post(server.rest("/keyhouse.v1.PlatformKeyService/WatchPlatformKeys"))
        .bearer_auth(&token)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8; 5])
        .send()
        .await
        .expect("watch over grpc-web");
    assert_eq!(grpc_web.version(), http::Version::HTTP_11);
    assert_eq!(grpc_web.status(), 200);
    let mut web_events = GrpcWebFrames::default();
    let wait = Duration::from_secs(8);
    let initial = |e: &pb::PlatformKeyEvent| e.initial;
    for _ in 0..9 {
        let event = tokio::time::timeout(wait, grpc.message())
            .await
            .expect("an initial event")
            .expect("healthy")
            .expect("open");
        assert!(initial(&event), "{event:?}");
        assert!(initial(&web_events.next(&mut grpc_web).await));
    }

    // Silent well past the header timeout, then a change reaches both watchers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "litellm".into(),
            api_key: "sk-litellm-rotated-000001".into(),
        })
        .await
        .expect("update");
    let event = tokio::time::timeout(wait, grpc.message())
        .await
        .expect("the change over gRPC")
        .expect("the gRPC stream is healthy")
        .expect("the gRPC stream is open");
    assert_eq!((event.name.as_str(), event.version), ("litellm", 1));
    let event = web_events.next(&mut grpc_web).await;
    assert_eq!((event.name.as_str(), event.version), ("litellm", 1));
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// Reads grpc-web data frames from a streaming HTTP/1.1 response.
#[derive(Default)]
struct GrpcWebFrames(Vec<u8>);

impl GrpcWebFrames {
    async fn next(&mut self, res: &mut reqwest::Response) -> pb::PlatformKeyEvent {
        loop {
            if self.0.len() >= 5 {
                assert_eq!(self.0[0], 0, "a data frame, not the trailers");
                let len = u32::from_be_bytes(self.0[1..5].try_into().expect("4 bytes")) as usize;
                if self.0.len() >= 5 + len {
                    let event =
                        pb::PlatformKeyEvent::decode(&self.0[5..5 + len]).expect("an event");
                    self.0.drain(..5 + len);
                    return event;
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(8), res.chunk())
                .await
                .expect("a grpc-web event within 8 s")
                .expect("the grpc-web stream is healthy")
                .expect("the grpc-web stream is open");
            self.0.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_age_are_replaced_without_failing_a_call() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.max_connection_age_secs = 1;
        s.max_connection_age_grace_secs = 5;
    })
    .await;
    let connections = Arc::new(AtomicUsize::new(0));
    let channel = counted_channel(&server, connections.clone()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(3) {
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("call {calls} failed: {e:?}"));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened > 1,
        "{opened} connection(s) for {calls} calls over 3 s"
    );
}

#[test]
fn a_connection_limit_or_header_timeout_of_zero_refuses_to_start_naming_the_setting() {
    for (name, flag) in [
        ("KEYHOUSE_MAX_CONNECTIONS", "--max-connections"),
        (
            "KEYHOUSE_HEADER_READ_TIMEOUT_SECS",
            "--header-read-timeout-secs",
        ),
    ] {
        let kh = Keyhouse::on_sqlite().env(name, "0");
        let out = kh.command(&["serve"]).output().expect("run keyhouse");
        assert!(!out.status.success(), "{name}=0 was accepted");
        let log = kh.log_text();
        assert!(
            log.contains(flag) && log.contains("0 is not in 1.."),
            "{log}"
        );
    }
}
