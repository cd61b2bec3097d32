//! The verdict cache: bounded, sharded, keyed by the SHA-256 of the presented key (never the
//! key itself). Entries expire after a time to live; a full shard evicts an arbitrary entry,
//! which with a hash map's order is close to random eviction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

pub type Digest = [u8; 32];

/// One shard: each value with when it became known.
type Shard<V> = HashMap<Digest, (V, Instant)>;

pub struct Cache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
    ttl: Duration,
}

impl<V: Clone> Cache<V> {
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        let per_shard = max_entries.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self {
            shards,
            per_shard,
            ttl,
        }
    }

    fn shard(&self, digest: &Digest) -> std::sync::MutexGuard<'_, Shard<V>> {
        let shard = &self.shards[usize::from(digest[0]) % SHARDS];
        // A poisoned shard only means a panic elsewhere mid-insert; the map is still usable.
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value and when it was stored, if it is younger than the time to live.
    pub fn get(&self, digest: &Digest) -> Option<(V, Instant)> {
        let mut shard = self.shard(digest);
        match shard.get(digest) {
            Some((value, at)) if at.elapsed() < self.ttl => Some((value.clone(), *at)),
            Some(_) => {
                shard.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Stores `value` as known at `at` (for a lookup: when it started, so that an invalidation
    /// that raced it still wins).
    pub fn insert(&self, digest: Digest, value: V, at: Instant) {
        let mut shard = self.shard(&digest);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            let victim = shard.keys().next().copied();
            if let Some(victim) = victim {
                shard.remove(&victim);
            }
        }
        shard.insert(digest, (value, at));
    }

    pub fn remove(&self, digest: &Digest) {
        self.shard(digest).remove(digest);
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u32) -> Digest {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&n.to_le_bytes());
        d
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = Cache::new(640, Duration::from_secs(60));
        for n in 0..10_000 {
            cache.insert(digest(n), n, Instant::now());
        }
        assert!(cache.len() <= 640);
        cache.insert(digest(7), 7, Instant::now());
        assert_eq!(cache.get(&digest(7)).map(|v| v.0), Some(7));
    }

    #[test]
    fn entries_expire() {
        let cache = Cache::new(10, Duration::from_millis(1));
        cache.insert(digest(1), 1, Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get(&digest(1)).is_none());
    }
}
