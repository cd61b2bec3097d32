//! `keyhouse sync litellm` against a real keyhouse server and a loopback LiteLLM proxy that
//! implements exactly the admin endpoints the agent uses, with the request shapes and the
//! `Authorization: Bearer <master key>` header of LiteLLM 1.100.5: update, rollback, removal,
//! a watch cut during an update, LiteLLM answering 500 before 200, and `--once`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{patch, post};
use keyhouse::sync_litellm::{self, SyncSettings};
use keyhouse_domain::caller::Role;
use keyhouse_domain::config::Secret;
use keyhouse_proto::v1 as pb;
use serde_json::{Value, json};
use sha2::Digest;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(
    updates_rollbacks_and_removals_reach_litellm_and_are_audited,
    a_watch_cut_during_an_update_misses_no_change,
);

const SYNC_TOKEN: &str = "svc_sync_litellm_0123456789abcdef";
const MASTER_KEY: &str = "sk-litellm-master-0123456789";
const MODEL: &str = "0b6f0c5e-model-1";
const V1: &str = "sk-or-v1-sync-first-0000000000000001";
const V2: &str = "sk-or-v1-sync-second-000000000000002";

/// One request the proxy received.
#[derive(Clone, Debug)]
struct Seen {
    method: &'static str,
    path: String,
    status: u16,
}

#[derive(Default)]
struct Proxy {
    /// Credentials by name: `credential_values` and `credential_info`.
    credentials: HashMap<String, (Value, Value)>,
    /// Models by id: their `litellm_params`.
    models: HashMap<String, Value>,
    seen: Vec<Seen>,
    /// Answer 500 to the next this many requests.
    fail_next: usize,
    /// Answer 500 to every request until cleared.
    failing: bool,
}

#[derive(Clone, Default)]
struct LiteLlm(Arc<Mutex<Proxy>>);

type Answer = (StatusCode, Json<Value>);

fn detail(status: StatusCode, text: &str) -> Answer {
    (status, Json(json!({ "detail": text })))
}

impl LiteLlm {
    async fn start() -> (Self, String) {
        let stub = Self::default();
        stub.0.lock().expect("lock").models.insert(
            MODEL.into(),
            json!({ "model": "openrouter/openai/gpt-4o-mini" }),
        );
        let app = axum::Router::new()
            .route("/credentials", post(create_credential))
            .route(
                "/credentials/{name}",
                patch(update_credential).delete(delete_credential),
            )
            .route("/model/{id}/update", patch(update_model))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (stub, url)
    }

    /// Checks the master key and the failure switches, records the request, and answers with
    /// `handle`'s answer when they let it through.
    fn answer(
        &self,
        method: &'static str,
        path: String,
        headers: &HeaderMap,
        handle: impl FnOnce(&mut Proxy) -> Answer,
    ) -> Answer {
        let mut proxy = self.0.lock().expect("lock");
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let answer = if auth != format!("Bearer {MASTER_KEY}") {
            detail(StatusCode::UNAUTHORIZED, "Authentication Error")
        } else if proxy.failing || proxy.fail_next > 0 {
            proxy.fail_next = proxy.fail_next.saturating_sub(1);
            detail(StatusCode::INTERNAL_SERVER_ERROR, "database unavailable")
        } else {
            handle(&mut proxy)
        };
        proxy.seen.push(Seen {
            method,
            path,
            status: answer.0.as_u16(),
        });
        answer
    }

    fn credential_key(&self, name: &str) -> Option<String> {
        let proxy = self.0.lock().expect("lock");
        let (values, _) = proxy.credentials.get(name)?;
        values["api_key"].as_str().map(str::to_owned)
    }

    fn model_key(&self, id: &str) -> Option<String> {
        let proxy = self.0.lock().expect("lock");
        proxy.models[id]["api_key"].as_str().map(str::to_owned)
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().expect("lock").seen.clone()
    }

    fn set(&self, change: impl FnOnce(&mut Proxy)) {
        change(&mut self.0.lock().expect("lock"));
    }
}

/// A JSON object with a string `api_key`, as LiteLLM stores it.
fn holds_api_key(values: &Value) -> bool {
    values.as_object().is_some_and(|o| o.len() == 1) && values["api_key"].is_string()
}

