//! A server binary's settings: where to listen, who may call from a browser, which internal
//! services hold tokens, whose OIDC tokens count, how to log, and the domain's own settings
//! flattened in. Environment first, flags second; every default is in the README's configuration
//! table.

use std::net::SocketAddr;

use keyhouse_domain::config::{OpsCenterSessions, SessionPolicy, Settings};

use crate::oidc::OidcSettings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8084";

#[derive(clap::Args, Clone)]
pub struct ServerSettings {
    /// Address to serve gRPC, grpc-web and REST on.
    #[arg(long, env = "KEYHOUSE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Origins allowed to call from a browser (comma-separated); none by default.
    #[arg(long, env = "KEYHOUSE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Internal services' tokens, comma-separated: `name=<SHA-256 of the token, hex>:Rpc+Rpc`,
    /// each bound to the RPCs it names (`keyhouse service-token create` makes one). Without
    /// `:Rpc+Rpc` a token may call every RPC that allows service tokens.
    #[arg(
        long,
        env = "KEYHOUSE_SERVICE_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub service_tokens: Vec<String>,

    /// How long a resolved session is remembered on this replica (seconds, never past the
    /// session's end, nor past its Redis key's TTL for Ops-Center's); 0 looks every call up. A
    /// session deleted from the table (or from Redis) works here until its entry lapses.
    #[arg(long, env = "KEYHOUSE_SESSION_CACHE_SECS", default_value_t = 5)]
    pub session_cache_secs: u64,

    /// How often expired sessions are deleted and expiries beyond the session limit lowered to
    /// it (seconds); also once at start.
    #[arg(long, env = "KEYHOUSE_SESSION_PURGE_SECS", default_value_t = 300)]
    pub session_purge_secs: u64,

    #[command(flatten)]
    pub sessions: SessionPolicy,

    #[command(flatten)]
    pub oidc: OidcSettings,

    #[command(flatten)]
    pub ops_center: OpsCenterSessions,

    /// The most client connections served at once; further clients wait to be accepted.
    #[arg(
        long,
        env = "KEYHOUSE_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// How long a new client may take to send its greeting (the HTTP/2 preface and SETTINGS, or
    /// a first byte), and an HTTP/1 client a request's headers, counted on a kept-alive
    /// connection from the previous answer (seconds), before its connection is closed.
    #[arg(
        long,
        env = "KEYHOUSE_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_secs: u64,

    /// After this many seconds a connection is asked to close (HTTP/2 GOAWAY, HTTP/1
    /// `Connection: close`) so clients reconnect and reach new replicas; 0 keeps connections.
    #[arg(long, env = "KEYHOUSE_MAX_CONNECTION_AGE_SECS", default_value_t = 0)]
    pub max_connection_age_secs: u64,

    /// How long calls on an aged connection may still run before it is cut (seconds).
    #[arg(
        long,
        env = "KEYHOUSE_MAX_CONNECTION_AGE_GRACE_SECS",
        default_value_t = 30
    )]
    pub max_connection_age_grace_secs: u64,

    /// Give the browser's cookies `Secure` always. Without it they get it when the OIDC login's
    /// redirect URL is https or the request says `X-Forwarded-Proto: https`; behind a TLS proxy
    /// that sends no such header, turn this on.
    #[arg(long, env = "KEYHOUSE_SECURE_COOKIES", default_value_t = false)]
    pub secure_cookies: bool,

    /// Log format: `pretty` or `json`.
    #[arg(
        long,
        env = "KEYHOUSE_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: crate::telemetry::LogFormat,

    #[command(flatten)]
    pub ext_authz: ExtAuthzSettings,

    #[command(flatten)]
    pub domain: Settings,
}

/// How Envoy's external authorization check (`envoy.service.auth.v3.Authorization/Check`) reads
/// the key from the request Envoy describes, and what it lets through upstream.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ExtAuthzSettings {
    /// One more request header that may carry the key, tried before `Authorization: Bearer`
    /// and `x-api-key` (a name like `x-llm-key`; case does not matter).
    #[arg(long, env = "KEYHOUSE_EXT_AUTHZ_KEY_HEADER")]
    pub key_header: Option<String>,

    /// Keep the header that carried the key on the request Envoy sends upstream; by default
    /// Envoy is told to remove it, so the `uc_` key never reaches the provider.
    #[arg(long, env = "KEYHOUSE_EXT_AUTHZ_FORWARD_KEY", default_value_t = false)]
    pub forward_key: bool,
}

impl ServerSettings {
    /// The defaults, on the given database: what tests and embedders start from.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
            cors_origins: Vec::new(),
            service_tokens: Vec::new(),
            session_cache_secs: 5,
            session_purge_secs: 300,
            sessions: SessionPolicy::default(),
            oidc: OidcSettings::default(),
            ops_center: OpsCenterSessions::default(),
            max_connections: 10_000,
            header_read_timeout_secs: 10,
            max_connection_age_secs: 0,
            max_connection_age_grace_secs: 30,
            secure_cookies: false,
            log_format: crate::telemetry::LogFormat::Pretty,
            ext_authz: ExtAuthzSettings::default(),
            domain: Settings::new(database_url),
        }
    }
}
