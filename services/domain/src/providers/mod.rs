//! Providers, shared by platform keys and BYOK: the one catalog, the shape check of their keys,
//! and live checks (one cheap authenticated request, timed, through the outbound guard). Base
//! URLs come from configuration so that tests (and closed networks) can point them elsewhere.
//! Neither the key nor a URL that could carry it is ever logged.

pub mod catalog;

pub use catalog::Provider;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::outbound::{self, Outbound};

#[derive(Clone, Copy, Debug)]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// The key in the named header.
    Header(&'static str),
}

/// The request that proves a key works.
#[derive(Clone, Copy, Debug)]
pub struct LiveTest {
    pub post: bool,
    pub path: &'static str,
    pub auth: Auth,
    pub headers: &'static [(&'static str, &'static str)],
    pub json_body: Option<&'static str>,
}

impl LiveTest {
    pub const fn get(path: &'static str, auth: Auth) -> Self {
        Self {
            post: false,
            path,
            auth,
            headers: &[],
            json_body: None,
        }
    }
}

/// Anthropic has no free authenticated endpoint: the cheapest check is a one-token message.
pub const ANTHROPIC_MESSAGES: LiveTest = LiveTest {
    post: true,
    path: "/v1/messages",
    auth: Auth::Header("x-api-key"),
    headers: &[("anthropic-version", "2023-06-01")],
    json_body: Some(
        r#"{"model":"claude-3-5-haiku-latest","max_tokens":1,"messages":[{"role":"user","content":"ping"}]}"#,
    ),
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The provider accepted the key (2xx).
    pub ok: bool,
    /// 0 when the provider did not answer.
    pub status_code: i32,
    pub latency_ms: i64,
    pub detail: String,
    /// The provider answered that the key is not valid (401/403).
    pub rejected: bool,
    /// Why the test failed, as a class that health history and audit events record; `None`
    /// when the key was accepted.
    pub error_class: Option<ErrorClass>,
}

/// Why a live test failed, in a word: what health history stores (never the provider's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The provider rejected the key (HTTP 401 or 403).
    Auth,
    /// The provider answered HTTP 5xx.
    Server,
    /// The provider answered another non-2xx status (404, 429, ...).
    Http,
    /// No answer within the test's timeout.
    Timeout,
    /// No connection, or the request failed on the way.
    Network,
    /// The outbound guard refused the URL: nothing was sent.
    Refused,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "auth",
            ErrorClass::Server => "server",
            ErrorClass::Http => "http",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Network => "network",
            ErrorClass::Refused => "refused",
        }
    }
}

/// Runs `test` against `base_url` with `key`, within `timeout`, through the outbound guard.
/// `what` names the URL in a refusal ("endpoint", "the provider URL"). A refused URL is a
/// failed outcome with the reason and no status or latency: nothing was sent.
pub async fn run(
    outbound: &Outbound,
    base_url: &str,
    what: &str,
    test: &LiveTest,
    key: &str,
    timeout: Duration,
) -> Outcome {
    if let Err(reason) = outbound.check_url(base_url) {
        return Outcome::refused(format!("{what} {reason}"));
    }
    let url = format!("{}{}", base_url.trim_end_matches('/'), test.path);
    let client = outbound.client();
    let mut req = if test.post {
        client.post(&url)
    } else {
        client.get(&url)
    };
    req = match test.auth {
        Auth::Bearer => req.bearer_auth(key),
        Auth::Header(name) => match reqwest::header::HeaderValue::from_str(key) {
            // Sensitive, like `bearer_auth`'s: never shown by a Debug print of the request.
            Ok(mut value) => {
                value.set_sensitive(true);
                req.header(name, value)
            }
            Err(_) => req.header(name, key),
        },
    };
    for (name, value) in test.headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = test.json_body {
        req = req.header("content-type", "application/json").body(body);
    }
    let started = Instant::now();
    let result = req.timeout(timeout).send().await;
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    match result {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let (ok, rejected, detail) = match code {
                200..=299 => (true, false, "key accepted".to_owned()),
                401 | 403 => (
                    false,
                    true,
                    format!("the provider rejected the key (HTTP {code})"),
                ),
                _ => (false, false, format!("the provider answered HTTP {code}")),
            };
            let error_class = match code {
                200..=299 => None,
                401 | 403 => Some(ErrorClass::Auth),
                500..=599 => Some(ErrorClass::Server),
                _ => Some(ErrorClass::Http),
            };
            Outcome {
                ok,
                status_code: i32::from(code),
                latency_ms,
                detail,
                rejected,
                error_class,
            }
        }
        Err(e) => {
            if let Some(refused) = outbound::refused(&e) {
                return Outcome::refused(format!("{what} {refused}"));
            }
            // reqwest's error text can include the URL; only the kind is reported.
            let (detail, class) = if e.is_timeout() {
                (
                    format!("no answer within {} s", timeout.as_secs()),
                    ErrorClass::Timeout,
                )
            } else if e.is_connect() {
                (
                    "could not connect to the provider".to_owned(),
                    ErrorClass::Network,
                )
            } else {
                (
                    "the request to the provider failed".to_owned(),
                    ErrorClass::Network,
                )
            };
            Outcome {
                ok: false,
                status_code: 0,
                latency_ms,
                detail,
                rejected: false,
                error_class: Some(class),
            }
        }
    }
}

