//! The platform's own provider secrets behind PlatformKeyService: a catalog of known keys,
//! values encrypted with the key ring and versioned, the environment as a fallback, an audit
//! event for every change and every read, and a live feed of changes. Admins only.

mod watch;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyhouse_proto::v1 as pb;
use sea_orm::DatabaseConnection;
use serde_json::json;
use zeroize::Zeroizing;

use crate::caller::Caller;
use crate::change_feed::{Change, ChangeFeed};
use crate::crypto::fernet_ring::{KeyRing, binding};
use crate::crypto::mask;
use crate::entities::key_health;
use crate::entities::platform_settings;
use crate::error::{Error, Result};
use crate::health;
use crate::outbound::Outbound;
use crate::paging::{self, Cursor};
use crate::providers::{self, BaseUrls, Provider, catalog};
use crate::storage::health as health_store;
use crate::storage::platform_keys::{self as store, NewVersion};
use crate::storage::{audit, now};
use crate::timestamp;

pub const DECRYPT_WARNING: &str = "This is the full API key. Keep it secure.";
const LIVE_TEST_TIMEOUT: Duration = Duration::from_secs(8);
const MAX_REASON_LEN: usize = 500;
/// How many live tests (TestPlatformKey) one admin may run in [`TEST_WINDOW`].
pub const TESTS_PER_MINUTE: usize = 10;
const TEST_WINDOW: Duration = Duration::from_secs(60);

/// Values of the catalog's environment variables, read once at start.
#[derive(Clone, Default)]
pub struct EnvFallback(HashMap<String, Zeroizing<String>>);

impl EnvFallback {
    pub fn from_process() -> Self {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let values = catalog::platform()
            .filter_map(|spec| {
                let value = lookup(spec.env_var?)?.trim().to_owned();
                (!value.is_empty()).then(|| (spec.id.to_owned(), Zeroizing::new(value)))
            })
            .collect();
        Self(values)
    }

    fn get(&self, name: &str) -> Option<&Zeroizing<String>> {
        self.0.get(name)
    }
}

impl std::fmt::Debug for EnvFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Where a platform key's value comes from: a stored value wins over the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Database,
    Environment,
    NotSet,
}

impl Source {
    pub fn of(stored: bool, in_environment: bool) -> Self {
        match (stored, in_environment) {
            (true, _) => Source::Database,
            (false, true) => Source::Environment,
            (false, false) => Source::NotSet,
        }
    }

    /// The name the contract uses (`source` fields, audit details).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Database => "database",
            Source::Environment => "environment",
            Source::NotSet => "not_set",
        }
    }
}

/// Where the value of a key comes from right now.
struct Current {
    source: Source,
    stored: Option<platform_settings::Model>,
}

#[derive(Clone)]
pub struct PlatformKeys {
    db: DatabaseConnection,
    ring: KeyRing,
    env: Arc<EnvFallback>,
    urls: BaseUrls,
    outbound: Outbound,
    feed: ChangeFeed,
    tests: TestRate,
}

