//! The accept loop: HTTP/1 and HTTP/2 on one port through hyper, with the limits that keep a
//! crowd of clients, slow clients or huge headers from taking the server down, and a maximum
//! connection age so long-lived gRPC connections move to new replicas.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::settings::ServerSettings;

/// Request headers past this size are refused: 431 on HTTP/1, a stream reset on HTTP/2.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// An idle HTTP/2 connection is pinged this often, and closed if a ping goes unanswered for
/// `KEEPALIVE_TIMEOUT`: a vanished client does not hold a connection slot for ever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

struct Limits {
    header_read_timeout_secs: u64,
    max_age: Option<Duration>,
    grace: Duration,
}

/// Serves `app` until `shutdown` resolves, then stops accepting and waits for every open
/// connection to finish its calls.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(settings.header_read_timeout_secs))
        .keep_alive(true)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let limits = Arc::new(Limits {
        header_read_timeout_secs: settings.header_read_timeout_secs,
        max_age: (settings.max_connection_age_secs > 0)
            .then(|| Duration::from_secs(settings.max_connection_age_secs)),
        grace: Duration::from_secs(settings.max_connection_age_grace_secs),
    });
    let max = settings.max_connections;
    // Each connection holds a permit; with none left the next client waits in the kernel's
    // accept queue instead of costing this process memory and file descriptors.
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little rather than spin, and keep serving the connections there are.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        crate::metrics::METRICS.connections_accepted.inc();
        tokio::spawn(connection(
            tcp,
            app.clone(),
            builder.clone(),
            limits.clone(),
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every permit back means every connection has finished.
    let _ = slots.acquire_many(max).await;
}

async fn connection(
    tcp: TcpStream,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    // Without TCP_NODELAY a small last write (a gRPC call's trailers) waits for the client's
    // delayed ACK, up to 40 ms on Linux, whenever calls come one at a time.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let _open = OpenGauge::new();
    // hyper's header timeout starts once it knows the protocol, which takes the client's first
    // bytes: a client that connects and sends nothing would otherwise hold its slot for ever.
    let header_timeout = Duration::from_secs(limits.header_read_timeout_secs);
    // `peek` and not `readable`, which may wake without data.
    let first = tokio::time::timeout(header_timeout, tcp.peek(&mut [0u8; 1])).await;
    if !matches!(first, Ok(Ok(n)) if n > 0) {
        tracing::debug!("connection closed: nothing sent within the header timeout");
        return;
    }
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let aged = async {
        match limits.max_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let grace = tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = stopped(&mut stopping) => None,
        () = aged => Some(limits.grace),
    };
    // GOAWAY on HTTP/2, `Connection: close` on HTTP/1: calls under way finish, new ones
    // go to a new connection.
    conn.as_mut().graceful_shutdown();
    match grace {
        None => log_end(conn.await),
        Some(grace) => match tokio::time::timeout(grace, conn).await {
            Ok(result) => log_end(result),
            Err(_) => tracing::debug!("connection cut after its grace period"),
        },
    }
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the accept loop is gone, which is also a stop.
    let _ = stopping.wait_for(|s| *s).await;
}

fn log_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        // Clients going away, timing out or sending garbage: theirs to see, not an alert.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Counts a connection as open for as long as it lives, however its task ends.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        crate::metrics::METRICS.connections_open.inc();
        Self
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        crate::metrics::METRICS.connections_open.dec();
    }
}
