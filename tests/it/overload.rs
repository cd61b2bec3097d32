//! What keeps the listener standing under abuse and spreads load: callers' gRPC deadlines,
//! size limits on headers and messages, slow clients cut off, and a maximum connection age that
//! makes clients reconnect.

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
    assert_closed_by_server(tcp, "part of the headers").await;
    // One that sends nothing at all is cut off the same way.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    assert_closed_by_server(tcp, "nothing").await;
}

async fn assert_closed_by_server(mut tcp: TcpStream, sent: &str) {
    // Well under the 10 s default, so only the configured timeout can end the connection here.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("a client that sent {sent} is still connected"));
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_age_are_replaced_without_failing_a_call() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.max_connection_age_secs = 1;
        s.max_connection_age_grace_secs = 5;
    })
    .await;
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let channel = Endpoint::from_shared(server.url())
        .expect("url")
        .connect_with_connector(tower::service_fn(move |uri: http::Uri| {
            counted.fetch_add(1, Ordering::SeqCst);
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
        .expect("connect");
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
