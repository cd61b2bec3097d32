//! The browser login: `GET /auth/login` sends the browser to the OIDC issuer (Authorization Code
//! with PKCE, S256), `GET /auth/callback` takes it back, trades the code for an ID token, checks
//! it with `oidc` and makes a keyhouse session (the embedded sessions table) whose token it sets
//! as the `session_token` cookie, with the `csrf_token` cookie the REST shim checks. `POST
//! /auth/logout` deletes the session and clears both.
//!
//! Without an identity provider, a browser signs in with a session token (`keyhouse session
//! create`, or an Ops-Center session): `POST /auth/session` checks it and sets the same two
//! cookies, so the token never has to sit in script-readable storage. `GET /auth/session` says
//! who the browser is signed in as, and whether the provider login is offered.
//!
//! A login's `state`, `nonce` and PKCE verifier live in a cookie, not in this process: the
//! callback may land on another replica. The cookie is Fernet (encrypted and authenticated)
//! under keys derived from the key ring for this purpose alone, and says when it stops counting.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::crypto::session_token;
use keyhouse_domain::storage::sessions;
use keyhouse_domain::{Error, db};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth;
use crate::grpc::{Authenticator, status};
use crate::oidc::{CALLBACK_PATH, Oidc};
use crate::rest::{ErrorBody, Places, RestError, ValidationErrorBody};
use crate::session_cache::SessionCache;

pub const LOGIN_PATH: &str = "/auth/login";
pub const LOGOUT_PATH: &str = "/auth/logout";
pub const SESSION_PATH: &str = "/auth/session";
/// Holds the sign-in in progress, for the callback only.
const LOGIN_COOKIE: &str = "keyhouse_login";
/// How long a browser has between `/auth/login` and the callback.
const LOGIN_SECS: i64 = 600;
/// How long a browser session lasts, unless the session limit is shorter.
const SESSION_HOURS: i64 = 8;
/// What the derived keys and the sealed cookie are for; nothing else opens them.
const PURPOSE: &str = "oidc browser login";

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(start, callback, logout, current, sign_in),
    components(schemas(ErrorBody, ValidationErrorBody, SignedIn, SessionUser, SignIn)),
    tags((name = "sign-in", description = "The browser login through the OIDC issuer, and signing out"))
)]
pub struct Docs;

#[derive(Clone)]
pub struct Login {
    oidc: Option<Oidc>,
    ring: KeyRing,
    db: DatabaseConnection,
    sessions: SessionCache,
    auth: Authenticator,
    ttl: chrono::Duration,
    /// `KEYHOUSE_SECURE_COOKIES`: every cookie `Secure`, whatever the request says.
    always_secure: bool,
}

/// Who a browser is signed in as, and how it may sign in.
#[derive(Serialize, utoipa::ToSchema)]
struct SignedIn {
    /// Null when the browser has no valid session.
    user: Option<SessionUser>,
    /// Whether `/auth/login` (the identity provider's login) is configured.
    oidc_login: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SessionUser {
    user_id: String,
    email: String,
    /// `user` or `admin`.
    role: String,
    /// Where the session came from: `session` (keyhouse's own), `ops_center_session` or `oidc`.
    source: String,
}

/// A session token to sign this browser in with.
#[derive(Deserialize, utoipa::ToSchema)]
struct SignIn {
    /// From `keyhouse session create`, or an Ops-Center session token.
    token: String,
}

/// What the login cookie carries to the callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    /// Unix seconds after which the cookie no longer counts.
    until: i64,
}

