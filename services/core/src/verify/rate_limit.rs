//! Per-key requests-per-minute limits: fixed one-minute windows, counted per replica in
//! memory, or across every replica in Redis when `KEYHOUSE_REDIS_URL` is set. If Redis stops
//! answering, counting falls back to this replica rather than refusing traffic.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

pub struct Window {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the window ends (UNIX seconds).
    pub reset_at: i64,
}

pub struct RateLimiter {
    local: Mutex<HashMap<Uuid, (i64, u32)>>,
    redis: Option<redis::aio::ConnectionManager>,
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
            local: Mutex::new(HashMap::new()),
            redis,
        })
    }

    /// Counts one request of `key_id` against `limit` in the current minute.
    pub async fn hit(&self, key_id: Uuid, limit: u32, now: i64) -> Window {
        let minute = now.div_euclid(60);
        let count = match &self.redis {
            Some(redis) => match Self::redis_count(redis.clone(), key_id, minute).await {
                Ok(count) => count,
                Err(e) => {
                    tracing::warn!(error = %e, "rate limit: Redis failed; counting on this replica");
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
        let mut windows = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() > 100_000 {
            windows.retain(|_, (m, _)| *m == minute);
        }
        let window = windows.entry(key_id).or_insert((minute, 0));
        if window.0 != minute {
            *window = (minute, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1
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
            .ignore()
            .expire(&key, 120)
            .ignore()
            .get(&key)
            .query_async(&mut redis)
            .await?;
        Ok(count)
    }
}