impl PlatformKeys {
    pub fn new(
        db: DatabaseConnection,
        ring: KeyRing,
        env: EnvFallback,
        urls: BaseUrls,
        outbound: Outbound,
        feed: ChangeFeed,
    ) -> Self {
        Self {
            db,
            ring,
            env: Arc::new(env),
            urls,
            outbound,
            feed,
            tests: TestRate::default(),
        }
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id()))]
    pub async fn list(&self, caller: &Caller) -> Result<pb::ListPlatformKeysResponse> {
        caller.require_admin()?;
        let (stored, previews, health) = crate::db::guarded(&self.db, async {
            let stored = store::all_current(&self.db).await?;
            let previews = store::previews(&self.db, &stored).await?;
            let health =
                health_store::list(&self.db, health::Kind::Platform.as_str(), None).await?;
            Ok((stored, previews, health))
        })
        .await?;
        let keys = catalog::platform()
            .map(|spec| {
                let row = stored.iter().find(|r| r.key == spec.id);
                let env = self.env.get(spec.id);
                let source = Source::of(row.is_some(), env.is_some());
                let key_preview = match (row, env) {
                    (Some(row), _) => previews.get(&row.key).cloned().unwrap_or_default(),
                    (None, Some(value)) => mask::preview(value),
                    (None, None) => String::new(),
                };
                // A key with no value has no health, whatever was recorded of an earlier one.
                let health = health
                    .iter()
                    .find(|h| h.name == spec.id)
                    .filter(|_| source != Source::NotSet);
                pb::PlatformKey {
                    name: spec.id.into(),
                    display_name: spec.display_name.into(),
                    description: spec.description.into(),
                    has_key: source != Source::NotSet,
                    key_preview,
                    last_updated: row.map(|r| timestamp(r.updated_at)),
                    source: source.as_str().into(),
                    version: row.map_or(0, |r| r.version),
                    env_var: env_var(spec).into(),
                    key_format: spec.key_format.into(),
                    health_status: health.map_or(health::UNKNOWN, |h| h.status.as_str()).into(),
                    last_tested: health.and_then(|h| h.last_tested).map(timestamp),
                    last_latency_ms: health.and_then(|h| h.last_latency_ms).unwrap_or(0),
                    health_error: health
                        .and_then(|h| h.last_error_class.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(pb::ListPlatformKeysResponse { keys })
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn update(
        &self,
        caller: &Caller,
        req: pb::UpdatePlatformKeyRequest,
    ) -> Result<pb::UpdatePlatformKeyResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let value = Zeroizing::new(req.api_key.trim().to_owned());
        providers::check_key_length("api_key", &value)?;
        if !spec.accepts(&value) {
            return Err(crate::providers::bad_key_format(
                "api_key",
                spec.display_name,
                spec.key_format,
            ));
        }
        let preview = mask::preview(&value);
        let version = self
            .store_version(caller, spec, &value, None, "platform_key.update")
            .await?;
        tracing::info!(version, "platform key updated");
        Ok(self.updated(spec, preview, version))
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn rollback(
        &self,
        caller: &Caller,
        req: pb::RollbackPlatformKeyRequest,
    ) -> Result<pb::UpdatePlatformKeyResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let old = crate::db::guarded(&self.db, store::version(&self.db, spec.id, req.version))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("version {} of {} not found", req.version, spec.id))
            })?;
        let value = self
            .ring
            .decrypt_bound(&binding::platform(&old.name), &old.ciphertext)?;
        let version = self
            .store_version(
                caller,
                spec,
                &value,
                Some(req.version),
                "platform_key.rollback",
            )
            .await?;
        tracing::info!(version, from = req.version, "platform key rolled back");
        Ok(self.updated(spec, old.key_preview, version))
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn delete(
        &self,
        caller: &Caller,
        req: pb::DeletePlatformKeyRequest,
    ) -> Result<pb::DeletePlatformKeyResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let txn = crate::db::begin(&self.db).await?;
        if !store::delete_current(&txn, spec.id).await? {
            return Err(Error::NotFound(format!(
                "{} has no stored value",
                spec.display_name
            )));
        }
        audit::record(&txn, caller, "platform_key.delete", spec.id, json!({})).await?;
        self.feed
            .commit(txn, &[Change::PlatformKey(spec.id.into())])
            .await?;
        let source = Source::of(false, self.env.get(spec.id).is_some());
        Ok(pb::DeletePlatformKeyResponse {
            success: true,
            message: format!(
                "{} deleted; {}",
                spec.display_name,
                match source {
                    Source::Environment =>
                        format!("{} from the environment applies again", env_var(spec)),
                    _ => "it is not set now".to_owned(),
                }
            ),
            source: source.as_str().into(),
        })
    }

    /// Returns the secret only after its audit event is committed.
    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn decrypted(
        &self,
        caller: &Caller,
        req: pb::GetDecryptedPlatformKeyRequest,
    ) -> Result<pb::GetDecryptedPlatformKeyResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let reason = req.reason.trim();
        if reason.chars().count() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
            return Err(Error::invalid(
                "reason",
                format!("reason must be at most {MAX_REASON_LEN} printable characters"),
            ));
        }
        let current = self.current(spec).await?;
        let value = self
            .reveal(spec, &current)?
            .ok_or_else(|| not_configured(spec))?;
        // One statement commits on its own: no BEGIN and COMMIT round trips around it.
        let details = json!({
            "source": current.source.as_str(),
            "version": current.stored.as_ref().map(|s| s.version),
            "reason": reason,
        });
        let recorded = audit::record(&self.db, caller, "platform_key.decrypt", spec.id, details);
        crate::db::guarded(&self.db, recorded).await?;
        tracing::info!(
            source = current.source.as_str(),
            "platform key decrypted for an admin"
        );
        Ok(pb::GetDecryptedPlatformKeyResponse {
            api_key: value.to_string(),
            source: current.source.as_str().into(),
            warning: DECRYPT_WARNING.into(),
        })
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn versions(
        &self,
        caller: &Caller,
        req: pb::ListPlatformKeyVersionsRequest,
    ) -> Result<pb::ListPlatformKeyVersionsResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let (current, versions) = crate::db::guarded(&self.db, async {
            let current = store::current(&self.db, spec.id).await?;
            Ok((current, store::versions(&self.db, spec.id).await?))
        })
        .await?;
        let current = current.map(|r| r.version);
        let versions = versions
            .into_iter()
            .map(|v| pb::PlatformKeyVersion {
                version: v.version,
                key_preview: v.key_preview,
                created_by: v.created_by,
                created_at: Some(timestamp(v.created_at)),
                is_current: current == Some(v.version),
                rolled_back_from: v.rolled_back_from.unwrap_or_default(),
            })
            .collect();
        Ok(pb::ListPlatformKeyVersionsResponse { versions })
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn test(
        &self,
        caller: &Caller,
        req: pb::TestPlatformKeyRequest,
    ) -> Result<pb::TestPlatformKeyResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let Some(live) = spec.live_test.as_ref() else {
            return Err(Error::FailedPrecondition(format!(
                "{} has no live test: keyhouse cannot check it against a provider",
                spec.display_name
            )));
        };
        let supplied = match req.api_key {
            Some(value) => {
                let value = Zeroizing::new(value.trim().to_owned());
                if value.is_empty() {
                    return Err(Error::invalid("api_key", "api_key must not be empty"));
                }
                providers::check_key_length("api_key", &value)?;
                Some(value)
            }
            None => None,
        };
        self.tests.admit(caller.user_id())?;
        let Some(value) = supplied else {
            return self.test_current(caller, spec).await;
        };
        // A candidate value: tested, never stored, and not the stored key's health.
        let base = self.urls.get(spec.id, spec.base_url);
        let outcome = providers::run(
            &self.outbound,
            base,
            "the provider URL",
            live,
            &value,
            LIVE_TEST_TIMEOUT,
        )
        .await;
        let details = json!({
            "source": "supplied", "ok": outcome.ok, "status_code": outcome.status_code,
        });
        let recorded = audit::record(&self.db, caller, "platform_key.test", spec.id, details);
        crate::db::guarded(&self.db, recorded).await?;
        Ok(tested(outcome))
    }

    async fn test_current(
        &self,
        caller: &Caller,
        spec: &'static Provider,
    ) -> Result<pb::TestPlatformKeyResponse> {
        let (source, outcome) = self
            .live_test(spec)
            .await?
            .ok_or_else(|| not_configured(spec))?;
        // One statement commits on its own: no BEGIN and COMMIT round trips around it.
        let details = json!({
            "source": source.as_str(), "ok": outcome.ok, "status_code": outcome.status_code,
        });
        let recorded = audit::record(&self.db, caller, "platform_key.test", spec.id, details);
        crate::db::guarded(&self.db, recorded).await?;
        health::record(
            &self.db,
            caller,
            health::platform(spec.id),
            &outcome,
            health::Trigger::Manual,
        )
        .await?;
        Ok(tested(outcome))
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id(), name = %req.name))]
    pub async fn health_history(
        &self,
        caller: &Caller,
        req: pb::ListPlatformKeyHealthRequest,
    ) -> Result<pb::ListPlatformKeyHealthResponse> {
        caller.require_admin()?;
        let spec = spec(&req.name)?;
        let limit = paging::page_size(req.page_size)?;
        let after = Cursor::decode(&req.page_token)?;
        let rows = crate::db::guarded(
            &self.db,
            health_store::history(&self.db, health::platform(spec.id), after, limit),
        )
        .await?;
        let (rows, next_page_token) = paging::split_page(rows, limit, |r| Cursor {
            at: r.tested_at,
            id: r.id,
        });
        let checks = rows
            .into_iter()
            .map(|r| pb::KeyHealthCheck {
                tested_at: Some(timestamp(r.tested_at)),
                status: r.status,
                latency_ms: r.latency_ms,
                status_code: r.status_code,
                error_class: r.error_class.unwrap_or_default(),
                trigger: r.trigger,
            })
            .collect();
        Ok(pb::ListPlatformKeyHealthResponse {
            checks,
            next_page_token,
        })
    }

    /// One live test of a key's current value; `None` when it has no value (or no live test).
    async fn live_test(&self, spec: &Provider) -> Result<Option<(Source, providers::Outcome)>> {
        let Some(live) = spec.live_test.as_ref() else {
            return Ok(None);
        };
        let current = self.current(spec).await?;
        let Some(value) = self.reveal(spec, &current)? else {
            return Ok(None);
        };
        let base = self.urls.get(spec.id, spec.base_url);
        let outcome = providers::run(
            &self.outbound,
            base,
            "the provider URL",
            live,
            &value,
            LIVE_TEST_TIMEOUT,
        )
        .await;
        Ok(Some((current.source, outcome)))
    }

    #[tracing::instrument(skip_all, fields(actor = %caller.user_id()))]
    pub async fn audit_events(
        &self,
        caller: &Caller,
        req: pb::ListAuditEventsRequest,
    ) -> Result<pb::ListAuditEventsResponse> {
        caller.require_admin()?;
        let limit = paging::page_size(req.page_size)?;
        let after = Cursor::decode(&req.page_token)?;
        let some = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let filter = audit::Filter {
            actor: some(req.actor),
            action: some(req.action),
            target: some(req.target),
            since: req
                .since
                .map(|t| crate::from_timestamp(&t, "since"))
                .transpose()?,
            until: req
                .until
                .map(|t| crate::from_timestamp(&t, "until"))
                .transpose()?,
        };
        let rows =
            crate::db::guarded(&self.db, audit::list(&self.db, &filter, after, limit)).await?;
        let (rows, next_page_token) = paging::split_page(rows, limit, |r| Cursor {
            at: r.occurred_at,
            id: r.id,
        });
        let events = rows
            .into_iter()
            .map(|e| pb::AuditEvent {
                id: e.id.to_string(),
                occurred_at: Some(timestamp(e.occurred_at)),
                actor: e.actor,
                action: e.action,
                target: e.target,
                request_id: e.request_id,
                details_json: e.details.to_string(),
                via_key_id: e.via_key_id.map(|id| id.to_string()).unwrap_or_default(),
                identity_source: e.identity_source.unwrap_or_default(),
            })
            .collect();
        Ok(pb::ListAuditEventsResponse {
            events,
            next_page_token,
        })
    }

    async fn store_version(
        &self,
        caller: &Caller,
        spec: &Provider,
        value: &str,
        rolled_back_from: Option<i64>,
        action: &str,
    ) -> Result<i64> {
        let preview = mask::preview(value);
        let txn = crate::db::begin(&self.db).await?;
        let version = store::store(
            &txn,
            NewVersion {
                name: spec.id,
                ciphertext: self.ring.encrypt_bound(&binding::platform(spec.id), value),
                key_preview: preview.clone(),
                created_by: caller.user_id(),
                rolled_back_from,
                at: now(),
            },
        )
        .await?;
        audit::record(
            &txn,
            caller,
            action,
            spec.id,
            json!({
                "version": version, "key_preview": preview, "rolled_back_from": rolled_back_from,
            }),
        )
        .await?;
        // A new value is checked at the scheduler's next pass, not a period later.
        health_store::due_at(&txn, health::platform(spec.id), now()).await?;
        self.feed
            .commit(txn, &[Change::PlatformKey(spec.id.into())])
            .await?;
        Ok(version)
    }

    fn updated(
        &self,
        spec: &Provider,
        key_preview: String,
        version: i64,
    ) -> pb::UpdatePlatformKeyResponse {
        let mut next_steps = Vec::new();
        if spec.live_test.is_some() {
            next_steps.push(format!("Check it against the provider: TestPlatformKey (POST /api/v1/admin/platform-keys/{}/test)", spec.id));
        }
        next_steps.push("Services subscribed to WatchPlatformKeys receive the new value now; others read it on their next start".into());
        pb::UpdatePlatformKeyResponse {
            success: true,
            message: format!("{} updated successfully", spec.display_name),
            key_preview,
            version,
            next_steps,
        }
    }

    /// Behind the breaker, like every read here: decrypted reads, live tests and the watch
    /// stream's re-reads answer at once during an outage.
    async fn current(&self, spec: &Provider) -> Result<Current> {
        let stored = crate::db::guarded(&self.db, store::current(&self.db, spec.id)).await?;
        let source = Source::of(stored.is_some(), self.env.get(spec.id).is_some());
        Ok(Current { source, stored })
    }

    fn reveal(&self, spec: &Provider, current: &Current) -> Result<Option<Zeroizing<String>>> {
        match &current.stored {
            Some(row) => self
                .ring
                .decrypt_bound(&binding::platform(&row.key), &row.value)
                .map(Some),
            None => Ok(self.env.get(spec.id).cloned()),
        }
    }
}

