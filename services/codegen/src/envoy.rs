//! The descriptors of Envoy's external authorization service, for reflection: the `envoy-types`
//! crate ships every Envoy proto as one encoded descriptor set (`src/generated/types.bin`) but
//! exports none of it. This takes from it `envoy/service/auth/v3/external_auth.proto` and the
//! files it imports, transitively, and nothing else (the whole set is over 3 MB).
//!
//! Each file's bytes are copied as they are, never decoded and encoded again: prost would drop
//! the custom options (`validate.rules`, `udpa.annotations`) that reflection clients may read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;
use prost::bytes::Buf;

/// The file that defines `envoy.service.auth.v3.Authorization`.
pub const ROOT: &str = "envoy/service/auth/v3/external_auth.proto";

/// `types.bin` of the `envoy-types` package this workspace locks, found through `cargo metadata`.
pub fn descriptor_set_path(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only the host's packages: without the filter cargo fetches every platform's crates.
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("-vV")
            .output()
            .context("running `rustc -vV`")?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("`rustc -vV` names no host")?;
    let output = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            &host,
        ])
        .output()
        .context("running `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading `cargo metadata`")?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .context("`cargo metadata` lists no envoy-types package; a service crate depends on it")?;
    let dir = Path::new(manifest)
        .parent()
        .context("envoy-types' manifest has no folder")?;
    Ok(dir.join("src/generated/types.bin"))
}

/// The encoded set holding `ROOT` and its imports, each file after the files it imports.
pub fn ext_authz_descriptor_set(types_bin: &[u8]) -> Result<Vec<u8>> {
    let mut files: BTreeMap<String, (Vec<String>, &[u8])> = BTreeMap::new();
    for raw in split_set(types_bin)? {
        let file = prost_types::FileDescriptorProto::decode(raw)
            .context("a file of envoy-types' descriptor set does not decode")?;
        files.insert(file.name().to_owned(), (file.dependency, raw));
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    visit(ROOT, &files, &mut done, &mut out)?;
    Ok(out)
}

fn visit<'a>(
    name: &'a str,
    files: &'a BTreeMap<String, (Vec<String>, &[u8])>,
    done: &mut BTreeSet<&'a str>,
    out: &mut Vec<u8>,
) -> Result<()> {
    if !done.insert(name) {
        return Ok(());
    }
    let (dependencies, raw) = files
        .get(name)
        .with_context(|| format!("envoy-types' descriptor set lacks {name}"))?;
    for dependency in dependencies {
        visit(dependency, files, done, out)?;
    }
    // FileDescriptorSet.file, field 1, length-delimited.
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(raw.len() as u64, out);
    out.extend_from_slice(raw);
    Ok(())
}

/// The encoded `FileDescriptorProto`s of an encoded `FileDescriptorSet`, undecoded.
fn split_set(mut set: &[u8]) -> Result<Vec<&[u8]>> {
    let mut files = Vec::new();
    while set.has_remaining() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut set)?;
        if tag != 1 || wire_type != prost::encoding::WireType::LengthDelimited {
            bail!("envoy-types' descriptor set has an unexpected field {tag}");
        }
        let len = usize::try_from(prost::encoding::decode_varint(&mut set)?)?;
        if len > set.len() {
            bail!("envoy-types' descriptor set is truncated");
        }
        let (file, rest) = set.split_at(len);
        files.push(file);
        set = rest;
    }
    Ok(files)
}