/// The `/auth` routes, on the context every service shares.
pub fn router(ctx: &crate::bootstrap::Context) -> Router {
    let login = Login {
        oidc: ctx.oidc.clone(),
        ring: ctx.ring.derived(PURPOSE),
        db: ctx.db.clone(),
        sessions: ctx.sessions.clone(),
        auth: Authenticator::new(ctx.identity.clone(), ctx.sessions.clone())
            .with_oidc(ctx.oidc.clone()),
        ttl: chrono::Duration::hours(SESSION_HOURS).min(ctx.settings.sessions.max_ttl),
        always_secure: ctx.settings.secure_cookies,
    };
    Router::new()
        .route(LOGIN_PATH, get(start))
        .route(CALLBACK_PATH, get(callback))
        .route(LOGOUT_PATH, post(logout))
        .route(SESSION_PATH, get(current).post(sign_in))
        .with_state(login)
}

impl Login {
    fn oidc(&self) -> Result<&Oidc, RestError> {
        self.oidc.as_ref().ok_or_else(|| {
            fail(Error::FailedPrecondition(
                "browser sign-in is not configured: set KEYHOUSE_OIDC_ISSUER, \
                 KEYHOUSE_OIDC_CLIENT_ID and KEYHOUSE_OIDC_REDIRECT_URL"
                    .into(),
            ))
        })
    }

    /// Whether cookies get `Secure`: always with `KEYHOUSE_SECURE_COOKIES`; else when the login
    /// client's redirect URL is https, or the request reached the proxy in front over https.
    /// Plain http (a laptop, a test) gets cookies a browser keeps over http.
    fn secure(&self, headers: &HeaderMap) -> bool {
        if self.always_secure {
            return true;
        }
        let forwarded_https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        forwarded_https
            || self
                .oidc
                .as_ref()
                .and_then(|o| o.login_client().ok())
                .is_some_and(|c| c.secure)
    }

    /// Whether the OIDC login's own cookies get `Secure`: by its redirect URL, or always.
    fn secure_for(&self, client: &crate::oidc::Client) -> bool {
        self.always_secure || client.secure
    }

    fn offers_oidc_login(&self) -> bool {
        self.oidc.as_ref().is_some_and(|o| o.login_client().is_ok())
    }
}

fn fail(err: Error) -> RestError {
    Places::query(&["next", "state", "code"]).error(status(err))
}

fn bad_request(detail: &str) -> RestError {
    RestError::detail(StatusCode::BAD_REQUEST, detail)
}

fn query_value(query: &Option<String>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// 32 random bytes as hex: a state, a nonce, a PKCE verifier (64 unreserved characters).
fn random() -> Result<String, RestError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())
        .map_err(|e| fail(Error::internal(anyhow::anyhow!("OS RNG: {e}"))))?;
    Ok(hex::encode(bytes.as_ref()))
}

/// Where the browser may be sent after signing in: a path on this site, never another site
/// (`//host` and `/\host` are other sites to a browser).
fn same_site_path(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\')
}

fn cookie(name: &str, value: &str, attributes: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; {attributes}{secure}"))
        .unwrap_or_else(|_| unreachable!("cookie values are hex, base64url or empty"))
}

fn redirect(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(to) {
        headers.insert(header::LOCATION, location);
    }
    for c in cookies {
        headers.append(header::SET_COOKIE, c);
    }
    (StatusCode::SEE_OTHER, headers).into_response()
}

/// Sign in through the OIDC issuer: redirects the browser to the provider's login page
/// (Authorization Code with PKCE), which sends it back to `/auth/callback`.
#[utoipa::path(get, path = "/auth/login", tag = "sign-in",
    params(("next" = Option<String>, Query, description = "where to go after signing in: a path on this site (default /)")),
    responses((status = 303, description = "To the identity provider; sets the short-lived, sealed `keyhouse_login` cookie"),
              (status = 409, description = "Browser sign-in is not configured", body = ErrorBody),
              (status = 422, description = "`next` is not a path on this site", body = ValidationErrorBody),
              (status = 503, description = "The identity provider is unreachable", body = ErrorBody)))]
