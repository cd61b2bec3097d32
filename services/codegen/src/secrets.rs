//! The `(keyhouse.v1.secret)` field option: which fields carry a secret, and which look as if
//! they did but are not marked.

use anyhow::{Result, bail};
use prost_reflect::{
    DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};

/// The option's full name, as declared in `proto/keyhouse/v1/options.proto`.
const SECRET_OPTION: &str = "keyhouse.v1.secret";

/// Names that end like a secret's but are not one. Keep it short: each entry is a field the
/// check no longer looks at.
const NOT_SECRETS: &[&str] = &[
    // Pagination cursors: opaque, but they only encode a position in a list.
    "page_token",
    "next_page_token",
    // Flags: whether a value is set, whether the caller asks for the secret.
    "has_key",
    "include_secret",
];

/// The messages of the contract: the well-known types are not ours to mark, and a map's entry
/// message (with its `key` field) has no Rust struct of its own.
fn contract_messages(pool: &DescriptorPool) -> impl Iterator<Item = MessageDescriptor> + '_ {
    pool.all_messages()
        .filter(|m| m.package_name() != "google.protobuf" && !m.is_map_entry())
}

/// Every field marked as a secret, in declaration order. Fails on a mark the generated `Debug`
/// cannot honour: it masks a `string` or `bytes` that is a plain field, a proto3 `optional` or a
/// oneof's case, not a message or a list.
pub fn secret_fields(pool: &DescriptorPool) -> Result<Vec<FieldDescriptor>> {
    let Some(option) = pool.get_extension_by_name(SECRET_OPTION) else {
        return Ok(Vec::new());
    };
    let mut secrets = Vec::new();
    for message in contract_messages(pool) {
        for field in message.fields().filter(|f| is_marked(f, &option)) {
            let plain = matches!(field.kind(), Kind::String | Kind::Bytes)
                && !field.is_list()
                && (!field.supports_presence() || field.containing_oneof().is_some());
            if !plain {
                bail!(
                    "{}: ({SECRET_OPTION}) is supported on plain string and bytes fields only",
                    field.full_name()
                );
            }
            secrets.push(field);
        }
    }
    Ok(secrets)
}

/// Full names of the fields named like a secret that lack the mark.
pub fn unmarked_secrets(pool: &DescriptorPool) -> Vec<String> {
    let option = pool.get_extension_by_name(SECRET_OPTION);
    contract_messages(pool)
        .flat_map(|m| m.fields().collect::<Vec<_>>())
        .filter(|f| looks_secret(f.name()))
        .filter(|f| !option.as_ref().is_some_and(|o| is_marked(f, o)))
        .map(|f| f.full_name().to_owned())
        .collect()
}

/// What to do about them.
pub fn unmarked_message(unmarked: &[String]) -> String {
    format!(
        "fields named like a secret without [({SECRET_OPTION}) = true]: {}\n\
         mark them, or, if one really is not a secret, add it to NOT_SECRETS in \
         services/codegen/src/secrets.rs with the reason",
        unmarked.join(", ")
    )
}

/// A proto3 `optional` field sits in a synthetic oneof but is a plain field in Rust.
pub fn in_real_oneof(field: &FieldDescriptor) -> bool {
    field.containing_oneof().is_some_and(|o| !o.is_synthetic())
}

fn is_marked(field: &FieldDescriptor, option: &ExtensionDescriptor) -> bool {
    field
        .options()
        .get_extension(option)
        .as_bool()
        .unwrap_or(false)
}

fn looks_secret(name: &str) -> bool {
    // `api_key` and `..._api_key` are covered by `key`.
    const SECRET_WORDS: &[&str] = &["key", "token", "secret"];
    !NOT_SECRETS.contains(&name)
        && SECRET_WORDS.iter().any(|word| {
            name == *word
                || name
                    .strip_suffix(word)
                    .is_some_and(|rest| rest.ends_with('_'))
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use protox::Compiler;
    use protox::file::{
        ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
    };

    use super::*;

    fn proto_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto")
    }

    #[test]
    fn every_field_named_like_a_secret_is_marked() {
        let compiler = crate::compile(&proto_dir()).expect("the protos compile");
        let unmarked = unmarked_secrets(&compiler.descriptor_pool());
        assert!(unmarked.is_empty(), "{}", unmarked_message(&unmarked));
    }

    /// One proto held in memory, so the check can be run on a contract that breaks the rule.
    struct InMemory {
        name: &'static str,
        source: &'static str,
    }

    impl FileResolver for InMemory {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            if name == self.name {
                File::from_source(name, self.source)
            } else {
                Err(protox::Error::file_not_found(name))
            }
        }
    }

    fn compile_in_memory(source: &'static str) -> DescriptorPool {
        let name = "leaky.proto";
        let mut resolver = ChainFileResolver::new();
        resolver.add(InMemory { name, source });
        resolver.add(IncludeFileResolver::new(proto_dir()));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = Compiler::with_file_resolver(resolver);
        compiler.open_file(name).expect("the test proto compiles");
        compiler.descriptor_pool()
    }

    #[test]
    fn an_unmarked_secret_is_reported() {
        let pool = compile_in_memory(
            r#"
            syntax = "proto3";
            package leaky.v1;
            import "keyhouse/v1/options.proto";

            message Leaky {
              string api_key = 1;
              string refresh_token = 2;
              string secret = 3 [(keyhouse.v1.secret) = true];
              string page_token = 4;
              string key_preview = 5;
              map<string, string> labels = 6;
              message Nested {
                string key = 1;
              }
            }
            "#,
        );
        let mut unmarked = unmarked_secrets(&pool);
        unmarked.sort();
        assert_eq!(
            unmarked,
            [
                "leaky.v1.Leaky.Nested.key",
                "leaky.v1.Leaky.api_key",
                "leaky.v1.Leaky.refresh_token",
            ]
        );
        let secrets: Vec<_> = secret_fields(&pool)
            .expect("a plain string may be marked")
            .iter()
            .map(|f| f.full_name().to_owned())
            .collect();
        assert_eq!(secrets, ["leaky.v1.Leaky.secret"]);
    }

    #[test]
    fn a_mark_the_debug_cannot_mask_is_refused() {
        let pool = compile_in_memory(
            r#"
            syntax = "proto3";
            package leaky.v1;
            import "keyhouse/v1/options.proto";

            message Leaky {
              repeated string keys = 1 [(keyhouse.v1.secret) = true];
            }
            "#,
        );
        assert!(secret_fields(&pool).is_err());
    }

    #[test]
    fn an_optional_secret_is_masked() {
        let pool = compile_in_memory(
            r#"
            syntax = "proto3";
            package keyhouse.v1;
            import "keyhouse/v1/options.proto";

            message Candidate {
              optional string secret = 1 [(keyhouse.v1.secret) = true];
            }
            "#,
        );
        let secrets = secret_fields(&pool).expect("an optional string can be masked");
        let root = crate::crate_root::render(&secrets).expect("rendered");
        assert!(
            root.contains("self.secret.as_ref().map(|v| Redacted(v.is_empty()))"),
            "{root}"
        );
    }
}
