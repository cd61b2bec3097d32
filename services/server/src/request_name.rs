//! How metrics and traces name a request: a gRPC call by its method path, but only a method this
//! build defines; a REST request by its verb and route template; anything else `unmatched`. A
//! caller's free text (a path, a made-up method) never becomes a series or a span name.

use std::collections::HashSet;
use std::sync::LazyLock;

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use prost::Message;

/// How metrics and traces name a request: a gRPC call by its method path, a REST request by its
/// verb and route template (never the raw path, which can hold ids); anything else, including a
/// gRPC method this build does not define, is `unmatched`, so that no caller can mint names.
pub fn method_label(grpc: bool, route: Option<&str>, path: &str, verb: &http::Method) -> String {
    match route {
        Some(_) if grpc && is_grpc_method(path) => path.to_owned(),
        Some(route) if !grpc => format!("{verb} {route}"),
        _ => "unmatched".to_owned(),
    }
}

/// Native gRPC and grpc-web alike.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gRPC call's status code as far as the response head tells: a call that failed before any
/// message carries it in its headers; otherwise an HTTP success means OK (a status sent later,
/// in the trailers, is not seen here). `None` for a response that is not a gRPC answer.
pub fn grpc_status(grpc: bool, response: &Response) -> Option<u16> {
    let header = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    match header {
        Some(code) => Some(code),
        None if grpc && response.status().is_success() => Some(0),
        None => None,
    }
}

/// Whether `path` (`/package.Service/Method`) names a gRPC method this build defines: keyhouse's
/// own, Envoy's ext_authz, health and reflection. Telemetry names calls only by these, never by a caller's free text.
pub fn is_grpc_method(path: &str) -> bool {
    static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
        let sets = [
            keyhouse_proto::v1::FILE_DESCRIPTOR_SET,
            keyhouse_proto::envoy::EXT_AUTHZ_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashSet::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        methods
    });
    METHODS.contains(path)
}

#[cfg(test)]
mod tests {
    use super::is_grpc_method;

    #[test]
    fn grpc_methods_are_the_ones_defined() {
        for served in [
            "/keyhouse.v1.UserKeyService/VerifyKey",
            "/keyhouse.v1.PlatformKeyService/WatchPlatformKeys",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(is_grpc_method(served), "{served}");
        }
        for other in [
            "/keyhouse.v1.UserKeyService/Made_Up",
            "/keyhouse.v1.UserKeyService/VerifyKey/extra",
            "keyhouse.v1.UserKeyService/VerifyKey",
            "/api/v1/byok/keys",
        ] {
            assert!(!is_grpc_method(other), "{other}");
        }
    }
}
