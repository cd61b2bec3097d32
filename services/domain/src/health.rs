//! Health of provider keys: every live test (scheduled or manual) is recorded as history and as
//! the key's current health, and a change of state is decided, audited and logged in one place
//! (`transition`). The scheduler (`schedule`) tests platform keys, and BYOK keys whose owners
//! opted in, every period with jitter, rate-limited per provider; a conditional UPDATE of the
//! key's `next_check_at` lets exactly one replica claim each due test.
//!
//! States are `unknown` (never tested), `healthy` and `unhealthy`. A change is `healthy` ->
//! `unhealthy`, `unhealthy` -> `healthy` and `unknown` -> `unhealthy` (a key that never worked
//! is worth an alert); `unknown` -> `healthy` is not a change (a new key working is what is
//! expected). Each change writes one audit event (`platform_key.health_changed`,
//! `provider_key.health_changed`, details `from`, `to`, `error_class`) in the transaction that
//! moves the current health, so two replicas recording results at once still write one event.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;

use crate::caller::Caller;
use crate::config::HealthSettings;
use crate::entities::{key_health, key_health_history};
use crate::error::Result;
use crate::providers::{Outcome, catalog};
use crate::storage::health::{self as store, Current, Key};
use crate::storage::{audit, now};

pub const UNKNOWN: &str = "unknown";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// Which keys: the platform's or users' own (BYOK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Platform,
    Byok,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Platform => "platform",
            Kind::Byok => "byok",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Kind::Platform => "platform_key.health_changed",
            Kind::Byok => "provider_key.health_changed",
        }
    }
}

/// What started a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// A platform key's row key.
pub fn platform(name: &str) -> Key<'_> {
    Key {
        kind: Kind::Platform.as_str(),
        user_id: "",
        name,
    }
}

/// A BYOK key's row key.
pub fn byok<'a>(user_id: &'a str, provider: &'a str) -> Key<'a> {
    Key {
        kind: Kind::Byok.as_str(),
        user_id,
        name: provider,
    }
}

/// The audit target of a key: the platform key's name, or `<user>/<provider>` (as hand-outs name
/// a BYOK key: a scheduled test's actor is keyhouse, not the owner).
fn target(key: Key<'_>) -> String {
    if key.user_id.is_empty() {
        key.name.to_owned()
    } else {
        format!("{}/{}", key.user_id, key.name)
    }
}

/// A change of a key's health, as it was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: &'static str,
    pub to: &'static str,
    pub error_class: Option<&'static str>,
}

fn status_of(text: &str) -> &'static str {
    match text {
        HEALTHY => HEALTHY,
        UNHEALTHY => UNHEALTHY,
        _ => UNKNOWN,
    }
}

