//! The one way a keyhouse server starts: settings in, the shared domain pieces built once (key
//! ring, database, change feed), each requested service mounted on them, then served until
//! shutdown. `keyhouse serve`, `user-key-service` and `platform-key-service` differ only in the
//! list of services and the deployment they pass; tests call `run` with a listener on port 0.

use std::future::Future;
use std::time::Duration;

use keyhouse_domain::change_feed::ChangeFeed;
use keyhouse_domain::crypto::fernet_ring::KeyRing;
use keyhouse_domain::storage::sessions;
use keyhouse_domain::{db, duration, identity};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::oidc::Oidc;
use crate::router::{self, Services};
use crate::session_cache::SessionCache;
use crate::settings::ServerSettings;
use crate::{key_file, metrics, telemetry};

pub use crate::router::BoxFuture;

/// How the process is deployed, which decides what it may do to the database and the key ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployment {
    /// `keyhouse serve`: migrates on start and, on SQLite with no key configured, keeps the
    /// encryption key in a file beside the database.
    Embedded,
    /// One service of a cluster: never migrates (a schema that is behind is refused, naming
    /// `keyhouse migrate`) and cannot start without a configured key ring.
    Split,
}

/// What every service is built on; made once per process.
pub struct Context {
    pub settings: ServerSettings,
    pub db: DatabaseConnection,
    pub feed: ChangeFeed,
    pub ring: KeyRing,
    /// Shared by every service's `Authenticator`: where session tokens are resolved, and the
    /// short cache in front of it.
    pub identity: identity::Sessions,
    pub sessions: SessionCache,
    /// The OIDC issuer whose bearer tokens are accepted, if one is configured; one key cache
    /// shared by every service's `Authenticator`.
    pub oidc: Option<Oidc>,
}

