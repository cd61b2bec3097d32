//! Reading credentials from a request: the bearer token, the `session_token` cookie, the caller's
//! request id, and the service tokens of internal services.

use std::fmt;

use keyhouse_domain::{Error, Result, authorization};

/// The session token of a request: `Authorization: Bearer <token>` first, else the
/// `session_token` cookie (what browsers and grpc-web send).
pub fn session_token<'a>(
    authorization: Option<&'a str>,
    cookie: Option<&'a str>,
) -> Option<&'a str> {
    bearer(authorization).or_else(|| cookie.and_then(|c| cookie_value(c, "session_token")))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any letter case), if
/// there is a non-empty one. Every reader of the header goes through this, so that the CSRF check
/// and authentication agree on what counts as bearer authentication.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One cookie's value from a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// The caller's request id if it sent a sane one, else a new one.
pub fn request_id(presented: Option<&str>) -> String {
    presented
        .filter(|id| !id.is_empty() && id.len() <= 64)
        .filter(|id| {
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("BEARER  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Bearer   ")), None);
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearerabc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn bearer_wins_over_cookie() {
        assert_eq!(
            session_token(Some("Bearer abc"), Some("session_token=def")),
            Some("abc")
        );
    }

    #[test]
    fn cookie_is_found_among_others() {
        let cookie = "csrf_token=x; session_token=tok; theme=dark";
        assert_eq!(session_token(None, Some(cookie)), Some("tok"));
    }

    #[test]
    fn nothing_usable_is_none() {
        assert_eq!(session_token(Some("Basic abc"), Some("other=1")), None);
        assert_eq!(session_token(Some("Bearer  "), None), None);
    }

    #[test]
    fn request_ids_with_odd_characters_are_replaced() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        assert_ne!(request_id(Some("a\nb")), "a\nb");
    }
}

/// Internal services' credentials (`KEYHOUSE_SERVICE_TOKENS`): only digests are configured,
/// compared in constant time. An entry is `name=<sha256 hex>`, or `name=<sha256 hex>:Rpc+Rpc` to
/// bind the token to those RPCs, so that a gateway's token cannot read platform secrets.
#[derive(Clone, Default)]
pub struct ServiceTokens(Vec<ServiceToken>);

#[derive(Clone)]
struct ServiceToken {
    name: String,
    digest: [u8; 32],
    /// Full `package.Service/Method` names; `None` is every RPC whose row allows service tokens.
    rpcs: Option<Vec<&'static str>>,
}

/// A presented token that is one of the configured ones.
pub struct Service<'a> {
    pub name: &'a str,
    rpcs: Option<&'a [&'static str]>,
}

impl Service<'_> {
    /// Whether this token may call `rpc` (`package.Service/Method`).
    pub fn may_call(&self, rpc: &str) -> bool {
        self.rpcs.is_none_or(|rpcs| rpcs.contains(&rpc))
    }
}

const FORMAT: &str = "KEYHOUSE_SERVICE_TOKENS entries are name=<SHA-256 of the token, hex>, optionally followed by :Rpc+Rpc to bind the token to those RPCs; make a token with `keyhouse service-token create`";

impl ServiceTokens {
    pub fn parse(entries: &[String]) -> Result<Self> {
        let mut tokens = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let bad = |why: String| Error::invalid("KEYHOUSE_SERVICE_TOKENS", why);
            let (name, rest) = entry.split_once('=').ok_or_else(|| bad(FORMAT.into()))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad(FORMAT.into()));
            }
            let (digest, rpcs) = match rest.split_once(':') {
                Some((digest, rpcs)) => (digest, Some(bound_rpcs(name, rpcs)?)),
                None => (rest, None),
            };
            let digest: [u8; 32] = hex::decode(digest.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad(format!("the service token `{name}`: {FORMAT}")))?;
            if tokens.iter().any(|t: &ServiceToken| t.name == name) {
                return Err(bad(format!(
                    "KEYHOUSE_SERVICE_TOKENS configures the service token `{name}` twice"
                )));
            }
            // One token under two names would get the wider reach of the two.
            if let Some(other) = tokens.iter().find(|t| t.digest == digest) {
                return Err(bad(format!(
                    "KEYHOUSE_SERVICE_TOKENS gives the service tokens `{}` and `{name}` the same digest; each service needs its own token",
                    other.name
                )));
            }
            if rpcs.is_none() {
                tracing::warn!(
                    service = name,
                    "service token is bound to no RPC list, so it may call every RPC that allows service tokens, watching platform secrets among them; bind it with name=<digest>:Rpc+Rpc"
                );
            }
            tokens.push(ServiceToken {
                name: name.to_owned(),
                digest,
                rpcs,
            });
        }
        Ok(Self(tokens))
    }

    /// The service a presented token belongs to, with what it may call.
    pub fn find(&self, token: &str) -> Option<Service<'_>> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&presented)) {
                found = Some(Service {
                    name: &t.name,
                    rpcs: t.rpcs.as_deref(),
                });
            }
        }
        found
    }
}