/// Records one test of `key`: a history row, the key's current health, and, when the state
/// changed, its audit event, all in one transaction; then the warning line and the metric.
/// `caller` is the admin or owner who asked for a manual test, or `Caller::system` for the
/// scheduler. Returns the change, if the test made one.
pub async fn record(
    db: &DatabaseConnection,
    caller: &Caller,
    key: Key<'_>,
    outcome: &Outcome,
    trigger: Trigger,
) -> Result<Option<Change>> {
    let to = if outcome.ok { HEALTHY } else { UNHEALTHY };
    let error_class = outcome.error_class.map(|c| c.as_str());
    let at = now();
    let txn = crate::db::begin(db).await?;
    store::add_history(
        &txn,
        key_health_history::Model {
            id: uuid::Uuid::new_v4(),
            kind: key.kind.to_owned(),
            user_id: key.user_id.to_owned(),
            name: key.name.to_owned(),
            status: to.to_owned(),
            latency_ms: outcome.latency_ms,
            status_code: outcome.status_code,
            error_class: error_class.map(str::to_owned),
            tested_at: at,
            trigger: trigger.as_str().to_owned(),
        },
    )
    .await?;
    // A key tested by hand for the first time has no row yet; BYOK keys not opted in are
    // recorded but not scheduled.
    store::ensure(&txn, key, key.kind == Kind::Platform.as_str(), at).await?;
    let current = Current {
        status: to,
        tested_at: at,
        latency_ms: outcome.latency_ms,
        status_code: outcome.status_code,
        error_class,
    };
    // The status is moved only from the value read: if another replica's result moved it in
    // between, the update matches nothing and the new value is read again. The change (and
    // its event) is decided on the value actually replaced.
    let mut from = UNKNOWN;
    for _ in 0..5 {
        from = store::get(&txn, key)
            .await?
            .map_or(UNKNOWN, |r| status_of(&r.status));
        if store::set_current(&txn, key, from, &current).await? {
            break;
        }
    }
    let change = transition(&txn, caller, key, from, to, error_class).await?;
    txn.commit().await?;
    if let Some(change) = &change {
        tracing::warn!(
            kind = key.kind,
            target = %target(key),
            from = change.from,
            to = change.to,
            error_class = change.error_class.unwrap_or(""),
            "provider key health changed"
        );
    }
    if key.kind == Kind::Platform.as_str() {
        observe_platform(key.name, to);
    }
    Ok(change)
}

/// The one place a state change is decided and audited (a notification outbox hooks in here).
async fn transition(
    conn: &impl sea_orm::ConnectionTrait,
    caller: &Caller,
    key: Key<'_>,
    from: &'static str,
    to: &'static str,
    error_class: Option<&'static str>,
) -> Result<Option<Change>> {
    let changed = from != to && !(from == UNKNOWN && to == HEALTHY);
    if !changed {
        return Ok(None);
    }
    let kind = if key.kind == Kind::Platform.as_str() {
        Kind::Platform
    } else {
        Kind::Byok
    };
    audit::record(
        conn,
        caller,
        kind.action(),
        &target(key),
        json!({ "from": from, "to": to, "error_class": error_class }),
    )
    .await?;
    Ok(Some(Change {
        from,
        to,
        error_class,
    }))
}

/// `keyhouse_provider_key_healthy{provider}` for a platform key: 1, 0, or no series while
/// unknown. BYOK keys have no series (a label per user would be unbounded).
fn observe_platform(name: &str, status: &str) {
    if let Some(spec) = catalog::find(name) {
        let healthy = match status {
            HEALTHY => Some(true),
            UNHEALTHY => Some(false),
            _ => None,
        };
        crate::observe::key_health(spec.id, healthy);
    }
}

/// The health rows of every platform key, as the metric shows them: read by the scheduler on
/// each pass, so every replica exports what the database holds, whoever tested.
async fn refresh_platform_metrics(db: &DatabaseConnection) -> Result<()> {
    let rows = crate::db::guarded(db, store::list(db, Kind::Platform.as_str(), None)).await?;
    for spec in catalog::platform().filter(|s| s.live_test.is_some()) {
        let status = rows
            .iter()
            .find(|r| r.name == spec.id)
            .map_or(UNKNOWN, |r| status_of(&r.status));
        observe_platform(spec.id, status);
    }
    Ok(())
}

/// The keys of one kind the scheduler can test, and how to test one.
pub trait Checks: Clone + Send + Sync + 'static {
    const KIND: Kind;

    fn db(&self) -> &DatabaseConnection;

    /// Adds rows for keys to check that have none yet, their first test due at `first_due()`
    /// (platform keys); BYOK keys get theirs when their owner opts in.
    fn prepare(
        &self,
        first_due: impl Fn() -> DateTime<Utc> + Send + Sync,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Tests one key live; `None` skips it (no value now, or no live test).
    fn check(
        &self,
        row: &key_health::Model,
    ) -> impl Future<Output = Result<Option<Outcome>>> + Send;
}

