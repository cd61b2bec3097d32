//! `/metrics`: Prometheus text that counts the calls made, and holds no key or token.

use std::collections::HashMap;

use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;

use crate::support::{Backend, TestServer};
use crate::verify::{mint, verify};

/// Every sample of a Prometheus text exposition, by its name and labels; panics on a line that
/// is not valid exposition syntax.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

pub async fn scrape(server: &TestServer) -> (String, HashMap<String, f64>) {
    let res = server
        .http()
        .get(server.rest("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = res.text().await.expect("text");
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_calls_made() {
    let server = TestServer::start(Backend::Sqlite).await;
    let token = server.session("alice", Role::User).await;
    let key = mint(
        &mut server.user_client(Some(&token)).await,
        pb::CreateKeyRequest {
            name: "metered".into(),
            ..Default::default()
        },
    )
    .await;
    let (_, before) = scrape(&server).await;
    let get =
        |samples: &HashMap<String, f64>, series: &str| samples.get(series).copied().unwrap_or(0.0);

    let mut gateway = server.user_client(None).await;
    for _ in 0..3 {
        gateway
            .verify_key(verify(&key.api_key, &[], ""))
            .await
            .expect("verify");
    }
    gateway
        .verify_key(verify("uc_not_a_key", &[], ""))
        .await
        .expect("verify");
    let res = server
        .http()
        .get(server.rest("/api/v1/account/uc-api-keys"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 401);

    // Made-up paths do not mint series.
    let grpc_http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an HTTP/2 client");
    for i in 0..3 {
        let path = format!("/keyhouse.v1.UserKeyService/Made_Up_{i}");
        let res = grpc_http
            .post(server.rest(&path))
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
        server
            .http()
            .get(server.rest(&format!("/no/such/path/{i}")))
            .send()
            .await
            .expect("GET");
    }

    let (text, after) = scrape(&server).await;
    assert!(
        !text.contains("Made_Up") && !text.contains("/no/such/path"),
        "unknown paths share the `unmatched` label"
    );
    let grew = |series: &str| get(&after, series) - get(&before, series);
    assert!(
        grew(
            r#"keyhouse_requests_total{method="/keyhouse.v1.UserKeyService/VerifyKey",status="grpc 0"}"#
        ) >= 4.0
    );
    assert!(
        grew(r#"keyhouse_requests_total{method="GET /api/v1/account/uc-api-keys",status="401"}"#)
            >= 1.0
    );
    assert!(grew(r#"keyhouse_verify_outcomes_total{reason="VALID"}"#) >= 3.0);
    assert!(grew(r#"keyhouse_verify_outcomes_total{reason="MALFORMED"}"#) >= 1.0);
    assert!(grew(r#"keyhouse_verify_cache_lookups_total{result="hit"}"#) >= 2.0);
    assert!(
        get(
            &after,
            r#"keyhouse_bcrypt_duration_seconds_count{operation="verify"}"#
        ) >= 1.0
    );
    assert!(
        get(
            &after,
            r#"keyhouse_request_duration_seconds_count{method="/keyhouse.v1.UserKeyService/VerifyKey"}"#
        ) >= 4.0
    );
    // The pool has served every call above, so it holds at least one connection, within its
    // bound.
    let in_use = get(&after, r#"keyhouse_db_pool_connections{state="in_use"}"#);
    let idle = get(&after, r#"keyhouse_db_pool_connections{state="idle"}"#);
    let max = get(&after, "keyhouse_db_pool_max_connections");
    assert!(
        in_use + idle >= 1.0 && in_use + idle <= max,
        "pool: {in_use} in use + {idle} idle, at most {max}"
    );
    assert!(
        !text.contains(&key.api_key) && !text.contains(&token) && !text.contains(&key.key_id),
        "metrics name no key, token or id"
    );
}

/// The bounded queues report their depth: bcrypt work admitted, the usage counts a flush took,
/// the changes not yet read by every subscriber. Other tests in this process share the gauges,
/// so each is checked against its bound rather than against an exact value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_the_depth_of_each_bounded_queue() {
    let server =
        TestServer::start_with(Backend::Sqlite, |s| s.domain.verify.usage_flush_millis = 50).await;
    let token = server.session("alice", Role::User).await;
    let mut owner = server.user_client(Some(&token)).await;
    let key = mint(
        &mut owner,
        pb::CreateKeyRequest {
            name: "queued".into(),
            ..Default::default()
        },
    )
    .await;
    let mut gateway = server.user_client(None).await;
    gateway
        .verify_key(verify(&key.api_key, &[], ""))
        .await
        .expect("verify");
    owner
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke");
    // The usage counted above is flushed within a few of its 50 ms periods.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, samples) = scrape(&server).await;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as f64;
    for (queue, bound) in [
        ("bcrypt", cores + 64.0),
        ("usage", f64::MAX),
        ("change_feed", 1024.0),
    ] {
        let depth = samples
            .get(&format!(r#"keyhouse_queue_depth{{queue="{queue}"}}"#))
            .unwrap_or_else(|| panic!("no depth reported for the {queue} queue"));
        assert!(
            (0.0..=bound).contains(depth),
            "{queue} queue depth {depth} outside 0..={bound}"
        );
    }
}
