//! keyhouse-core: the domain, storage, crypto and authorization that every keyhouse transport
//! (gRPC, grpc-web, REST) calls into.

pub mod auth;
pub mod byok;
pub mod change_feed;
pub mod config;
pub mod crypto;
pub mod db;
pub mod entities;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod paging;
pub mod platform_keys;
pub mod providers;
pub mod rest;
pub mod rotation;
pub mod server;
pub mod storage;
pub mod telemetry;
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
