//! Prometheus metrics, served at `/metrics` on the same port as everything else: requests by
//! method and status with latency histograms (gRPC, grpc-web and REST alike), VerifyKey outcomes
//! by reason, the verdict cache's hits and misses, bcrypt durations, the database pool's
//! connections, the database breaker (open, and the calls it answered at once), where rate
//! limits are counted, the listener's client connections, the depth of the domain's bounded
//! queues and the health of platform keys by provider. Labels never carry a key, a token or a user id.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sea_orm::{DatabaseBackend, DatabaseConnection};

use crate::request_name;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub verify_outcomes: IntCounterVec,
    pub verify_cache: IntCounterVec,
    pub bcrypt_seconds: HistogramVec,
    pub db_breakers_open: IntGauge,
    pub db_breaker_refusals: IntCounter,
    pub rate_limit_counts: IntCounterVec,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_open: IntGauge,
    queue_depth: IntGaugeVec,
    provider_key_healthy: IntGaugeVec,
}

fn build() -> prometheus::Result<Metrics> {
    let registry = Registry::new_custom(Some("keyhouse".into()), None)?;
    let requests = IntCounterVec::new(
        Opts::new(
            "requests_total",
            "Requests by method (gRPC method or REST route) and status",
        ),
        &["method", "status"],
    )?;
    let latency = HistogramVec::new(
        HistogramOpts::new("request_duration_seconds", "Time to answer, by method").buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ]),
        &["method"],
    )?;
    let verify_outcomes = IntCounterVec::new(
        Opts::new("verify_outcomes_total", "VerifyKey answers by reason"),
        &["reason"],
    )?;
    let verify_cache = IntCounterVec::new(
        Opts::new(
            "verify_cache_lookups_total",
            "VerifyKey verdict cache lookups: hit, miss, negative_hit",
        ),
        &["result"],
    )?;
    let bcrypt_seconds = HistogramVec::new(
        HistogramOpts::new("bcrypt_duration_seconds", "bcrypt hash and verify times")
            .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]),
        &["operation"],
    )?;
    let db_breakers_open = IntGauge::new(
        "db_breaker_open",
        "Database circuit breakers open now: 1 while the database is unreachable",
    )?;
    let db_breaker_refusals = IntCounter::new(
        "db_breaker_refusals_total",
        "Calls answered UNAVAILABLE by the open database breaker, without waiting for the pool",
    )?;
    let rate_limit_counts = IntCounterVec::new(
        Opts::new(
            "rate_limit_counts_total",
            "Rate-limited VerifyKey hits by where they were counted: redis (shared), replica (no \
             Redis set), replica_redis_failed (Redis failed on this hit), replica_redis_down \
             (Redis known down, not tried)",
        ),
        &["counted"],
    )?;
    // Present at 0 from the start, so that an alert on them needs no first event.
    for counted in [
        "redis",
        "replica",
        "replica_redis_failed",
        "replica_redis_down",
    ] {
        rate_limit_counts.with_label_values(&[counted]);
    }
    let pool_connections = IntGaugeVec::new(
        Opts::new(
            "db_pool_connections",
            "Database pool connections: in_use (lent to a query) and idle",
        ),
        &["state"],
    )?;
    let pool_max = IntGauge::new(
        "db_pool_max_connections",
        "The most connections the database pool opens",
    )?;
    let connections_accepted = IntCounter::new(
        "connections_accepted_total",
        "Client connections accepted by the listener",
    )?;
    let connections_open = IntGauge::new("connections_open", "Client connections open now")?;
    let queue_depth = IntGaugeVec::new(
        Opts::new(
            "queue_depth",
            "Bounded queues: bcrypt (operations admitted, running or waiting), usage (counts \
             the last usage flush took), change_feed (changes not yet read by every subscriber)",
        ),
        &["queue"],
    )?;
    let provider_key_healthy = IntGaugeVec::new(
        Opts::new(
            "provider_key_healthy",
            "Platform keys by provider: 1 healthy, 0 unhealthy (last live test, scheduled or \
             manual); no series while unknown. BYOK keys are not exported",
        ),
        &["provider"],
    )?;
    registry.register(Box::new(provider_key_healthy.clone()))?;
    registry.register(Box::new(queue_depth.clone()))?;
    registry.register(Box::new(connections_accepted.clone()))?;
    registry.register(Box::new(connections_open.clone()))?;
    registry.register(Box::new(pool_connections.clone()))?;
    registry.register(Box::new(pool_max.clone()))?;
    registry.register(Box::new(db_breakers_open.clone()))?;
    registry.register(Box::new(db_breaker_refusals.clone()))?;
    for c in [
        &requests,
        &verify_outcomes,
        &verify_cache,
        &rate_limit_counts,
    ] {
        registry.register(Box::new(c.clone()))?;
    }
    for h in [&latency, &bcrypt_seconds] {
        registry.register(Box::new(h.clone()))?;
    }
    Ok(Metrics {
        registry,
        requests,
        latency,
        verify_outcomes,
        verify_cache,
        bcrypt_seconds,
        db_breakers_open,
        db_breaker_refusals,
        rate_limit_counts,
        pool_connections,
        pool_max,
        connections_accepted,
        connections_open,
        queue_depth,
        provider_key_healthy,
    })
}

