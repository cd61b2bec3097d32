//! Crashes: `kill -9` of `keyhouse serve` under a mixed write load from several users, and of
//! `keyhouse encryption rotate` and `keyhouse migrate` part way through. Every write a client
//! was told succeeded is there after the restart, whole, with its audit event; every stored
//! secret stays readable with the ring the server would use.

use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhouse_domain::crypto::api_key::ApiKey;
use keyhouse_domain::crypto::fernet_ring::{KeyRing, binding};
use keyhouse_domain::crypto::key_tag::KeyTagger;
use keyhouse_domain::entities::{
    platform_key_versions, platform_settings, user_api_keys, user_provider_keys,
};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_client::PlatformKeyServiceClient;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use pb::verify_key_response::Reason;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use sha2::Digest;

use crate::binary::{self, Keyhouse};
use crate::on_both_databases;
use crate::support::{Backend, TempDir, TestDb};
use crate::verify::{named, verify};

on_both_databases!(
    acknowledged_writes_survive_kill_9,
    interrupted_rotate_leaves_every_secret_readable,
    an_interrupted_migrate_finishes_when_run_again,
);

/// Fixed, so a failure replays; printed with every failure message that depends on it.
const SEED: u64 = 0x6b68_5f63_7261_7368;
const KILLS: usize = 5;
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const GATEWAY_TOKEN: &str = "svc_gateway_crash_0123456789abcdef";
const PLATFORM_KEY: &str = "openrouter";

/// xorshift64*: enough to spread kill points and operations, and the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn seed_for(backend: Backend) -> u64 {
    SEED ^ if backend == Backend::Sqlite { 1 } else { 2 }
}

#[derive(Clone)]
struct Key {
    user: String,
    secret: String,
    /// Secrets replaced by an acknowledged regenerate: never valid again.
    old: Vec<String>,
    revoked: bool,
    /// A revoke or regenerate was sent but not answered: the key's state is one of two.
    uncertain: bool,
}

/// A value a client set: the last acknowledged one, and one sent after it but not answered.
#[derive(Clone, Default)]
struct Latest {
    acked: Option<String>,
    pending: Option<String>,
}

impl Latest {
    fn allows(&self, found: &str) -> bool {
        self.acked.as_deref() == Some(found) || self.pending.as_deref() == Some(found)
    }
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    keys: HashMap<String, Key>,
    /// (action, actor, target) of every acknowledged change.
    events: Vec<(String, String, String)>,
    platform: Latest,
    byok: HashMap<String, Latest>,
    writes: usize,
}

struct Crashing {
    keyhouse: Keyhouse,
    /// The ring's one key, as KEYHOUSE_ENCRYPTION_KEYS holds it.
    key: String,
    ring: KeyRing,
    conn: DatabaseConnection,
    _db: TestDb,
}

impl Crashing {
    async fn new(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let key = KeyRing::generate_key();
        let digest = hex::encode(sha2::Sha256::digest(GATEWAY_TOKEN.as_bytes()));
        let keyhouse = Keyhouse::on(TempDir::new(), db.url.clone())
            .env("KEYHOUSE_ENCRYPTION_KEYS", &key)
            .env("KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE", "1000000")
            .env("KEYHOUSE_MAX_ACTIVE_KEYS_PER_USER", "1000000")
            .env("KEYHOUSE_USAGE_FLUSH_MILLIS", "20")
            .env("KEYHOUSE_SERVICE_TOKENS", &format!("gateway={digest}"))
            .env("KEYHOUSE_LOG", "info");
        // Serving once migrates the database, so the test can read it.
        let (child, _) = keyhouse.serve().await;
        kill_9(child).await;
        Self {
            conn: db.connect().await,
            ring: KeyRing::parse(&key, "the test's key").expect("a ring"),
            key,
            keyhouse,
            _db: db,
        }
    }
}

async fn kill_9(mut child: Child) {
    // `Child::kill` is SIGKILL on Unix: no shutdown hook, no final flush.
    child.kill().expect("kill -9");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
}

type Client<I> = UserKeyServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, I>,
>;

async fn user_client(
    addr: &str,
    token: &str,
) -> Client<impl tonic::service::Interceptor + Clone + use<>> {
    UserKeyServiceClient::with_interceptor(binary::channel(addr).await, binary::bearer(token))
}

