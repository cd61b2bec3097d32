//! User API keys: `uc_` + 64 lowercase hex. The first 56 hex are random (OS CSPRNG); the last
//! 8 are the CRC32 of everything before them, so a mistyped or forged key is rejected without
//! touching storage and secret scanners can recognise a real one.

use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const PREFIX: &str = "uc_";
const RANDOM_HEX: usize = 56;
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_HEX + 8;
/// Stored in clear and indexed: `uc_` + 12 hex (48 random bits), so one prefix almost never
/// has two candidates and a lookup needs one bcrypt.
pub const LOOKUP_PREFIX_LEN: usize = PREFIX.len() + 12;

/// A full API key. Zeroized on drop; `Debug` prints a mask.
#[derive(Clone)]
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    pub fn generate() -> Result<Self> {
        let mut random = Zeroizing::new([0u8; RANDOM_HEX / 2]);
        getrandom::fill(random.as_mut())
            .map_err(|e| Error::internal(anyhow::anyhow!("OS RNG: {e}")))?;
        let mut key = Zeroizing::new(String::with_capacity(KEY_LEN));
        key.push_str(PREFIX);
        key.push_str(&hex::encode(random.as_ref()));
        let crc = crc32fast::hash(key.as_bytes());
        key.push_str(&format!("{crc:08x}"));
        Ok(Self(key))
    }

    /// Accepts a presented key only if it has the right shape and checksum.
    pub fn parse(presented: &str) -> Option<Self> {
        well_formed(presented).then(|| Self(Zeroizing::new(presented.to_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn lookup_prefix(&self) -> &str {
        &self.0[..LOOKUP_PREFIX_LEN]
    }

    pub fn last4(&self) -> &str {
        &self.0[KEY_LEN - 4..]
    }

    pub fn preview(&self) -> String {
        super::mask::preview(&self.0)
    }

    /// bcrypt at `cost`, on the blocking pool: ~230 ms of CPU at cost 12.
    pub async fn hash(&self, cost: u32) -> Result<String> {
        let key = self.0.clone();
        on_blocking_pool("hash", move || bcrypt::hash(key.as_bytes(), cost)).await
    }

    /// Checks the key against a stored bcrypt hash, on the blocking pool.
    pub async fn verify(&self, hash: &str) -> Result<bool> {
        let key = self.0.clone();
        let hash = hash.to_owned();
        on_blocking_pool("verify", move || bcrypt::verify(key.as_bytes(), &hash)).await
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.preview())
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// bcrypt work per process: one running per core, and at most `MAX_WAITING` more admitted to
/// wait. Beyond that a call is refused at once, so no flood can queue unbounded work. Both
/// permits travel into the blocking task: a caller that gives up does not free a slot while its
/// bcrypt still runs.
struct Slots {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// The permits `admitted` was made with: the queue's depth is this less those available.
    capacity: usize,
    /// The permits `running` has now (`set_running`).
    running_limit: Mutex<usize>,
}

const MAX_WAITING: usize = 64;

static SLOTS: LazyLock<Slots> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    Slots {
        admitted: Arc::new(Semaphore::new(cores + MAX_WAITING)),
        running: Arc::new(Semaphore::new(cores)),
        capacity: cores + MAX_WAITING,
        running_limit: Mutex::new(cores),
    }
});

/// Sets how many bcrypt operations run at once (at least 1; one per core unless set), for
/// measuring what leaving a core to the cheap calls is worth. Lowering it waits until enough
/// running operations have ended.
pub async fn set_running(n: usize) {
    let n = n.max(1);
    let now = {
        let mut limit = SLOTS
            .running_limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *limit, n)
    };
    if n > now {
        SLOTS.running.add_permits(n - now);
    } else if let Ok(taken) = SLOTS
        .running
        .acquire_many(u32::try_from(now - n).unwrap_or(u32::MAX))
        .await
    {
        taken.forget();
    }
}

/// An admitted operation's place in the queue; the queue's depth is reported when it is
/// taken and when it is given back, however the operation ends.
struct Place(Option<OwnedSemaphorePermit>);

impl Place {
    fn take() -> Option<Self> {
        let permit = SLOTS.admitted.clone().try_acquire_owned().ok()?;
        report_depth();
        Some(Self(Some(permit)))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        drop(self.0.take());
        report_depth();
    }
}

fn report_depth() {
    let depth = SLOTS.capacity - SLOTS.admitted.available_permits();
    crate::observe::queue_depth("bcrypt", depth);
}

/// Runs one bcrypt operation on the blocking pool, timed for the metrics and traced as a child
/// of the caller's span.
async fn on_blocking_pool<T: Send + 'static>(
    operation: &'static str,
    f: impl FnOnce() -> bcrypt::BcryptResult<T> + Send + 'static,
) -> Result<T> {
    let busy = || Error::Unavailable("too many key checks in progress; try again shortly".into());
    let admitted = Place::take().ok_or_else(busy)?;
    let running = SLOTS
        .running
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| busy())?;
    let span = tracing::info_span!("bcrypt", bcrypt.operation = operation);
    tokio::task::spawn_blocking(move || {
        let _permits = (admitted, running);
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let out = f();
        crate::observe::bcrypt(operation, started.elapsed());
        out
    })
    .await
    .map_err(Error::internal)?
    .map_err(Error::internal)
}

