//! OIDC bearer tokens: a JWT access token from the operator's identity provider, for services
//! (client credentials) and for users signed in elsewhere (SSO). The token's signature is checked
//! against the issuer's JWKS (found through discovery and cached), and `iss`, `aud`, `exp` and
//! `nbf` with `CLOCK_SKEW`; the user is `sub` and the role comes from a claim the operator names,
//! through the values the operator maps. This is caller authentication, so it lives here with the
//! sessions; the domain only ever sees the resulting principal.
//!
//! The issuer is the operator's own setting, like the database URL, not an endpoint a user gave:
//! it is often inside the cluster, where the outbound guard (`keyhouse_domain::outbound`), made to
//! keep user-supplied URLs off internal addresses, would refuse it. So the keys are fetched with a
//! client of their own: https only (plain http only on loopback), no redirects, no proxies, short
//! timeouts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyhouse_domain::caller::{AuthFailure, Principal, Role};
use keyhouse_domain::config::Secret;
use keyhouse_domain::{Error, Result};
use reqwest::Url;
use serde_json::Value;

/// The signature algorithms a token may use. Never `none` (which does not even parse) and never
/// HS*: a shared secret is no public key, and an HMAC keyed with a public key is a forgery.
const ALLOWED: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// How far `exp` and `nbf` may be off, for clocks that disagree a little.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// How long fetched keys are trusted before the next token makes keyhouse fetch them again (when
/// the refresh bound allows), so that a key the issuer withdrew stops working.
const KEYS_MAX_AGE: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Discovery documents, key sets and token answers are small; a larger answer is refused.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const ISSUER_UNAVAILABLE: &str = "the identity provider is unavailable; try again shortly";

#[derive(clap::Args, Clone, Debug)]
pub struct OidcSettings {
    /// The identity provider whose bearer JWTs are accepted (its issuer URL, as in its tokens'
    /// `iss`); unset: no OIDC tokens. Needs `KEYHOUSE_OIDC_AUDIENCE`.
    #[arg(long = "oidc-issuer", env = "KEYHOUSE_OIDC_ISSUER")]
    pub issuer: Option<String>,

    /// The `aud` a token must hold to be accepted here.
    #[arg(long = "oidc-audience", env = "KEYHOUSE_OIDC_AUDIENCE")]
    pub audience: Option<String>,

    /// Where in a token the roles are: a dotted path to a string or a list of strings.
    #[arg(
        long = "oidc-role-claim",
        env = "KEYHOUSE_OIDC_ROLE_CLAIM",
        default_value = DEFAULT_ROLE_CLAIM
    )]
    pub role_claim: String,

    /// Role values that make a token's holder a keyhouse admin (comma-separated).
    #[arg(
        long = "oidc-admin-roles",
        env = "KEYHOUSE_OIDC_ADMIN_ROLES",
        value_delimiter = ','
    )]
    pub admin_roles: Vec<String>,

    /// Role values that make a token's holder a keyhouse user (comma-separated). A token with
    /// neither gets no access.
    #[arg(
        long = "oidc-user-roles",
        env = "KEYHOUSE_OIDC_USER_ROLES",
        value_delimiter = ','
    )]
    pub user_roles: Vec<String>,

    /// The least time between two fetches of the issuer's keys (seconds): a token naming an
    /// unknown key fetches them again at most this often.
    #[arg(
        long = "oidc-jwks-refresh-secs",
        env = "KEYHOUSE_OIDC_JWKS_REFRESH_SECS",
        default_value_t = DEFAULT_JWKS_REFRESH_SECS
    )]
    pub jwks_refresh_secs: u64,

    /// The client keyhouse signs browsers in as (`/auth/login`, Authorization Code with PKCE);
    /// unset: no browser login. Needs `KEYHOUSE_OIDC_REDIRECT_URL`.
    #[arg(long = "oidc-client-id", env = "KEYHOUSE_OIDC_CLIENT_ID")]
    pub client_id: Option<String>,

    /// That client's secret, sent to the token endpoint (HTTP Basic); unset for a public client,
    /// which PKCE alone protects.
    #[arg(
        long = "oidc-client-secret",
        env = "KEYHOUSE_OIDC_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<Secret>,

    /// Where the identity provider sends the browser back: keyhouse's `/auth/callback` as
    /// browsers reach it, registered with the provider. https, or http on a loopback address
    /// (then the cookies are not `Secure`).
    #[arg(long = "oidc-redirect-url", env = "KEYHOUSE_OIDC_REDIRECT_URL")]
    pub redirect_url: Option<String>,
}