/// What the scheduler checks: every platform key with a live test and a value (stored or from
/// the environment).
impl health::Checks for PlatformKeys {
    const KIND: health::Kind = health::Kind::Platform;

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn prepare(
        &self,
        first_due: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync,
    ) -> Result<()> {
        let (stored, rows) = crate::db::guarded(&self.db, async {
            let stored = store::all_current(&self.db).await?;
            let rows = health_store::list(&self.db, health::Kind::Platform.as_str(), None).await?;
            Ok((stored, rows))
        })
        .await?;
        for spec in catalog::platform().filter(|s| s.live_test.is_some()) {
            let set = stored.iter().any(|r| r.key == spec.id) || self.env.get(spec.id).is_some();
            if set && !rows.iter().any(|r| r.name == spec.id) {
                let added =
                    health_store::ensure(&self.db, health::platform(spec.id), true, first_due());
                crate::db::guarded(&self.db, added).await?;
            }
        }
        Ok(())
    }

    async fn check(&self, row: &key_health::Model) -> Result<Option<providers::Outcome>> {
        let Some(spec) = catalog::find(&row.name).filter(|p| p.env_var.is_some()) else {
            return Ok(None);
        };
        Ok(self.live_test(spec).await?.map(|(_, outcome)| outcome))
    }
}

