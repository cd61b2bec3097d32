//! The accept loop: HTTP/1 and HTTP/2 on one port through hyper, with the limits that keep a
//! crowd of clients, slow clients or huge headers from taking the server down, and a maximum
//! connection age so long-lived gRPC connections move to new replicas.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::Instant;

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
        // hyper also starts this timer when a kept-alive connection goes idle, so it is HTTP/1's
        // idle timeout as well; a second setting could only be shorter than it. The e2e test
        // `an_idle_http1_keep_alive_connection_is_closed` catches a hyper that stops doing so.
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
    // hyper's HTTP/1 header timeout starts once it knows the protocol, and nothing in hyper or
    // h2 times the HTTP/2 preface and SETTINGS: without this deadline a client that sends
    // nothing, or stops inside its HTTP/2 greeting, would hold its slot for ever. The header
    // read timeout is the budget because the greeting is the HTTP/2 client's "headers"; an
    // established HTTP/2 connection is then left to the keep-alive pings, so idle gRPC
    // channels are kept.
    let deadline = Instant::now() + Duration::from_secs(limits.header_read_timeout_secs);
    let (tcp, greeted) = Greeting::new(tcp);
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let silent = async {
        if tokio::time::timeout_at(deadline, greeted).await.is_ok() {
            std::future::pending::<()>().await;
        }
    };
    let aged = async {
        match limits.max_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let grace = tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = silent => {
            tracing::debug!("connection closed: no complete greeting within the header timeout");
            return;
        }
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

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and the 9-byte header of the frame after it.
const H2_GREETING_HEAD: usize = H2_PREFACE.len() + 9;
const H2_SETTINGS: u8 = 4;

/// A new connection's socket, watching the bytes read until the client has sent its greeting:
/// on HTTP/2 the preface and the whole SETTINGS frame that must follow it; otherwise the first
/// byte that is not the preface's, after which hyper's HTTP/1 header read timeout bounds each
/// request's headers, including the wait for the next request on a kept-alive connection.
/// Anything else after the preface is h2's to refuse.
struct Greeting {
    tcp: TcpStream,
    seen: Seen,
    /// Taken and sent once the greeting is complete.
    greeted: Option<oneshot::Sender<()>>,
}

impl Greeting {
    fn new(tcp: TcpStream) -> (Self, oneshot::Receiver<()>) {
        let (greeted, complete) = oneshot::channel();
        let watched = Self {
            tcp,
            seen: Seen::default(),
            greeted: Some(greeted),
        };
        (watched, complete)
    }
}

/// What a client has sent of its greeting so far.
#[derive(Default)]
struct Seen {
    read: usize,
    /// The header of the frame after the preface.
    frame: [u8; 9],
}

impl Seen {
    /// Takes the next bytes read; true once the greeting is complete.
    fn complete_with(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            let at = self.read;
            self.read += 1;
            if at < H2_PREFACE.len() {
                if byte != H2_PREFACE[at] {
                    return true;
                }
                continue;
            }
            if at < H2_GREETING_HEAD {
                self.frame[at - H2_PREFACE.len()] = byte;
            }
            if self.read >= H2_GREETING_HEAD {
                if self.frame[3] != H2_SETTINGS {
                    return true;
                }
                let length = u32::from_be_bytes([0, self.frame[0], self.frame[1], self.frame[2]]);
                if self.read >= H2_GREETING_HEAD + length as usize {
                    return true;
                }
            }
        }
        false
    }
}

impl AsyncRead for Greeting {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if this.greeted.is_some()
            && this.seen.complete_with(&buf.filled()[before..])
            && let Some(greeted) = this.greeted.take()
        {
            // No receiver means the connection is ending anyway.
            let _ = greeted.send(());
        }
        polled
    }
}

impl AsyncWrite for Greeting {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in reads of `step` bytes; true once the greeting is complete.
    fn complete(bytes: &[u8], step: usize) -> bool {
        let mut seen = Seen::default();
        bytes.chunks(step).any(|read| seen.complete_with(read))
    }

    #[test]
    fn an_http2_greeting_is_the_preface_and_the_whole_settings_frame() {
        let settings = [0, 0, 6, H2_SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let greeting = [H2_PREFACE, &settings].concat();
        for step in [1, 5, 24, greeting.len()] {
            assert!(complete(&greeting, step), "in reads of {step}");
            assert!(
                !complete(&greeting[..greeting.len() - 1], step),
                "one byte short, in reads of {step}"
            );
        }
        assert!(!complete(H2_PREFACE, 1));
        let empty_settings = [H2_PREFACE, &[0, 0, 0, H2_SETTINGS, 0, 0, 0, 0, 0]].concat();
        assert!(complete(&empty_settings, 7));
    }

    #[test]
    fn anything_that_is_not_an_http2_greeting_ends_the_watch_for_hyper_to_judge() {
        assert!(complete(b"G", 1), "HTTP/1");
        assert!(
            complete(b"PRI * HTTP/1.1", 1),
            "the preface's first bytes, then not"
        );
        // A first frame that is not SETTINGS is h2's protocol error to answer.
        let ping = [H2_PREFACE, &[0, 0, 8, 6, 0, 0, 0, 0, 0]].concat();
        assert!(complete(&ping, 3));
    }
}
