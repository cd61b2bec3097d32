//! `keyhouse sync litellm`: the agent that pushes platform keys to a LiteLLM proxy, so that a
//! change an admin makes reaches LiteLLM with no restart.
//!
//! It watches `PlatformKeyService/WatchPlatformKeys` (with the secret) under a service token.
//! Every (re)subscription starts with the full current state, so after a disconnect the agent
//! subscribes again (with backoff) and applies whatever differs from what it last applied: no
//! change is missed, and one already applied is skipped. Each change goes to LiteLLM's admin API
//! (pinned: LiteLLM 1.100.5, the release the LiteLLM plugin is tested against) with the proxy's
//! master key:
//!
//! - a value (source `database` or `environment`): the credential is updated with
//!   `PATCH /credentials/{name}`, or created with `POST /credentials` when LiteLLM answers 404;
//!   then each mapped model gets the key with `PATCH /model/{id}/update`;
//! - no value (`not_set`): `DELETE /credentials/{name}` (a 404 means it is already gone), and
//!   each mapped model's `api_key` becomes `os.environ/<the catalog's variable>` with
//!   `PATCH /model/{id}/update`: LiteLLM's own environment applies, as keyhouse's environment
//!   fallback does (a PATCH of that release merges `litellm_params` and cannot drop a key).
//!
//! A 5xx, a 429 or an unreachable proxy is retried with backoff; another answer is logged (its
//! status, never its body) and the change stays unapplied until the next subscription. Every
//! applied change is reported with `ReportPlatformKeySync` (a `platform_key.synced` audit event).
//! Requests go through the outbound guard, like every request keyhouse makes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, bail};
use keyhouse_domain::config::Secret;
use keyhouse_domain::outbound::{ALLOWED_NETWORKS_VAR, Allowed, Outbound};
use keyhouse_domain::providers::catalog;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The LiteLLM release whose admin API this agent speaks (README "LiteLLM sync").
pub const LITELLM_VERSION: &str = "1.100.5";
/// What `ReportPlatformKeySync` names as the target.
pub const TARGET: &str = "litellm";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// With `--once`, a change LiteLLM keeps refusing with a 5xx fails the run after this many tries.
const ONCE_ATTEMPTS: u32 = 8;

/// The catalog's keys that are not a model provider's: never pushed by default.
const NOT_PROVIDER_KEYS: &[&str] = &["provisioning", "litellm"];

#[derive(clap::Args, Clone, Debug)]
pub struct SyncSettings {
    /// keyhouse's gRPC address (the platform-key service).
    #[arg(
        long,
        env = "KEYHOUSE_SYNC_KEYHOUSE_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    pub keyhouse_url: String,

    /// The service token the agent watches with (its SHA-256 in the server's
    /// KEYHOUSE_SERVICE_TOKENS).
    #[arg(long, env = "KEYHOUSE_SYNC_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Secret,

    /// The LiteLLM proxy's base URL, e.g. http://litellm:4000.
    #[arg(long, env = "KEYHOUSE_SYNC_LITELLM_URL")]
    pub litellm_url: String,

    /// The LiteLLM proxy's master key (sent as `Authorization: Bearer`; never logged).
    #[arg(long, env = "LITELLM_MASTER_KEY", hide_env_values = true)]
    pub litellm_master_key: Secret,

    /// Which platform key goes where, `;`-separated: `name=credential` or
    /// `name=credential:model-id,model-id`. Empty: every provider key of the catalog to the
    /// credential `keyhouse-<name>`, and no model.
    #[arg(long, env = "KEYHOUSE_SYNC_LITELLM_MAPPING", default_value = "")]
    pub mapping: String,

    /// Networks the agent may reach although they are not public (the LiteLLM proxy's, usually),
    /// comma-separated CIDRs or addresses.
    #[arg(long, env = ALLOWED_NETWORKS_VAR, value_delimiter = ',')]
    pub outbound_allowed_networks: Vec<String>,

    /// Apply the current state once and exit (for cron); non-zero when a key could not be applied.
    #[arg(long)]
    pub once: bool,
}

/// Where one platform key goes in LiteLLM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub credential: String,
    /// LiteLLM's `custom_llm_provider` for the credential.
    pub provider: String,
    /// Model ids (`model_info.id`) whose `litellm_params.api_key` the agent sets.
    pub models: Vec<String>,
}

/// The environment variable a model falls back to in LiteLLM once keyhouse holds no value:
/// the one keyhouse itself falls back to for that key.
fn environment_variable(name: &str) -> String {
    catalog::find(name).and_then(|p| p.env_var).map_or_else(
        || format!("{}_API_KEY", name.to_ascii_uppercase()),
        str::to_owned,
    )
}