fn spec(name: &str) -> Result<&'static Provider> {
    if name.trim().is_empty() {
        return Err(Error::invalid("name", "name is required"));
    }
    catalog::find(name.trim())
        .filter(|p| p.env_var.is_some())
        .ok_or_else(|| {
            let known: Vec<_> = catalog::platform().map(|s| s.id).collect();
            Error::NotFound(format!(
                "unknown platform key '{}'; known keys: {}",
                name.trim(),
                known.join(", ")
            ))
        })
}

fn tested(outcome: providers::Outcome) -> pb::TestPlatformKeyResponse {
    pb::TestPlatformKeyResponse {
        ok: outcome.ok,
        status_code: outcome.status_code,
        latency_ms: outcome.latency_ms,
        detail: outcome.detail,
    }
}

/// At most [`TESTS_PER_MINUTE`] live tests a minute for each admin. The count is kept in memory
/// by each replica: with N replicas an admin may run up to N times as many.
#[derive(Clone, Default)]
struct TestRate(Arc<Mutex<HashMap<String, VecDeque<Instant>>>>);

impl TestRate {
    fn admit(&self, user_id: &str) -> Result<()> {
        let now = Instant::now();
        let mut callers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        callers.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= TEST_WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = callers.entry(user_id.to_owned()).or_default();
        if times.len() >= TESTS_PER_MINUTE {
            return Err(Error::ResourceExhausted(format!(
                "Rate limit exceeded. Maximum {TESTS_PER_MINUTE} tests per minute."
            )));
        }
        times.push_back(now);
        Ok(())
    }
}

fn not_configured(spec: &Provider) -> Error {
    Error::NotFound(format!("{} not configured", spec.display_name))
}

/// The variable a platform key falls back to; every platform entry of the catalog names one.
fn env_var(spec: &Provider) -> &'static str {
    spec.env_var.unwrap_or_default()
}
