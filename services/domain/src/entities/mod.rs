//! SeaORM entities, one file per table of `migrations/`.

pub mod api_key_usage_hourly;
pub mod audit_events;
pub mod key_health;
pub mod key_health_history;
pub mod platform_key_versions;
pub mod platform_settings;
pub mod sessions;
pub mod user_api_keys;
pub mod user_provider_keys;
