//! The keyhouse schema. One file per migration; every migration runs unchanged on SQLite and
//! PostgreSQL, and every timestamp column holds UTC.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_initial_schema;
mod m20261125_000002_key_limits_and_usage;
mod m20261202_000003_keyset_indexes;
mod m20261202_000004_key_tags_and_acting_key;
mod m20261202_000005_identity_source;
mod m20261203_000006_key_health;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial_schema::Migration),
            Box::new(m20261125_000002_key_limits_and_usage::Migration),
            Box::new(m20261202_000003_keyset_indexes::Migration),
            Box::new(m20261202_000004_key_tags_and_acting_key::Migration),
            Box::new(m20261202_000005_identity_source::Migration),
            Box::new(m20261203_000006_key_health::Migration),
        ]
    }
}
