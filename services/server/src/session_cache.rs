//! Sessions this replica resolved a moment ago. A browser page or a script makes many calls in a
//! row, and each would otherwise start with the same database lookup; remembered for a few
//! seconds (`KEYHOUSE_SESSION_CACHE_SECS`, never past the session's own end), they cost none.
//! The price: a session deleted from the table keeps working here until its entry lapses.
//! Unknown tokens are never remembered, so a bad token always meets the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyhouse_domain::caller::Principal;

/// More entries than this and the cache forgets what has lapsed, then everything.
const MAX_ENTRIES: usize = 10_000;

/// Token digest → the session's principal and when its entry lapses.
type Entries = HashMap<String, (Principal, DateTime<Utc>)>;

#[derive(Clone)]
pub struct SessionCache {
    ttl: chrono::Duration,
    entries: Arc<Mutex<Entries>>,
}

impl SessionCache {
    /// A cache that keeps entries for `ttl`; zero keeps none.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            entries: Arc::default(),
        }
    }

    /// The principal remembered under a token's digest, while its entry lasts.
    pub fn get(&self, digest: &str, now: DateTime<Utc>) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        let (principal, until) = entries.get(digest)?;
        (now < *until).then(|| principal.clone())
    }

    /// Forgets a session that was just ended here (a sign-out), so it stops working on this
    /// replica at once; other replicas forget it when their entry lapses.
    pub fn remove(&self, digest: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(digest);
        }
    }

    /// Remembers a session resolved at `now` that ends at `expires_at`.
    pub fn put(
        &self,
        digest: String,
        principal: Principal,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) {
        if self.ttl <= chrono::Duration::zero() {
            return;
        }
        let until = expires_at.min(now + self.ttl);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (principal, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhouse_domain::caller::Role;

    fn alice() -> Principal {
        Principal {
            user_id: "alice".into(),
            email: String::new(),
            role: Role::User,
        }
    }

    #[test]
    fn an_entry_lasts_the_ttl_but_never_past_the_session() {
        let cache = SessionCache::new(Duration::from_secs(5));
        let now = Utc::now();
        cache.put("a".into(), alice(), now, now + chrono::Duration::hours(1));
        assert_eq!(
            cache.get("a", now + chrono::Duration::seconds(4)),
            Some(alice())
        );
        assert_eq!(cache.get("a", now + chrono::Duration::seconds(5)), None);

        cache.put("b".into(), alice(), now, now + chrono::Duration::seconds(1));
        assert_eq!(cache.get("b", now + chrono::Duration::seconds(2)), None);
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = SessionCache::new(Duration::ZERO);
        let now = Utc::now();
        cache.put("a".into(), alice(), now, now + chrono::Duration::hours(1));
        assert_eq!(cache.get("a", now), None);
    }
}
