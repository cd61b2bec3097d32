//! BYOK: users' own provider keys, one per user and provider, Fernet-encrypted with the key
//! ring, tested live on request, and handed decrypted only to internal services holding a
//! service token. Every change and every hand-out is audited, never with the secret.

use std::time::Duration;

use keyhouse_proto::v1 as pb;
use sea_orm::DatabaseConnection;
use serde_json::json;
use uuid::Uuid;

use crate::caller::Caller;
use crate::crypto::fernet_ring::{KeyRing, binding};
use crate::crypto::mask;
use crate::entities::{key_health, user_provider_keys};
use crate::error::{Error, Result};
use crate::health;
use crate::outbound::Outbound;
use crate::providers::{self, BaseUrls, Provider, catalog};
use crate::storage::health as health_store;
use crate::storage::provider_keys as store;
use crate::storage::{audit, now};
use crate::timestamp;

const MAX_LABEL: usize = 255;
const MAX_ENDPOINT: usize = 2048;

#[derive(Clone)]
pub struct Byok {
    db: DatabaseConnection,
    ring: KeyRing,
    urls: BaseUrls,
    outbound: Outbound,
    timeout: Duration,
}

impl Byok {
    pub fn new(
        db: DatabaseConnection,
        ring: KeyRing,
        urls: BaseUrls,
        outbound: Outbound,
        timeout: Duration,
    ) -> Self {
        Self {
            db,
            ring,
            urls,
            outbound,
            timeout,
        }
    }