impl Outcome {
    fn refused(detail: String) -> Self {
        Self {
            ok: false,
            status_code: 0,
            latency_ms: 0,
            detail,
            rejected: false,
            error_class: Some(ErrorClass::Refused),
        }
    }
}

/// Provider base URLs: the catalog's defaults, overridden by `name=url` pairs from
/// `KEYHOUSE_PROVIDER_BASE_URLS`.
#[derive(Clone, Debug, Default)]
pub struct BaseUrls(HashMap<String, String>);

impl BaseUrls {
    pub fn parse(pairs: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        for pair in pairs.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (name, url) = pair.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "KEYHOUSE_PROVIDER_BASE_URLS",
                    format!("KEYHOUSE_PROVIDER_BASE_URLS: '{pair}' is not name=url"),
                )
            })?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::invalid(
                    "KEYHOUSE_PROVIDER_BASE_URLS",
                    format!(
                        "KEYHOUSE_PROVIDER_BASE_URLS: the URL for '{name}' must start with http:// or https://"
                    ),
                ));
            }
            map.insert(name.trim().to_owned(), url.trim().to_owned());
        }
        Ok(Self(map))
    }

    pub fn get<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.0.get(name).map_or(default, String::as_str)
    }
}

/// The fewest characters a provider key may have.
pub const MIN_KEY_LEN: usize = 10;

/// The most bytes a stored provider secret may have (1 KiB): no provider's key comes near it,
/// and every byte is encrypted, stored and decrypted again.
pub const MAX_KEY_BYTES: usize = 1024;

/// Refuses a secret in `field` longer than `MAX_KEY_BYTES`.
pub fn check_key_length(field: &'static str, key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "{field} must be at most {MAX_KEY_BYTES} bytes (1 KiB), got {}",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Whether `key` can be a provider key: long enough, visible ASCII only (it travels in an HTTP
/// header, and a control character would not survive storage), starting with one of `prefixes`
/// (any start when empty) and not with `not_prefix`, which belongs to another provider.
pub fn key_shaped(key: &str, prefixes: &[&str], not_prefix: Option<&str>) -> bool {
    key.len() >= MIN_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
        && (prefixes.is_empty() || prefixes.iter().any(|p| key.starts_with(p)))
        && !not_prefix.is_some_and(|p| key.starts_with(p))
}

/// The error for a `field` that is not shaped like a `provider` key, which looks like `hint`.
pub fn bad_key_format(field: &'static str, provider: &str, hint: &str) -> Error {
    Error::invalid(
        field,
        format!(
            "Invalid {provider} API key format. Expected format: {hint} (at least {MIN_KEY_LEN} characters)"
        ),
    )
}