async fn start(
    State(login): State<Login>,
    RawQuery(query): RawQuery,
) -> Result<Response, RestError> {
    let oidc = login.oidc()?;
    let client = oidc.login_client().map_err(fail)?;
    let next = query_value(&query, "next").unwrap_or_else(|| "/".to_owned());
    if !same_site_path(&next) {
        return Err(RestError::validation(
            "query",
            "next",
            "next must be a path on this site, starting with a single /",
            "value_error",
        ));
    }
    let endpoints = oidc.endpoints().await.map_err(fail)?;
    let pending = Pending {
        state: random()?,
        nonce: random()?,
        verifier: random()?,
        next,
        until: chrono::Utc::now().timestamp() + LOGIN_SECS,
    };
    let challenge = {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(pending.verifier.as_bytes()))
    };
    let mut to = endpoints.authorization;
    to.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.id)
        .append_pair("redirect_uri", client.redirect.as_str())
        .append_pair("scope", "openid email")
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let plain = zeroize::Zeroizing::new(
        serde_json::to_string(&pending).map_err(|e| fail(Error::internal(e)))?,
    );
    let sealed = login.ring.encrypt_bound(LOGIN_COOKIE, &plain);
    let attributes = format!(
        "HttpOnly; SameSite=Lax; Path={}; Max-Age={LOGIN_SECS}",
        login_cookie_path(client)
    );
    Ok(redirect(
        to.as_str(),
        vec![cookie(
            LOGIN_COOKIE,
            &sealed,
            &attributes,
            login.secure_for(client),
        )],
    ))
}

/// Where the browser sends the login cookie: the callback's folder as browsers see it (behind
/// a proxy that adds a path prefix, that prefix included), so no other path ever gets it.
fn login_cookie_path(client: &crate::oidc::Client) -> &str {
    client
        .redirect
        .path()
        .strip_suffix("/callback")
        .unwrap_or("/auth")
}

/// The sign-in the login cookie holds, if it is ours and still counts.
fn pending(login: &Login, headers: &HeaderMap) -> Option<Pending> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let sealed = auth::cookie_value(cookies, LOGIN_COOKIE)?;
    // A cookie that does not open was altered or made under keys no longer in the ring.
    let plain = login.ring.decrypt_bound(LOGIN_COOKIE, sealed).ok()?;
    let pending: Pending = serde_json::from_str(&plain).ok()?;
    (pending.until > chrono::Utc::now().timestamp()).then_some(pending)
}

/// Where the identity provider sends the browser back: checks `state` against the sign-in this
/// browser started, trades the code, checks the ID token (signature, `iss`, `aud`, `exp`,
/// `nonce`) and starts a keyhouse session.
#[utoipa::path(get, path = "/auth/callback", tag = "sign-in",
    params(("code" = String, Query, description = "the provider's authorization code"),
           ("state" = String, Query, description = "the state `/auth/login` sent")),
    responses((status = 303, description = "Signed in: to `next`, with the `session_token` (HttpOnly) and `csrf_token` cookies"),
              (status = 400, description = "No sign-in in progress, a wrong state, or a code the provider refused (used or expired)", body = ErrorBody),
              (status = 401, description = "The ID token does not check", body = ErrorBody),
              (status = 409, description = "Browser sign-in is not configured", body = ErrorBody),
              (status = 403, description = "The identity provider grants no keyhouse role", body = ErrorBody),
              (status = 503, description = "The identity provider or the database is unreachable", body = ErrorBody)))]
