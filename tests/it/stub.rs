//! A stand-in provider on 127.0.0.1:0: answers 200 to one good key and 401 to any other,
//! and records the path it was asked for and how many requests reached it. Loopback is refused
//! by the outbound guard, so a server that should reach the stub allows `NETWORK`, the way an
//! operator allows a local Ollama.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;

/// The network the stub listens on, for `KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS`.
pub const NETWORK: &str = "127.0.0.1/32";

#[derive(Clone)]
struct Seen {
    good: &'static str,
    path: Arc<Mutex<Option<String>>>,
    requests: Arc<AtomicUsize>,
}

pub struct Provider {
    pub url: String,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    pub async fn start(good_key: &'static str) -> Self {
        let seen = Seen {
            good: good_key,
            path: Arc::new(Mutex::new(None)),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stub");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, seen, task }
    }

    pub fn last_path(&self) -> Option<String> {
        self.seen.path.lock().expect("lock").clone()
    }

    /// How many requests reached the stub.
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(seen): State<Seen>, req: Request) -> StatusCode {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    *seen.path.lock().expect("lock") = Some(req.uri().path().to_owned());
    let headers = req.headers();
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if presented == Some(seen.good) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}
