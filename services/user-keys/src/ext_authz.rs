//! Envoy's external authorization, v3 (`envoy.service.auth.v3.Authorization/Check`), answered
//! from the same `Verifier` as VerifyKey, so an Envoy-based gateway (Envoy, Envoy Gateway, Istio,
//! kgateway) checks `uc_` keys with configuration alone.
//!
//! - **The key**: the header `KEYHOUSE_EXT_AUTHZ_KEY_HEADER` names, when set, then
//!   `Authorization: Bearer <key>`, then `x-api-key`; the first present wins.
//! - **The client's address**: `attributes.source.address.socket_address.address` (Envoy's
//!   downstream peer; with `use_remote_address` and trusted hops, the original client).
//! - **The scopes**: the route's context extension `keyhouse_scopes` (comma-separated; empty
//!   requires none), else `llm:inference`.
//! - **Allowed**: Envoy adds `x-keyhouse-key-id`, `x-keyhouse-user-id` and, for a key with a
//!   rate limit, `x-keyhouse-ratelimit-limit` and `x-keyhouse-ratelimit-remaining` upstream,
//!   overwriting whatever the client sent under those names (and removing the rate-limit pair
//!   for a key without a limit); the header that carried the key is removed unless
//!   `KEYHOUSE_EXT_AUTHZ_FORWARD_KEY` is set.
//! - **Denied**: 401 (no key, malformed, not found, expired, revoked), 403 (scope, address), 429
//!   (rate limited, with `Retry-After`), each with `{"error": {"code", "message"}}` as
//!   `application/json`. Storage unavailable is a denial too (503), never a gRPC error, so the
//!   check fails closed whatever Envoy's `failure_mode_allow` says.
//!
//! Envoy caches nothing: every request Envoy admits reaches this method. It costs VerifyKey's
//! work plus decoding Envoy's request, whose every header adds to it (benchmark 18 in
//! `BENCHMARKS.md`), so Envoy should send only the headers that may carry a key.

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use keyhouse_domain::authorization::{self, Rule};
use keyhouse_domain::error::Error;
use keyhouse_domain::verify::Verifier;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::verify_key_response::Reason;
use keyhouse_server::ExtAuthzSettings;
use keyhouse_server::grpc::Authenticator;
use tonic::{Request, Response, Status};

pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The context extension (set per route in Envoy's `check_settings`) naming the scopes a key
/// needs on that route, comma-separated.
pub const SCOPES_EXTENSION: &str = "keyhouse_scopes";

/// The scope a key needs where the route names none: calling a model.
pub const DEFAULT_SCOPE: &str = "llm:inference";

pub const KEY_ID_HEADER: &str = "x-keyhouse-key-id";
pub const USER_ID_HEADER: &str = "x-keyhouse-user-id";
pub const LIMIT_HEADER: &str = "x-keyhouse-ratelimit-limit";
pub const REMAINING_HEADER: &str = "x-keyhouse-ratelimit-remaining";

/// gRPC codes in `CheckResponse.status` (any but OK denies).
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// What Envoy is told for each way a request is refused: HTTP status, gRPC code, and the body
/// (fixed text: no answer repeats what the caller sent).
struct Denial {
    status: HttpStatusCode,
    code: i32,
    body: &'static str,
}

const MISSING: Denial = Denial {
    status: HttpStatusCode::Unauthorized,
    code: UNAUTHENTICATED,
    body: r#"{"error":{"code":"missing_key","message":"an API key is required: Authorization: Bearer <key> or x-api-key"}}"#,
};

fn denial(reason: Reason) -> Denial {
    let (status, code, body) = match reason {
        Reason::Malformed => (
            HttpStatusCode::Unauthorized,
            UNAUTHENTICATED,
            r#"{"error":{"code":"malformed_key","message":"the API key is malformed"}}"#,
        ),
        Reason::NotFound => (
            HttpStatusCode::Unauthorized,
            UNAUTHENTICATED,
            r#"{"error":{"code":"key_not_found","message":"the API key is not known"}}"#,
        ),
        Reason::Expired => (
            HttpStatusCode::Unauthorized,
            UNAUTHENTICATED,
            r#"{"error":{"code":"key_expired","message":"the API key has expired"}}"#,
        ),
        Reason::Revoked => (
            HttpStatusCode::Unauthorized,
            UNAUTHENTICATED,
            r#"{"error":{"code":"key_revoked","message":"the API key was revoked"}}"#,
        ),
        Reason::InsufficientScope => (
            HttpStatusCode::Forbidden,
            PERMISSION_DENIED,
            r#"{"error":{"code":"insufficient_scope","message":"the API key lacks a scope this route needs"}}"#,
        ),
        Reason::IpNotAllowed => (
            HttpStatusCode::Forbidden,
            PERMISSION_DENIED,
            r#"{"error":{"code":"ip_not_allowed","message":"the API key may not be used from this address"}}"#,
        ),
        Reason::RateLimited => (
            HttpStatusCode::TooManyRequests,
            RESOURCE_EXHAUSTED,
            r#"{"error":{"code":"rate_limited","message":"the API key's rate limit is reached; retry after the Retry-After seconds"}}"#,
        ),
        // A verdict the gateway does not know yet: refused as an unknown key would be.
        Reason::Valid | Reason::Unspecified => (
            HttpStatusCode::Unauthorized,
            UNAUTHENTICATED,
            r#"{"error":{"code":"invalid_key","message":"the API key is not valid"}}"#,
        ),
    };
    Denial { status, code, body }
}

const UNAVAILABLE_DENIAL: Denial = Denial {
    status: HttpStatusCode::ServiceUnavailable,
    code: UNAVAILABLE,
    body: r#"{"error":{"code":"unavailable","message":"keys cannot be checked right now; try again"}}"#,
};

const INTERNAL_DENIAL: Denial = Denial {
    status: HttpStatusCode::InternalServerError,
    code: INTERNAL,
    body: r#"{"error":{"code":"internal","message":"the key check failed"}}"#,
};

/// The ext_authz service: Envoy's question, VerifyKey's answer.
#[derive(Clone)]
pub struct ExtAuthz {
    verifier: Verifier,
    auth: Authenticator,
    /// Looked up once: this is every gateway request's path.
    rule: &'static Rule,
    /// The operator's extra key header, lowercased (Envoy lowercases every header name).
    key_header: Option<String>,
    forward_key: bool,
}

impl ExtAuthz {
    pub fn new(
        verifier: Verifier,
        auth: Authenticator,
        settings: &ExtAuthzSettings,
    ) -> anyhow::Result<Self> {
        let key_header = match settings.key_header.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => {
                axum::http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    anyhow::anyhow!("KEYHOUSE_EXT_AUTHZ_KEY_HEADER: '{name}' is not a header name")
                })?;
                Some(name.to_ascii_lowercase())
            }
        };
        Ok(Self {
            verifier,
            auth,
            rule: authorization::rule(SERVICE_NAME, "Check")?,
            key_header,
            forward_key: settings.forward_key,
        })
    }

    pub fn server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
            .max_decoding_message_size(keyhouse_server::grpc::MAX_MESSAGE_BYTES)
    }

    /// The key and the header it came from (lowercased).
    fn key<'a>(&'a self, http: &mut HttpRequest) -> Option<(String, &'a str)> {
        if let Some(name) = &self.key_header
            && let Some(key) = take_header(http, name).filter(|k| !k.trim().is_empty())
        {
            return Some((trimmed(key), name));
        }
        if let Some(value) = take_header(http, "authorization") {
            let (scheme, token) = value.trim().split_once(' ').unwrap_or(("", ""));
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some((token.trim().to_owned(), "authorization"));
            }
        }
        take_header(http, "x-api-key")
            .filter(|k| !k.trim().is_empty())
            .map(|k| (trimmed(k), "x-api-key"))
    }

    async fn check_request(&self, req: CheckRequest) -> CheckResponse {
        let Some(mut attributes) = req.attributes else {
            return denied(&MISSING, unauthorized());
        };
        let mut http = attributes
            .request
            .take()
            .and_then(|r| r.http)
            .unwrap_or_default();
        let Some((api_key, from)) = self.key(&mut http) else {
            return denied(&MISSING, unauthorized());
        };
        // The key sent in a second header as well must not reach the upstream either.
        let mut carriers = vec![from.to_owned()];
        for name in [
            self.key_header.as_deref(),
            Some("authorization"),
            Some("x-api-key"),
        ]
        .into_iter()
        .flatten()
        {
            if name != from && take_header(&mut http, name).is_some_and(|v| v.contains(&api_key)) {
                carriers.push(name.to_owned());
            }
        }
        let required_scopes = match attributes.context_extensions.remove(SCOPES_EXTENSION) {
            Some(scopes) => scopes
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => vec![DEFAULT_SCOPE.to_owned()],
        };
        let client_ip = attributes
            .source
            .and_then(|peer| peer.address)
            .and_then(|address| address.address)
            .and_then(|address| match address {
                Address::SocketAddress(socket) => Some(socket.address),
                _ => None,
            })
            // A pipe or an internal listener has no IP: checked as no address at all.
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .unwrap_or_default();
        let verdict = self
            .verifier
            .verify(&pb::VerifyKeyRequest {
                api_key,
                required_scopes,
                client_ip,
            })
            .await;
        match verdict {
            Ok(answer) if answer.valid => self.allowed(answer, carriers),
            Ok(answer) => {
                let reason = answer.reason();
                let mut headers = Vec::new();
                if reason == Reason::RateLimited {
                    let now = unix_now();
                    let reset = answer.reset_at.as_ref().map_or(now, |t| t.seconds);
                    headers.push(header("retry-after", (reset - now).max(1).to_string()));
                    headers.push(header(LIMIT_HEADER, answer.limit.to_string()));
                    headers.push(header(REMAINING_HEADER, answer.remaining.to_string()));
                }
                let denial = denial(reason);
                if denial.status == HttpStatusCode::Unauthorized {
                    headers.push(header("www-authenticate", "Bearer".to_owned()));
                }
                denied(&denial, headers)
            }
            Err(Error::Unavailable(_)) => denied(
                &UNAVAILABLE_DENIAL,
                vec![header("retry-after", "1".to_owned())],
            ),
            Err(e) => {
                // The message names the field (too many scopes in `keyhouse_scopes`); no secret.
                tracing::warn!(error = %e, "ext_authz check failed");
                denied(&INTERNAL_DENIAL, Vec::new())
            }
        }
    }

    fn allowed(&self, answer: pb::VerifyKeyResponse, carriers: Vec<String>) -> CheckResponse {
        let limited = answer.limit > 0;
        let mut headers = Vec::with_capacity(4);
        headers.push(header(KEY_ID_HEADER, answer.key_id));
        headers.push(header(USER_ID_HEADER, answer.user_id));
        let mut headers_to_remove = Vec::with_capacity(3);
        if limited {
            headers.push(header(LIMIT_HEADER, answer.limit.to_string()));
            headers.push(header(REMAINING_HEADER, answer.remaining.to_string()));
        } else {
            // A client must not pass off a limit of its own invention.
            headers_to_remove.push(LIMIT_HEADER.to_owned());
            headers_to_remove.push(REMAINING_HEADER.to_owned());
        }
        if !self.forward_key {
            headers_to_remove.extend(carriers);
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        if !self.rule.anonymous {
            self.auth.caller_for(req.metadata(), self.rule).await?;
        }
        Ok(Response::new(self.check_request(req.into_inner()).await))
    }
}

