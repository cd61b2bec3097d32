//! Per-key requests-per-minute limits: fixed one-minute windows, counted per replica in
//! memory, or across every replica in Redis when `KEYHOUSE_REDIS_URL` is set. If Redis stops
//! answering, counting falls back to this replica rather than refusing traffic: each Redis call
//! has a short timeout, and once one fails Redis is left alone on the hot path while a
//! background probe waits for it to answer again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use uuid::Uuid;

pub struct Window {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the window ends (UNIX seconds).
    pub reset_at: i64,
}

pub struct RateLimiter {
    local: Mutex<Minute>,
    redis: Option<Arc<Shared>>,
}

struct Shared {
    redis: redis::aio::ConnectionManager,
    /// Set while Redis is known down: hits count locally without trying it, and the one probe
    /// started by the failure clears it when Redis answers.
    down: AtomicBool,
}

/// The most a hit waits for Redis: past it, counting on this replica is the better answer.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a probe asks Redis whether it is back, and how long it waits for the answer.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// This replica's counts for the current minute; earlier minutes are over and need no counts.
#[derive(Default)]
struct Minute {
    minute: i64,
    counts: HashMap<Uuid, u32>,
}

impl RateLimiter {
    pub async fn new(redis_url: Option<&str>) -> crate::Result<Self> {
        let redis = match redis_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                let client = redis::Client::open(url).map_err(|e| {
                    crate::Error::FailedPrecondition(format!(
                        "KEYHOUSE_REDIS_URL is not a Redis URL: {e}"
                    ))
                })?;
                // Few, quick reconnection attempts: the probe keeps asking, so the manager need
                // not hold a command for seconds retrying.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(PROBE_TIMEOUT))
                    .set_response_timeout(Some(PROBE_TIMEOUT));
                let manager = redis::aio::ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| {
                        crate::Error::Unavailable(format!(
                            "cannot reach Redis at KEYHOUSE_REDIS_URL: {e}"
                        ))
                    })?;
                Some(Arc::new(Shared {
                    redis: manager,
                    down: AtomicBool::new(false),
                }))
            }
            None => None,
        };
        Ok(Self {
            local: Mutex::new(Minute::default()),
            redis,
        })
    }

    /// Counts one request of `key_id` against `limit` in the current minute.
    pub async fn hit(&self, key_id: Uuid, limit: u32, now: i64) -> Window {
        let minute = now.div_euclid(60);
        let (count, counted) = match &self.redis {
            Some(shared) if !shared.down.load(Ordering::Acquire) => {
                match shared.count(key_id, minute).await {
                    Some(count) => (count, "redis"),
                    None => (self.local_count(key_id, minute), "replica_redis_failed"),
                }
            }
            Some(_) => (self.local_count(key_id, minute), "replica_redis_down"),
            None => (self.local_count(key_id, minute), "replica"),
        };
        // Operators see where limits are counted; a `replica_redis_down` hit never waited for
        // Redis.
        crate::observe::rate_limit_count(counted);
        Window {
            allowed: count <= limit,
            limit,
            remaining: limit.saturating_sub(count),
            reset_at: (minute + 1) * 60,
        }
    }

    fn local_count(&self, key_id: Uuid, minute: i64) -> u32 {
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A hit stamped just before the minute turned, arriving just after, counts in the new
        // minute rather than wiping it.
        if minute > local.minute {
            local.minute = minute;
            local.counts.clear();
        }
        let count = local.counts.entry(key_id).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    async fn redis_count(
        mut redis: redis::aio::ConnectionManager,
        key_id: Uuid,
        minute: i64,
    ) -> redis::RedisResult<u32> {
        let key = format!("keyhouse:rate:{key_id}:{minute}");
        let (count,): (u32,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 120)
            .ignore()
            .query_async(&mut redis)
            .await?;
        Ok(count)
    }
}

impl Shared {
    /// The count in Redis, or `None` (and Redis marked down) when it does not answer in time.
    async fn count(self: &Arc<Self>, key_id: Uuid, minute: i64) -> Option<u32> {
        let counted = RateLimiter::redis_count(self.redis.clone(), key_id, minute);
        let error = match tokio::time::timeout(REDIS_TIMEOUT, counted).await {
            Ok(Ok(count)) => return Some(count),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()),
        };
        self.fail(&error);
        None
    }

    /// Marks Redis down; the first failure of an outage logs it and starts the probe.
    fn fail(self: &Arc<Self>, error: &str) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(%error, "rate limit: Redis failed; counting on this replica until it answers again");
        tokio::spawn(Self::probe(Arc::downgrade(self)));
    }

    async fn probe(shared: Weak<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut redis = shared.redis.clone();
            let ping = redis::cmd("PING");
            let answer =
                tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<String>(&mut redis));
            if let Ok(Ok(_)) = answer.await {
                shared.down.store(false, Ordering::Release);
                tracing::info!("rate limit: Redis answers again; counting across replicas");
                return;
            }
        }
    }
}