/// The scheduler of `checks`, to run for the life of the server; `None` when scheduled checks
/// are off (`KEYHOUSE_HEALTH_CHECK_SECS=0`).
pub fn schedule<C: Checks>(
    checks: C,
    settings: &HealthSettings,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    if settings.check_secs == 0 {
        return None;
    }
    let period = Duration::from_secs(settings.check_secs);
    let per_minute = settings.per_provider_per_minute.max(1);
    Some(async move {
        let mut limiter = Limiter::new(per_minute);
        // Often enough that a key is tested close to its due time, without a busy loop.
        let every = (period / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = pass(&checks, period, &mut limiter).await {
                tracing::warn!(kind = C::KIND.as_str(), error = %e, "health check pass failed; the next pass retries");
            }
        }
    })
}

/// Tests running at once in one pass.
const CONCURRENT_TESTS: usize = 8;
/// Due keys read per pass; more wait for the next.
const DUE_PER_PASS: u64 = 200;

async fn pass<C: Checks>(checks: &C, period: Duration, limiter: &mut Limiter) -> Result<()> {
    let db = checks.db().clone();
    checks.prepare(|| now() + jitter(period, 0.0, 1.0)).await?;
    if C::KIND == Kind::Platform {
        refresh_platform_metrics(&db).await?;
    }
    let at = now();
    let due = crate::db::guarded(&db, store::due(&db, C::KIND.as_str(), at, DUE_PER_PASS)).await?;
    let mut claimed = Vec::new();
    for row in due {
        if !limiter.allows(&row.name) {
            continue;
        }
        let next = now() + jitter(period, 0.9, 1.1);
        if crate::db::guarded(&db, store::claim(&db, &row, next)).await? {
            limiter.take(&row.name);
            claimed.push(row);
        }
    }
    let caller = Caller::system("health-check");
    let mut running = tokio::task::JoinSet::new();
    for row in claimed {
        while running.len() >= CONCURRENT_TESTS {
            running.join_next().await;
        }
        let checks = checks.clone();
        let caller = caller.clone();
        running.spawn(async move {
            let key = Key {
                kind: &row.kind,
                user_id: &row.user_id,
                name: &row.name,
            };
            let recorded = match checks.check(&row).await {
                Ok(Some(outcome)) => {
                    record(checks.db(), &caller, key, &outcome, Trigger::Schedule)
                        .await
                        .map(|_| ())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::warn!(kind = key.kind, name = key.name, error = %e, "scheduled health check failed");
            }
        });
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

/// `period` scaled by a random factor in `low..high`, at microsecond precision (what both
/// databases store, so a claim compares equal to what it read).
fn jitter(period: Duration, low: f64, high: f64) -> chrono::Duration {
    let unit = getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64;
    let micros = period.as_micros() as f64 * (low + (high - low) * unit);
    chrono::Duration::microseconds(micros as i64)
}

/// At most `per_minute` scheduled tests per provider in each minute, on this replica.
struct Limiter {
    per_minute: u32,
    windows: HashMap<String, (Instant, u32)>,
}

impl Limiter {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: HashMap::new(),
        }
    }

    fn allows(&mut self, provider: &str) -> bool {
        match self.windows.get(provider) {
            Some((started, n)) if started.elapsed() < Duration::from_secs(60) => {
                *n < self.per_minute
            }
            _ => true,
        }
    }

    fn take(&mut self, provider: &str) {
        let entry = self
            .windows
            .entry(provider.to_owned())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_per_minute_tests_per_provider() {
        let mut l = Limiter::new(2);
        for _ in 0..2 {
            assert!(l.allows("openai"));
            l.take("openai");
        }
        assert!(!l.allows("openai"));
        assert!(l.allows("groq"), "each provider counts on its own");
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let period = Duration::from_secs(100);
        for _ in 0..100 {
            let d = jitter(period, 0.9, 1.1);
            assert!(d >= chrono::Duration::seconds(90) && d <= chrono::Duration::seconds(110));
        }
    }
}