const DEFAULT_ROLE_CLAIM: &str = "realm_access.roles";
const DEFAULT_JWKS_REFRESH_SECS: u64 = 30;

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            role_claim: DEFAULT_ROLE_CLAIM.to_owned(),
            admin_roles: Vec::new(),
            user_roles: Vec::new(),
            jwks_refresh_secs: DEFAULT_JWKS_REFRESH_SECS,
            client_id: None,
            client_secret: None,
            redirect_url: None,
        }
    }
}

impl OidcSettings {
    /// The verifier these settings describe, `None` when no issuer is set; a bad setting is an
    /// error naming it, so the server refuses to start.
    pub fn build(&self) -> Result<Option<Oidc>> {
        let Some(issuer) = non_empty(&self.issuer) else {
            if non_empty(&self.audience).is_some() {
                return Err(bad(
                    "KEYHOUSE_OIDC_AUDIENCE",
                    "is set without KEYHOUSE_OIDC_ISSUER".into(),
                ));
            }
            if non_empty(&self.client_id).is_some() {
                return Err(bad(
                    "KEYHOUSE_OIDC_CLIENT_ID",
                    "is set without KEYHOUSE_OIDC_ISSUER".into(),
                ));
            }
            return Ok(None);
        };
        let issuer_url = fetchable(issuer)
            .map_err(|why| bad("KEYHOUSE_OIDC_ISSUER", format!("'{issuer}' {why}")))?;
        let audience = non_empty(&self.audience).ok_or_else(|| {
            bad(
                "KEYHOUSE_OIDC_AUDIENCE",
                "is required with KEYHOUSE_OIDC_ISSUER: the `aud` of tokens meant for keyhouse"
                    .into(),
            )
        })?;
        let role_claim: Vec<String> = self
            .role_claim
            .trim()
            .split('.')
            .map(str::to_owned)
            .collect();
        if role_claim.iter().any(String::is_empty) {
            return Err(bad(
                "KEYHOUSE_OIDC_ROLE_CLAIM",
                format!("'{}' is not a dotted claim path", self.role_claim),
            ));
        }
        let set = |values: &[String]| -> HashSet<String> {
            values
                .iter()
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (admins, users) = (set(&self.admin_roles), set(&self.user_roles));
        if admins.is_empty() && users.is_empty() {
            return Err(bad(
                "KEYHOUSE_OIDC_USER_ROLES",
                "names no role (nor does KEYHOUSE_OIDC_ADMIN_ROLES): no token could get access"
                    .into(),
            ));
        }
        if let Some(both) = admins.intersection(&users).next() {
            return Err(bad(
                "KEYHOUSE_OIDC_ADMIN_ROLES",
                format!("'{both}' is also in KEYHOUSE_OIDC_USER_ROLES"),
            ));
        }
        let login = self.login()?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("keyhouse/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(Error::internal)?;
        Ok(Some(Oidc(Arc::new(Inner {
            issuer: issuer.to_owned(),
            discovery: discovery_url(&issuer_url),
            audience: audience.to_owned(),
            role_claim,
            admins,
            users,
            http,
            min_refresh: Duration::from_secs(self.jwks_refresh_secs),
            login,
            keys: RwLock::new(Arc::new(Keys::default())),
            fetch: tokio::sync::Mutex::new(None),
        }))))
    }

    /// The browser login's client, `None` when no client id is set; its settings come together.
    fn login(&self) -> Result<Option<Client>> {
        let secret = self
            .client_secret
            .as_ref()
            .filter(|s| !s.expose().trim().is_empty());
        let Some(id) = non_empty(&self.client_id) else {
            if secret.is_some() {
                return Err(bad(
                    "KEYHOUSE_OIDC_CLIENT_SECRET",
                    "is set without KEYHOUSE_OIDC_CLIENT_ID".into(),
                ));
            }
            if non_empty(&self.redirect_url).is_some() {
                return Err(bad(
                    "KEYHOUSE_OIDC_REDIRECT_URL",
                    "is set without KEYHOUSE_OIDC_CLIENT_ID".into(),
                ));
            }
            return Ok(None);
        };
        // An ID token is made out to the client: were the client also the audience of bearer
        // tokens, every ID token the login hands a browser would pass as an API credential.
        if non_empty(&self.audience) == Some(id) {
            return Err(bad(
                "KEYHOUSE_OIDC_CLIENT_ID",
                "must differ from KEYHOUSE_OIDC_AUDIENCE: ID tokens are made out to the login \
                 client and must not pass as bearer tokens (give access tokens an audience of \
                 their own, e.g. with an audience mapper)"
                    .into(),
            ));
        }
        let text = non_empty(&self.redirect_url).ok_or_else(|| {
            bad(
                "KEYHOUSE_OIDC_REDIRECT_URL",
                "is required with KEYHOUSE_OIDC_CLIENT_ID: keyhouse's /auth/callback as browsers \
                 reach it"
                    .into(),
            )
        })?;
        let redirect = fetchable(text)
            .map_err(|why| bad("KEYHOUSE_OIDC_REDIRECT_URL", format!("'{text}' {why}")))?;
        if !redirect.path().ends_with(CALLBACK_PATH) {
            return Err(bad(
                "KEYHOUSE_OIDC_REDIRECT_URL",
                format!("'{text}' must end in {CALLBACK_PATH}, where keyhouse takes the answer"),
            ));
        }
        Ok(Some(Client {
            id: id.to_owned(),
            secret: secret.cloned(),
            secure: redirect.scheme() == "https",
            redirect,
        }))
    }
}

/// The path the provider sends the browser back to.
pub const CALLBACK_PATH: &str = "/auth/callback";

/// keyhouse as a client of the identity provider, for the browser login.
pub struct Client {
    pub id: String,
    pub secret: Option<Secret>,
    pub redirect: Url,
    /// Cookies are `Secure` unless the redirect URL is plain http on loopback.
    pub secure: bool,
}

/// Where the provider's discovery document says to send the browser and to trade the code.
#[derive(Clone)]
pub struct Endpoints {
    pub authorization: Url,
    pub token: Url,
}

/// The accepted issuer's verifier, shared by every service of a process (one key cache).
#[derive(Clone)]
pub struct Oidc(Arc<Inner>);

struct Inner {
    issuer: String,
    discovery: Url,
    audience: String,
    role_claim: Vec<String>,
    admins: HashSet<String>,
    users: HashSet<String>,
    http: reqwest::Client,
    min_refresh: Duration,
    login: Option<Client>,
    keys: RwLock<Arc<Keys>>,
    /// Held while fetching, so concurrent tokens with an unknown key wait for one fetch; holds
    /// when the last fetch was tried and whether it failed.
    fetch: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    /// From the same discovery document; `None` when it names no usable pair.
    endpoints: Option<Endpoints>,
    fetched: Option<Instant>,
}

impl Keys {
    fn stale(&self) -> bool {
        self.fetched.is_none_or(|at| at.elapsed() >= KEYS_MAX_AGE)
    }
}

/// Whether a bearer token is shaped like a JWT (three dot-separated parts), as no session token,
/// service token or `uc_` key is.
pub fn is_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Oidc {
    /// The principal a bearer JWT stands for. A token that does not check is `Unauthenticated`;
    /// one that checks but maps to no role is `PermissionDenied`; an issuer whose keys cannot be
    /// fetched when they are needed is `Unavailable`, never a pass.
    pub async fn principal(&self, token: &str) -> Result<Principal> {
        let claims = self.claims(token, &self.0.audience).await?;
        self.principal_of(&claims)
    }

    /// The principal an ID token from the browser login stands for: checked like a bearer
    /// token, but for the login client's id as `aud` and with the `nonce` this login sent.
    pub async fn id_token_principal(&self, token: &str, nonce: &str) -> Result<Principal> {
        let client = self.login_client()?;
        let claims = self.claims(token, &client.id).await?;
        let sent = claims["nonce"].as_str().unwrap_or_default().as_bytes();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent, nonce.as_bytes())) {
            tracing::debug!(reason = "nonce differs", "OIDC ID token refused");
            return Err(Error::Unauthenticated(AuthFailure::InvalidSession));
        }
        self.principal_of(&claims)
    }

