//! Connecting to SQLite or PostgreSQL, keeping the schema in step with this build, and the
//! circuit breaker that answers at once while PostgreSQL is known to be down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use keyhouse_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::error::{Error, Result};

/// How long a call waits for a pooled connection. With PostgreSQL down the pool keeps retrying
/// until then, so this is how long the first call of an outage waits before the breaker opens.
pub const ACQUIRE_TIMEOUT_VAR: &str = "KEYHOUSE_DB_ACQUIRE_TIMEOUT_MS";
const DEFAULT_ACQUIRE_TIMEOUT_MS: u64 = 1_500;

fn acquire_timeout(setting: Option<String>) -> Result<Duration> {
    match setting {
        None => Ok(Duration::from_millis(DEFAULT_ACQUIRE_TIMEOUT_MS)),
        Some(text) => match text.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(Error::FailedPrecondition(format!(
                "{ACQUIRE_TIMEOUT_VAR} must be a whole number of milliseconds above 0, not {text:?}"
            ))),
        },
    }
}

pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url);
    // Query text is logged by nobody: statements can hold identifying values.
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(acquire_timeout(std::env::var(ACQUIRE_TIMEOUT_VAR).ok())?);
    if url.starts_with("sqlite:") {
        // WAL lets readers run beside the one writer; the busy timeout makes a second process
        // on the same file (an operator command beside `keyhouse serve`) wait instead of fail.
        opts.max_connections(8).map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    let db = Database::connect(opts).await.map_err(|e| {
        Error::Unavailable(format!(
            "cannot connect to the database ({}): {e}",
            redact_url(url)
        ))
    })?;
    Ok(db)
}

/// Starts a transaction that will write. On SQLite it takes the write lock at once, so that a
/// concurrent writer waits for it (up to the busy timeout) instead of failing when this one,
/// having read first, tries to write over a newer snapshot.
pub async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    guarded(db, async {
        Ok(db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?)
    })
    .await
}

/// Runs `op`, which takes a connection from `db`'s pool, behind the database's circuit breaker.
/// While PostgreSQL is known to be down it answers `Unavailable` at once without touching the
/// pool, instead of making every caller wait out the acquire timeout; a failure to reach the
/// database opens the breaker, and a background probe closes it when the database answers.
pub async fn guarded<T>(db: &DatabaseConnection, op: impl Future<Output = Result<T>>) -> Result<T> {
    let Some(breaker) = Breaker::of(db) else {
        return op.await;
    };
    if breaker.open.load(Ordering::Acquire) {
        crate::observe::db_breaker_refusal();
        return Err(Error::Unavailable(BREAKER_OPEN.into()));
    }
    let outcome = op.await;
    if let Err(e) = &outcome
        && e.is_database_down()
    {
        breaker.trip(db);
    }
    outcome
}

const BREAKER_OPEN: &str =
    "database unavailable; answering at once until it is reachable again (try again shortly)";

/// How often an open breaker asks the database whether it is back, and how long it waits.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One per PostgreSQL database (host, port, name), shared by every pool of the process that
/// reaches it: they are all down together. SQLite is a local file and has none.
struct Breaker {
    open: AtomicBool,
    name: String,
}

static BREAKERS: LazyLock<Mutex<HashMap<String, Arc<Breaker>>>> = LazyLock::new(Default::default);

impl Breaker {
    fn of(db: &DatabaseConnection) -> Option<Arc<Self>> {
        if db.get_database_backend() != DbBackend::Postgres {
            return None;
        }
        let options = db.get_postgres_connection_pool().connect_options();
        let name = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let mut breakers = BREAKERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(
            breakers
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Self {
                        open: AtomicBool::new(false),
                        name,
                    })
                })
                .clone(),
        )
    }

    /// Opens the breaker; the caller that opens it starts the one probe.
    fn trip(self: &Arc<Self>, db: &DatabaseConnection) {
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(database = %self.name, "database unreachable; answering misses and writes with UNAVAILABLE until it answers again");
        crate::observe::db_breaker(true);
        tokio::spawn(self.clone().probe(db.clone()));
    }

    async fn probe(self: Arc<Self>, db: DatabaseConnection) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            // A closed pool cannot tell: the next call through another pool finds out again.
            let closed = db.get_postgres_connection_pool().is_closed();
            if closed
                || matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, db.execute_unprepared("SELECT 1")).await,
                    Ok(Ok(_))
                )
            {
                self.open.store(false, Ordering::Release);
                crate::observe::db_breaker(false);
                if !closed {
                    tracing::info!(database = %self.name, "database reachable again");
                }
                return;
            }
        }
    }
}

