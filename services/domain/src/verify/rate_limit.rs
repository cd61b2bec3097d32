//! Per-key requests-per-minute limits: fixed one-minute windows, counted per replica in
//! memory, or across every replica in Redis when `KEYHOUSE_REDIS_URL` is set. If Redis stops
//! answering, counting falls back to this replica rather than refusing traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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
    redis: Option<redis::aio::ConnectionManager>,
    /// Whether Redis failed last time: an outage is logged when it starts and ends, not per hit.
    redis_failing: AtomicBool,
}

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
                let manager = redis::aio::ConnectionManager::new(client)
                    .await
                    .map_err(|e| {
                        crate::Error::Unavailable(format!(
                            "cannot reach Redis at KEYHOUSE_REDIS_URL: {e}"
                        ))
                    })?;
                Some(manager)
            }
            None => None,
        };
        Ok(Self {
            local: Mutex::new(Minute::default()),
            redis,
            redis_failing: AtomicBool::new(false),
        })
    }

    /// Counts one request of `key_id` against `limit` in the current minute.
    pub async fn hit(&self, key_id: Uuid, limit: u32, now: i64) -> Window {
        let minute = now.div_euclid(60);
        let count = match &self.redis {
            Some(redis) => match Self::redis_count(redis.clone(), key_id, minute).await {
                Ok(count) => {
                    if self.redis_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("rate limit: Redis answers again; counting across replicas");
                    }
                    count
                }
                Err(e) => {
                    if !self.redis_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "rate limit: Redis failed; counting on this replica");
                    }
                    self.local_count(key_id, minute)
                }
            },
            None => self.local_count(key_id, minute),
        };
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
