//! The domain's configuration: environment first (`KEYHOUSE_*`, `DATABASE_URL`), flags second.
//! Every default here is documented in the README's configuration table.

use zeroize::Zeroizing;

use crate::crypto::fernet_ring::{self, KeyRing};
use crate::error::{Error, Result};
use crate::outbound::{ALLOWED_NETWORKS_VAR, Allowed, Outbound};
use crate::platform_keys::EnvFallback;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://keyhouse.db?mode=rwc";
pub const DEFAULT_SCOPES: &str =
    "llm:inference,llm:models,keys:read,keys:manage,byok:manage,usage:read";
/// What a key grants when CreateKey names no permissions.
pub const DEFAULT_KEY_PERMISSIONS: &[&str] = &["llm:inference", "llm:models"];
pub const DEFAULT_EXPIRY_DAYS: i32 = 90;
pub const MAX_EXPIRY_DAYS: i32 = 3650;

/// What the capabilities need to run: the database, the key ring, provider access, the rules for
/// keys and the verification path. Every server binary flattens this into its own settings.
#[derive(clap::Args, Clone)]
pub struct Settings {
    /// Database to use: `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Fernet keys for secrets at rest, comma-separated: the first encrypts, all decrypt.
    #[arg(long, env = "KEYHOUSE_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<Secret>,

    /// Ops-Center's single encryption key, accepted as a one-key ring.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true, hide = true)]
    pub encryption_key: Option<Secret>,

    /// How long a live test of a user's provider key may take (seconds).
    #[arg(long, env = "KEYHOUSE_BYOK_TEST_TIMEOUT_SECS", default_value_t = 15)]
    pub byok_test_timeout_secs: u64,

    /// Provider base URLs as `name=url` pairs (comma-separated), for live key tests.
    #[arg(long, env = "KEYHOUSE_PROVIDER_BASE_URLS", value_delimiter = ',')]
    pub provider_base_urls: Vec<String>,

    /// Networks outbound requests may reach although they are not public (comma-separated
    /// CIDRs or addresses), e.g. `127.0.0.1/32` for an Ollama on the same host.
    #[arg(long, env = ALLOWED_NETWORKS_VAR, value_delimiter = ',')]
    pub outbound_allowed_networks: Vec<String>,

    /// Platform-key fallback values; `None` reads the catalog's variables from the environment.
    #[arg(skip)]
    pub platform_env: Option<EnvFallback>,

    #[command(flatten)]
    pub keys: KeyPolicy,

    #[command(flatten)]
    pub verify: VerifySettings,

    #[command(flatten)]
    pub health: HealthSettings,
}

/// Scheduled health checks of provider keys (platform keys, and BYOK keys whose owners opt in).
#[derive(clap::Args, Clone, Debug)]
pub struct HealthSettings {
    /// How often each key is live-tested (seconds), spread over the period with jitter; 0
    /// turns scheduled checks off (manual tests still record health).
    #[arg(long, env = "KEYHOUSE_HEALTH_CHECK_SECS", default_value_t = 3600)]
    pub check_secs: u64,
    /// The most scheduled tests of one provider's keys a replica starts in a minute; keys over
    /// it wait for the next minute.
    #[arg(
        long,
        env = "KEYHOUSE_HEALTH_CHECKS_PER_PROVIDER_PER_MINUTE",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub per_provider_per_minute: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            check_secs: 3600,
            per_provider_per_minute: 30,
        }
    }
}

/// The verification path: caches, limits, usage.
#[derive(clap::Args, Clone)]
pub struct VerifySettings {
    /// How long a cached verdict is trusted (seconds). Changes invalidate at once regardless.
    #[arg(long, env = "KEYHOUSE_VERIFY_CACHE_TTL_SECS", default_value_t = 300)]
    pub cache_ttl_secs: u64,
    /// Most keys kept in the verdict cache.
    #[arg(
        long,
        env = "KEYHOUSE_VERIFY_CACHE_MAX_ENTRIES",
        default_value_t = 1_000_000
    )]
    pub cache_max_entries: usize,
    /// How long an unknown key is remembered as unknown (seconds).
    #[arg(long, env = "KEYHOUSE_VERIFY_NEGATIVE_TTL_SECS", default_value_t = 30)]
    pub negative_cache_ttl_secs: u64,
    /// Most unknown keys remembered.
    #[arg(
        long,
        env = "KEYHOUSE_VERIFY_NEGATIVE_MAX_ENTRIES",
        default_value_t = 100_000
    )]
    pub negative_cache_max_entries: usize,
    /// Redis for rate limits shared by every replica; unset counts per replica.
    #[arg(long, env = "KEYHOUSE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How often usage counts are written (milliseconds).
    #[arg(long, env = "KEYHOUSE_USAGE_FLUSH_MILLIS", default_value_t = 5_000)]
    pub usage_flush_millis: u64,
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 300,
            cache_max_entries: 1_000_000,
            negative_cache_ttl_secs: 30,
            negative_cache_max_entries: 100_000,
            redis_url: None,
            usage_flush_millis: 5_000,
        }
    }
}