    /// The browser login's client; `FailedPrecondition` when none is configured.
    pub fn login_client(&self) -> Result<&Client> {
        self.0.login.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "browser sign-in is not configured: set KEYHOUSE_OIDC_CLIENT_ID and \
                 KEYHOUSE_OIDC_REDIRECT_URL"
                    .into(),
            )
        })
    }

    /// The claims of a JWT whose signature, `iss`, `aud` (= `audience`), `exp` and `nbf` check.
    async fn claims(&self, token: &str, audience: &str) -> Result<Value> {
        let invalid = |why: &str| {
            // The reason is for the operator; the caller learns only that the token failed.
            tracing::debug!(reason = why, "OIDC token refused");
            Error::Unauthenticated(AuthFailure::InvalidSession)
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(invalid("algorithm not allowed"));
        }
        let kid = header.kid.ok_or_else(|| invalid("no kid"))?;
        let (key, key_alg) = self
            .key(&kid)
            .await?
            .ok_or_else(|| invalid("unknown kid"))?;
        if key_alg.is_some_and(|alg| alg != header.alg) {
            return Err(invalid("algorithm differs from the key's"));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.0.issuer]);
        validation.set_audience(&[audience]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| invalid(&e.to_string()))?
            .claims;
        if claims["sub"].as_str().is_none_or(str::is_empty) {
            return Err(invalid("no sub"));
        }
        Ok(claims)
    }

    /// The user and role of checked claims; no mapped role is `PermissionDenied`.
    fn principal_of(&self, claims: &Value) -> Result<Principal> {
        let role = self.role(claims).ok_or_else(|| {
            Error::PermissionDenied(
                "your identity provider grants you no keyhouse role; an operator maps roles in \
                 KEYHOUSE_OIDC_ADMIN_ROLES and KEYHOUSE_OIDC_USER_ROLES"
                    .into(),
            )
        })?;
        Ok(Principal {
            user_id: claims["sub"].as_str().unwrap_or_default().to_owned(),
            email: claims["email"].as_str().unwrap_or_default().to_owned(),
            role,
        })
    }

    /// The provider's authorization and token endpoints, from the discovery document keyhouse
    /// keeps with the keys (fetched now if it has none yet).
    pub async fn endpoints(&self) -> Result<Endpoints> {
        let missing = || {
            Error::Unavailable(
                "the identity provider's discovery document names no authorization_endpoint \
                 and token_endpoint"
                    .into(),
            )
        };
        let current = self.keys();
        if current.fetched.is_some() && !current.stale() {
            return current.endpoints.clone().ok_or_else(missing);
        }
        let mut last = self.0.fetch.lock().await;
        let current = self.keys();
        if current.fetched.is_some() && !current.stale() {
            return current.endpoints.clone().ok_or_else(missing);
        }
        // As for keys: at most one fetch per refresh interval, so a flood of sign-ins while the
        // provider is down neither queues on the lock nor keeps calling the provider.
        if last.is_some_and(|(at, _)| at.elapsed() < self.0.min_refresh) {
            return current
                .endpoints
                .clone()
                .ok_or_else(|| Error::Unavailable(ISSUER_UNAVAILABLE.into()));
        }
        let fetched = self.fetch_keys().await;
        *last = Some((Instant::now(), fetched.is_err()));
        match fetched {
            Ok(keys) => {
                let endpoints = keys.endpoints.clone();
                *self.0.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                endpoints.ok_or_else(missing)
            }
            Err(why) => {
                tracing::warn!(
                    issuer = %self.0.issuer,
                    error = %why,
                    "fetching the OIDC issuer's discovery document failed"
                );
                current
                    .endpoints
                    .clone()
                    .ok_or_else(|| Error::Unavailable(ISSUER_UNAVAILABLE.into()))
            }
        }
    }

    /// Trades an authorization code (with its PKCE verifier) for the provider's ID token.
    pub async fn exchange(
        &self,
        token_endpoint: Url,
        code: &str,
        verifier: &str,
    ) -> Result<String> {
        let client = self.login_client()?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", client.redirect.as_str()),
            ("client_id", client.id.as_str()),
            ("code_verifier", verifier),
        ];
        let mut request = self.0.http.post(token_endpoint).form(&form);
        if let Some(secret) = &client.secret {
            // RFC 6749 2.3.1: both are form-encoded before they go into Basic.
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(encode(&client.id), Some(encode(secret.expose())));
        }
        let response = request.send().await.map_err(|e| {
            tracing::warn!(issuer = %self.0.issuer, error = %e, "the OIDC token endpoint is unreachable");
            Error::Unavailable(ISSUER_UNAVAILABLE.into())
        })?;
        let status = response.status();
        let body: Value = match read_bounded(response).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if !status.is_success() {
            // A used, expired or foreign code: the provider says invalid_grant. Its error code
            // (never a token) is what the operator needs.
            tracing::info!(
                %status,
                error = body["error"].as_str().unwrap_or("(none)"),
                "the OIDC token endpoint refused the authorization code"
            );
            return Err(Error::invalid(
                "code",
                "the identity provider refused this sign-in (the code is used, expired or not \
                 ours); start again at /auth/login",
            ));
        }
        body["id_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Unavailable("the identity provider sent no id_token".into()))
    }

    /// The role the configured claim maps to: admin if any value is an admin role, else user if
    /// any is a user role, else none. Unknown values never grant anything.
    fn role(&self, claims: &Value) -> Option<Role> {
        let value = self
            .0
            .role_claim
            .iter()
            .try_fold(claims, |v, part| v.get(part))?;
        let values: Vec<&str> = match value {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if values.iter().any(|v| self.0.admins.contains(*v)) {
            Some(Role::Admin)
        } else if values.iter().any(|v| self.0.users.contains(*v)) {
            Some(Role::User)
        } else {
            None
        }
    }

    /// The key named `kid`, fetching the key set again when `kid` is unknown or the set is old,
    /// at most once per `min_refresh`.
    async fn key(&self, kid: &str) -> Result<Option<(DecodingKey, Option<Algorithm>)>> {
        let known = |keys: &Keys| keys.by_kid.get(kid).cloned();
        let current = self.keys();
        let known_now = known(&current);
        if let Some(key) = &known_now
            && !current.stale()
        {
            return Ok(Some(key.clone()));
        }
        let mut last = match (known_now, self.0.fetch.try_lock()) {
            (_, Ok(last)) => last,
            // A known key keeps serving while another call refreshes the old set.
            (Some(key), Err(_)) => return Ok(Some(key)),
            (None, Err(_)) => self.0.fetch.lock().await,
        };
        // Another call may have fetched while this one waited.
        let current = self.keys();
        if let Some(key) = known(&current).filter(|_| !current.stale()) {
            return Ok(Some(key));
        }
        let recently = last.is_some_and(|(at, _)| at.elapsed() < self.0.min_refresh);
        if recently {
            return match (known(&current), *last) {
                (Some(key), _) => Ok(Some(key)),
                (None, Some((_, true))) => Err(Error::Unavailable(ISSUER_UNAVAILABLE.into())),
                (None, _) => Ok(None),
            };
        }
        let fetched = self.fetch_keys().await;
        *last = Some((Instant::now(), fetched.is_err()));
        match fetched {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *self.0.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.clone();
                Ok(known(&keys))
            }
            Err(why) => {
                tracing::warn!(
                    issuer = %self.0.issuer,
                    error = %why,
                    "fetching the OIDC issuer's keys failed"
                );
                // Keys already fetched still check tokens while the issuer is away.
                match known(&current) {
                    Some(key) => Ok(Some(key)),
                    None => Err(Error::Unavailable(ISSUER_UNAVAILABLE.into())),
                }
            }
        }
    }

    fn keys(&self) -> Arc<Keys> {
        self.0
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Discovery, then the key set it names. Keys that are not for signatures, have no `kid`, or
    /// that the verifier cannot use are left out rather than failing the whole set.
    async fn fetch_keys(&self) -> anyhow::Result<Keys> {
        let discovery: Value = serde_json::from_slice(&self.get(self.0.discovery.clone()).await?)?;
        // OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it was asked for.
        anyhow::ensure!(
            discovery["issuer"] == self.0.issuer.as_str(),
            "the discovery document names another issuer: {}",
            discovery["issuer"]
        );
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the discovery document has no jwks_uri"))?;
        let jwks_uri =
            fetchable(jwks_uri).map_err(|why| anyhow::anyhow!("jwks_uri '{jwks_uri}' {why}"))?;
        let set: Value = serde_json::from_slice(&self.get(jwks_uri).await?)?;
        let mut by_kid = HashMap::new();
        for raw in set["keys"].as_array().into_iter().flatten() {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // A key marked for an algorithm keyhouse cannot verify is no signing key of ours.
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(alg) => match alg.to_string().parse::<Algorithm>() {
                    Ok(alg) => Some(alg),
                    Err(_) => continue,
                },
            };
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                by_kid.insert(kid, (key, alg));
            }
        }
        let endpoint = |name: &str| discovery[name].as_str().and_then(|u| fetchable(u).ok());
        let endpoints = match (
            endpoint("authorization_endpoint"),
            endpoint("token_endpoint"),
        ) {
            (Some(authorization), Some(token)) => Some(Endpoints {
                authorization,
                token,
            }),
            _ => None,
        };
        Ok(Keys {
            by_kid,
            endpoints,
            fetched: Some(Instant::now()),
        })
    }

    async fn get(&self, url: Url) -> anyhow::Result<Vec<u8>> {
        read_bounded(self.0.http.get(url).send().await?.error_for_status()?).await
    }
}

