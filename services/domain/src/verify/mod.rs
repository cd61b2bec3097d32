//! VerifyKey, the gateway's hot path. In order: the key's shape and checksum (no storage); the
//! verdict cache, keyed by the key's SHA-256; a short negative cache for unknown keys; and on a
//! miss one prefix lookup and one bcrypt, shared by every concurrent request for the same key.
//! A well-formed key that is not the stored one never costs a bcrypt: the stored tag of the
//! secret (`crypto::key_tag`) refuses it first, from a short cache of each prefix's tags, so a
//! flood of forged keys sharing a real key's prefix costs no query either.
//! Revoke, regenerate and expiry take effect at once: expiry is checked on every hit, and a
//! change invalidates the key's cached verdict here and, through the change feed, on every
//! other replica. The cache's time to live is only a safety net: a verdict older than it, like
//! one the change feed may have missed changes to (a resync), is re-read by the key's id, which
//! costs one row read and no bcrypt.

pub mod cache;
mod rate_limit;
mod usage;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use ipnet::IpNet;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::verify_key_response::Reason;
use sea_orm::DatabaseConnection;
use sha2::{Digest as _, Sha256};
use tokio::sync::{OnceCell, broadcast};
use uuid::Uuid;

use crate::caller::KeyBounds;
use crate::change_feed::{Change, ChangeFeed};
use crate::config::VerifySettings;
use crate::crypto::api_key::ApiKey;
use crate::crypto::key_tag::{KeyTagger, TagCheck};
use crate::entities::user_api_keys;
use crate::error::{Error, Result};
use crate::storage::user_keys as store;

use cache::{Cache, Digest};
pub use rate_limit::RateLimiter;
pub use usage::UsageRecorder;

/// What the cache keeps of a key: enough to answer without storage.
#[derive(Debug)]
pub struct KeyInfo {
    pub key_id: Uuid,
    pub user_id: Box<str>,
    /// Bit i set: the key holds scope i of the registry.
    scopes: u64,
    expires_at: Option<i64>,
    revoked: bool,
    rate_limit: Option<u32>,
    allowed: Option<Box<[IpNet]>>,
    /// Identifies the stored hash the presented key was checked against.
    hash_tag: u64,
}

enum Cached {
    None,
    Fresh(Arc<KeyInfo>),
    Stale(Arc<KeyInfo>),
}

