//! `gen/src/lib.rs`: the crate root around the prost output, with the list of secret fields and
//! a masked `Debug` for every message that has one.
//!
//! The text is written as rustfmt would format it, because `cargo fmt --check` reads this file
//! (it does not read the `include!`d prost output).

use std::fmt::Write;

use anyhow::{Result, bail};
use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_reflect::{FieldDescriptor, MessageDescriptor, OneofDescriptor};

use crate::secrets::in_real_oneof;

/// The one package the crate exposes, as `keyhouse_proto::v1`.
const PACKAGE: &str = "keyhouse.v1";

const MAX_WIDTH: usize = 100;
/// rustfmt's `fn_call_width` at `max_width = 100`.
const FN_CALL_WIDTH: usize = 60;

const HEADER: &str = r#"//! The keyhouse contract, generated from `proto/keyhouse/v1`.
//!
//! Generated, like everything in `gen/`: do not edit. Change the protos (or the generator in
//! `services/codegen`) and run `cargo run -p keyhouse-codegen`.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    include!("keyhouse.v1.rs");

    /// The encoded `FileDescriptorSet` of every keyhouse proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("keyhouse_descriptor.bin");
"#;

const SECRET_FIELDS_DOC: &str = r#"
    /// Every field marked `[(keyhouse.v1.secret) = true]`, by full name. Their messages' `Debug`
    /// masks them; logs and traces must not show them any other way either.
"#;

/// Helpers the masked impls use.
const HELPERS: &str = r#"
    use std::fmt;

    /// What `Debug` shows for a secret, given whether the field is empty: `<redacted>`, or `""`
    /// for an empty one, so that a log still tells a missing secret from a present one.
    struct Redacted(bool);

    impl fmt::Debug for Redacted {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.0 { "\"\"" } else { "<redacted>" })
        }
    }
"#;

/// Only written when a masked message has a oneof: unused, it would not compile warning-free.
const VARIANT_HELPER: &str = r#"
    /// A oneof's case, as `#[derive(Debug)]` shows a tuple variant.
    fn variant(f: &mut fmt::Formatter<'_>, name: &str, value: &dyn fmt::Debug) -> fmt::Result {
        f.debug_tuple(name).field(value).finish()
    }
"#;

const ENVOY: &str = r#"
/// Envoy's external authorization service (`envoy.service.auth.v3.Authorization`), whose
/// messages and service trait come from the `envoy-types` crate.
pub mod envoy {
    /// The encoded `FileDescriptorSet` of `envoy/service/auth/v3/external_auth.proto` and every
    /// file it imports, as the `envoy-types` crate ships them, for gRPC reflection.
    pub const EXT_AUTHZ_DESCRIPTOR_SET: &[u8] = include_bytes!("ext_authz_descriptor.bin");
}
"#;

/// The messages whose `Debug` this file writes (prost must not derive theirs, nor their
/// oneofs').
pub fn masked_messages(secrets: &[FieldDescriptor]) -> Vec<MessageDescriptor> {
    let mut messages: Vec<MessageDescriptor> = Vec::new();
    for field in secrets {
        let message = field.parent_message();
        if !messages.contains(message) {
            messages.push(message.clone());
        }
    }
    messages
}

pub fn render(secrets: &[FieldDescriptor]) -> Result<String> {
    let mut out = HEADER.to_owned();
    out.push_str(SECRET_FIELDS_DOC);
    out.push_str("    pub const SECRET_FIELDS: &[&str] = &[");
    if secrets.is_empty() {
        out.push_str("];\n");
    } else {
        out.push('\n');
        for field in secrets {
            writeln!(out, "        {:?},", field.full_name())?;
        }
        out.push_str("    ];\n");
    }
    let messages = masked_messages(secrets);
    if !messages.is_empty() {
        out.push_str(HELPERS);
    }
    if messages.iter().any(|m| real_oneofs(m).next().is_some()) {
        out.push_str(VARIANT_HELPER);
    }
    for message in &messages {
        let modules = rust_modules(message)?;
        let path = format!("{modules}{}", rust_type(message.name()));
        out.push('\n');
        message_impl(&mut out, message, &path, secrets)?;
        for oneof in real_oneofs(message) {
            // prost puts a message's oneof enums in a module named after the message.
            let module = rust_field(message.name());
            let path = format!("{modules}{module}::{}", rust_type(oneof.name()));
            out.push('\n');
            oneof_impl(&mut out, &oneof, &path, secrets)?;
        }
    }
    out.push_str("}\n");
    out.push_str(ENVOY);
    Ok(out)
}