/// `POST /credentials` (CreateCredentialItem): `credential_name`, `credential_info` and
/// `credential_values`; 409 when the name exists.
async fn create_credential(
    State(stub): State<LiteLlm>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    stub.answer("POST", "/credentials".into(), &headers, |proxy| {
        let (Some(name), Some(info)) = (
            body["credential_name"].as_str(),
            body["credential_info"].as_object(),
        ) else {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "credential_name, credential_info",
            );
        };
        if !holds_api_key(&body["credential_values"]) {
            return detail(StatusCode::UNPROCESSABLE_ENTITY, "credential_values");
        }
        if proxy.credentials.contains_key(name) {
            return detail(StatusCode::CONFLICT, "Credential already exists");
        }
        proxy.credentials.insert(
            name.into(),
            (
                body["credential_values"].clone(),
                Value::Object(info.clone()),
            ),
        );
        (
            StatusCode::OK,
            Json(json!({"success": true, "message": "Credential created successfully"})),
        )
    })
}

/// `PATCH /credentials/{name}` (UpdateCredentialItem): `credential_info` is required; the
/// values are merged into the stored ones.
async fn update_credential(
    State(stub): State<LiteLlm>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let path = format!("/credentials/{name}");
    stub.answer("PATCH", path, &headers, |proxy| {
        if !body["credential_info"].is_object() || !holds_api_key(&body["credential_values"]) {
            return detail(StatusCode::UNPROCESSABLE_ENTITY, "credential_info");
        }
        let Some(stored) = proxy.credentials.get_mut(&name) else {
            return detail(StatusCode::NOT_FOUND, "Credential not found in DB.");
        };
        stored.0 = body["credential_values"].clone();
        (
            StatusCode::OK,
            Json(json!({"success": true, "message": "Credential updated successfully"})),
        )
    })
}

async fn delete_credential(
    State(stub): State<LiteLlm>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let path = format!("/credentials/{name}");
    stub.answer("DELETE", path, &headers, |proxy| {
        match proxy.credentials.remove(&name) {
            Some(_) => (
                StatusCode::OK,
                Json(json!({"success": true, "message": "Credential deleted successfully"})),
            ),
            None => detail(
                StatusCode::NOT_FOUND,
                &format!("Credential not found. Got credential name: {name}"),
            ),
        }
    })
}

/// `PATCH /model/{id}/update` (updateDeployment): `litellm_params` are merged into the stored
/// ones; that release has no way to drop one.
async fn update_model(
    State(stub): State<LiteLlm>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let path = format!("/model/{id}/update");
    stub.answer("PATCH", path, &headers, |proxy| {
        let Some(params) = proxy.models.get_mut(&id) else {
            return detail(
                StatusCode::NOT_FOUND,
                &format!("Model {id} not found on proxy."),
            );
        };
        let object = body.as_object().cloned().unwrap_or_default();
        if object.keys().any(|k| k != "litellm_params") {
            return detail(StatusCode::UNPROCESSABLE_ENTITY, "unexpected field");
        }
        if let Some(update) = object.get("litellm_params") {
            let Some(update) = update.as_object() else {
                return detail(StatusCode::UNPROCESSABLE_ENTITY, "litellm_params");
            };
            for (k, v) in update {
                params[k] = v.clone();
            }
        }
        (StatusCode::OK, Json(json!({ "model_id": id })))
    })
}

fn settings(server: &TestServer, litellm: &str, once: bool) -> SyncSettings {
    SyncSettings {
        keyhouse_url: server.url(),
        service_token: Secret::new(SYNC_TOKEN),
        litellm_url: litellm.into(),
        litellm_master_key: Secret::new(MASTER_KEY),
        mapping: format!("openrouter=keyhouse-openrouter:{MODEL}"),
        outbound_allowed_networks: vec!["127.0.0.1/32".into()],
        once,
    }
}

async fn start(backend: Backend) -> TestServer {
    let digest = hex::encode(sha2::Sha256::digest(SYNC_TOKEN.as_bytes()));
    TestServer::start_with(backend, |s| {
        s.service_tokens = vec![format!(
            "litellm-sync={digest}:WatchPlatformKeys+ReportPlatformKeySync"
        )];
    })
    .await
}

/// Runs the agent until the returned sender is dropped.
fn run_agent(settings: SyncSettings) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sync_litellm::run(settings, async {
        let _ = stopped.await;
    }));
    stop
}

/// Polls `check` until it holds; panics with `what` after 20 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..800 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen within 20 s");
}

