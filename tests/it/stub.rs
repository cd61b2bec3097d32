//! A stand-in provider on 127.0.0.1:0: answers 200 to one good key and 401 to any other,
//! and records the path it was asked for.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;

pub struct Provider {
    pub url: String,
    seen: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    pub async fn start(good_key: &'static str) -> Self {
        let seen = Arc::new(Mutex::new(None));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state((good_key, seen.clone()));
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
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State((good, seen)): State<(&'static str, Arc<Mutex<Option<String>>>)>,
    req: Request,
) -> StatusCode {
    *seen.lock().expect("lock") = Some(req.uri().path().to_owned());
    let headers = req.headers();
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if presented == Some(good) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}
