//! The LiteLLM plugin (`integrations/litellm`) in the real LiteLLM proxy: `litellm[proxy]` from
//! PyPI at the version pinned in `integrations/litellm/requirements-test.txt`, installed once per
//! version of that file into a virtualenv in the build's scratch directory, runs on loopback with
//! one model pointing at a local OpenAI-compatible stub and the plugin as its `custom_auth`, with
//! no database. Requests to `/v1/chat/completions` are let through, or refused with 401, 403, 429
//! or 503, by keyhouse's VerifyKey.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use keyhouse_domain::caller::Role;
use keyhouse_proto::v1 as pb;
use serde_json::{Value, json};

use crate::support::{Backend, TempDir, TestServer};
use crate::verify::{mint, verify};

/// How long the proxy may take to start answering its liveness probe.
const START_DEADLINE: Duration = Duration::from_secs(180);
const MODEL: &str = "stub-model";

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integrations/litellm")
}

/// The virtualenv's `bin`, with the pinned LiteLLM proxy installed once per version of the
/// requirements file.
fn venv_bin() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        crate::support::venv_installed("litellm", "integrations/litellm/requirements-test.txt")
    })
}

/// An OpenAI-compatible model on 127.0.0.1:0 that answers every chat completion and counts them.
struct Upstream {
    url: String,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(complete))
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream stub");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, calls, task }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn complete(State(calls): State<Arc<AtomicUsize>>, Json(body): Json<Value>) -> Json<Value> {
    calls.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "hello from the stub"},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    }))
}