    pub async fn providers(&self, caller: &Caller) -> Result<pb::ListProvidersResponse> {
        let mine = self.mine(caller).await?;
        let providers = catalog::byok()
            .map(|p| pb::Provider {
                id: p.id.into(),
                name: p.display_name.into(),
                key_format: p.key_format.into(),
                configured: mine.iter().any(|k| k.provider == p.id),
                requires_endpoint: p.requires_endpoint,
            })
            .collect();
        Ok(pb::ListProvidersResponse { providers })
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id(), provider = %req.provider))]
    pub async fn put(
        &self,
        caller: &Caller,
        req: pb::PutProviderKeyRequest,
    ) -> Result<pb::PutProviderKeyResponse> {
        let provider = provider(&req.provider)?;
        let key = req.key.trim();
        providers::check_key_length("key", key)?;
        if !provider.accepts(key) {
            return Err(crate::providers::bad_key_format(
                "key",
                provider.display_name,
                provider.key_format,
            ));
        }
        let label = req.label.trim();
        if label.chars().count() > MAX_LABEL || label.chars().any(char::is_control) {
            return Err(Error::invalid(
                "label",
                format!("label must be at most {MAX_LABEL} printable characters"),
            ));
        }
        let endpoint = endpoint(&self.outbound, provider, req.endpoint.trim())?;
        let at = now();
        let txn = crate::db::begin(&self.db).await?;
        // Unset keeps a replaced key's choice; a new key starts without scheduled checks.
        let health_checks = match req.health_checks {
            Some(on) => on,
            None => store::find(&txn, caller.user_id(), provider.id)
                .await?
                .is_some_and(|k| k.health_checks),
        };
        store::upsert(
            &txn,
            user_provider_keys::Model {
                id: Uuid::new_v4(),
                user_id: caller.user_id().to_owned(),
                provider: provider.id.to_owned(),
                ciphertext: self
                    .ring
                    .encrypt_bound(&binding::byok(caller.user_id(), provider.id), key),
                key_preview: mask::preview(key),
                label: (!label.is_empty()).then(|| label.to_owned()),
                endpoint: endpoint.clone(),
                added_at: at,
                updated_at: at,
                last_tested: None,
                test_status: "unknown".into(),
                test_message: None,
                health_checks,
            },
        )
        .await?;
        // A new key's health starts unknown; an opted-in key is first tested at the next pass,
        // a key not opted in has no row until a manual test records one.
        let key_health = health::byok(caller.user_id(), provider.id);
        if health_checks {
            health_store::reset(&txn, key_health, true, at).await?;
        } else {
            health_store::remove(&txn, key_health).await?;
        }
        audit::record(
            &txn,
            caller,
            "provider_key.put",
            provider.id,
            json!({
                "key_preview": mask::preview(key), "endpoint": endpoint,
                "health_checks": health_checks,
            }),
        )
        .await?;
        txn.commit().await?;
        tracing::info!("provider key stored");
        Ok(pb::PutProviderKeyResponse {
            message: "API key added successfully".into(),
            provider: provider.id.into(),
            provider_name: provider.display_name.into(),
        })
    }

    pub async fn list(&self, caller: &Caller) -> Result<pb::ListProviderKeysResponse> {
        let mine = self.mine(caller).await?;
        let health = crate::db::guarded(
            &self.db,
            health_store::list(
                &self.db,
                health::Kind::Byok.as_str(),
                Some(caller.user_id()),
            ),
        )
        .await?;
        let keys = mine
            .into_iter()
            .map(|k| {
                let h = health.iter().find(|h| h.name == k.provider);
                pb::ProviderKey {
                    health_checks: k.health_checks,
                    health_status: h.map_or(health::UNKNOWN, |h| h.status.as_str()).into(),
                    last_latency_ms: h.and_then(|h| h.last_latency_ms).unwrap_or(0),
                    health_error: h
                        .and_then(|h| h.last_error_class.clone())
                        .unwrap_or_default(),
                    provider_name: catalog::find(&k.provider)
                        .map_or_else(|| k.provider.clone(), |p| p.display_name.to_owned()),
                    provider: k.provider,
                    key_preview: k.key_preview,
                    label: k.label.unwrap_or_default(),
                    added_at: Some(timestamp(k.added_at)),
                    last_tested: k.last_tested.map(timestamp),
                    test_status: k.test_status,
                }
            })
            .collect();
        Ok(pb::ListProviderKeysResponse { keys })
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id(), provider = %req.provider))]
    pub async fn delete(
        &self,
        caller: &Caller,
        req: pb::DeleteProviderKeyRequest,
    ) -> Result<pb::DeleteProviderKeyResponse> {
        let provider = provider(&req.provider)?;
        let txn = crate::db::begin(&self.db).await?;
        if !store::delete(&txn, caller.user_id(), provider.id).await? {
            return Err(no_key(provider));
        }
        health_store::remove(&txn, health::byok(caller.user_id(), provider.id)).await?;
        audit::record(&txn, caller, "provider_key.delete", provider.id, json!({})).await?;
        txn.commit().await?;
        Ok(pb::DeleteProviderKeyResponse {
            success: true,
            message: format!("{} API key deleted", provider.display_name),
        })
    }

    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id(), provider = %req.provider))]
    pub async fn test(
        &self,
        caller: &Caller,
        req: pb::TestProviderKeyRequest,
    ) -> Result<pb::TestProviderKeyResponse> {
        let provider = provider(&req.provider)?;
        let row = self.find(caller.user_id(), provider).await?;
        let outcome = self.live_test(&row, provider).await?;
        let status = test_status(&outcome);
        let txn = crate::db::begin(&self.db).await?;
        store::record_test(&txn, &row, status, &outcome.detail, now()).await?;
        audit::record(
            &txn,
            caller,
            "provider_key.test",
            provider.id,
            json!({ "status": status, "status_code": outcome.status_code }),
        )
        .await?;
        txn.commit().await?;
        health::record(
            &self.db,
            caller,
            health::byok(&row.user_id, provider.id),
            &outcome,
            health::Trigger::Manual,
        )
        .await?;
        Ok(pb::TestProviderKeyResponse {
            provider: provider.id.into(),
            status: status.into(),
            message: outcome.detail,
            status_code: outcome.status_code,
            latency_ms: outcome.latency_ms,
        })
    }

    /// The decrypted key for an internal service; `service` is the service token's name.
    #[tracing::instrument(skip_all, fields(service = %caller.user_id(), provider = %req.provider))]
    pub async fn hand_out(
        &self,
        caller: &Caller,
        req: pb::GetProviderKeyForUserRequest,
    ) -> Result<pb::GetProviderKeyForUserResponse> {
        let provider = provider(&req.provider)?;
        let user_id = req.user_id.trim();
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "user_id is required"));
        }
        // No user id holds one, and PostgreSQL refuses a NUL outright.
        if user_id.chars().any(char::is_control) {
            return Err(Error::invalid(
                "user_id",
                "user_id must not contain control characters",
            ));
        }
        let row = self.find(user_id, provider).await?;
        let key = self
            .ring
            .decrypt_bound(&binding::byok(&row.user_id, &row.provider), &row.ciphertext)?;
        // One statement commits on its own: no BEGIN and COMMIT round trips around it.
        let target = format!("{user_id}/{}", provider.id);
        let details = json!({ "user_id": user_id });
        let recorded = audit::record(&self.db, caller, "provider_key.hand_out", &target, details);
        crate::db::guarded(&self.db, recorded).await?;
        Ok(pb::GetProviderKeyForUserResponse {
            provider: provider.id.into(),
            api_key: key.to_string(),
            // A row stored before endpoints were limited to the providers that take one may
            // still hold one: the gateway is not handed it.
            endpoint: row
                .endpoint
                .filter(|_| provider.requires_endpoint)
                .unwrap_or_default(),
        })
    }

    /// One live test of a stored key, at the user's endpoint or the provider's URL.
    async fn live_test(
        &self,
        row: &user_provider_keys::Model,
        provider: &Provider,
    ) -> Result<providers::Outcome> {
        let key = self
            .ring
            .decrypt_bound(&binding::byok(&row.user_id, &row.provider), &row.ciphertext)?;
        let (base, what) = match row.endpoint.as_deref() {
            Some(endpoint) => (endpoint, "endpoint"),
            None => (
                self.urls.get(provider.id, provider.base_url),
                "the provider URL",
            ),
        };
        let live = provider
            .live_test
            .as_ref()
            .ok_or_else(|| no_live_test(provider))?;
        Ok(providers::run(&self.outbound, base, what, live, &key, self.timeout).await)
    }

    /// The caller's stored keys. Reads go through the database's breaker, so an outage is
    /// answered at once rather than after the pool's acquire timeout.
    async fn mine(&self, caller: &Caller) -> Result<Vec<user_provider_keys::Model>> {
        crate::db::guarded(&self.db, store::list(&self.db, caller.user_id())).await
    }

    async fn find(&self, user_id: &str, provider: &Provider) -> Result<user_provider_keys::Model> {
        crate::db::guarded(&self.db, store::find(&self.db, user_id, provider.id))
            .await?
            .ok_or_else(|| no_key(provider))
    }
}

