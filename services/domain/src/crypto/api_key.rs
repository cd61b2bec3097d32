//! User API keys: `uc_` + 64 lowercase hex. The first 56 hex are random (OS CSPRNG); the last
//! 8 are the CRC32 of everything before them, so a mistyped or forged key is rejected without
//! touching storage and secret scanners can recognise a real one.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

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
/// wait, and only while the wait they can expect is at most `MAX_WAIT`. Beyond either a call is
/// refused at once: no flood can queue unbounded work, and no caller waits so long that its
/// deadline is spent before its bcrypt runs (it would run for a caller who has gone). Both
/// permits travel into the blocking task: a caller that gives up does not free a slot while its
/// bcrypt still runs.
struct Slots {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// The permits `admitted` was made with: the queue's depth is this less those available.
    capacity: usize,
    /// The permits `running` has now (`set_running`).
    running_limit: AtomicUsize,
    /// A moving average of recent bcrypt run times, in nanoseconds (0: none yet).
    average_nanos: AtomicU64,
}

const MAX_WAITING: usize = 64;

/// The longest expected wait for a running slot a call is admitted to: well inside a caller's
/// usual deadline of seconds, so what is admitted is still wanted when it runs.
const MAX_WAIT: Duration = Duration::from_secs(1);

static SLOTS: LazyLock<Slots> = LazyLock::new(|| {
    Slots::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
});

impl Slots {
    fn new(running: usize) -> Self {
        Self {
            admitted: Arc::new(Semaphore::new(running + MAX_WAITING)),
            running: Arc::new(Semaphore::new(running)),
            capacity: running + MAX_WAITING,
            running_limit: AtomicUsize::new(running),
            average_nanos: AtomicU64::new(0),
        }
    }

    fn depth(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }

    /// Whether a call arriving now would wait longer than `MAX_WAIT`: each admitted call
    /// beyond those running is one average run ahead of it, shared among the running slots.
    fn wait_too_long(&self) -> bool {
        let running = self.running_limit.load(Ordering::Relaxed).max(1);
        let ahead = self.depth().saturating_sub(running);
        let average = self.average_nanos.load(Ordering::Relaxed);
        let expected = u128::from(average) * ahead as u128 / running as u128;
        expected > MAX_WAIT.as_nanos()
    }

    /// Folds one run's time into the average, an eighth at a time: recent enough to follow a
    /// change of cost or load, steady enough that one slow run does not close the queue.
    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .average_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(match avg {
                    0 => sample,
                    avg => avg - avg / 8 + sample / 8,
                })
            });
    }

    async fn set_running(&self, n: usize) {
        let n = n.max(1);
        let now = self.running_limit.swap(n, Ordering::Relaxed);
        if n > now {
            self.running.add_permits(n - now);
        } else if let Ok(taken) = self
            .running
            .acquire_many(u32::try_from(now - n).unwrap_or(u32::MAX))
            .await
        {
            taken.forget();
        }
    }
}

/// Sets how many bcrypt operations run at once (at least 1; one per core unless set), for
/// measuring what leaving a core to the cheap calls is worth. Lowering it waits until enough
/// running operations have ended.
pub async fn set_running(n: usize) {
    SLOTS.set_running(n).await;
}

/// An admitted operation's place in the queue; the queue's depth is reported when it is
/// taken and when it is given back, however the operation ends.
struct Place {
    slots: &'static Slots,
    permit: Option<OwnedSemaphorePermit>,
}

impl Place {
    fn take(slots: &'static Slots) -> Option<Self> {
        if slots.wait_too_long() {
            return None;
        }
        let permit = slots.admitted.clone().try_acquire_owned().ok()?;
        report_depth(slots);
        Some(Self {
            slots,
            permit: Some(permit),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        drop(self.permit.take());
        report_depth(self.slots);
    }
}

fn report_depth(slots: &Slots) {
    crate::observe::queue_depth("bcrypt", slots.depth());
}

/// Runs one bcrypt operation on the blocking pool, timed for the metrics and traced as a child
/// of the caller's span.
async fn on_blocking_pool<T: Send + 'static>(
    operation: &'static str,
    f: impl FnOnce() -> bcrypt::BcryptResult<T> + Send + 'static,
) -> Result<T> {
    run_in(&SLOTS, operation, f).await
}

async fn run_in<T: Send + 'static>(
    slots: &'static Slots,
    operation: &'static str,
    f: impl FnOnce() -> bcrypt::BcryptResult<T> + Send + 'static,
) -> Result<T> {
    let busy = || Error::Unavailable("too many key checks in progress; try again shortly".into());
    let admitted = Place::take(slots).ok_or_else(busy)?;
    let running = slots
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
        let took = started.elapsed();
        slots.record(took);
        crate::observe::bcrypt(operation, took);
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

    /// Slots of a test's own, so that other tests' bcrypt work does not move its numbers.
    fn own_slots(running: usize, average: Duration) -> &'static Slots {
        let slots = Box::leak(Box::new(Slots::new(running)));
        slots.average_nanos.store(
            u64::try_from(average.as_nanos()).expect("small"),
            Ordering::Relaxed,
        );
        slots
    }

    #[tokio::test]
    async fn a_call_that_would_wait_too_long_is_refused_at_once() {
        // One running slot and 400 ms a run: the 4th waiter would wait 1.2 s, over `MAX_WAIT`,
        // although the queue has room for 64.
        let slots = own_slots(1, Duration::from_millis(400));
        let places: Vec<_> = std::iter::from_fn(|| Place::take(slots))
            .take(100)
            .collect();
        assert_eq!(
            places.len(),
            4,
            "admitted while the expected wait was at most 1 s"
        );
        assert_eq!(slots.depth(), 4);

        let key = ApiKey::generate().expect("rng");
        let hash = bcrypt::hash(key.expose(), 4).expect("hash");
        let check = |slots| {
            let (key, hash) = (key.clone(), hash.clone());
            run_in(slots, "verify", move || bcrypt::verify(key.expose(), &hash))
        };
        match check(slots).await {
            Err(Error::Unavailable(m)) => assert!(m.contains("too many key checks"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // More running slots share the same queue: the wait each can expect is shorter.
        slots.set_running(2).await;
        assert!(
            Place::take(slots).is_some(),
            "two running slots: the 2 ahead wait 0.4 s"
        );
        drop(places);
        assert!(check(slots).await.expect("admitted once the queue drained"));
    }

    #[tokio::test]
    async fn the_expected_wait_follows_the_measured_run_times() {
        let slots = own_slots(1, Duration::ZERO);
        let key = ApiKey::generate().expect("rng");
        let hash = bcrypt::hash(key.expose(), 4).expect("hash");
        let (k, h) = (key.clone(), hash.clone());
        assert!(
            run_in(slots, "verify", move || bcrypt::verify(k.expose(), &h))
                .await
                .expect("verify")
        );
        assert!(
            slots.average_nanos.load(Ordering::Relaxed) > 0,
            "the run was measured"
        );
        // Unmeasured, a queue is bounded by its count alone: all 65 places are given.
        let fresh = own_slots(1, Duration::ZERO);
        let places: Vec<_> = std::iter::from_fn(|| Place::take(fresh))
            .take(100)
            .collect();
        assert_eq!(
            places.len(),
            1 + MAX_WAITING,
            "the count is still the hard cap"
        );
    }

    #[test]
    fn debug_never_prints_the_key() {
        let key = ApiKey::generate().expect("rng");
        assert!(!format!("{key:?}").contains(key.expose()));
    }
}
