//! Generated bad input: schemathesis (PyPI, `tests/schemathesis/requirements.txt`) reads the
//! served `/openapi.json` and sends well over a thousand generated requests, as a user and as an
//! admin, to a real server on each database. Every answer must be a status the document lists,
//! never a 5xx, with a body and headers that match the document.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use keyhouse_domain::caller::Role;
use keyhouse_domain::providers::catalog;
use serde_json::Value;

use crate::on_both_databases;
use crate::support::{Backend, TempDir, TestServer};

on_both_databases!(generated_requests_get_only_documented_answers_and_never_a_server_error);

/// Every check but two, which test what keyhouse deliberately does otherwise: the document's
/// schemas are looser than validation (a string that is no provider, a `key_id` that is no UUID),
/// so schema-valid input may still be refused (`positive_data_acceptance`); and a revoked key
/// stays readable, with status `revoked` (`use_after_free`).
const EXCLUDED_CHECKS: &str = "positive_data_acceptance,use_after_free";
/// The BYOK test sends a request to the key's stored `endpoint`, which generated input could
/// point anywhere: no generated request may leave this machine. tests/it/byok.rs covers it.
const EXCLUDED_OPERATION: &str = "byok_test_key";
const SEED: &str = "20261202";
const EXAMPLES_PER_OPERATION: &str = "40";
const MIN_REQUESTS: usize = 1000;

/// The `st` command, installed once per version of the requirements file.
fn schemathesis() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        crate::support::venv_installed("schemathesis", "tests/schemathesis/requirements.txt")
            .join("st")
    })
}

/// What one schemathesis run did: its output, and the requests it sent with their answers.
struct Run {
    who: &'static str,
    output: Output,
    report: Value,
    entries: Vec<Value>,
}

fn run(server_url: &str, who: &'static str, token: &str, dir: &Path) -> Run {
    let har = dir.join(format!("{who}.har.json"));
    let json = dir.join(format!("{who}.report.json"));
    let output = Command::new(schemathesis())
        .current_dir(dir)
        .arg("run")
        .arg(format!("{server_url}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--seed", SEED, "--max-examples", EXAMPLES_PER_OPERATION])
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--checks", "all", "--exclude-checks", EXCLUDED_CHECKS])
        .args(["--exclude-operation-id", EXCLUDED_OPERATION])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "har,json", "--report-har-path"])
        .arg(&har)
        .arg("--report-json-path")
        .arg(&json)
        .output()
        .expect("run schemathesis");
    let read = |path: &Path| -> Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "schemathesis ({who}) wrote no report at {}: {e}\n{}{}",
                path.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        serde_json::from_str(&text).expect("a JSON report")
    };
    let report = read(&json);
    let entries = read(&har)["log"]["entries"]
        .as_array()
        .expect("HAR entries")
        .clone();
    Run {
        who,
        output,
        report,
        entries,
    }
}

async fn generated_requests_get_only_documented_answers_and_never_a_server_error(backend: Backend) {
    // Every provider's live test goes to a local stand-in, never to the provider.
    let stub = crate::stub::Provider::start("sk-never-matches-0000").await;
    let stub_url = stub.url.clone();
    let server = TestServer::start_with(backend, move |s| {
        s.domain.provider_base_urls = catalog::platform()
            .chain(catalog::byok())
            .map(|p| format!("{}={stub_url}", p.id))
            .collect();
    })
    .await;
    let user = server.session("fuzz-user", Role::User).await;
    let admin = server.session("fuzz-admin", Role::Admin).await;
    let url = server.url();

    let runs = tokio::task::spawn_blocking(move || {
        let dir = TempDir::new();
        vec![
            run(&url, "user", &user, &dir.0),
            run(&url, "admin", &admin, &dir.0),
        ]
    })
    .await
    .expect("join");

    let mut total = 0;
    for run in &runs {
        let who = run.who;
        let stdout = String::from_utf8_lossy(&run.output.stdout);
        assert!(
            run.output.status.success() && run.report["exit_code"] == 0,
            "schemathesis as the {who} found failures (exit {:?}):\n{stdout}{}\nfailures: {}\nerrors: {}",
            run.output.status.code(),
            String::from_utf8_lossy(&run.output.stderr),
            run.report["failures"],
            run.report["errors"],
        );
        let server_errors: Vec<String> = run
            .entries
            .iter()
            .filter(|e| e["response"]["status"].as_u64().is_some_and(|s| s >= 500))
            .map(|e| format!("{} {}", e["request"]["method"], e["request"]["url"]))
            .collect();
        assert!(
            server_errors.is_empty(),
            "5xx answers as the {who}: {server_errors:?}"
        );
        assert_eq!(
            run.report["operations"]["errored"], 0,
            "every operation could be tested as the {who}:\n{stdout}"
        );
        total += run.entries.len();
    }
    println!(
        "schemathesis sent {total} requests: {}",
        runs.iter()
            .map(|r| format!("{} as the {}", r.entries.len(), r.who))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        total >= MIN_REQUESTS,
        "schemathesis sent {total} requests; at least {MIN_REQUESTS} are wanted"
    );
    assert!(
        runs.iter()
            .all(|r| r.entries.iter().any(|e| e["response"]["status"] == 422)),
        "generated bad input was refused with 422 in each run"
    );
}