fn well_formed(s: &str) -> bool {
    if s.len() != KEY_LEN || !s.starts_with(PREFIX) {
        return false;
    }
    let body = &s[PREFIX.len()..];
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return false;
    }
    let (head, check) = s.split_at(KEY_LEN - 8);
    u32::from_str_radix(check, 16).is_ok_and(|c| c == crc32fast::hash(head.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = ApiKey::generate().expect("rng");
        let s = key.expose();
        assert_eq!(s.len(), 67);
        assert!(s.starts_with("uc_"));
        assert!(
            s[3..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(ApiKey::parse(s).is_some());
        assert_eq!(key.preview(), format!("{}...{}", &s[..8], &s[63..]));
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let key = ApiKey::generate().expect("rng");
        let mut s = key.expose().to_owned();
        let flipped = if s.as_bytes()[10] == b'a' { "b" } else { "a" };
        s.replace_range(10..11, flipped);
        assert!(ApiKey::parse(&s).is_none());
    }

    #[test]
    fn wrong_shapes_are_rejected() {
        let key = ApiKey::generate().expect("rng");
        let s = key.expose();
        assert!(ApiKey::parse(&s.to_uppercase()).is_none());
        assert!(ApiKey::parse(&s[..66]).is_none());
        assert!(ApiKey::parse(&format!("xx_{}", &s[3..])).is_none());
        assert!(ApiKey::parse("").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_bcrypt_work_is_refused_beyond_the_queue_not_queued() {
        let key = ApiKey::generate().expect("rng");
        let hash = bcrypt::hash(key.expose(), 8).expect("hash");
        let calls: Vec<_> = (0..MAX_WAITING * 4)
            .map(|_| {
                let (key, hash) = (key.clone(), hash.clone());
                tokio::spawn(async move { key.verify(&hash).await })
            })
            .collect();
        let (mut verified, mut refused) = (0, 0);
        for call in calls {
            match call.await.expect("join") {
                Ok(true) => verified += 1,
                Err(Error::Unavailable(m)) if m.contains("too many key checks") => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(refused > 0, "nothing was refused: the queue is unbounded");
        assert!(verified > 0, "nothing was verified");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_give_up_free_their_places_once_their_bcrypt_ends() {
        let key = ApiKey::generate().expect("rng");
        let hash = bcrypt::hash(key.expose(), 6).expect("hash");
        let calls: Vec<_> = (0..MAX_WAITING * 2)
            .map(|_| {
                let (key, hash) = (key.clone(), hash.clone());
                tokio::spawn(async move { key.verify(&hash).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        for call in &calls {
            call.abort();
        }
        // Work already handed to the blocking pool finishes; then every place is free again.
        let total =
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get) + MAX_WAITING;
        for _ in 0..500 {
            if SLOTS.admitted.available_permits() == total {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(SLOTS.admitted.available_permits(), total);
        assert!(key.verify(&hash).await.expect("a place is free"));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let key = ApiKey::generate().expect("rng");
        assert!(!format!("{key:?}").contains(key.expose()));
    }
}
