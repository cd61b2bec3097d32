//! Callers' gRPC deadlines: a call whose `grpc-timeout` passes before it is answered is dropped
//! (its work cancelled at the next await, an open transaction rolled back) and answered
//! DEADLINE_EXCEEDED. tonic does this only in its own server, not for routes served by axum.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;

pub async fn enforce(req: Request, next: Next) -> Response {
    let Some(timeout) = grpc_timeout(req.headers()) else {
        return next.run(req).await;
    };
    if timeout.is_zero() {
        return exceeded();
    }
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => exceeded(),
    }
}

fn exceeded() -> Response {
    tonic::Status::deadline_exceeded("the call's deadline passed before it was answered")
        .into_http::<Body>()
}

/// The gRPC wire format: at most 8 digits and a unit. A malformed value is ignored, as if the
/// caller had set no deadline.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("a header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn reads_every_unit_and_ignores_malformed_values() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