/// LiteLLM's provider name for a catalog key.
fn litellm_provider(name: &str) -> &str {
    match name {
        "google" => "gemini",
        other => other,
    }
}

/// A credential name or model id as it goes into a path: letters, digits, `.`, `_`, `-`, `:`.
fn path_safe(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// The mapping from its text form (see `SyncSettings::mapping`); an error names the entry.
pub fn parse_mapping(text: &str) -> anyhow::Result<BTreeMap<String, Route>> {
    let mut routes = BTreeMap::new();
    if text.trim().is_empty() {
        for spec in catalog::platform().filter(|p| !NOT_PROVIDER_KEYS.contains(&p.id)) {
            routes.insert(
                spec.id.to_owned(),
                Route {
                    credential: format!("keyhouse-{}", spec.id),
                    provider: litellm_provider(spec.id).to_owned(),
                    models: Vec::new(),
                },
            );
        }
        return Ok(routes);
    }
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let bad =
            |why: &str| anyhow::anyhow!("KEYHOUSE_SYNC_LITELLM_MAPPING entry '{entry}': {why}");
        let (name, rest) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected name=credential[:model-id,...]"))?;
        let name = name.trim();
        if !catalog::platform().any(|p| p.id == name) {
            let known: Vec<_> = catalog::platform().map(|p| p.id).collect();
            return Err(bad(&format!(
                "'{name}' is not a platform key; known keys: {}",
                known.join(", ")
            )));
        }
        let (credential, models) = match rest.split_once(':') {
            Some((c, m)) => (c.trim(), m),
            None => (rest.trim(), ""),
        };
        if !path_safe(credential) || credential.contains(':') {
            return Err(bad(
                "the credential name must be 1 to 200 letters, digits, '.', '_' or '-'",
            ));
        }
        let models: Vec<String> = models
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(m) = models.iter().find(|m| !path_safe(m)) {
            return Err(bad(&format!(
                "model id '{m}' must be letters, digits, '.', '_', '-' or ':'"
            )));
        }
        let route = Route {
            credential: credential.to_owned(),
            provider: litellm_provider(name).to_owned(),
            models,
        };
        if routes.insert(name.to_owned(), route).is_some() {
            return Err(bad(&format!("'{name}' is mapped twice")));
        }
    }
    Ok(routes)
}

/// What was applied for a key: its version, source and a digest of the value (kept only in
/// memory, so that an environment value, always version 0, is still told apart).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    version: i64,
    source: String,
    digest: [u8; 32],
}

impl Applied {
    fn of(event: &pb::PlatformKeyEvent) -> Self {
        Self {
            version: event.version,
            source: event.source.clone(),
            digest: Sha256::digest(event.api_key.as_bytes()).into(),
        }
    }
}

/// Why a LiteLLM call failed.
#[derive(Debug)]
enum Failure {
    /// A 5xx, a 429 or no answer: try again.
    Retry(String),
    /// Anything else: LiteLLM refused this change.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(why) | Failure::Refused(why) => f.write_str(why),
        }
    }
}

/// The LiteLLM proxy's admin API, through the outbound guard.
struct LiteLlm {
    base: Url,
    master_key: Secret,
    outbound: Outbound,
}

