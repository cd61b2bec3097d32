//! Reading credentials from a request: the bearer token, the `session_token` cookie, the caller's
//! request id, and the service tokens of internal services.

use std::fmt;

use keyhouse_domain::{Error, Result};

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

/// Internal services' credentials (`KEYHOUSE_SERVICE_TOKENS`: `name=sha256hex` pairs): only
/// digests are configured, compared in constant time.
#[derive(Clone, Default)]
pub struct ServiceTokens(Vec<(String, [u8; 32])>);

impl ServiceTokens {
    pub fn parse(entries: &[String]) -> Result<Self> {
        let mut tokens = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let bad = || {
                Error::invalid(
                    "KEYHOUSE_SERVICE_TOKENS",
                    "KEYHOUSE_SERVICE_TOKENS entries are name=<SHA-256 of the token, hex>; make a token with `keyhouse service-token create` and configure NAME=<its SHA-256>",
                )
            };
            let (name, digest) = entry.split_once('=').ok_or_else(bad)?;
            let bytes: [u8; 32] = hex::decode(digest.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            tokens.push((name.trim().to_owned(), bytes));
        }
        Ok(Self(tokens))
    }

    /// The service a presented token belongs to.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, digest) in &self.0 {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

impl fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}