async fn callback(
    State(login): State<Login>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let oidc = login.oidc()?;
    let client = oidc.login_client().map_err(fail)?;
    if let Some(error) = query_value(&query, "error") {
        // The provider's own refusal (the user declined, the client is misconfigured).
        tracing::info!(error = %error.escape_debug(), "the identity provider ended a sign-in");
        return Err(bad_request(
            "the identity provider did not sign you in; start again at /auth/login",
        ));
    }
    let pending = pending(&login, &headers).ok_or_else(|| {
        bad_request("no sign-in in progress in this browser (or it took over 10 minutes); start again at /auth/login")
    })?;
    let state = query_value(&query, "state").unwrap_or_default();
    if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
        return Err(bad_request(
            "state does not match the sign-in this browser started; start again at /auth/login",
        ));
    }
    let code = query_value(&query, "code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad_request("code is missing from the identity provider's answer"))?;
    let endpoints = oidc.endpoints().await.map_err(fail)?;
    let id_token = oidc
        .exchange(endpoints.token, &code, &pending.verifier)
        .await
        .map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => bad_request(&reason),
            other => fail(other),
        })?;
    let principal = oidc
        .id_token_principal(&id_token, &pending.nonce)
        .await
        .map_err(fail)?;
    let token = db::guarded(
        &login.db,
        sessions::create(
            &login.db,
            &principal.user_id,
            &principal.email,
            principal.role,
            login.ttl,
        ),
    )
    .await
    .map_err(fail)?;
    tracing::info!(
        user_id = %principal.user_id,
        role = principal.role.as_str(),
        "signed in through the OIDC issuer"
    );
    let age = login.ttl.num_seconds();
    let secure = login.secure_for(client);
    let mut cookies = session_cookies(&token, age, secure)?;
    cookies.push(cookie(
        LOGIN_COOKIE,
        "",
        &format!(
            "HttpOnly; SameSite=Lax; Path={}; Max-Age=0",
            login_cookie_path(client)
        ),
        secure,
    ));
    Ok(redirect(&pending.next, cookies))
}

/// Sign out: ends the browser's session (the `session_token` cookie) and clears its cookies. With the session cookie it needs
/// `X-CSRF-Token` equal to the `csrf_token` cookie, so no other site can sign a browser out.
#[utoipa::path(post, path = "/auth/logout", tag = "sign-in",
    responses((status = 204, description = "Signed out (also when there was no session); the cookies are cleared"),
              (status = 403, description = "The CSRF check failed (cookie sessions)", body = ErrorBody),
              (status = 503, description = "The database is unreachable", body = ErrorBody)))]
async fn logout(State(login): State<Login>, headers: HeaderMap) -> Result<Response, RestError> {
    // The browser's session only: a bearer session (a script's) ends with `keyhouse session
    // revoke`, so that a script calling every path cannot end its own session by accident.
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    if let Some(token) = cookies.and_then(|c| auth::cookie_value(c, "session_token")) {
        db::guarded(&login.db, sessions::revoke(&login.db, token))
            .await
            .map_err(fail)?;
        // The row is gone; this replica's cache must not keep the session alive.
        login.sessions.remove(&session_token::digest(token));
    }
    let secure = login.secure(&headers);
    let mut headers = HeaderMap::new();
    for (name, attributes) in [
        ("session_token", "HttpOnly; SameSite=Lax; Path=/; Max-Age=0"),
        ("csrf_token", "SameSite=Lax; Path=/; Max-Age=0"),
    ] {
        headers.append(header::SET_COOKIE, cookie(name, "", attributes, secure));
    }
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// The session cookies a browser gets on signing in: the token (HttpOnly) and the CSRF token,
/// which the page's script reads and sends back as `X-CSRF-Token`, so not HttpOnly.
fn session_cookies(token: &str, age: i64, secure: bool) -> Result<Vec<HeaderValue>, RestError> {
    Ok(vec![
        cookie(
            "session_token",
            token,
            &format!("HttpOnly; SameSite=Lax; Path=/; Max-Age={age}"),
            secure,
        ),
        cookie(
            "csrf_token",
            &random()?,
            &format!("SameSite=Lax; Path=/; Max-Age={age}"),
            secure,
        ),
    ])
}

impl SessionUser {
    fn of(caller: &keyhouse_domain::caller::Caller) -> Self {
        Self {
            user_id: caller.principal.user_id.clone(),
            email: caller.principal.email.clone(),
            role: caller.principal.role.as_str().to_owned(),
            source: caller.source.as_str().to_owned(),
        }
    }
}

/// Who this browser is signed in as (by its `session_token` cookie, or a bearer session
/// token), and whether the identity provider's login is offered. Never an error for a missing
/// or ended session: that is `user: null`.
#[utoipa::path(get, path = "/auth/session", tag = "sign-in",
    responses((status = 200, description = "The signed-in user, or `user: null`", body = SignedIn),
              (status = 503, description = "The session store is unreachable", body = ErrorBody)))]
