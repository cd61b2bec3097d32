//! Sessions this replica resolved a moment ago. A browser page or a script makes many calls in a
//! row, and each would otherwise start with the same lookup (the database, or Ops-Center's
//! Redis); remembered for a few seconds (`KEYHOUSE_SESSION_CACHE_SECS`, never past the session's
//! own end: for Ops-Center's, the TTL Redis reports), they cost none. The price: a session
//! deleted from the table or from Redis keeps working here until its entry lapses. Unknown
//! tokens are never remembered, so a bad token always meets the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyhouse_domain::identity::Resolved;

/// More entries than this and the cache forgets what has lapsed, then everything.
const MAX_ENTRIES: usize = 10_000;

/// Token digest → the resolved session and when its entry lapses.
type Entries = HashMap<String, (Resolved, DateTime<Utc>)>;

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

    /// The session remembered under a token's digest, while its entry lasts.
    pub fn get(&self, digest: &str, now: DateTime<Utc>) -> Option<Resolved> {
        let entries = self.entries.lock().ok()?;
        let (session, until) = entries.get(digest)?;
        (now < *until).then(|| session.clone())
    }

    /// Forgets a session that was just ended here (a sign-out), so it stops working on this
    /// replica at once; other replicas forget it when their entry lapses.
    pub fn remove(&self, digest: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(digest);
        }
    }

    /// Remembers a session resolved at `now`, until `session.until` at the latest.
    pub fn put(&self, digest: String, session: Resolved, now: DateTime<Utc>) {
        if self.ttl <= chrono::Duration::zero() {
            return;
        }
        let until = session.until.min(now + self.ttl);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (session, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhouse_domain::caller::{IdentitySource, Principal, Role};

    fn alice(until: DateTime<Utc>) -> Resolved {
        Resolved {
            principal: Principal {
                user_id: "alice".into(),
                email: String::new(),
                role: Role::User,
            },
            source: IdentitySource::OpsCenterSession,
            until,
        }
    }

    #[test]
    fn an_entry_lasts_the_ttl_but_never_past_the_session() {
        let cache = SessionCache::new(Duration::from_secs(5));
        let now = Utc::now();
        let hour = alice(now + chrono::Duration::hours(1));
        cache.put("a".into(), hour.clone(), now);
        assert_eq!(
            cache.get("a", now + chrono::Duration::seconds(4)),
            Some(hour)
        );
        assert_eq!(cache.get("a", now + chrono::Duration::seconds(5)), None);

        cache.put("b".into(), alice(now + chrono::Duration::seconds(1)), now);
        assert_eq!(cache.get("b", now + chrono::Duration::seconds(2)), None);
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = SessionCache::new(Duration::ZERO);
        let now = Utc::now();
        cache.put("a".into(), alice(now + chrono::Duration::hours(1)), now);
        assert_eq!(cache.get("a", now), None);
    }
}
