//! keyhouse-domain: the capabilities (user keys, verification, platform keys, BYOK) with their
//! storage, crypto, change feed, configuration and the one error type. No transport lives here:
//! functions take a `Caller` and the generated request messages, and return generated messages
//! or domain types. See ARCHITECTURE.md.

pub mod authorization;
pub mod byok;
pub mod caller;
pub mod change_feed;
pub mod config;
pub mod crypto;
pub mod db;
pub mod duration;
pub mod entities;
pub mod error;
pub mod health;
pub mod identity;
pub mod observe;
pub mod outbound;
pub mod paging;
pub mod platform_keys;
pub mod providers;
pub mod rotation;
pub mod storage;
pub mod user_keys;
pub mod verify;

pub use error::{Error, Result};

/// A protobuf timestamp from a request as a UTC time; an impossible one is refused, naming
/// `field` (negative nanoseconds included).
pub fn from_timestamp(
    t: &prost_types::Timestamp,
    field: &'static str,
) -> Result<chrono::DateTime<chrono::Utc>> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| chrono::DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| Error::invalid(field, format!("{field} is not a valid time")))
}

/// A stored UTC time as a protobuf timestamp.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}