/// The `platform_key.synced` events of openrouter, oldest first: (version, source, details).
async fn synced(server: &TestServer, admin: &str) -> Vec<(i64, String, Value)> {
    let events = server
        .platform_client(Some(admin))
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "platform_key.synced".into(),
            target: "openrouter".into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("audit events")
        .into_inner()
        .events;
    let mut out: Vec<_> = events
        .into_iter()
        .map(|e| {
            assert_eq!(e.actor, "service:litellm-sync");
            assert_eq!(e.identity_source, "service_token");
            let details: Value = serde_json::from_str(&e.details_json).expect("json");
            (
                details["version"].as_i64().expect("version"),
                details["source"].as_str().expect("source").to_owned(),
                details,
            )
        })
        .collect();
    out.reverse();
    out
}

async fn update(server: &TestServer, admin: &str, value: &str) -> i64 {
    server
        .platform_client(Some(admin))
        .await
        .update_platform_key(pb::UpdatePlatformKeyRequest {
            name: "openrouter".into(),
            api_key: value.into(),
        })
        .await
        .expect("update")
        .into_inner()
        .version
}

async fn applied(stub: &LiteLlm, value: &str) -> bool {
    stub.credential_key("keyhouse-openrouter").as_deref() == Some(value)
        && stub.model_key(MODEL).as_deref() == Some(value)
}

