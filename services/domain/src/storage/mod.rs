//! Repositories over the SeaORM entities. Functions take any connection, so a caller can run
//! several of them (a change and its audit event) in one transaction.

pub mod audit;
pub mod health;
pub mod platform_keys;
pub mod provider_keys;
pub mod sessions;
pub mod user_keys;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend};

/// Now, at the microsecond precision both databases store, so a value read back equals the
/// value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The database, as traces name it (`db.system.name`).
pub fn system(conn: &impl ConnectionTrait) -> &'static str {
    match conn.get_database_backend() {
        DatabaseBackend::Postgres => "postgresql",
        DatabaseBackend::Sqlite => "sqlite",
        _ => "other_sql",
    }
}