/// A service a binary can serve: it builds itself on the context and adds its gRPC service,
/// REST routes and OpenAPI paths to `services`.
pub trait Mount: Sync {
    fn mount<'a>(
        &'a self,
        ctx: &'a Context,
        services: &'a mut Services,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Serves `mounts` until `shutdown` resolves, then drains in-flight calls and runs each
/// service's shutdown work (usage counts are written before the process ends). A `shutdown`
/// that resolves during start-up (connecting, migrating) stops it there, and `run` returns
/// `Ok` without serving.
pub async fn run(
    settings: ServerSettings,
    deployment: Deployment,
    mounts: &[&dyn Mount],
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(shutdown);
    // Dropping the start-up mid-way is safe: every migration runs in a transaction.
    let (ctx, mut services) = tokio::select! {
        biased;
        () = &mut shutdown => {
            tracing::info!("shutdown requested during start-up; exiting without serving");
            return Ok(());
        }
        started = start(settings, deployment, mounts) => started?,
    };
    let _upkeep = AbortOnDrop(tokio::spawn(upkeep_sessions(
        ctx.db.clone(),
        ctx.settings.sessions.max_ttl,
        Duration::from_secs(ctx.settings.session_purge_secs.max(1)),
    )));
    let _background: Vec<AbortOnDrop> = std::mem::take(&mut services.background)
        .into_iter()
        .map(|task| AbortOnDrop(tokio::spawn(task)))
        .collect();
    let after = std::mem::take(&mut services.on_shutdown);
    let feed = ctx.feed.clone();
    let shutdown = async move {
        shutdown.await;
        feed.close();
    };
    let served = router::serve(listener, services, &ctx.settings, shutdown).await;
    for work in after {
        work.await?;
    }
    served
}

/// Everything before serving: key ring, database (migrated or checked), change feed, and each
/// service mounted on them.
async fn start(
    settings: ServerSettings,
    deployment: Deployment,
    mounts: &[&dyn Mount],
) -> anyhow::Result<(Context, Services)> {
    settings.domain.keys.validate()?;
    let oidc = settings.oidc.build()?;
    // Secrets are encrypted with the ring: refuse to start without one, not at first use.
    let ring = match deployment {
        Deployment::Embedded => key_file::key_ring(&settings.domain, true)?,
        Deployment::Split => settings.domain.required_key_ring()?,
    };
    let url = &settings.domain.database_url;
    let db = db::connect(url).await?;
    match deployment {
        Deployment::Embedded => {
            let applied = db::migrate(&db).await?;
            if applied > 0 {
                tracing::info!(applied, database = %db::redact_url(url), "database migrated");
            }
        }
        Deployment::Split => db::ensure_schema_current(&db).await?,
    }
    metrics::install_observer();
    let feed = ChangeFeed::start(&db, url).await?;
    let mut services = Services::new(db.clone());
    let sessions = SessionCache::new(Duration::from_secs(settings.session_cache_secs));
    let identity = identity::Sessions::start(db.clone(), &settings.ops_center).await?;
    let ctx = Context {
        settings,
        identity,
        db,
        feed,
        ring,
        sessions,
        oidc,
    };
    for mount in mounts {
        mount.mount(&ctx, &mut services).await?;
    }
    // Every binary signs browsers in: the callback may land on any replica.
    services.rest = std::mem::take(&mut services.rest).merge(crate::login::router(&ctx));
    Ok((ctx, services))
}

/// Deletes expired sessions and brings expiries beyond the session limit down to it, at start
/// and then every `every`. Each replica does it; a pass repeated elsewhere changes nothing.
async fn upkeep_sessions(db: DatabaseConnection, max_ttl: chrono::Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sessions::cap_expiry(&db, max_ttl).await {
            Ok(0) => {}
            Ok(capped) => tracing::info!(
                capped,
                max_ttl = %duration::format(max_ttl),
                "sessions that would outlive the session limit now end at it"
            ),
            Err(e) => {
                tracing::warn!(error = ?e, "capping session expiries failed; next pass retries")
            }
        }
        match sessions::purge_expired(&db).await {
            Ok(0) => tracing::debug!(purged = 0, "no expired sessions to purge"),
            Ok(purged) => tracing::info!(purged, "expired sessions purged"),
            Err(e) => {
                tracing::warn!(error = ?e, "purging expired sessions failed; next pass retries")
            }
        }
    }
}

/// Ends a background task with the server that started it, however `run` ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A binary's whole `main`: logging and traces, the listener, `run`, and one clear line on
/// failure with a non-zero exit. `shutdown` is `shutdown_signal()`, taken by the binary before
/// anything else so that a stop during start-up is heard too.
pub async fn main(
    name: &'static str,
    settings: ServerSettings,
    deployment: Deployment,
    mounts: &[&dyn Mount],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::process::ExitCode {
    exit_on_error(
        async {
            let _telemetry = telemetry::init(settings.log_format, name)?;
            let listener = bind(&settings).await?;
            run(settings, deployment, mounts, listener, shutdown).await
        }
        .await,
    )
}

/// Binds the configured address, saying which one failed when it cannot.
pub async fn bind(settings: &ServerSettings) -> anyhow::Result<TcpListener> {
    TcpListener::bind(settings.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (KEYHOUSE_LISTEN): {e}",
            settings.listen
        )
    })
}

/// Ends a command: logs a failure in one clear line and exits non-zero. The message is also
/// printed to stderr so that it shows even with logging turned off.
pub fn exit_on_error(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM (what Kubernetes and systemd send). The handlers are
/// installed when this is called, not when it is first awaited: from then on the signals no
/// longer end the process on the spot, they start a clean shutdown. Call it first in `main`.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            // Without a handler the default action stays, which also ends the process.
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(int, "SIGINT") => tracing::info!("SIGINT received, shutting down"),
                () = wait(term, "SIGTERM") => tracing::info!("SIGTERM received, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("ctrl-c received, shutting down");
    }
}