impl Settings {
    /// The defaults, on the given database: what tests and embedders start from.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            keys: KeyPolicy::default(),
            verify: VerifySettings::default(),
            health: HealthSettings::default(),
            encryption_keys: None,
            encryption_key: None,
            provider_base_urls: Vec::new(),
            byok_test_timeout_secs: 15,
            outbound_allowed_networks: Vec::new(),
            platform_env: None,
        }
    }
    /// The key ring from the environment, or `None` when none is configured. A malformed key
    /// is always an error.
    pub fn configured_key_ring(&self) -> Result<Option<KeyRing>> {
        match (&self.encryption_keys, &self.encryption_key) {
            (Some(keys), _) => KeyRing::parse(keys.expose(), fernet_ring::KEYS_VAR).map(Some),
            (None, Some(key)) => {
                KeyRing::parse(key.expose(), fernet_ring::LEGACY_KEY_VAR).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// The key ring, which the split services cannot start without.
    pub fn required_key_ring(&self) -> Result<KeyRing> {
        self.configured_key_ring()?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{} is not set: platform secrets and BYOK keys are encrypted with it; {}",
                fernet_ring::KEYS_VAR,
                fernet_ring::GENERATE_HINT
            ))
        })
    }

    /// The outbound guard; a network that does not parse is an error naming the variable.
    pub fn outbound(&self) -> Result<Outbound> {
        Outbound::new(Allowed::parse(&self.outbound_allowed_networks)?)
    }

    pub fn platform_env(&self) -> EnvFallback {
        self.platform_env
            .clone()
            .unwrap_or_else(EnvFallback::from_process)
    }
}

/// A secret taken from the environment or a flag: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

pub const DEFAULT_SESSION_MAX_TTL: &str = "30d";
pub const SESSION_MAX_TTL_VAR: &str = "KEYHOUSE_SESSION_MAX_TTL";

/// How long a session may live: `session create` refuses more, and the server lowers a stored
/// expiry that lies further ahead (a session made before the limit, or under a higher one).
#[derive(clap::Args, Clone, Debug)]
pub struct SessionPolicy {
    /// The longest a session may live, e.g. 12h or 30d.
    #[arg(
        long = "session-max-ttl",
        env = SESSION_MAX_TTL_VAR,
        default_value = DEFAULT_SESSION_MAX_TTL,
        value_parser = crate::duration::parse
    )]
    pub max_ttl: chrono::Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            max_ttl: chrono::Duration::days(30),
        }
    }
}

impl SessionPolicy {
    /// Refuses a lifetime over the limit, naming the limit and the setting that raises it.
    pub fn check_ttl(&self, ttl: chrono::Duration) -> Result<()> {
        if ttl > self.max_ttl {
            return Err(Error::invalid(
                "ttl",
                format!(
                    "ttl {} is longer than the longest a session may live, {}; \
                     {SESSION_MAX_TTL_VAR} (or --session-max-ttl) sets that limit",
                    crate::duration::format(ttl),
                    crate::duration::format(self.max_ttl),
                ),
            ));
        }
        Ok(())
    }
}

/// The rules for minting user API keys.
#[derive(clap::Args, Clone, Debug)]
pub struct KeyPolicy {
    /// bcrypt cost for stored key hashes (4-31). Lower it only in tests.
    #[arg(long, env = "KEYHOUSE_BCRYPT_COST", default_value_t = 12)]
    pub bcrypt_cost: u32,