fn hash_tag(key_hash: &str) -> u64 {
    let digest = Sha256::digest(key_hash.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

impl KeyInfo {
    /// An active key without limits: what most cached entries look like (benchmarks size the
    /// cache with these).
    pub fn active(key_id: Uuid, user_id: &str, scopes: u64, expires_at: Option<i64>) -> Self {
        Self {
            key_id,
            user_id: user_id.into(),
            scopes,
            expires_at,
            revoked: false,
            rate_limit: None,
            allowed: None,
            hash_tag: 0,
        }
    }
}

/// A lookup's outcome, shared by every request that waited for it.
type Lookup = std::result::Result<Option<Arc<KeyInfo>>, Arc<Error>>;

#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    registry: Vec<String>,
    found: Cache<Arc<KeyInfo>>,
    unknown: Cache<()>,
    /// Each looked-up prefix's stored tags: refuses a forged key without a query.
    prefixes: Cache<Arc<PrefixTags>>,
    tagger: KeyTagger,
    invalidated: RwLock<Invalidated>,
    /// When the latest invalidation happened, as nanoseconds after `epoch` (0: never). An entry
    /// cached after it cannot be stale, so the hot path skips the lock for it.
    last_invalidation: AtomicU64,
    /// When changes may last have been missed (same unit): an entry whose lookup began before
    /// it may hold what those changes undid, so it is read again by id.
    resynced: AtomicU64,
    epoch: Instant,
    inflight: Mutex<HashMap<Digest, Arc<OnceCell<Lookup>>>>,
    /// Untagged keys being checked by bcrypt now: one at a time each (see `load`).
    untagged: Mutex<HashSet<Uuid>>,
    limiter: RateLimiter,
    usage: UsageRecorder,
    bcrypt_runs: AtomicU64,
    ttl: Duration,
}

impl Inner {
    /// `at` as nanoseconds after the verifier started, never 0.
    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl Verifier {
    /// Builds the verifier, and starts listening for changes made elsewhere and flushing usage.
    pub async fn start(
        db: DatabaseConnection,
        scopes: &[String],
        settings: &VerifySettings,
        feed: &ChangeFeed,
        tagger: KeyTagger,
    ) -> Result<Self> {
        let ttl = Duration::from_secs(settings.cache_ttl_secs.max(1));
        let inner = Arc::new(Inner {
            // At most 64 (`KeyPolicy::validate`); the bound keeps the bit arithmetic safe anyway.
            registry: scopes.iter().take(64).cloned().collect(),
            // Never dropped for age, only for room: an old verdict is re-read by id (`cached`),
            // so its proof that the presented key is this key's secret is not thrown away.
            found: Cache::new(settings.cache_max_entries, Duration::MAX),
            unknown: Cache::new(
                settings.negative_cache_max_entries,
                Duration::from_secs(settings.negative_cache_ttl_secs.max(1)),
            ),
            prefixes: Cache::new(
                settings.negative_cache_max_entries,
                Duration::from_secs(settings.negative_cache_ttl_secs.max(1)),
            ),
            tagger,
            invalidated: RwLock::new(Invalidated::default()),
            last_invalidation: AtomicU64::new(0),
            resynced: AtomicU64::new(0),
            epoch: Instant::now(),
            inflight: Mutex::new(HashMap::new()),
            untagged: Mutex::new(HashSet::new()),
            limiter: RateLimiter::new(settings.redis_url.as_deref()).await?,
            usage: UsageRecorder::default(),
            bcrypt_runs: AtomicU64::new(0),
            ttl,
            db,
        });
        tokio::spawn(listen(Arc::downgrade(&inner), feed.subscribe()));
        tokio::spawn(flush_usage(
            Arc::downgrade(&inner),
            Duration::from_millis(settings.usage_flush_millis.max(10)),
        ));
        Ok(Self { inner })
    }

    /// The bcrypt verifications this verifier has run: what the cache saves is visible here.
    pub fn bcrypt_runs(&self) -> u64 {
        self.inner.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// The tag to store for a new key's secret.
    pub fn tag(&self, key: &ApiKey) -> String {
        self.inner.tagger.tag(key)
    }

    /// Forgets what is cached about `key_id`, including verdicts being looked up right now.
    pub fn invalidate(&self, key_id: Uuid) {
        let mut invalidated = self
            .inner
            .invalidated
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        invalidated.insert(key_id, now, self.inner.ttl);
        // `fetch_max`: a revoke and a resync at once must not move the mark backwards, which
        // would let an entry cached before the later of the two pass as fresh.
        self.inner
            .last_invalidation
            .fetch_max(self.inner.since_epoch(now), Ordering::AcqRel);
    }

    /// Marks every cached verdict stale: changes may have been missed. Each is read again by
    /// id when next asked for, which sees a revoke or a regenerate and costs no bcrypt (the
    /// cache maps the presented key's digest to a key bcrypt matched). Lookups still running
    /// started before this, so what they cache is stale too.
    fn resync(&self) {
        let now = self.inner.since_epoch(Instant::now());
        self.inner.resynced.fetch_max(now, Ordering::AcqRel);
        self.inner
            .last_invalidation
            .fetch_max(now, Ordering::AcqRel);
    }

    /// Writes pending usage counts now (also done periodically and at shutdown).
    pub async fn flush_usage(&self) -> Result<()> {
        self.inner.usage.flush(&self.inner.db).await
    }

    /// The gateway's question. A key limited to IP networks is valid only with a `client_ip`
    /// inside them: without an address there is nothing to check, so no pass.
    pub async fn verify(&self, req: &pb::VerifyKeyRequest) -> Result<pb::VerifyKeyResponse> {
        Ok(self.verify_with(req).await?.0)
    }

    /// For a key presented to keyhouse itself as a caller's credential: the verdict and, when it
    /// is valid, what the key holds, which bounds whatever the call makes.
    pub async fn authenticate(
        &self,
        req: &pb::VerifyKeyRequest,
    ) -> Result<(pb::VerifyKeyResponse, Option<KeyBounds>)> {
        let (response, info) = self.verify_with(req).await?;
        let bounds = info
            .filter(|_| response.valid)
            .map(|info| self.bounds(&info));
        Ok((response, bounds))
    }

    // Debug level: at the default INFO filter the hot path pays for no span.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn verify_with(
        &self,
        req: &pb::VerifyKeyRequest,
    ) -> Result<(pb::VerifyKeyResponse, Option<Arc<KeyInfo>>)> {
        let answer = self.answer(req).await;
        let outcome = match &answer {
            Ok((response, _)) => response.reason().as_str_name(),
            Err(Error::InvalidArgument { .. }) => "INVALID_ARGUMENT",
            Err(_) => "UNAVAILABLE",
        };
        crate::observe::verify_outcome(outcome);
        answer
    }

    async fn answer(
        &self,
        req: &pb::VerifyKeyRequest,
    ) -> Result<(pb::VerifyKeyResponse, Option<Arc<KeyInfo>>)> {
        if req.api_key.is_empty() {
            return Err(Error::invalid("api_key", "api_key is required"));
        }
        if req.required_scopes.len() > MAX_REQUIRED_SCOPES {
            return Err(Error::invalid(
                "required_scopes",
                format!("required_scopes may name at most {MAX_REQUIRED_SCOPES} scopes"),
            ));
        }
        let client_ip = match req.client_ip.trim() {
            "" => None,
            ip => Some(
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| Error::invalid("client_ip", "client_ip is not an IP address"))?
                    // `::ffff:10.1.2.3` is 10.1.2.3, as an IPv4 allowlist means it.
                    .to_canonical(),
            ),
        };
        let Some(key) = ApiKey::parse(&req.api_key) else {
            return Ok((verdict(Reason::Malformed, None), None));
        };
        let digest: Digest = Sha256::digest(key.expose().as_bytes()).into();
        let cache = crate::observe::verify_cache;
        let info = match self.cached(&digest) {
            Cached::Fresh(info) => {
                cache("hit");
                Some(info)
            }
            Cached::Stale(info) => {
                cache("stale");
                self.lookup(&key, digest, Some(info)).await?
            }
            Cached::None if self.inner.unknown.get(&digest).is_some() => {
                cache("negative_hit");
                None
            }
            Cached::None => {
                cache("miss");
                self.lookup(&key, digest, None).await?
            }
        };
        let Some(info) = info else {
            return Ok((verdict(Reason::NotFound, None), None));
        };
        let response = self.judge(&info, &req.required_scopes, client_ip).await;
        Ok((response, Some(info)))
    }

    /// The cached verdict; `Stale` when the key changed since it was cached, changes may have
    /// been missed since, or it is older than the time to live, so it must be read again (by
    /// id: this digest is already known to belong to that key).
    fn cached(&self, digest: &Digest) -> Cached {
        let Some((info, at)) = self.inner.found.get(digest) else {
            return Cached::None;
        };
        if at.elapsed() >= time_to_live(self.inner.ttl, digest) {
            return Cached::Stale(info);
        }
        let at_nanos = self.inner.since_epoch(at);
        if at_nanos > self.inner.last_invalidation.load(Ordering::Acquire) {
            return Cached::Fresh(info);
        }
        if at_nanos <= self.inner.resynced.load(Ordering::Acquire) {
            return Cached::Stale(info);
        }
        let invalidated = self
            .inner
            .invalidated
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if invalidated.at.get(&info.key_id).is_some_and(|t| at <= *t) {
            return Cached::Stale(info);
        }
        Cached::Fresh(info)
    }

    /// One lookup per key at a time: concurrent misses for the same key wait for the first.
    async fn lookup(
        &self,
        key: &ApiKey,
        digest: Digest,
        stale: Option<Arc<KeyInfo>>,
    ) -> Result<Option<Arc<KeyInfo>>> {
        let cell = {
            let mut inflight = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            inflight.entry(digest).or_default().clone()
        };
        let outcome = cell
            .get_or_init(|| async {
                // Released when the lookup ends, also when its caller gives up half-way:
                // otherwise cancelled lookups of made-up keys would pile up here.
                let _release = Release {
                    inner: &self.inner,
                    digest,
                    cell: &cell,
                };
                // A lookup that finished between this caller's cache check and taking the cell
                // has left its answer in the cache: loading again would cost another bcrypt.
                let outcome = match self.settled(&digest, stale.is_none()) {
                    Some(answer) => Ok(answer),
                    None => self.fetch(key, digest, stale.as_deref()).await,
                };
                match &outcome {
                    // Busy, or the database is down (already logged): a flood must not flood
                    // the log as well.
                    Err(e) if matches!(**e, Error::Unavailable(_)) => {
                        tracing::debug!(error = %e, "key lookup unavailable");
                    }
                    Err(e) => tracing::error!(error = ?e, "key lookup failed"),
                    Ok(_) => {}
                }
                outcome
            })
            .await
            .clone();
        outcome.map_err(|e| match &*e {
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            _ => Error::Unavailable("key verification is unavailable".into()),
        })
    }

    /// The cached answer, if one is there now: a fresh verdict, or (for a miss) a known unknown.
    fn settled(&self, digest: &Digest, miss: bool) -> Option<Option<Arc<KeyInfo>>> {
        match self.cached(digest) {
            Cached::Fresh(info) => Some(Some(info)),
            Cached::None if miss && self.inner.unknown.get(digest).is_some() => Some(None),
            _ => None,
        }
    }

    /// Reads the key (by prefix and bcrypt, or by id when `stale`) and caches the answer.
    async fn fetch(
        &self,
        key: &ApiKey,
        digest: Digest,
        stale: Option<&KeyInfo>,
    ) -> std::result::Result<Option<Arc<KeyInfo>>, Arc<Error>> {
        let started = Instant::now();
        let outcome = match stale {
            Some(stale) => self.reload(stale).await,
            None => self.load(key).await,
        };
        let outcome = outcome.map_err(Arc::new);
        match &outcome {
            Ok(Some(info)) => self.inner.found.insert(digest, info.clone(), started),
            Ok(None) => {
                self.inner.found.remove(&digest);
                self.inner.unknown.insert(digest, (), started);
            }
            Err(_) => {}
        }
        outcome
    }

    async fn load(&self, key: &ApiKey) -> Result<Option<Arc<KeyInfo>>> {
        let prefix: Digest = Sha256::digest(key.lookup_prefix().as_bytes()).into();
        if let Some((known, _)) = self.inner.prefixes.get(&prefix)
            && known.refuse(&self.inner.tagger, key)
        {
            return Ok(None);
        }
        let started = Instant::now();
        let db = &self.inner.db;
        let rows = crate::db::guarded(db, store::find_by_prefix(db, key.lookup_prefix())).await?;
        let tags = PrefixTags(rows.iter().map(|r| r.key_tag.clone()).collect());
        let refused = tags.refuse(&self.inner.tagger, key);
        self.inner.prefixes.insert(prefix, Arc::new(tags), started);
        if refused {
            return Ok(None);
        }
        for row in rows {
            let check = self.inner.tagger.check(row.key_tag.as_deref(), key);
            if check == TagCheck::Differs {
                continue;
            }
            // Without a tag only bcrypt can tell a forged key from the real one. Forged keys all
            // differ, so single flight does not join them: one bcrypt at a time per such key
            // keeps a flood on its prefix to one core, and the rest are told to try again.
            let _checking = match check {
                TagCheck::Unknown => Some(Checking::start(&self.inner.untagged, row.id)?),
                _ => None,
            };
            self.inner.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
            if !key.verify(&row.key_hash).await? {
                continue;
            }
            if self.inner.tagger.is_stale(row.key_tag.as_deref()) {
                self.retag(&row, key).await;
            }
            return Ok(Some(Arc::new(self.key_info(row))));
        }
        Ok(None)
    }

    /// Gives a key made before tags (or tagged under an older encryption key) its tag under the
    /// primary, now that it has proven itself; a failure only means it is tried again next time.
    async fn retag(&self, row: &user_api_keys::Model, key: &ApiKey) {
        let tag = self.inner.tagger.tag(key);
        let db = &self.inner.db;
        if let Err(e) =
            crate::db::guarded(db, store::set_tag(db, row.id, &row.key_hash, &tag)).await
        {
            tracing::warn!(key_id = %row.id, error = %e, "could not store the key's tag");
        }
    }

    /// Re-reads a key that changed, without bcrypt: the presented key was proven to be this
    /// key's secret when it was cached, and still is if the stored hash is the same one.
    async fn reload(&self, stale: &KeyInfo) -> Result<Option<Arc<KeyInfo>>> {
        let db = &self.inner.db;
        let Some(row) = crate::db::guarded(db, store::find(db, stale.key_id)).await? else {
            return Ok(None);
        };
        if hash_tag(&row.key_hash) != stale.hash_tag {
            // Regenerated: the presented secret is not this key's any more.
            return Ok(None);
        }
        Ok(Some(Arc::new(self.key_info(row))))
    }

    fn key_info(&self, row: user_api_keys::Model) -> KeyInfo {
        let granted: Vec<String> = serde_json::from_value(row.permissions).unwrap_or_default();
        let scopes = self
            .inner
            .registry
            .iter()
            .enumerate()
            .filter(|(_, s)| granted.contains(s))
            .fold(0u64, |bits, (i, _)| bits | (1 << i));
        // JSON null and an empty list mean no allowlist, as keyhouse has always stored it.
        let allowed = row.allowed_ips.filter(|v| !v.is_null()).and_then(|stored| {
            let networks: Option<Vec<IpNet>> = <Vec<String> as serde::Deserialize>::deserialize(&stored)
                .ok()
                .and_then(|list| list.iter().map(|c| parse_network(c)).collect());
            match networks {
                Some(networks) if networks.is_empty() => None,
                Some(networks) => Some(networks),
                None => {
                    // Fail closed: an allowlist that cannot be read admits no address at all.
                    // Networks are not secret, so the log shows what could not be read.
                    tracing::error!(key_id = %row.id, allowed_ips = %stored, "the key's stored allowed_ips are not a list of networks; the key is refused until they are fixed");
                    Some(Vec::new())
                }
            }
        });
        KeyInfo {
            hash_tag: hash_tag(&row.key_hash),
            key_id: row.id,
            user_id: row.user_id.into_boxed_str(),
            scopes,
            expires_at: row.expires_at.map(|t| t.timestamp()),
            revoked: !row.is_active,
            // A stored limit below zero (never written by keyhouse) admits nothing.
            rate_limit: row
                .rate_limit_per_minute
                .map(|n| u32::try_from(n).unwrap_or(0)),
            allowed: allowed.map(Vec::into_boxed_slice),
        }
    }

    fn bounds(&self, info: &KeyInfo) -> KeyBounds {
        KeyBounds {
            key_id: info.key_id,
            scopes: self.scopes_of(info),
            // Out of chrono's range only when hand-written: as good as expired.
            expires_at: info.expires_at.map(|s| {
                chrono::DateTime::from_timestamp(s, 0).unwrap_or(chrono::DateTime::UNIX_EPOCH)
            }),
            rate_limit: info.rate_limit,
            allowed: info.allowed.as_ref().map(|a| a.to_vec()),
        }
    }

    fn scopes_of(&self, info: &KeyInfo) -> Vec<String> {
        self.inner
            .registry
            .iter()
            .enumerate()
            .filter(|(i, _)| info.scopes & (1 << i) != 0)
            .map(|(_, s)| s.clone())
            .collect()
    }

    async fn judge(
        &self,
        info: &KeyInfo,
        required: &[String],
        client_ip: Option<std::net::IpAddr>,
    ) -> pb::VerifyKeyResponse {
        let now = Utc::now();
        if info.revoked {
            return verdict(Reason::Revoked, Some(info));
        }
        if info.expires_at.is_some_and(|at| at <= now.timestamp()) {
            return verdict(Reason::Expired, Some(info));
        }
        let holds = |scope: &String| {
            self.inner
                .registry
                .iter()
                .position(|s| s == scope)
                .is_some_and(|i| info.scopes & (1 << i) != 0)
        };
        if !required.iter().all(holds) {
            return self.with_permissions(verdict(Reason::InsufficientScope, Some(info)), info);
        }
        if let Some(allowed) = &info.allowed {
            let permitted = client_ip.is_some_and(|ip| allowed.iter().any(|net| net.contains(&ip)));
            if !permitted {
                return verdict(Reason::IpNotAllowed, Some(info));
            }
        }
        let mut response = self.with_permissions(verdict(Reason::Valid, Some(info)), info);
        if let Some(limit) = info.rate_limit {
            let window = self
                .inner
                .limiter
                .hit(info.key_id, limit, now.timestamp())
                .await;
            response.limit = i32::try_from(window.limit).unwrap_or(i32::MAX);
            response.remaining = i32::try_from(window.remaining).unwrap_or(i32::MAX);
            response.reset_at = Some(prost_types::Timestamp {
                seconds: window.reset_at,
                nanos: 0,
            });
            if !window.allowed {
                response.valid = false;
                response.set_reason(Reason::RateLimited);
                return response;
            }
        }
        self.inner.usage.record(info.key_id, now);
        response
    }

    fn with_permissions(
        &self,
        mut response: pb::VerifyKeyResponse,
        info: &KeyInfo,
    ) -> pb::VerifyKeyResponse {
        response.permissions = self.scopes_of(info);
        response
    }
}

/// `ttl` less up to a tenth, by the digest: keys first verified together (a gateway's burst
/// after a restart) are read again spread over that tenth rather than all in one instant. Each
/// re-read is one row read by id, so this only smooths the database's load; it is never shorter
/// than nine tenths, so `Invalidated` keeping each change for a whole `ttl` stays enough.
fn time_to_live(ttl: Duration, digest: &Digest) -> Duration {
    // Divided first: a tenth of any `ttl` times 255 cannot overflow.
    ttl - ttl / 2550 * u32::from(digest[1])
}

/// When each key was last invalidated, for as long as a verdict cached before it could still be
/// trusted (its time to live: older ones are read again anyway). Entries past that are pruned
/// when the map has doubled since the last pruning, so a steady stream of revocations costs
/// amortized constant time each, not a sweep of the whole map every time.
#[derive(Default)]
struct Invalidated {
    at: HashMap<Uuid, Instant>,
    prune_above: usize,
}

impl Invalidated {
    fn insert(&mut self, key_id: Uuid, now: Instant, ttl: Duration) {
        if self.at.len() >= self.prune_above.max(10_000) {
            self.at.retain(|_, at| at.elapsed() < ttl);
            self.prune_above = self.at.len() * 2;
        }
        self.at.insert(key_id, now);
    }
}

/// What the prefix cache keeps: the stored tag of every key with one prefix (`None`: untagged).
/// It only ever refuses; whatever it lets through is read again and checked by bcrypt. So a
/// change to a key need not clear it: a revoke leaves the tag, a regenerate moves the key to a
/// new prefix, and a key gaining a tag only makes an entry refuse less than it could. A new key
/// under a prefix cached as empty would be refused until the entry expires, but prefixes carry
/// 48 random bits.
struct PrefixTags(Vec<Option<String>>);

impl PrefixTags {
    /// Whether the stored tags alone refuse `key`: every key with its prefix has a tag of this
    /// secret, and none is the key's. No prefix at all refuses it too.
    fn refuse(&self, tagger: &KeyTagger, key: &ApiKey) -> bool {
        self.0
            .iter()
            .all(|tag| tagger.check(tag.as_deref(), key) == TagCheck::Differs)
    }
}

/// Most scopes one VerifyKey may require.
pub const MAX_REQUIRED_SCOPES: usize = 64;

/// A CIDR, or a bare address as a single-host network.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn verdict(reason: Reason, info: Option<&KeyInfo>) -> pb::VerifyKeyResponse {
    let mut response = pb::VerifyKeyResponse {
        valid: reason == Reason::Valid,
        ..Default::default()
    };
    response.set_reason(reason);
    if let Some(info) = info {
        response.key_id = info
            .key_id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .to_owned();
        response.user_id = info.user_id.to_string();
        response.expires_at = info.expires_at.map(|s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        });
    }
    response
}

