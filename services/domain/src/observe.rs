//! What the domain reports about its own work (VerifyKey outcomes, verdict-cache lookups, bcrypt
//! times, the database breaker, where rate limits are counted, the health of platform keys), without knowing who listens. The server installs an `Observer` that turns these into
//! Prometheus metrics; with none installed they cost one atomic load.

use std::sync::OnceLock;
use std::time::Duration;

/// Receives the domain's measurements. Labels are fixed strings, never a key or a user id.
pub trait Observer: Send + Sync {
    /// One VerifyKey answer: its reason (`VALID`, `REVOKED`, …) or error class.
    fn verify_outcome(&self, outcome: &'static str);
    /// One verdict-cache lookup: `hit`, `miss`, `stale` or `negative_hit`.
    fn verify_cache(&self, result: &'static str);
    /// One bcrypt run: `hash` or `verify`.
    fn bcrypt(&self, operation: &'static str, took: Duration);
    /// A database's circuit breaker opened (`true`) or closed again (`false`).
    fn db_breaker(&self, open: bool);
    /// One call answered `Unavailable` by an open breaker, without taking a pooled connection.
    fn db_breaker_refusal(&self);
    /// One rate-limit hit and where it was counted: `redis`, `replica` (no Redis set),
    /// `replica_redis_failed` (Redis failed on this hit) or `replica_redis_down` (Redis known
    /// down: not tried).
    fn rate_limit_count(&self, counted: &'static str);
    /// The depth of a bounded queue, whenever it changes or is measured: `bcrypt` (operations
    /// admitted, running or waiting), `usage` (counts the last usage flush took), `change_feed`
    /// (changes not yet read by every subscriber).
    fn queue_depth(&self, queue: &'static str, depth: usize);
    /// The health of a platform key's provider (`provider` is the catalog name): `Some(true)`
    /// healthy, `Some(false)` unhealthy, `None` unknown (not tested, or no value).
    fn key_health(&self, provider: &'static str, healthy: Option<bool>) {
        let _ = (provider, healthy);
    }
}

static OBSERVER: OnceLock<Box<dyn Observer>> = OnceLock::new();

/// Installs the process's observer; the first one installed stays.
pub fn install(observer: Box<dyn Observer>) {
    let _ = OBSERVER.set(observer);
}

pub(crate) fn verify_outcome(outcome: &'static str) {
    if let Some(o) = OBSERVER.get() {
        o.verify_outcome(outcome);
    }
}

pub(crate) fn verify_cache(result: &'static str) {
    if let Some(o) = OBSERVER.get() {
        o.verify_cache(result);
    }
}

pub(crate) fn bcrypt(operation: &'static str, took: Duration) {
    if let Some(o) = OBSERVER.get() {
        o.bcrypt(operation, took);
    }
}

pub(crate) fn db_breaker(open: bool) {
    if let Some(o) = OBSERVER.get() {
        o.db_breaker(open);
    }
}

pub(crate) fn db_breaker_refusal() {
    if let Some(o) = OBSERVER.get() {
        o.db_breaker_refusal();
    }
}

pub(crate) fn rate_limit_count(counted: &'static str) {
    if let Some(o) = OBSERVER.get() {
        o.rate_limit_count(counted);
    }
}

pub(crate) fn queue_depth(queue: &'static str, depth: usize) {
    if let Some(o) = OBSERVER.get() {
        o.queue_depth(queue, depth);
    }
}

pub(crate) fn key_health(provider: &'static str, healthy: Option<bool>) {
    if let Some(o) = OBSERVER.get() {
        o.key_health(provider, healthy);
    }
}