/// The RPCs of `Rpc+Rpc`, each a method name (`WatchPlatformKeys`) or a full name
/// (`keyhouse.v1.PlatformKeyService/WatchPlatformKeys`) whose row allows service tokens.
fn bound_rpcs(name: &str, list: &str) -> Result<Vec<&'static str>> {
    let allowed = || {
        authorization::TABLE
            .iter()
            .filter(|r| r.service_token)
            .map(|r| r.rpc)
    };
    let mut rpcs = Vec::new();
    for wanted in list.split('+').map(str::trim) {
        let matches: Vec<&'static str> = allowed()
            .filter(|rpc| *rpc == wanted || rpc.rsplit_once('/').is_some_and(|(_, m)| m == wanted))
            .collect();
        match matches.as_slice() {
            [rpc] => rpcs.push(*rpc),
            _ => {
                let names: Vec<&str> = allowed()
                    .filter_map(|r| r.rsplit_once('/').map(|(_, m)| m))
                    .collect();
                // A digest pasted after the colon is not echoed into the log.
                let shown = if wanted.chars().all(|c| c.is_ascii_hexdigit()) && wanted.len() > 16 {
                    "a hex string"
                } else {
                    wanted
                };
                return Err(Error::invalid(
                    "KEYHOUSE_SERVICE_TOKENS",
                    format!(
                        "KEYHOUSE_SERVICE_TOKENS binds the service token `{name}` to `{shown}`, which is not an RPC service tokens may call; those are {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(rpcs)
}

impl fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|t| &t.name))
            .finish()
    }
}

#[cfg(test)]
mod service_token_tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"

    fn parse(entry: &str) -> Result<ServiceTokens> {
        ServiceTokens::parse(&[entry.to_owned()])
    }

    fn message(entry: &str) -> String {
        match parse(entry) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("{entry} was accepted: {t:?}"),
        }
    }

    #[test]
    fn an_unbound_token_may_call_every_service_rpc() {
        let tokens = parse(&format!("gateway={DIGEST}")).expect("an unbound token");
        let service = tokens.find("test").expect("the configured token");
        assert_eq!(service.name, "gateway");
        assert!(service.may_call("keyhouse.v1.PlatformKeyService/WatchPlatformKeys"));
        assert!(tokens.find("other").is_none());
    }

    #[test]
    fn a_bound_token_may_call_only_its_rpcs() {
        let tokens = parse(&format!(
            "sync={DIGEST}:WatchPlatformKeys+keyhouse.v1.PlatformKeyService/ReportPlatformKeySync"
        ))
        .expect("a bound token");
        let service = tokens.find("test").expect("the configured token");
        assert!(service.may_call("keyhouse.v1.PlatformKeyService/WatchPlatformKeys"));
        assert!(service.may_call("keyhouse.v1.PlatformKeyService/ReportPlatformKeySync"));
        assert!(!service.may_call("keyhouse.v1.UserKeyService/GetProviderKeyForUser"));
    }

    #[test]
    fn bad_entries_name_the_setting_and_what_is_wrong() {
        let unknown = message(&format!("gw={DIGEST}:ListPlatformKeys"));
        assert!(unknown.contains("KEYHOUSE_SERVICE_TOKENS"), "{unknown}");
        assert!(unknown.contains("`ListPlatformKeys`"), "{unknown}");
        assert!(unknown.contains("GetProviderKeyForUser"), "{unknown}");
        assert!(message(&format!("gw={DIGEST}:")).contains("``"));
        let short = message("gw=abc");
        assert!(
            short.contains("`gw`") && short.contains("SHA-256"),
            "{short}"
        );
        let pasted = message(&format!("gw=sha256:{DIGEST}"));
        assert!(!pasted.contains(DIGEST), "{pasted}");
        let shared = ServiceTokens::parse(&[
            format!("gw={DIGEST}:GetProviderKeyForUser"),
            format!("old={DIGEST}"),
        ])
        .expect_err("one digest under two names")
        .to_string();
        assert!(
            shared.contains("`gw` and `old` the same digest"),
            "{shared}"
        );
        assert!(message(&format!("={DIGEST}")).contains("SHA-256"));
        let twice = ServiceTokens::parse(&[format!("gw={DIGEST}"), format!("gw={DIGEST}")])
            .expect_err("a name given twice")
            .to_string();
        assert!(
            twice.contains("KEYHOUSE_SERVICE_TOKENS configures the service token `gw` twice"),
            "{twice}"
        );
    }
}