/// prost's derived `Debug`, except for the secrets: fields in struct order (plain fields as
/// declared, then oneofs), each shown with its own `Debug`. One difference: an enum field
/// shows its number, where prost's derive shows the variant's name.
fn message_impl(
    out: &mut String,
    message: &MessageDescriptor,
    path: &str,
    secrets: &[FieldDescriptor],
) -> Result<()> {
    let type_name = rust_type(message.name());
    writeln!(out, "    impl fmt::Debug for {path} {{")?;
    out.push_str("        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {\n");
    let builder = format!("f.debug_struct({type_name:?})");
    writeln!(out, "            let mut s = {builder};")?;
    for field in message.fields().filter(|f| !in_real_oneof(f)) {
        let name = rust_field(field.name());
        let value = if secrets.contains(&field) && field.supports_presence() {
            // A proto3 `optional`: `None`, or `Some` of the masked value.
            format!("&self.{name}.as_ref().map(|v| Redacted(v.is_empty()))")
        } else if secrets.contains(&field) {
            format!("&Redacted(self.{name}.is_empty())")
        } else {
            format!("&self.{name}")
        };
        field_line(out, &name, &value);
    }
    for oneof in real_oneofs(message) {
        let name = rust_field(oneof.name());
        field_line(out, &name, &format!("&self.{name}"));
    }
    out.push_str("            s.finish()\n        }\n    }\n");
    Ok(())
}

/// A oneof's enum: prost leaves its `Debug` out along with its message's.
fn oneof_impl(
    out: &mut String,
    oneof: &OneofDescriptor,
    path: &str,
    secrets: &[FieldDescriptor],
) -> Result<()> {
    writeln!(out, "    impl fmt::Debug for {path} {{")?;
    out.push_str("        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {\n");
    out.push_str("            match self {\n");
    for field in oneof.fields() {
        let case = rust_type(field.name());
        let value = if secrets.contains(&field) {
            "&Redacted(v.is_empty())"
        } else {
            "v"
        };
        let line = format!("                Self::{case}(v) => variant(f, {case:?}, {value}),");
        if line.len() <= MAX_WIDTH {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "                Self::{case}(v) => variant(")?;
            writeln!(out, "                    f,\n                    {case:?},")?;
            writeln!(out, "                    {value},\n                ),")?;
        }
    }
    out.push_str("            }\n        }\n    }\n");
    Ok(())
}

/// `s.field("name", value);`, broken over lines as rustfmt does when it is too long.
fn field_line(out: &mut String, name: &str, value: &str) {
    let line = format!("            s.field({name:?}, {value});");
    // rustfmt also breaks a call whose arguments are longer than `fn_call_width`.
    if line.len() <= MAX_WIDTH && format!("{name:?}, {value}").len() <= FN_CALL_WIDTH {
        out.push_str(&line);
        out.push('\n');
    } else {
        out.push_str("            s.field(\n");
        out.push_str(&format!("                {name:?},\n"));
        out.push_str(&format!("                {value},\n"));
        out.push_str("            );\n");
    }
}

/// The modules around the message's Rust type, relative to `keyhouse_proto::v1` (`outer::` for
/// a message nested in `Outer`).
fn rust_modules(message: &MessageDescriptor) -> Result<String> {
    let Some(path) = message
        .full_name()
        .strip_prefix(PACKAGE)
        .and_then(|p| p.strip_prefix('.'))
    else {
        bail!(
            "{}: secrets are supported in package {PACKAGE} only",
            message.full_name()
        );
    };
    let mut names: Vec<&str> = path.split('.').collect();
    names.pop();
    Ok(names
        .iter()
        .map(|m| format!("{}::", rust_field(m)))
        .collect())
}

/// The oneofs that are a Rust enum (a proto3 `optional` makes a synthetic one that is not).
fn real_oneofs(message: &MessageDescriptor) -> impl Iterator<Item = OneofDescriptor> + '_ {
    message.oneofs().filter(|o| !o.is_synthetic())
}

/// The Rust name prost gives a field, oneof or nested-type module.
fn rust_field(proto_name: &str) -> String {
    sanitize(proto_name.to_snake_case())
}

/// The Rust name prost gives a message.
fn rust_type(proto_name: &str) -> String {
    sanitize(proto_name.to_upper_camel_case())
}

/// prost's rule for names that collide with Rust keywords: a raw identifier where Rust allows
/// one, a trailing underscore where it does not.
fn sanitize(ident: String) -> String {
    const RAW: &[&str] = &[
        "as", "break", "const", "continue", "else", "enum", "false", "fn", "for", "if", "impl",
        "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static",
        "struct", "trait", "true", "type", "unsafe", "use", "where", "while", "dyn", "abstract",
        "become", "box", "do", "final", "macro", "override", "priv", "typeof", "unsized",
        "virtual", "yield", "async", "await", "try", "gen",
    ];
    const SUFFIXED: &[&str] = &["_", "super", "self", "Self", "extern", "crate"];
    if RAW.contains(&ident.as_str()) {
        format!("r#{ident}")
    } else if SUFFIXED.contains(&ident.as_str()) {
        format!("{ident}_")
    } else if ident.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{ident}")
    } else {
        ident
    }
}