async fn current(State(login): State<Login>, headers: HeaderMap) -> Result<Response, RestError> {
    let request = crate::rest::grpc_request(&headers, ());
    let user = match login.auth.caller(request.metadata()).await {
        Ok(caller) => Some(SessionUser::of(&caller)),
        Err(s) if s.code() == tonic::Code::Unauthenticated => None,
        Err(s) => return Err(Places::BODY.error(s)),
    };
    Ok(axum::Json(SignedIn {
        user,
        oidc_login: login.offers_oidc_login(),
    })
    .into_response())
}

/// Signs this browser in with a session token: checks it, then sets it as the HttpOnly
/// `session_token` cookie with the `csrf_token` cookie, so that the page's script never keeps
/// the token. With a session cookie already set, `X-CSRF-Token` must match as for every write.
#[utoipa::path(post, path = "/auth/session", tag = "sign-in",
    request_body = SignIn,
    responses((status = 200, description = "Signed in; sets the `session_token` (HttpOnly) and `csrf_token` cookies", body = SignedIn),
              (status = 401, description = "The token is not a live session", body = ErrorBody),
              (status = 403, description = "The CSRF check failed (a session cookie is already set)", body = ErrorBody),
              (status = 415, description = "The body is not JSON", body = ErrorBody),
              (status = 422, description = "`token` is missing, empty, or not a session token", body = ValidationErrorBody),
              (status = 503, description = "The session store is unreachable", body = ErrorBody)))]
async fn sign_in(
    State(login): State<Login>,
    headers: HeaderMap,
    crate::rest::JsonBody(body): crate::rest::JsonBody<SignIn>,
) -> Result<Response, RestError> {
    let token = body.token.trim();
    let invalid = |msg: &str| RestError::validation("body", "token", msg, "value_error");
    if token.is_empty() {
        return Err(invalid(
            "token must be a session token: make one with `keyhouse session create`",
        ));
    }
    if token.starts_with(keyhouse_domain::crypto::api_key::PREFIX) {
        return Err(invalid(
            "token is an API key, which is for the gateway; sign in with a session token",
        ));
    }
    if crate::oidc::is_jwt(token) {
        return Err(invalid(
            "token is an identity provider's token; sign in through /auth/login instead",
        ));
    }
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| invalid("token holds characters no session token has"))?;
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", bearer);
    let caller = login
        .auth
        .caller(request.metadata())
        .await
        .map_err(|s| Places::BODY.error(s))?;
    tracing::info!(
        user_id = %caller.principal.user_id,
        role = caller.principal.role.as_str(),
        source = caller.source.as_str(),
        "signed a browser in with a session token"
    );
    let mut response = axum::Json(SignedIn {
        user: Some(SessionUser::of(&caller)),
        oidc_login: login.offers_oidc_login(),
    })
    .into_response();
    for c in session_cookies(token, login.ttl.num_seconds(), login.secure(&headers))? {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_path_on_this_site() {
        assert!(same_site_path("/"));
        assert!(same_site_path("/console/keys?page=2"));
        assert!(!same_site_path("https://evil.example/"));
        assert!(!same_site_path("//evil.example/"));
        assert!(!same_site_path("/\\evil.example/"));
        assert!(!same_site_path("/a\r\nSet-Cookie: x=y"));
        assert!(!same_site_path("console"));
    }
}