/// One user's writes until `stop`: creates, revokes, regenerates and BYOK puts, each recorded
/// only once answered. A call that fails must have been cut off by the kill.
async fn user_load(
    addr: String,
    user: String,
    token: String,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed);
    let mut client = user_client(&addr, &token).await;
    let mut counter = 0u64;
    while !stop.load(Ordering::SeqCst) {
        counter += 1;
        let mine: Vec<String> = {
            let ledger = ledger.lock().expect("the ledger");
            let mut ids: Vec<String> = ledger
                .keys
                .iter()
                .filter(|(_, k)| k.user == user && !k.revoked && !k.uncertain)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids
        };
        let op = rng.below(10);
        let failed = match op {
            _ if op < 4 || mine.is_empty() => {
                match client.create_key(named(&format!("k{counter}"))).await {
                    Ok(issued) => {
                        let issued = issued.into_inner();
                        let mut ledger = ledger.lock().expect("the ledger");
                        ledger.events.push((
                            "user_key.create".into(),
                            user.clone(),
                            issued.key_id.clone(),
                        ));
                        ledger.keys.insert(
                            issued.key_id,
                            Key {
                                user: user.clone(),
                                secret: issued.api_key,
                                old: Vec::new(),
                                revoked: false,
                                uncertain: false,
                            },
                        );
                        ledger.writes += 1;
                        None
                    }
                    Err(status) => Some(status),
                }
            }
            4 | 5 => {
                let id = mine[rng.below(mine.len() as u64) as usize].clone();
                let answer = client
                    .revoke_key(pb::RevokeKeyRequest { key_id: id.clone() })
                    .await;
                let mut ledger = ledger.lock().expect("the ledger");
                match answer {
                    Ok(_) => {
                        ledger.keys.get_mut(&id).expect("known").revoked = true;
                        ledger
                            .events
                            .push(("user_key.revoke".into(), user.clone(), id));
                        ledger.writes += 1;
                        None
                    }
                    Err(status) => {
                        ledger.keys.get_mut(&id).expect("known").uncertain = true;
                        Some(status)
                    }
                }
            }
            6 | 7 => {
                let id = mine[rng.below(mine.len() as u64) as usize].clone();
                let answer = client
                    .regenerate_key(pb::RegenerateKeyRequest {
                        key_id: id.clone(),
                        expires_in_days: None,
                    })
                    .await;
                let mut ledger = ledger.lock().expect("the ledger");
                match answer {
                    Ok(issued) => {
                        let issued = issued.into_inner();
                        assert_eq!(issued.key_id, id, "regenerate keeps the key's id");
                        let key = ledger.keys.get_mut(&id).expect("known");
                        let old = std::mem::replace(&mut key.secret, issued.api_key);
                        key.old.push(old);
                        ledger
                            .events
                            .push(("user_key.regenerate".into(), user.clone(), id));
                        ledger.writes += 1;
                        None
                    }
                    Err(status) => {
                        ledger.keys.get_mut(&id).expect("known").uncertain = true;
                        Some(status)
                    }
                }
            }
            _ => {
                let value = format!("sk-proj-{user}-{seed:x}-{counter:08}");
                ledger
                    .lock()
                    .expect("the ledger")
                    .byok
                    .entry(user.clone())
                    .or_default()
                    .pending = Some(value.clone());
                let answer = client
                    .put_provider_key(pb::PutProviderKeyRequest {
                        provider: "openai".into(),
                        key: value.clone(),
                        ..Default::default()
                    })
                    .await;
                match answer {
                    Ok(_) => {
                        let mut ledger = ledger.lock().expect("the ledger");
                        ledger.byok.insert(
                            user.clone(),
                            Latest {
                                acked: Some(value),
                                pending: None,
                            },
                        );
                        ledger.events.push((
                            "provider_key.put".into(),
                            user.clone(),
                            "openai".into(),
                        ));
                        ledger.writes += 1;
                        None
                    }
                    Err(status) => Some(status),
                }
            }
        };
        if let Some(status) = failed {
            assert!(
                stop.load(Ordering::SeqCst),
                "{user}: a write failed before the kill (seed {SEED:#x}): {status:?}"
            );
            return;
        }
    }
}

