//! keyhouse end to end: real servers, real databases, generated clients. Tests that touch
//! storage run once on SQLite and once on PostgreSQL (`sqlite::…` and `postgres::…`).

mod support;

mod architecture;
mod auth;
mod authorization_matrix;
mod backup;
mod binary;
mod byok;
mod console;
mod crash;
mod docs_and_web;
mod embedded;
mod ext_authz;
mod fail_closed;
mod health;
mod helm;
mod lifecycle;
mod litellm;
mod llm_hub;
mod logs;
mod metrics;
mod oidc;
mod oidc_login;
mod ops_center;
mod outbound;
mod overload;
mod platform_keys;
mod platform_watch;
mod properties;
mod rest_bad_requests;
mod rest_platform_keys;
mod rest_user_keys;
mod schemathesis;
mod server;
mod sessions;
mod soak;
mod stub;
mod sync_litellm;
mod traces;
mod trust;
mod user_keys;
mod user_keys_validation;
mod verify;
mod verify_replicas;