/// An untagged key's bcrypt check in progress; ends when dropped.
struct Checking<'a> {
    set: &'a Mutex<HashSet<Uuid>>,
    id: Uuid,
}

impl<'a> Checking<'a> {
    fn start(set: &'a Mutex<HashSet<Uuid>>, id: Uuid) -> Result<Self> {
        let mut checking = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !checking.insert(id) {
            return Err(Error::Unavailable(
                "too many key checks in progress; try again shortly".into(),
            ));
        }
        Ok(Self { set, id })
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Takes a finished (or abandoned) lookup's cell out of the in-flight map, if it is still there.
struct Release<'a> {
    inner: &'a Inner,
    digest: Digest,
    cell: &'a Arc<OnceCell<Lookup>>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inflight
            .get(&self.digest)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell))
        {
            inflight.remove(&self.digest);
        }
    }
}

async fn listen(inner: std::sync::Weak<Inner>, mut changes: broadcast::Receiver<Change>) {
    loop {
        let change = changes.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        let verifier = Verifier { inner };
        match change {
            Ok(Change::UserKey(key_id)) => verifier.invalidate(key_id),
            Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => verifier.resync(),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn flush_usage(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.usage.flush(&inner.db).await {
            tracing::warn!(error = %e, "usage flush failed; the counts are kept for the next one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_go_stale_spread_over_the_last_tenth_of_their_time_to_live() {
        let ttl = Duration::from_secs(300);
        let mut digest = [0u8; 32];
        let mut lives = Vec::new();
        for byte in [0u8, 1, 128, 255] {
            digest[1] = byte;
            lives.push(time_to_live(ttl, &digest));
        }
        assert_eq!(lives[0], ttl);
        assert!(lives.windows(2).all(|w| w[1] < w[0]), "{lives:?}");
        assert!(
            lives[3] >= ttl - ttl / 10 && lives[3] < ttl - ttl / 11,
            "{lives:?}"
        );
        // Any configured lifetime, however long, is safe to spread.
        assert!(time_to_live(Duration::MAX, &digest) < Duration::MAX);
    }
}
