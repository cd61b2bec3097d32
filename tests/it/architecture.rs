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

/// Every RPC the contract defines, as (service full name, method).
pub(crate) fn rpcs() -> Vec<(String, String)> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(keyhouse_proto::v1::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                out.push((
                    format!("{}.{}", file.package(), service.name()),
                    method.name().to_owned(),
                ));
            }
        }
    }
    assert!(out.len() >= 20, "the contract's RPCs were found: {out:?}");
    out
}

/// The RPCs served beside the contract, from other projects' protos: Envoy's ext_authz `Check`.
/// They have an authorization row like every RPC, but no REST route, Ingress path or row in the
/// authorization matrix: Envoy calls them inside the cluster, always gets an answer (the verdict
/// is in the body), and `ext_authz.rs` tests every outcome.
pub(crate) fn foreign_rpcs() -> Vec<(String, String)> {
    use prost::Message;
    let set =
        prost_types::FileDescriptorSet::decode(keyhouse_proto::envoy::EXT_AUTHZ_DESCRIPTOR_SET)
            .expect("the ext_authz descriptor set decodes");
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                out.push((
                    format!("{}.{}", file.package(), service.name()),
                    method.name().to_owned(),
                ));
            }
        }
    }
    assert_eq!(
        out,
        [(
            keyhouse_user_keys::ext_authz::SERVICE_NAME.to_owned(),
            "Check".to_owned()
        )]
    );
    out
}

/// (RPC method, HTTP method, path), as each service crate's `ROUTES` holds them.
pub(crate) type Route = (&'static str, &'static str, &'static str);

/// Each service's REST routes and the RPCs it serves on gRPC only, with the reason.
pub(crate) fn rest_of(service: &str) -> (Vec<Route>, &'static [(&'static str, &'static str)]) {
    match service {
        keyhouse_user_keys::SERVICE_NAME => (
            [
                keyhouse_user_keys::rest::ROUTES,
                keyhouse_user_keys::rest_byok::ROUTES,
            ]
            .concat(),
            keyhouse_user_keys::GRPC_ONLY,
        ),
        keyhouse_platform_keys::SERVICE_NAME => (
            [
                keyhouse_platform_keys::rest::ROUTES,
                keyhouse_platform_keys::rest_llm_hub::ROUTES,
            ]
            .concat(),
            keyhouse_platform_keys::GRPC_ONLY,
        ),
        other => panic!("{other} is served by no service crate"),
    }
}

#[test]
fn every_rpc_has_a_row_in_the_authorization_table_and_every_row_an_rpc() {
    use keyhouse_domain::authorization::TABLE;
    let rpcs: Vec<String> = rpcs()
        .iter()
        .chain(&foreign_rpcs())
        .map(|(s, m)| format!("{s}/{m}"))
        .collect();
    for rpc in &rpcs {
        assert_eq!(
            TABLE.iter().filter(|r| r.rpc == rpc).count(),
            1,
            "{rpc} needs exactly one row in keyhouse_domain::authorization::TABLE"
        );
    }
    for row in TABLE {
        assert!(rpcs.iter().any(|r| r == row.rpc), "{} is no RPC", row.rpc);
    }
}

#[test]
fn the_readme_shows_the_authorization_table_as_it_is() {
    let table = keyhouse_domain::authorization::markdown();
    assert!(
        repo_file("README.md").contains(&table),
        "README.md must hold the authorization table exactly as the code has it:\n{table}"
    );
}

#[test]
fn every_rpc_has_a_rest_route_or_says_why_not_and_every_route_is_documented() {
    let openapi: serde_json::Value =
        serde_json::from_str(&repo_file("gen/openapi.json")).expect("gen/openapi.json");
    for (service, method) in rpcs() {
        let (routes, grpc_only) = rest_of(&service);
        let mine: Vec<_> = routes.iter().filter(|r| r.0 == method).collect();
        let excused = grpc_only.iter().any(|(m, _)| *m == method);
        assert!(
            !mine.is_empty() ^ excused,
            "{service}/{method} needs a REST route in its crate's ROUTES, or an entry in GRPC_ONLY saying why not (not both)"
        );
        for (_, verb, path) in mine {
            assert!(
                openapi["paths"][path][verb].is_object(),
                "{service}/{method}: {verb} {path} is not in gen/openapi.json"
            );
        }
    }
}

/// The Ingress paths the chart lists for a service under `ingress.<section>` in its default values
/// (`paths`, routed by default, or `adminPaths`, routed only with `ingress.includeAdminPaths`).
fn ingress_paths(values: &str, section: &str, key: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut in_section = false;
    let mut inside = false;
    for line in values.lines() {
        let trimmed = line.trim();
        if line.starts_with("  ") && !line.starts_with("   ") && !trimmed.starts_with('#') {
            in_section = trimmed == format!("{section}:");
            inside = false;
            continue;
        }
        if in_section && line.starts_with("    ") && trimmed.starts_with(&format!("{key}:")) {
            inside = true;
            continue;
        }
        if inside {
            match trimmed.strip_prefix("- ") {
                Some(path) => paths.push(path.trim().to_owned()),
                None if trimmed.starts_with('#') => {}
                None => inside = false,
            }
        }
    }
    paths
}

/// Whether an Ingress `Prefix` path matches `path` (by whole segments, as Kubernetes does).
fn covered(prefixes: &[String], path: &str) -> bool {
    prefixes.iter().any(|p| {
        let p = p.trim_end_matches('/');
        path == p || path.starts_with(&format!("{p}/"))
    })
}

#[test]
fn the_helm_ingress_routes_every_rpc_to_its_service() {
    let values = repo_file("helm/keyhouse/values.yaml");
    for (service, method) in rpcs() {
        let key = match service.as_str() {
            keyhouse_user_keys::SERVICE_NAME => "userKeyService",
            keyhouse_platform_keys::SERVICE_NAME => "platformKeyService",
            other => panic!("{other} has no deployment in the chart"),
        };
        let public = ingress_paths(&values, "paths", key);
        let mut paths = public.clone();
        paths.extend(ingress_paths(&values, "adminPaths", key));
        let grpc = format!("/{service}/{method}");
        assert!(
            covered(&paths, &grpc),
            "{grpc} is not routed by ingress.paths.{key} or ingress.adminPaths.{key}"
        );
        let admin_only = service == keyhouse_platform_keys::SERVICE_NAME;
        assert_eq!(
            covered(&public, &grpc),
            !admin_only,
            "{grpc}: admin RPCs are routed only with ingress.includeAdminPaths"
        );
        for (_, _, path) in rest_of(&service).0.iter().filter(|r| r.0 == method) {
            assert!(
                covered(&paths, path),
                "{service}/{method}: {path} is not routed by ingress.paths.{key} or ingress.adminPaths.{key} in helm/keyhouse/values.yaml"
            );
            assert!(
                !(path.starts_with("/api/v1/admin/") && covered(&public, path)),
                "{path} is an admin path but ingress.paths.{key} routes it by default"
            );
        }
    }
    assert!(!ingress_paths(&values, "paths", "userKeyService").is_empty());
    assert!(!covered(&["/api/v1/byok".into()], "/api/v1/byokx"));
}
