//! The house rules that keep the layers apart, checked so that a change that breaks one fails
//! here rather than in review.

use std::path::Path;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The dependency names a manifest declares, in any dependency table.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line.trim_matches(['[', ']']).ends_with("dependencies");
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").trim();
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// Crates that serve, route or describe HTTP and gRPC, or export telemetry: the server's.
const TRANSPORT_CRATES: &[&str] = &[
    "axum",
    "http",
    "http-body",
    "hyper",
    "tonic",
    "tonic-web",
    "tonic-health",
    "tonic-reflection",
    "tonic-prost",
    "tower",
    "tower-http",
    "utoipa",
    "utoipa-swagger-ui",
    "opentelemetry",
    "opentelemetry-otlp",
    "opentelemetry_sdk",
    "opentelemetry-proto",
    "tracing-opentelemetry",
    "tracing-subscriber",
    "prometheus",
    "keyhouse-server",
];

#[test]
fn the_domain_crate_names_no_transport_crate() {
    let manifest = repo_file("services/domain/Cargo.toml");
    let names = dependencies(&manifest);
    assert!(
        names.iter().any(|n| n == "sea-orm"),
        "the manifest parser found the domain's dependencies: {names:?}"
    );
    let transport: Vec<_> = names
        .iter()
        .filter(|n| TRANSPORT_CRATES.contains(&n.as_str()))
        .collect();
    assert!(
        transport.is_empty(),
        "services/domain depends on transport crates {transport:?}; that code belongs in services/server"
    );
}

#[test]
fn the_manifest_check_sees_a_transport_crate() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nsea-orm.workspace = true\ntonic = { version = \"0.14\" }\n";
    let names = dependencies(manifest);
    assert!(names.iter().any(|n| n == "tonic"), "{names:?}");
}
