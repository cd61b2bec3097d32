//! Connecting to SQLite or PostgreSQL, and keeping the schema in step with this build.

use std::time::Duration;

use keyhouse_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::error::{Error, Result};

pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url);
    // Query text is logged by nobody: statements can hold identifying values.
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
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
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
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
    use super::redact_url;

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