/// `litellm --config ...` on a free loopback port, killed when dropped.
struct Proxy {
    url: String,
    log: PathBuf,
    child: std::process::Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    async fn start(dir: &Path, keyhouse: &str, upstream: &str) -> Self {
        let config = dir.join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n      api_base: {upstream}/v1\n      api_key: sk-upstream-stub\ngeneral_settings:\n  custom_auth: keyhouse_litellm.user_api_key_auth\n"
            ),
        )
        .expect("write the LiteLLM config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("litellm.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let bin = venv_bin();
        let child = std::process::Command::new(bin.join("litellm"))
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(dir)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("HOME", dir)
            .env("PYTHONPATH", plugin_dir())
            .env("KEYHOUSE_URL", keyhouse)
            // No network: LiteLLM's model price list from its own package, no telemetry.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY", "False")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start litellm");
        let mut proxy = Self {
            url: format!("http://127.0.0.1:{port}"),
            log,
            child,
        };
        proxy.wait_until_live().await;
        proxy
    }

    async fn wait_until_live(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll litellm") {
                panic!(
                    "litellm exited with {status} before it served:\n{}",
                    self.log()
                );
            }
            let live = http
                .get(format!("{}/health/liveliness", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if live {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "litellm did not answer /health/liveliness within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One chat completion with `key`: the status, `Retry-After` and the JSON body.
    async fn chat(&self, key: &str) -> (u16, Option<String>, Value) {
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("POST /v1/chat/completions to litellm");
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().expect("ASCII").to_owned());
        let body = answer.json().await.unwrap_or(Value::Null);
        (status, retry_after, body)
    }

    /// A refusal: `status`, as LiteLLM's auth error, naming keyhouse's reason.
    async fn refused(&self, key: &str, status: u16, reason: &str) -> Option<String> {
        let (got, retry_after, body) = self.chat(key).await;
        assert_eq!(got, status, "{reason}: {body}\n{}", self.log());
        assert_eq!(body["error"]["type"], "auth_error", "{body}");
        assert_eq!(body["error"]["code"], status.to_string(), "{body}");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.contains(reason), "{message} names {reason}");
        assert!(!message.contains(key), "the key is not echoed: {message}");
        retry_after
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_litellm_proxy_lets_through_only_what_verify_key_allows() {
    let server = TestServer::start_with(Backend::Sqlite, |s| {
        s.domain.verify.usage_flush_millis = 50;
    })
    .await;
    let token = server.session("alice", Role::User).await;
    let mut alice = server.user_client(Some(&token)).await;
    let key = async |alice: &mut crate::support::UserClient,
                     name: &str,
                     edit: &dyn Fn(&mut pb::CreateKeyRequest)| {
        let mut req = pb::CreateKeyRequest {
            name: name.into(),
            ..Default::default()
        };
        edit(&mut req);
        mint(alice, req).await
    };
    // Only from the proxy's address: the plugin must pass the client's address on.
    let good = key(&mut alice, "good", &|r| {
        r.allowed_ips = vec!["127.0.0.1/32".into()]
    })
    .await;
    let revoked = key(&mut alice, "to revoke", &|_| {}).await;
    let unscoped = key(&mut alice, "models only", &|r| {
        r.permissions = vec!["llm:models".into()]
    })
    .await;
    let elsewhere = key(&mut alice, "elsewhere", &|r| {
        r.allowed_ips = vec!["10.0.0.0/8".into()]
    })
    .await;

    let upstream = Upstream::start().await;
    let dir = TempDir::new();
    let proxy = Proxy::start(&dir.0, &server.url(), &upstream.url).await;

    let (status, _, body) = proxy.chat(&good.api_key).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the stub"
    );
    assert_eq!(upstream.calls(), 1, "the model got the request");

    // Revocation takes effect at once, even for a key the proxy let through a moment ago.
    let (status, _, body) = proxy.chat(&revoked.api_key).await;
    assert_eq!(status, 200, "{body}");
    alice
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
        })
        .await
        .expect("revoke");
    proxy.refused(&revoked.api_key, 401, "REVOKED").await;
    proxy.refused("uc_not-a-key", 401, "MALFORMED").await;
    proxy
        .refused(&unscoped.api_key, 403, "INSUFFICIENT_SCOPE")
        .await;
    proxy
        .refused(&elsewhere.api_key, 403, "IP_NOT_ALLOWED")
        .await;
    assert_eq!(upstream.calls(), 2, "no refused request reached the model");

    // One request a minute: spent by a VerifyKey of its own, so the proxy's is the second.
    let mut gateway = server.user_client(None).await;
    let mut limited_at = None;
    let mut through = 2;
    for _attempt in 0..3 {
        let limited = key(&mut alice, "one a minute", &|r| {
            r.rate_limit_per_minute = Some(1)
        })
        .await;
        let first = gateway
            .verify_key(verify(&limited.api_key, &["llm:inference"], "127.0.0.1"))
            .await
            .expect("verify")
            .into_inner();
        assert!(first.valid);
        let (status, retry_after, body) = proxy.chat(&limited.api_key).await;
        if status == 429 {
            assert_eq!(body["error"]["type"], "auth_error", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("RATE_LIMITED"))
            );
            let seconds: u64 = retry_after
                .expect("a 429 carries Retry-After")
                .parse()
                .expect("Retry-After in seconds");
            assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
            limited_at = Some(seconds);
            break;
        }
        // Only a new minute may let the second request through.
        assert_eq!(status, 200, "{body}");
        through += 1;
        let reset = first.reset_at.expect("reset_at").seconds;
        assert!(
            chrono::Utc::now().timestamp() >= reset,
            "the second request in one minute got through"
        );
    }
    assert!(
        limited_at.is_some(),
        "three attempts in a row straddled a minute"
    );

    // Usage is written behind: the proxy's one request with the good key shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let usage = loop {
        let usage = alice
            .get_key_usage(pb::GetKeyUsageRequest {
                key_id: good.key_id.clone(),
                ..Default::default()
            })
            .await
            .expect("usage")
            .into_inner();
        if usage.total_requests >= 1 || Instant::now() >= deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(usage.total_requests, 1);
    assert!(usage.last_used.is_some());

    // keyhouse gone: refused (503), never let through.
    let addr = server.addr;
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "keyhouse still accepts after its stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, body) = proxy.chat(&good.api_key).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "auth_error", "{body}");
    assert_eq!(
        upstream.calls(),
        through,
        "only let-through requests reached the model"
    );

    let log = proxy.log();
    for secret in [&good, &revoked, &unscoped, &elsewhere] {
        assert!(
            !log.contains(&secret.api_key),
            "a key in LiteLLM's log:\n{log}"
        );
    }
}