/// `valid`, `invalid` (the provider rejected the key) or `error`: the test status BYOK lists.
fn test_status(outcome: &providers::Outcome) -> &'static str {
    match (outcome.ok, outcome.rejected) {
        (true, _) => "valid",
        (false, true) => "invalid",
        (false, false) => "error",
    }
}

/// What the scheduler checks: keys whose owners opted in (their `key_health` rows are
/// scheduled), each result also kept as the key's test status.
impl health::Checks for Byok {
    const KIND: health::Kind = health::Kind::Byok;

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn prepare(
        &self,
        _first_due: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync,
    ) -> Result<()> {
        Ok(())
    }

    async fn check(&self, row: &key_health::Model) -> Result<Option<providers::Outcome>> {
        let Some(provider) = catalog::find(&row.name).filter(|p| p.byok && p.live_test.is_some())
        else {
            return Ok(None);
        };
        let found = store::find(&self.db, &row.user_id, provider.id);
        let Some(key) = crate::db::guarded(&self.db, found).await? else {
            return Ok(None);
        };
        if !key.health_checks {
            return Ok(None);
        }
        let outcome = self.live_test(&key, provider).await?;
        let status = test_status(&outcome);
        let recorded = store::record_test(&self.db, &key, status, &outcome.detail, now());
        crate::db::guarded(&self.db, recorded).await?;
        Ok(Some(outcome))
    }
}

fn provider(id: &str) -> Result<&'static Provider> {
    let id = id.trim();
    if id.is_empty() {
        return Err(Error::invalid("provider", "provider is required"));
    }
    catalog::find(id).filter(|p| p.byok).ok_or_else(|| {
        let known: Vec<_> = catalog::byok().map(|p| p.id).collect();
        Error::invalid(
            "provider",
            format!(
                "unknown provider '{id}'; known providers: {}",
                known.join(", ")
            ),
        )
    })
}

/// Only providers that need an endpoint take one, and only a URL the outbound guard accepts; a
/// name is resolved and checked again at every request.
fn endpoint(outbound: &Outbound, provider: &Provider, text: &str) -> Result<Option<String>> {
    if !provider.requires_endpoint {
        if text.is_empty() {
            return Ok(None);
        }
        let takers: Vec<_> = catalog::byok()
            .filter(|p| p.requires_endpoint)
            .map(|p| p.id)
            .collect();
        return Err(Error::invalid(
            "endpoint",
            format!(
                "{} takes no endpoint: its keys are tested at its own API; only {} take one",
                provider.display_name,
                takers.join(", ")
            ),
        ));
    }
    if text.is_empty() {
        return Err(Error::invalid(
            "endpoint",
            format!(
                "{} needs an endpoint: an http(s) URL",
                provider.display_name
            ),
        ));
    }
    if text.len() > MAX_ENDPOINT {
        return Err(Error::invalid(
            "endpoint",
            format!("endpoint must be at most {MAX_ENDPOINT} bytes"),
        ));
    }
    outbound
        .check_url(text)
        .map_err(|reason| Error::invalid("endpoint", format!("endpoint {reason}")))?;
    Ok(Some(text.trim_end_matches('/').to_owned()))
}

fn no_key(provider: &Provider) -> Error {
    Error::NotFound(format!("No {} API key configured", provider.display_name))
}

fn no_live_test(provider: &Provider) -> Error {
    Error::FailedPrecondition(format!(
        "{} has no live test: keyhouse cannot check it against a provider",
        provider.display_name
    ))
}