    /// Allow keys that never expire (`expires_in_days` = 0).
    #[arg(
        long,
        env = "KEYHOUSE_ALLOW_NON_EXPIRING_KEYS",
        default_value_t = false
    )]
    pub allow_non_expiring_keys: bool,

    /// The scopes a key may be granted (comma-separated).
    #[arg(long, env = "KEYHOUSE_SCOPES", value_delimiter = ',', default_value = DEFAULT_SCOPES)]
    pub scopes: Vec<String>,

    /// Most active (unrevoked, unexpired) keys one user may hold.
    #[arg(long, env = "KEYHOUSE_MAX_ACTIVE_KEYS_PER_USER", default_value_t = 100)]
    pub max_active_keys_per_user: u64,

    /// Most keys one user may create in a minute.
    #[arg(
        long,
        env = "KEYHOUSE_MAX_KEY_CREATES_PER_MINUTE",
        default_value_t = 20
    )]
    pub max_key_creates_per_minute: u64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            bcrypt_cost: 12,
            allow_non_expiring_keys: false,
            scopes: DEFAULT_SCOPES.split(',').map(str::to_owned).collect(),
            max_active_keys_per_user: 100,
            max_key_creates_per_minute: 20,
        }
    }
}

impl KeyPolicy {
    /// Refuses a policy the service could not honour, at start-up rather than at first use.
    pub fn validate(&self) -> Result<()> {
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(Error::invalid(
                "KEYHOUSE_BCRYPT_COST",
                format!(
                    "KEYHOUSE_BCRYPT_COST must be between 4 and 31, got {}",
                    self.bcrypt_cost
                ),
            ));
        }
        if let Some(missing) = DEFAULT_KEY_PERMISSIONS
            .iter()
            .find(|d| !self.scopes.iter().any(|s| s == *d))
        {
            return Err(Error::invalid(
                "KEYHOUSE_SCOPES",
                format!("KEYHOUSE_SCOPES must include the default scope '{missing}'"),
            ));
        }
        // VerifyKey keeps a key's scopes as bits of one 64-bit word.
        if self.scopes.len() > 64 {
            return Err(Error::invalid(
                "KEYHOUSE_SCOPES",
                format!(
                    "KEYHOUSE_SCOPES may name at most 64 scopes, got {}",
                    self.scopes.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_limit_defaults_to_its_documented_value_and_names_its_setting() {
        let policy = SessionPolicy::default();
        assert_eq!(
            crate::duration::parse(DEFAULT_SESSION_MAX_TTL),
            Ok(policy.max_ttl)
        );
        assert!(policy.check_ttl(chrono::Duration::days(30)).is_ok());
        let refused = policy
            .check_ttl(chrono::Duration::days(31))
            .expect_err("over the limit");
        let message = refused.to_string();
        assert!(
            message.contains("31d")
                && message.contains("30d")
                && message.contains(SESSION_MAX_TTL_VAR),
            "{message}"
        );
    }
}

pub const OPS_CENTER_REDIS_URL_VAR: &str = "KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL";
pub const OPS_CENTER_PREFIX_VAR: &str = "KEYHOUSE_OPS_CENTER_SESSION_PREFIX";
pub const OPS_CENTER_ADMIN_GROUPS_VAR: &str = "KEYHOUSE_OPS_CENTER_ADMIN_GROUPS";
pub const OPS_CENTER_USER_GROUPS_VAR: &str = "KEYHOUSE_OPS_CENTER_USER_GROUPS";

/// Sign-in through Ops-Center's login: its sessions are read (never written) in its Redis.
#[derive(clap::Args, Clone, Debug)]
pub struct OpsCenterSessions {
    /// Ops-Center's session Redis (`redis://[:password@]host:port/db`); unset, only keyhouse's
    /// own sessions sign in.
    #[arg(
        long = "ops-center-session-redis-url",
        id = "ops_center_session_redis_url",
        env = OPS_CENTER_REDIS_URL_VAR,
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,

    /// The prefix of Ops-Center's session keys in that Redis.
    #[arg(
        long = "ops-center-session-prefix",
        id = "ops_center_session_prefix",
        env = OPS_CENTER_PREFIX_VAR,
        default_value = "session:"
    )]
    pub prefix: String,

    /// Groups or realm roles that make an Ops-Center user without a `role` an admin
    /// (comma-separated, compared exactly).
    #[arg(
        long = "ops-center-admin-groups",
        id = "ops_center_admin_groups",
        env = OPS_CENTER_ADMIN_GROUPS_VAR,
        value_delimiter = ','
    )]
    pub admin_groups: Vec<String>,

    /// Groups or realm roles that make an Ops-Center user without a `role` a user.
    #[arg(
        long = "ops-center-user-groups",
        id = "ops_center_user_groups",
        env = OPS_CENTER_USER_GROUPS_VAR,
        value_delimiter = ','
    )]
    pub user_groups: Vec<String>,
}

impl Default for OpsCenterSessions {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: "session:".to_owned(),
            admin_groups: Vec::new(),
            user_groups: Vec::new(),
        }
    }
}