async fn updates_rollbacks_and_removals_reach_litellm_and_are_audited(backend: Backend) {
    let server = start(backend).await;
    let admin = server.session("root", Role::Admin).await;
    let (stub, url) = LiteLlm::start().await;
    let _agent = run_agent(settings(&server, &url, false));

    // The initial state (not set) is applied too: nothing to delete, nothing fails.
    eventually("the initial state reported", async || {
        synced(&server, &admin).await.len() == 1
    })
    .await;
    assert_eq!(synced(&server, &admin).await[0].1, "not_set");

    assert_eq!(update(&server, &admin, V1).await, 1);
    eventually("v1 in LiteLLM", async || applied(&stub, V1).await).await;
    assert_eq!(update(&server, &admin, V2).await, 2);
    eventually("v2 in LiteLLM", async || applied(&stub, V2).await).await;

    let rollback = server
        .platform_client(Some(&admin))
        .await
        .rollback_platform_key(pb::RollbackPlatformKeyRequest {
            name: "openrouter".into(),
            version: 1,
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rollback.version, 3);
    eventually("the rollback in LiteLLM", async || applied(&stub, V1).await).await;
    eventually("version 3 reported", async || {
        synced(&server, &admin).await.iter().any(|e| e.0 == 3)
    })
    .await;

    server
        .platform_client(Some(&admin))
        .await
        .delete_platform_key(pb::DeletePlatformKeyRequest {
            name: "openrouter".into(),
        })
        .await
        .expect("delete");
    eventually("the removal in LiteLLM", async || {
        stub.credential_key("keyhouse-openrouter").is_none()
            && stub.model_key(MODEL).as_deref() == Some("os.environ/OPENROUTER_API_KEY")
    })
    .await;
    eventually("the removal reported", async || {
        synced(&server, &admin).await.len() == 5
    })
    .await;

    let events = synced(&server, &admin).await;
    let states: Vec<(i64, &str)> = events.iter().map(|e| (e.0, e.1.as_str())).collect();
    assert_eq!(
        states,
        [
            (0, "not_set"),
            (1, "database"),
            (2, "database"),
            (3, "database"),
            (0, "not_set")
        ],
        "one event per change, in order"
    );
    for (_, _, details) in &events {
        assert_eq!(details["target"], "litellm");
        let text = details.to_string();
        assert!(
            !text.contains(V1) && !text.contains(V2),
            "no secret in {text}"
        );
    }

    // The credential was created once, then updated in place; the master key was always right.
    let seen = stub.seen();
    let shape: Vec<(&str, &str, u16)> = seen
        .iter()
        .map(|s| (s.method, s.path.as_str(), s.status))
        .collect();
    let credential = "/credentials/keyhouse-openrouter";
    let model = format!("/model/{MODEL}/update");
    assert_eq!(
        shape,
        [
            ("DELETE", credential, 404),
            ("PATCH", model.as_str(), 200),
            ("PATCH", credential, 404),
            ("POST", "/credentials", 200),
            ("PATCH", model.as_str(), 200),
            ("PATCH", credential, 200),
            ("PATCH", model.as_str(), 200),
            ("PATCH", credential, 200),
            ("PATCH", model.as_str(), 200),
            ("DELETE", credential, 200),
            ("PATCH", model.as_str(), 200),
        ]
    );
}

/// LiteLLM fails while an update is being applied, and the watch is cut (keyhouse stops); a
/// change made while the agent is disconnected reaches LiteLLM once keyhouse is back.
async fn a_watch_cut_during_an_update_misses_no_change(backend: Backend) {
    let mut server = start(backend).await;
    let admin = server.session("root", Role::Admin).await;
    let (stub, url) = LiteLlm::start().await;
    let _agent = run_agent(settings(&server, &url, false));
    eventually("the initial state reported", async || {
        synced(&server, &admin).await.len() == 1
    })
    .await;

    stub.set(|p| p.failing = true);
    assert_eq!(update(&server, &admin, V1).await, 1);
    eventually("the agent trying v1", async || {
        stub.seen().iter().any(|s| s.status == 500)
    })
    .await;

    server.stop_serving().await;
    // Another replica on the same database takes the change while the agent is cut off.
    let replica = server.replica().await;
    assert_eq!(update(&replica, &admin, V2).await, 2);
    drop(replica);
    server.serve_again().await;
    stub.set(|p| p.failing = false);

    eventually("v2 in LiteLLM", async || applied(&stub, V2).await).await;
    eventually("v2 reported", async || {
        synced(&server, &admin).await.iter().any(|e| e.0 == 2)
    })
    .await;
    // Every report names a version that was stored, in order.
    let versions: Vec<i64> = synced(&server, &admin).await.iter().map(|e| e.0).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]) && versions.last() == Some(&2),
        "{versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_answering_500_then_200_gets_the_change() {
    let server = start(Backend::Sqlite).await;
    let admin = server.session("root", Role::Admin).await;
    let (stub, url) = LiteLlm::start().await;
    let _agent = run_agent(settings(&server, &url, false));
    eventually("the initial state reported", async || {
        synced(&server, &admin).await.len() == 1
    })
    .await;

    stub.set(|p| p.fail_next = 2);
    update(&server, &admin, V1).await;
    eventually("v1 in LiteLLM", async || applied(&stub, V1).await).await;
    let statuses: Vec<u16> = stub
        .seen()
        .iter()
        .skip(2) // the initial state's DELETE and model PATCH
        .map(|s| s.status)
        .collect();
    assert_eq!(
        &statuses[..3],
        [500, 500, 404],
        "two 500s, then the same PATCH again"
    );
    eventually("v1 reported once", async || {
        synced(&server, &admin)
            .await
            .iter()
            .filter(|e| e.0 == 1)
            .count()
            == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_applies_the_current_state_and_exits() {
    let server = start(Backend::Sqlite).await;
    let admin = server.session("root", Role::Admin).await;
    let (stub, url) = LiteLlm::start().await;
    update(&server, &admin, V1).await;

    sync_litellm::run(settings(&server, &url, true), std::future::pending())
        .await
        .expect("--once applies and exits");
    assert!(applied(&stub, V1).await);
    assert_eq!(synced(&server, &admin).await.len(), 1);

    // A master key LiteLLM refuses fails the run, and the change is not reported.
    let mut wrong = settings(&server, &url, true);
    wrong.litellm_master_key = Secret::new("sk-wrong-master-key");
    let err = sync_litellm::run(wrong, std::future::pending())
        .await
        .expect_err("refused by LiteLLM");
    assert!(err.to_string().contains("could not be applied"), "{err:#}");
    assert_eq!(synced(&server, &admin).await.len(), 1);
}

#[test]
fn the_agent_binary_refuses_a_bad_mapping_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyhouse"))
        .args(["sync", "litellm", "--once"])
        .env("KEYHOUSE_SYNC_SERVICE_TOKEN", SYNC_TOKEN)
        .env("LITELLM_MASTER_KEY", MASTER_KEY)
        .env("KEYHOUSE_SYNC_LITELLM_URL", "http://127.0.0.1:9")
        .env("KEYHOUSE_SYNC_LITELLM_MAPPING", "nope=somewhere")
        .output()
        .expect("run keyhouse");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KEYHOUSE_SYNC_LITELLM_MAPPING entry 'nope=somewhere'"),
        "{stderr}"
    );
    assert!(!stderr.contains(MASTER_KEY) && !stderr.contains(SYNC_TOKEN));
}