/// The admin's platform-key updates until `stop`.
async fn platform_load(
    addr: String,
    token: String,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut client = PlatformKeyServiceClient::with_interceptor(
        binary::channel(&addr).await,
        binary::bearer(&token),
    );
    let mut counter = 0u64;
    while !stop.load(Ordering::SeqCst) {
        counter += 1;
        let value = format!("sk-or-v1-{:016x}{counter:016x}", seed);
        ledger.lock().expect("the ledger").platform.pending = Some(value.clone());
        let answer = client
            .update_platform_key(pb::UpdatePlatformKeyRequest {
                name: PLATFORM_KEY.into(),
                api_key: value.clone(),
            })
            .await;
        match answer {
            Ok(_) => {
                let mut ledger = ledger.lock().expect("the ledger");
                ledger.platform = Latest {
                    acked: Some(value),
                    pending: None,
                };
                ledger.events.push((
                    "platform_key.update".into(),
                    "root".into(),
                    PLATFORM_KEY.into(),
                ));
                ledger.writes += 1;
            }
            Err(status) => {
                assert!(
                    stop.load(Ordering::SeqCst),
                    "a platform-key update failed before the kill (seed {SEED:#x}): {status:?}"
                );
                return;
            }
        }
    }
}

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let crashing = Crashing::new(backend).await;
    let keyhouse = &crashing.keyhouse;
    let tokens: Vec<String> = USERS.iter().map(|u| keyhouse.session(u, "user")).collect();
    let admin = keyhouse.session("root", "admin");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng::new(seed_for(backend));

    for round in 0..KILLS {
        let (child, addr) = keyhouse.serve().await;
        let view = ledger.lock().expect("the ledger").clone_view();
        check(&crashing, &addr, &admin, &view, round).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for (i, (user, token)) in USERS.iter().zip(&tokens).enumerate() {
            load.push(tokio::spawn(user_load(
                addr.clone(),
                (*user).to_owned(),
                token.clone(),
                seed_for(backend) + (round * 10 + i) as u64,
                ledger.clone(),
                stop.clone(),
            )));
        }
        load.push(tokio::spawn(platform_load(
            addr.clone(),
            admin.clone(),
            seed_for(backend) + round as u64,
            ledger.clone(),
            stop.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(300 + rng.below(900))).await;
        stop.store(true, Ordering::SeqCst);
        kill_9(child).await;
        for task in load {
            task.await.expect("a load task panicked");
        }
    }
    let (child, addr) = keyhouse.serve().await;
    let view = ledger.lock().expect("the ledger").clone_view();
    check(&crashing, &addr, &admin, &view, KILLS).await;
    let revoked = view.keys.values().filter(|k| k.revoked).count();
    let regenerated = view.keys.values().filter(|k| !k.old.is_empty()).count();
    assert!(
        view.keys.len() >= 10
            && revoked > 0
            && regenerated > 0
            && view.platform.acked.is_some()
            && !view.byok.is_empty(),
        "the load made too few writes to mean anything: {} keys, {revoked} revoked, {regenerated} regenerated",
        view.keys.len()
    );
    usage_lost_only_since_the_last_flush(&crashing, child, &addr, &tokens[0]).await;
}

struct View {
    keys: HashMap<String, Key>,
    events: Vec<(String, String, String)>,
    platform: Latest,
    byok: HashMap<String, Latest>,
}

impl Ledger {
    fn clone_view(&self) -> View {
        View {
            keys: self.keys.clone(),
            events: self.events.clone(),
            platform: self.platform.clone(),
            byok: self.byok.clone(),
        }
    }
}

/// Everything acknowledged before the last kill, seen through the restarted server and in the
/// rows themselves.
async fn check(crashing: &Crashing, addr: &str, admin: &str, view: &View, round: usize) {
    let context = format!("after kill {round} (seed {SEED:#x})");
    let mut gateway = UserKeyServiceClient::new(binary::channel(addr).await);
    for (id, key) in view.keys.iter().filter(|(_, k)| !k.uncertain) {
        let answer = gateway
            .verify_key(verify(&key.secret, &[], ""))
            .await
            .expect("verify")
            .into_inner();
        if key.revoked {
            assert_eq!(
                answer.reason(),
                Reason::Revoked,
                "{context}: revoked key {id}"
            );
        } else {
            assert!(answer.valid, "{context}: key {id}: {:?}", answer.reason());
            assert_eq!(answer.key_id, *id);
        }
        for old in &key.old {
            let answer = gateway
                .verify_key(verify(old, &[], ""))
                .await
                .expect("verify")
                .into_inner();
            assert!(
                !answer.valid,
                "{context}: key {id}'s replaced secret verifies"
            );
        }
    }

    // No half-written key row: each one's hash, prefix, last four and tag belong together.
    let tagger = KeyTagger::from_ring(&crashing.ring);
    let rows = user_api_keys::Entity::find()
        .all(&crashing.conn)
        .await
        .expect("read user_api_keys");
    for row in &rows {
        assert!(
            row.key_prefix.len() == 15
                && row.key_prefix.starts_with("uc_")
                && row.key_last4.len() == 4
                && row.key_hash.starts_with("$2")
                && row.key_hash.len() == 60,
            "{context}: a half-written key row {}",
            row.id
        );
        assert_eq!(
            row.is_active,
            row.revoked_at.is_none(),
            "{context}: key row {} is revoked by half",
            row.id
        );
        let Some(key) = view.keys.get(&row.id.to_string()) else {
            continue;
        };
        if key.uncertain {
            continue;
        }
        let secret = ApiKey::parse(&key.secret).expect("an issued key parses");
        assert_eq!(
            row.key_prefix,
            secret.lookup_prefix(),
            "{context}: {}",
            row.id
        );
        assert_eq!(row.key_last4, secret.last4(), "{context}: {}", row.id);
        assert_eq!(
            row.key_tag.as_deref(),
            Some(tagger.tag(&secret).as_str()),
            "{context}: {}",
            row.id
        );
        assert!(
            bcrypt::verify(&key.secret, &row.key_hash).expect("a bcrypt hash"),
            "{context}: key row {}'s hash is not its secret's",
            row.id
        );
        assert_eq!(
            row.revoked_at.is_some(),
            key.revoked,
            "{context}: {}",
            row.id
        );
    }
    for id in view.keys.keys() {
        assert!(
            rows.iter().any(|r| r.id.to_string() == *id),
            "{context}: acknowledged key {id} is gone"
        );
    }
    let unreadable = unreadable_secrets(&crashing.conn, &crashing.ring).await;
    assert!(
        unreadable.is_empty(),
        "{context}: unreadable secrets {unreadable:?}"
    );

    // Platform key and BYOK keys: the last acknowledged value, or the one cut off after it.
    let mut platform = PlatformKeyServiceClient::with_interceptor(
        binary::channel(addr).await,
        binary::bearer(admin),
    );
    if view.platform.acked.is_some() || view.platform.pending.is_some() {
        let found = platform
            .get_decrypted_platform_key(pb::GetDecryptedPlatformKeyRequest {
                name: PLATFORM_KEY.into(),
                reason: "crash test".into(),
            })
            .await;
        match found {
            Ok(found) => assert!(
                view.platform.allows(&found.get_ref().api_key),
                "{context}: the platform key is not an acknowledged value"
            ),
            Err(status) => assert!(
                view.platform.acked.is_none() && status.code() == tonic::Code::NotFound,
                "{context}: the acknowledged platform key is gone: {status:?}"
            ),
        }
    }
    for (user, latest) in &view.byok {
        let mut req = tonic::Request::new(pb::GetProviderKeyForUserRequest {
            user_id: user.clone(),
            provider: "openai".into(),
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {GATEWAY_TOKEN}").parse().expect("ascii"),
        );
        match gateway.get_provider_key_for_user(req).await {
            Ok(found) => assert!(
                latest.allows(&found.get_ref().api_key),
                "{context}: {user}'s provider key is not an acknowledged value"
            ),
            Err(status) => assert!(
                latest.acked.is_none() && status.code() == tonic::Code::NotFound,
                "{context}: {user}'s acknowledged provider key is gone: {status:?}"
            ),
        }
    }

    // An audit event for every acknowledged change.
    let mut found: HashMap<(String, String, String), usize> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = platform
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("audit events")
            .into_inner();
        for e in page.events {
            *found.entry((e.action, e.actor, e.target)).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut wanted: HashMap<&(String, String, String), usize> = HashMap::new();
    for event in &view.events {
        *wanted.entry(event).or_default() += 1;
    }
    for (event, n) in wanted {
        let have = found.get(event).copied().unwrap_or(0);
        assert!(
            have >= n,
            "{context}: {n} acknowledged {event:?}, {have} audit events"
        );
    }
}

/// Every stored secret row, decrypted with `ring`; the rows that do not decrypt.
async fn unreadable_secrets(conn: &DatabaseConnection, ring: &KeyRing) -> Vec<String> {
    let mut bad = Vec::new();
    for row in platform_settings::Entity::find()
        .all(conn)
        .await
        .expect("read platform_settings")
        .into_iter()
        .filter(|r| r.is_secret)
    {
        if ring
            .decrypt_bound(&binding::platform(&row.key), &row.value)
            .is_err()
        {
            bad.push(format!("platform_settings {}", row.key));
        }
    }
    for row in platform_key_versions::Entity::find()
        .all(conn)
        .await
        .expect("read platform_key_versions")
    {
        if ring
            .decrypt_bound(&binding::platform(&row.name), &row.ciphertext)
            .is_err()
        {
            bad.push(format!(
                "platform_key_versions {} v{}",
                row.name, row.version
            ));
        }
    }
    for row in user_provider_keys::Entity::find()
        .all(conn)
        .await
        .expect("read user_provider_keys")
    {
        if ring
            .decrypt_bound(&binding::byok(&row.user_id, &row.provider), &row.ciphertext)
            .is_err()
        {
            bad.push(format!("user_provider_keys {}", row.id));
        }
    }
    bad
}

/// Usage is written behind. Asserted: counts a read has shown as written survive the kill;
/// nothing is counted twice; and what is lost is at most the verifications made after that
/// read, i.e. after the last flush the test saw (here `AFTER` of them).
async fn usage_lost_only_since_the_last_flush(
    crashing: &Crashing,
    child: Child,
    addr: &str,
    token: &str,
) {
    const BEFORE: i64 = 25;
    const AFTER: i64 = 25;
    let mut client = user_client(addr, token).await;
    let key = client
        .create_key(named("counted"))
        .await
        .expect("create")
        .into_inner();
    let mut gateway = UserKeyServiceClient::new(binary::channel(addr).await);
    for _ in 0..BEFORE {
        assert!(
            gateway
                .verify_key(verify(&key.api_key, &[], ""))
                .await
                .expect("verify")
                .into_inner()
                .valid
        );
    }
    let mut written = 0;
    for _ in 0..400 {
        written = usage(addr, token, &key.key_id).await.total_requests;
        if written == BEFORE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(written, BEFORE, "usage was never flushed");
    for _ in 0..AFTER {
        assert!(
            gateway
                .verify_key(verify(&key.api_key, &[], ""))
                .await
                .expect("verify")
                .into_inner()
                .valid
        );
    }
    kill_9(child).await;
    let (child, addr) = crashing.keyhouse.serve().await;
    let after = usage(&addr, token, &key.key_id).await;
    let hourly: i64 = after.hours.iter().map(|h| h.requests).sum();
    assert_eq!(
        hourly, after.total_requests,
        "hourly counts add up to the total"
    );
    assert!(
        (BEFORE..=BEFORE + AFTER).contains(&after.total_requests),
        "{} requests counted after the kill; {BEFORE} were written before it and {AFTER} more made",
        after.total_requests
    );
    kill_9(child).await;
}

async fn usage(addr: &str, token: &str, key_id: &str) -> pb::GetKeyUsageResponse {
    user_client(addr, token)
        .await
        .get_key_usage(pb::GetKeyUsageRequest {
            key_id: key_id.into(),
            ..Default::default()
        })
        .await
        .expect("usage")
        .into_inner()
}

/// Many BYOK rows under an old key, `rotate` to a new one killed after a random delay, then run
/// again: every row decrypts with the ring `old` + `new` throughout, and with `new` alone at the
/// end.
async fn interrupted_rotate_leaves_every_secret_readable(backend: Backend) {
    const ROWS: usize = 3000;
    let crashing = Crashing::new(backend).await;
    let old = &crashing.ring;
    let now = chrono::Utc::now();
    let rows: Vec<user_provider_keys::ActiveModel> = (0..ROWS)
        .map(|i| {
            let user = format!("user{i:05}");
            user_provider_keys::ActiveModel {
                id: Set(uuid::Uuid::new_v4()),
                ciphertext: Set(old.encrypt_bound(
                    &binding::byok(&user, "openai"),
                    &format!("sk-proj-{user}-0123456789"),
                )),
                user_id: Set(user),
                provider: Set("openai".into()),
                key_preview: Set("sk-proj-...6789".into()),
                label: Set(None),
                endpoint: Set(None),
                added_at: Set(now),
                updated_at: Set(now),
                last_tested: Set(None),
                test_status: Set("unknown".into()),
                test_message: Set(None),
                health_checks: Set(false),
            }
        })
        .collect();
    for chunk in rows.chunks(200) {
        user_provider_keys::Entity::insert_many(chunk.to_vec())
            .exec(&crashing.conn)
            .await
            .expect("insert");
    }
    let new_key = KeyRing::generate_key();
    let both = format!("{new_key},{}", crashing.key);
    let ring = KeyRing::parse(&both, "both").expect("ring");
    let new = KeyRing::parse(&new_key, "new").expect("ring");
    let mut rng = Rng::new(seed_for(backend));
    let rotate = |keys: &str| {
        let mut cmd = crashing
            .keyhouse
            .command(&["encryption", "rotate", "--batch-size", "50"]);
        cmd.env("KEYHOUSE_ENCRYPTION_KEYS", keys)
            .stdout(std::process::Stdio::null());
        cmd
    };
    for kill in 0..3 {
        let child = rotate(&both).spawn().expect("rotate");
        // PostgreSQL's rotate takes longer to start; both are killed part way through.
        let first = if backend == Backend::Sqlite { 50 } else { 400 };
        tokio::time::sleep(Duration::from_millis(first + rng.below(400))).await;
        kill_9(child).await;
        let unreadable = unreadable_secrets(&crashing.conn, &ring).await;
        assert!(
            unreadable.is_empty(),
            "after kill {kill} of rotate (seed {SEED:#x}): {} rows unreadable, e.g. {:?}",
            unreadable.len(),
            unreadable.first()
        );
    }
    let status = rotate(&both).status().expect("rotate");
    assert!(
        status.success(),
        "rotate run again: {status}; log:\n{}",
        crashing.keyhouse.log_text()
    );
    let unreadable = unreadable_secrets(&crashing.conn, &new).await;
    assert!(
        unreadable.is_empty(),
        "after rotate finished, {} rows need the old key, e.g. {:?}",
        unreadable.len(),
        unreadable.first()
    );
    let count = user_provider_keys::Entity::find()
        .all(&crashing.conn)
        .await
        .expect("read")
        .len();
    assert_eq!(count, ROWS, "rotate added or lost rows");
}

/// `migrate` on a fresh database, killed at points spread over a whole run, then run again:
/// it finishes, and the server starts on the result.
async fn an_interrupted_migrate_finishes_when_run_again(backend: Backend) {
    let mut rng = Rng::new(seed_for(backend));
    // How long a whole run takes here, only to spread the kill points over it.
    let whole = {
        let db = TestDb::new(backend).await;
        let keyhouse = Keyhouse::on(TempDir::new(), db.url.clone());
        let started = std::time::Instant::now();
        keyhouse.run(&["migrate"]);
        started.elapsed()
    };
    // The migrations themselves run in the last few milliseconds, after the process starts: half
    // the kill points fall in the last quarter of the run.
    for kill in 0..12u32 {
        let db = TestDb::new(backend).await;
        let keyhouse = Keyhouse::on(TempDir::new(), db.url.clone())
            .env("KEYHOUSE_ENCRYPTION_KEYS", &KeyRing::generate_key());
        let child = keyhouse
            .command(&["migrate"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("migrate");
        let from = if kill < 6 {
            f64::from(kill) / 6.0
        } else {
            0.75 + f64::from(kill - 6) / 24.0
        };
        let at = whole.mul_f64(from)
            + Duration::from_millis(rng.below(1 + whole.as_millis() as u64 / 24));
        tokio::time::sleep(at).await;
        kill_9(child).await;
        let rerun = keyhouse.command(&["migrate"]).output().expect("migrate");
        assert!(
            rerun.status.success(),
            "migrate killed after {at:?} (seed {SEED:#x}) does not finish when run again; log:\n{}",
            keyhouse.log_text()
        );
        let (child, _) = keyhouse.serve().await;
        kill_9(child).await;
    }
}