/// A request header's value, moved out of the request (no copy): from `headers`, or from
/// `header_map` when Envoy sends raw headers (`encode_raw_headers`).
fn take_header(http: &mut HttpRequest, name: &str) -> Option<String> {
    if let Some(value) = http.headers.remove(name) {
        return Some(value);
    }
    let raw = http.header_map.as_mut()?;
    let found = raw
        .headers
        .iter_mut()
        .find(|h| h.key.eq_ignore_ascii_case(name))?;
    if !found.value.is_empty() {
        return Some(std::mem::take(&mut found.value));
    }
    String::from_utf8(std::mem::take(&mut found.raw_value)).ok()
}

/// A header that replaces any the request already has under that name.
fn header(key: &str, value: String) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

fn unauthorized() -> Vec<HeaderValueOption> {
    vec![header("www-authenticate", "Bearer".to_owned())]
}

fn denied(denial: &Denial, mut headers: Vec<HeaderValueOption>) -> CheckResponse {
    headers.push(header("content-type", "application/json".to_owned()));
    CheckResponse {
        status: Some(rpc::Status {
            code: denial.code,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: denial.status.into(),
            }),
            headers,
            body: denial.body.to_owned(),
        })),
        ..Default::default()
    }
}

/// Without the surrounding spaces, copying only when there are any.
fn trimmed(key: String) -> String {
    if key.trim().len() == key.len() {
        key
    } else {
        key.trim().to_owned()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