/// An answer's body, refused when larger than `MAX_DOCUMENT_BYTES`.
async fn read_bounded(mut response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        anyhow::ensure!(
            body.len() <= MAX_DOCUMENT_BYTES,
            "answer larger than {MAX_DOCUMENT_BYTES} bytes"
        );
    }
    Ok(body)
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A bad setting, the message starting with its name.
fn bad(setting: &'static str, why: String) -> Error {
    Error::invalid(setting, format!("{setting} {why}"))
}

/// `text` as a URL keys may be fetched from: https, or http on a loopback address (a provider
/// beside keyhouse, as in tests); no credentials, query or fragment.
fn fetchable(text: &str) -> Result<Url, &'static str> {
    let url = Url::parse(text).map_err(|_| "is not a URL")?;
    let loopback = url.host_str().is_some_and(|host| {
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be an https URL (http only on a loopback address)"),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must have no query or fragment");
    }
    Ok(url)
}

fn discovery_url(issuer: &Url) -> Url {
    let mut url = issuer.clone();
    let path = format!(
        "{}/.well-known/openid-configuration",
        issuer.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_is_under_the_issuer_path() {
        let url = |s: &str| discovery_url(&Url::parse(s).expect("url")).to_string();
        assert_eq!(
            url("https://id.example/realms/ops"),
            "https://id.example/realms/ops/.well-known/openid-configuration"
        );
        assert_eq!(
            url("https://id.example/"),
            "https://id.example/.well-known/openid-configuration"
        );
    }

    #[test]
    fn keys_come_over_https_or_from_loopback_only() {
        assert!(fetchable("https://id.example/realms/ops").is_ok());
        assert!(fetchable("http://127.0.0.1:8080").is_ok());
        assert!(fetchable("http://localhost:8080").is_ok());
        assert!(fetchable("http://keycloak:8080/realms/ops").is_err());
        assert!(fetchable("https://u:p@id.example").is_err());
        assert!(fetchable("id.example").is_err());
    }

    fn oidc(role_claim: &str) -> Oidc {
        let settings = OidcSettings {
            issuer: Some("https://id.example/realms/ops".into()),
            audience: Some("keyhouse".into()),
            role_claim: role_claim.into(),
            admin_roles: vec!["kh-admin".into()],
            user_roles: vec!["kh-user".into(), "dev".into()],
            ..OidcSettings::default()
        };
        settings.build().expect("valid").expect("configured")
    }

    #[test]
    fn the_role_claim_is_a_path_to_a_string_or_a_list() {
        let nested = oidc("realm_access.roles");
        let role = |claims: serde_json::Value| nested.role(&claims);
        assert_eq!(
            role(serde_json::json!({"realm_access": {"roles": ["x", "dev"]}})),
            Some(Role::User)
        );
        assert_eq!(
            role(serde_json::json!({"realm_access": {"roles": ["dev", "kh-admin"]}})),
            Some(Role::Admin)
        );
        assert_eq!(
            role(serde_json::json!({"realm_access": {"roles": ["billing"]}})),
            None
        );
        assert_eq!(role(serde_json::json!({"roles": ["kh-admin"]})), None);
        assert_eq!(
            role(serde_json::json!({"realm_access": {"roles": {"kh-admin": true}}})),
            None
        );
        let flat = oidc("role");
        assert_eq!(
            flat.role(&serde_json::json!({"role": "kh-admin"})),
            Some(Role::Admin)
        );
    }

    #[test]
    fn jwts_are_three_parts() {
        assert!(is_jwt("a.b.c"));
        assert!(!is_jwt("ks_0123"));
        assert!(!is_jwt("a.b"));
    }
}