impl LiteLlm {
    /// Sends one request; `Ok` with the status for a 2xx or a status in `accept`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        accept: &[StatusCode],
    ) -> Result<StatusCode, Failure> {
        let url = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let mut req = self
            .outbound
            .client()
            .request(method.clone(), &url)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(self.master_key.expose());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let what = format!("{method} {path}");
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() || accept.contains(&status) {
                    Ok(status)
                } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    Err(Failure::Retry(format!("{what}: LiteLLM answered {status}")))
                } else {
                    Err(Failure::Refused(format!(
                        "{what}: LiteLLM answered {status}"
                    )))
                }
            }
            Err(e) => match keyhouse_domain::outbound::refused(&e) {
                Some(refused) => Err(Failure::Refused(format!("{what}: {refused}"))),
                None => Err(Failure::Retry(format!("{what}: {}", error_chain(&e)))),
            },
        }
    }

    /// Puts `event`'s state into LiteLLM for `route`. Every step is idempotent.
    async fn apply(&self, event: &pb::PlatformKeyEvent, route: &Route) -> Result<(), Failure> {
        let credential_path = format!("/credentials/{}", route.credential);
        if event.source == "not_set" || event.api_key.is_empty() {
            self.call(
                Method::DELETE,
                &credential_path,
                None,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
            let fallback = format!("os.environ/{}", environment_variable(&event.name));
            for model in &route.models {
                self.call(
                    Method::PATCH,
                    &format!("/model/{model}/update"),
                    Some(json!({ "litellm_params": { "api_key": fallback } })),
                    &[],
                )
                .await?;
            }
            return Ok(());
        }
        let info = json!({ "custom_llm_provider": route.provider });
        let values = json!({ "api_key": event.api_key });
        let patch = json!({ "credential_info": info, "credential_values": values });
        let status = self
            .call(
                Method::PATCH,
                &credential_path,
                Some(patch.clone()),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            let create = json!({
                "credential_name": route.credential,
                "credential_info": info,
                "credential_values": values,
            });
            let status = self
                .call(
                    Method::POST,
                    "/credentials",
                    Some(create),
                    &[StatusCode::CONFLICT],
                )
                .await?;
            // Created by someone else in between: update it after all.
            if status == StatusCode::CONFLICT {
                self.call(Method::PATCH, &credential_path, Some(patch), &[])
                    .await?;
            }
        }
        for model in &route.models {
            self.call(
                Method::PATCH,
                &format!("/model/{model}/update"),
                Some(json!({ "litellm_params": { "api_key": event.api_key } })),
                &[],
            )
            .await?;
        }
        Ok(())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// How a subscription ended.
enum Ended {
    /// `--once`: every mapped key's current state was handled.
    Done { refused: usize },
    /// The stream ended or failed, or a report could not be made: subscribe again.
    Lost(String),
}

pub struct Agent {
    settings: SyncSettings,
    routes: BTreeMap<String, Route>,
    litellm: LiteLlm,
    applied: HashMap<String, Applied>,
}

impl Agent {
    pub fn new(settings: SyncSettings) -> anyhow::Result<Self> {
        let routes = parse_mapping(&settings.mapping)?;
        if routes.is_empty() {
            bail!("KEYHOUSE_SYNC_LITELLM_MAPPING maps no key");
        }
        let outbound = Outbound::new(Allowed::parse(&settings.outbound_allowed_networks)?)?;
        let base = outbound
            .check_url(&settings.litellm_url)
            .map_err(|why| anyhow::anyhow!("KEYHOUSE_SYNC_LITELLM_URL {why}"))?;
        if settings.service_token.expose().is_empty() {
            bail!("KEYHOUSE_SYNC_SERVICE_TOKEN is empty");
        }
        if settings.litellm_master_key.expose().is_empty() {
            bail!("LITELLM_MASTER_KEY is empty");
        }
        let litellm = LiteLlm {
            base,
            master_key: settings.litellm_master_key.clone(),
            outbound,
        };
        Ok(Self {
            settings,
            routes,
            litellm,
            applied: HashMap::new(),
        })
    }

    /// Runs until `shutdown` (or, with `--once`, until the current state is applied).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(
            keyhouse = %self.settings.keyhouse_url,
            litellm = %self.litellm.base,
            keys = ?self.routes.keys().collect::<Vec<_>>(),
            once = self.settings.once,
            "LiteLLM sync starting"
        );
        tokio::pin!(shutdown);
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            let ended = tokio::select! {
                () = &mut shutdown => return Ok(()),
                ended = self.subscription() => ended,
            };
            match ended {
                Ended::Done { refused: 0 } => return Ok(()),
                Ended::Done { refused } => {
                    bail!("{refused} platform key(s) could not be applied to LiteLLM (see the log)")
                }
                Ended::Lost(why) => {
                    attempts += 1;
                    if self.settings.once && attempts >= ONCE_ATTEMPTS {
                        bail!("the watch of platform keys failed {attempts} times: {why}");
                    }
                    tracing::warn!(reason = %why, retry_in_ms = backoff.as_millis() as u64, "platform-key watch lost; subscribing again");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    async fn client(&self) -> anyhow::Result<PlatformKeyServiceClient<Channel>> {
        let mut endpoint = Endpoint::from_shared(self.settings.keyhouse_url.clone())
            .context("KEYHOUSE_SYNC_KEYHOUSE_URL")?
            .connect_timeout(REQUEST_TIMEOUT);
        if self.settings.keyhouse_url.starts_with("https://") {
            endpoint = endpoint.tls_config(ClientTlsConfig::new().with_webpki_roots())?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
        Ok(PlatformKeyServiceClient::new(channel))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.settings.service_token.expose()).parse() {
            req.metadata_mut().insert("authorization", value);
        }
        req
    }

    /// One subscription: the initial state, then each change, until the stream ends.
    async fn subscription(&mut self) -> Ended {
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(e) => return Ended::Lost(format!("connecting to keyhouse: {e:#}")),
        };
        let req = self.request(pb::WatchPlatformKeysRequest {
            include_secret: true,
        });
        let mut stream = match client.watch_platform_keys(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) => {
                return Ended::Lost(format!("WatchPlatformKeys: {} {}", s.code(), s.message()));
            }
        };
        let mut pending_initial: Vec<String> = self.routes.keys().cloned().collect();
        let mut refused = 0usize;
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => return Ended::Lost("the watch stream ended".into()),
                Err(s) => {
                    return Ended::Lost(format!(
                        "the watch stream failed: {} {}",
                        s.code(),
                        s.message()
                    ));
                }
            };
            if event.initial {
                pending_initial.retain(|name| *name != event.name);
            }
            match self.handle(&mut client, &event).await {
                Ok(()) => {}
                Err(HandleError::Refused) => refused += 1,
                Err(HandleError::Lost(why)) => return Ended::Lost(why),
            }
            if self.settings.once && pending_initial.is_empty() {
                return Ended::Done { refused };
            }
        }
    }

    async fn handle(
        &mut self,
        client: &mut PlatformKeyServiceClient<Channel>,
        event: &pb::PlatformKeyEvent,
    ) -> Result<(), HandleError> {
        let Some(route) = self.routes.get(&event.name).cloned() else {
            return Ok(());
        };
        let state = Applied::of(event);
        if let Some(done) = self.applied.get(&event.name) {
            let stale = done.source == "database"
                && state.source == "database"
                && state.version < done.version;
            if *done == state || stale {
                tracing::debug!(name = %event.name, version = event.version, "already applied");
                return Ok(());
            }
        }
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.litellm.apply(event, &route).await {
                Ok(()) => break,
                Err(Failure::Retry(why)) if !(self.settings.once && attempts >= ONCE_ATTEMPTS) => {
                    tracing::warn!(name = %event.name, version = event.version, reason = %why, retry_in_ms = backoff.as_millis() as u64, "LiteLLM did not take the change yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
                Err(why) => {
                    tracing::error!(name = %event.name, version = event.version, credential = %route.credential, reason = %why, "LiteLLM refused the change; it is tried again at the next subscription");
                    return Err(HandleError::Refused);
                }
            }
        }
        let report = self.request(pb::ReportPlatformKeySyncRequest {
            name: event.name.clone(),
            version: event.version,
            target: TARGET.into(),
            source: event.source.clone(),
        });
        // Not recorded as applied until reported: after a resubscription it is applied again
        // (idempotent) and reported then.
        if let Err(s) = client.report_platform_key_sync(report).await {
            return Err(HandleError::Lost(format!(
                "ReportPlatformKeySync: {} {}",
                s.code(),
                s.message()
            )));
        }
        tracing::info!(name = %event.name, version = event.version, source = %event.source, credential = %route.credential, models = route.models.len(), "platform key applied to LiteLLM");
        self.applied.insert(event.name.clone(), state);
        Ok(())
    }
}

