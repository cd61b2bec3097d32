//! SeaORM entities, one file per table of `migrations/`.

pub mod audit_events;
pub mod sessions;
pub mod user_api_keys;
