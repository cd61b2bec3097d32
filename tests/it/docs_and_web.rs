//! The API description and the browser transports: `/openapi.json` is the checked-in
//! `gen/openapi.json` and lists every REST path; a real grpc-web client from npm works.

use std::process::Command;
use std::sync::OnceLock;

use keyhouse_domain::caller::Role;
use serde_json::Value;

use crate::on_both_databases;
use crate::support::{Backend, TestServer};

on_both_databases!(a_grpc_web_client_from_npm_creates_and_lists_keys);

const REST_PATHS: &[&str] = &[
    "/api/v1/account/uc-api-keys",
    "/api/v1/account/uc-api-keys/{key_id}",
    "/api/v1/account/uc-api-keys/{key_id}/regenerate",
    "/api/v1/account/uc-api-keys/{key_id}/usage",
    "/api/v1/auth/validate-key",
    "/api/v1/byok/providers",
    "/api/v1/byok/keys",
    "/api/v1/byok/keys/add",
    "/api/v1/byok/keys/test/{provider}",
    "/api/v1/byok/keys/{provider}",
    "/api/v1/byok/stats",
    "/api/v1/llm/providers/info",
    "/api/v1/llm/providers/keys",
    "/api/v1/llm/providers/keys/test",
    "/api/v1/llm/providers/keys/{provider_id}",
    "/api/v1/admin/platform-keys",
    "/api/v1/admin/platform-keys/{name}",
    "/api/v1/admin/platform-keys/{name}/decrypted",
    "/api/v1/admin/platform-keys/{name}/health",
    "/api/v1/admin/platform-keys/{name}/versions",
    "/api/v1/admin/platform-keys/{name}/rollback",
    "/api/v1/admin/platform-keys/{name}/test",
    "/api/v1/admin/audit-events",
    "/auth/login",
    "/auth/callback",
    "/auth/logout",
    "/auth/session",
];

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_checked_in_one_and_lists_every_rest_path() {
    let server = TestServer::start(Backend::Sqlite).await;
    let served: Value = server
        .http()
        .get(server.rest("/openapi.json"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("gen/openapi.json")).expect("gen/openapi.json"),
    )
    .expect("JSON");
    assert!(
        served == checked_in,
        "gen/openapi.json is stale: run `cargo run -p keyhouse-codegen`"
    );
    assert_eq!(served["openapi"], "3.1.0");
    let paths = served["paths"].as_object().expect("paths");
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort_unstable();
    let mut expected = REST_PATHS.to_vec();
    expected.sort_unstable();
    assert_eq!(listed, expected);

    let probe = |path: &'static str| server.http().get(server.rest(path)).send();
    assert_eq!(
        probe("/healthz")
            .await
            .expect("healthz")
            .json::<Value>()
            .await
            .expect("JSON")["status"],
        "alive"
    );
    assert_eq!(
        probe("/readyz")
            .await
            .expect("readyz")
            .json::<Value>()
            .await
            .expect("JSON")["status"],
        "ready"
    );

    for page in ["/docs/", "/redoc", "/redoc/redoc.standalone.js"] {
        let res = server
            .http()
            .get(server.rest(page))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 200, "{page}");
    }
    let redoc = server
        .http()
        .get(server.rest("/redoc"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(
        !redoc.contains("https://"),
        "ReDoc loads nothing from another host"
    );
    let swagger = server
        .http()
        .get(server.rest("/docs/"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(
        !swagger.contains("https://"),
        "Swagger UI loads nothing from another host"
    );
}

/// openapi-spec-validator from PyPI, installed once into the build's scratch directory.
#[test]
fn the_checked_in_openapi_document_passes_an_established_validator() {
    let deps = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi-spec-validator");
    let requirements = repo_root().join("tests/openapi/requirements.txt");
    if !deps.join(".complete").exists() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--root-user-action=ignore",
                "--target",
            ])
            .arg(&deps)
            .arg("--requirement")
            .arg(&requirements)
            .status()
            .expect("python3 with pip is needed for the OpenAPI validation test");
        assert!(
            status.success(),
            "pip install of openapi-spec-validator failed"
        );
        std::fs::write(deps.join(".complete"), b"").expect("mark installed");
    }
    let out = Command::new("python3")
        .env("PYTHONPATH", &deps)
        .arg(repo_root().join("tests/openapi/validate.py"))
        .arg(repo_root().join("gen/openapi.json"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "gen/openapi.json is not a valid OpenAPI document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid OpenAPI 3.1.0"));
}

/// The grpc-web client beside its npm packages (`support::npm_installed`).
fn grpc_web_client() -> &'static std::path::Path {
    static READY: OnceLock<std::path::PathBuf> = OnceLock::new();
    READY.get_or_init(|| crate::support::npm_installed("grpc-web").join("client.mjs"))
}

async fn a_grpc_web_client_from_npm_creates_and_lists_keys(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.session("web", Role::User).await;
    let script = grpc_web_client().to_owned();
    let url = server.url();
    let run = move |args: Vec<String>| {
        Command::new("node")
            .env(
                "KEYHOUSE_DESCRIPTOR_SET",
                repo_root().join("gen/src/keyhouse_descriptor.bin"),
            )
            .arg(&script)
            .args(args)
            .output()
            .expect("node")
    };

    let out = tokio::task::spawn_blocking({
        let (url, token) = (url.clone(), token.clone());
        let run = run.clone();
        move || run(vec![url, token])
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "grpc-web client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(result["created"]["key_name"], "from grpc-web");
    assert_eq!(
        (
            result["created"]["api_key_prefix"].as_str(),
            result["created"]["api_key_length"].as_u64()
        ),
        (Some("uc_"), Some(67))
    );
    let id = result["created"]["key_id"].clone();
    assert_eq!(result["listed"], serde_json::json!([id]));

    // The key really is the user's: gRPC sees it too.
    let listed = server
        .user_client(Some(&token))
        .await
        .list_keys(keyhouse_proto::v1::ListKeysRequest::default())
        .await
        .expect("list");
    assert_eq!(listed.into_inner().keys[0].key_id, id.as_str().expect("id"));

    let out = tokio::task::spawn_blocking(move || {
        run(vec![url, String::new(), "--expect-unauthenticated".into()])
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "without a session grpc-web is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