enum HandleError {
    Refused,
    Lost(String),
}

/// `keyhouse sync litellm`.
pub async fn run(settings: SyncSettings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Agent::new(settings)?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mapping_sends_every_provider_key_to_its_own_credential() {
        let routes = parse_mapping("").expect("default");
        assert_eq!(routes["openrouter"].credential, "keyhouse-openrouter");
        assert_eq!(routes["google"].provider, "gemini");
        assert!(!routes.contains_key("litellm") && !routes.contains_key("provisioning"));
    }

    #[test]
    fn a_mapping_names_credentials_and_models_and_refuses_unknown_keys() {
        let routes = parse_mapping("openrouter=or-main:m-1,m-2 ; openai=oa").expect("parse");
        assert_eq!(
            routes["openrouter"],
            Route {
                credential: "or-main".into(),
                provider: "openrouter".into(),
                models: vec!["m-1".into(), "m-2".into()],
            }
        );
        assert!(routes["openai"].models.is_empty());
        let err = parse_mapping("nope=x").expect_err("unknown").to_string();
        assert!(err.contains("'nope' is not a platform key"), "{err}");
        let err = parse_mapping("openai=a/b").expect_err("path").to_string();
        assert!(err.contains("credential name"), "{err}");
        let err = parse_mapping("openai=a;openai=b")
            .expect_err("twice")
            .to_string();
        assert!(err.contains("mapped twice"), "{err}");
    }
}
