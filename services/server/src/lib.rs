//! keyhouse-server: everything between the network and the domain. One listener serves native
//! gRPC, grpc-web and REST; callers are authenticated here; telemetry, metrics, probes and the
//! docs pages live here; and `bootstrap` starts any set of services. Service crates add
//! themselves through `bootstrap::Mount`. See ARCHITECTURE.md.

pub mod auth;
pub mod backup;
pub mod bootstrap;
mod connections;
pub mod console;
mod deadline;
pub mod docs;
pub mod grpc;
pub mod key_file;
pub mod login;
pub mod metrics;
pub mod oidc;
mod probes;
pub mod request_name;
pub mod rest;
pub mod router;
pub mod session_cache;
pub mod settings;
pub mod telemetry;

pub use router::Services;
pub use settings::{ExtAuthzSettings, ServerSettings};