/// Applies pending migrations; returns how many this call applied. On PostgreSQL the work runs
/// under an advisory lock, so replicas that start together (or a migration Job beside them) take
/// turns: the first applies, the others then find nothing pending.
pub async fn migrate(db: &DatabaseConnection) -> Result<usize> {
    if db.get_database_backend() != DbBackend::Postgres {
        return migrate_unlocked(db).await;
    }
    // A session lock lives on one connection, so it is taken on a connection of its own, out of
    // the pool: if this call is dropped half-way the connection closes and the lock goes with it.
    let mut lock = db
        .get_postgres_connection_pool()
        .acquire()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot lock the schema for migrating: {e}")))?
        .detach();
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut lock)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot lock the schema for migrating: {e}")))?;
    let applied = migrate_unlocked(db).await;
    // Closing the connection releases the lock even if the unlock itself fails.
    let _ = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut lock)
        .await;
    let _ = sea_orm::sqlx::Connection::close(lock).await;
    applied
}

/// The advisory lock key every keyhouse migration takes on PostgreSQL ("keyhous" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6579_686f_7573;

async fn migrate_unlocked(db: &DatabaseConnection) -> Result<usize> {
    refuse_newer_schema(db).await?;
    let pending = Migrator::get_pending_migrations(db).await?.len();
    Migrator::up(db, None).await?;
    Ok(pending)
}

/// Refuses to serve on a schema this build does not match: split binaries never migrate by
/// themselves, so an operator runs `keyhouse migrate` first.
pub async fn ensure_schema_current(db: &DatabaseConnection) -> Result<()> {
    refuse_newer_schema(db).await?;
    let pending = Migrator::get_pending_migrations(db).await?;
    if !pending.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "the database schema is behind this build: {} migration(s) pending ({}); run `keyhouse migrate` first",
            pending.len(),
            pending
                .iter()
                .map(|m| m.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// A database migrated by a newer keyhouse holds migrations this build does not know; running on
/// it could misread data, so every binary refuses and says which.
async fn refuse_newer_schema(db: &DatabaseConnection) -> Result<()> {
    use sea_orm::EntityTrait;
    use sea_orm_migration::seaql_migrations;
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let applied = match seaql_migrations::Entity::find().all(db).await {
        Ok(rows) => rows,
        // No migration table yet: a new database, behind rather than ahead.
        Err(_) => return Ok(()),
    };
    let unknown: Vec<String> = applied
        .into_iter()
        .map(|m| m.version)
        .filter(|v| !known.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "the database schema is newer than this build: it has migration(s) this build does not know ({}); run a keyhouse at least as new as the one that migrated it",
            unknown.join(", ")
        )));
    }
    Ok(())
}

/// A database URL fit for a log line: no password, and no query string (which can hold one, as
/// `?password=`).
pub fn redact_url(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ACQUIRE_TIMEOUT_VAR, acquire_timeout, redact_url};

    #[test]
    fn the_acquire_timeout_is_whole_milliseconds_above_zero() {
        assert_eq!(
            acquire_timeout(None).ok(),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            acquire_timeout(Some(" 250 ".into())).ok(),
            Some(Duration::from_millis(250))
        );
        for bad in ["0", "-1", "1.5", "2s", ""] {
            let error = acquire_timeout(Some(bad.into()))
                .expect_err(bad)
                .to_string();
            assert!(error.contains(ACQUIRE_TIMEOUT_VAR), "{bad}: {error}");
        }
    }

    #[test]
    fn passwords_are_dropped_from_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact_url("sqlite://keyhouse.db?mode=rwc"),
            "sqlite://keyhouse.db"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=secret"),
            "postgres://h/db"
        );
    }
}