/// The process's metrics. Building them cannot fail for these fixed definitions; if it ever
/// did, the process would not start.
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric definitions are valid"));

/// The domain's measurements, counted into this process's metrics. Label values are looked up
/// per call, as they were when the domain counted them itself.
struct DomainObserver;

impl keyhouse_domain::observe::Observer for DomainObserver {
    fn verify_outcome(&self, outcome: &'static str) {
        METRICS.verify_outcomes.with_label_values(&[outcome]).inc();
    }

    fn verify_cache(&self, result: &'static str) {
        METRICS.verify_cache.with_label_values(&[result]).inc();
    }

    fn bcrypt(&self, operation: &'static str, took: std::time::Duration) {
        METRICS
            .bcrypt_seconds
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
    }

    fn db_breaker(&self, open: bool) {
        if open {
            METRICS.db_breakers_open.inc();
        } else {
            METRICS.db_breakers_open.dec();
        }
    }

    fn db_breaker_refusal(&self) {
        METRICS.db_breaker_refusals.inc();
    }

    fn rate_limit_count(&self, counted: &'static str) {
        METRICS
            .rate_limit_counts
            .with_label_values(&[counted])
            .inc();
    }

    fn queue_depth(&self, queue: &'static str, depth: usize) {
        METRICS
            .queue_depth
            .with_label_values(&[queue])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    fn key_health(&self, provider: &'static str, healthy: Option<bool>) {
        let gauge = &METRICS.provider_key_healthy;
        match healthy {
            Some(healthy) => gauge.with_label_values(&[provider]).set(i64::from(healthy)),
            None => {
                let _ = gauge.remove_label_values(&[provider]);
            }
        }
    }
}

/// Routes the domain's measurements into these metrics.
pub fn install_observer() {
    keyhouse_domain::observe::install(Box::new(DomainObserver));
}

/// The Prometheus text exposition of every metric; the pool gauges are read at scrape time.
pub async fn render(State(db): State<DatabaseConnection>) -> Response {
    let (size, idle, max) = match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
        DatabaseBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
        _ => (0, 0, 0),
    };
    let idle = i64::try_from(idle).unwrap_or(i64::MAX);
    METRICS
        .pool_connections
        .with_label_values(&["idle"])
        .set(idle);
    METRICS
        .pool_connections
        .with_label_values(&["in_use"])
        .set((i64::from(size) - idle).max(0));
    METRICS.pool_max.set(i64::from(max));
    let mut out = Vec::new();
    if TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut out)
        .is_err()
    {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode metrics",
        )
            .into_response();
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Counts and times every request. gRPC methods are named by their path, REST requests by their
/// route template (never the raw path, which can hold ids). Paths that match nothing, and gRPC
/// methods the server does not implement, share one label, so that no caller can mint series.
pub async fn track(req: Request, next: Next) -> Response {
    let grpc = request_name::is_grpc(req.headers());
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let method = request_name::method_label(grpc, route, req.uri().path(), req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let http = response.status();
    let status = match request_name::grpc_status(grpc, &response) {
        Some(code) => GRPC_STATUS_LABELS
            .get(usize::from(code))
            .copied()
            .unwrap_or("grpc other"),
        None => http.as_str(),
    };
    METRICS
        .latency
        .with_label_values(&[&method])
        .observe(started.elapsed().as_secs_f64());
    METRICS.requests.with_label_values(&[&method, status]).inc();
    response
}

/// The `status` label of each gRPC code, 0 to 16: no formatting per request.
const GRPC_STATUS_LABELS: [&str; 17] = [
    "grpc 0", "grpc 1", "grpc 2", "grpc 3", "grpc 4", "grpc 5", "grpc 6", "grpc 7", "grpc 8",
    "grpc 9", "grpc 10", "grpc 11", "grpc 12", "grpc 13", "grpc 14", "grpc 15", "grpc 16",
];
