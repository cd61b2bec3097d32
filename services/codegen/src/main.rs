//! Regenerates everything in `gen/`: from `proto/`, the Rust messages and tonic stubs and the
//! encoded descriptor set that reflection serves (pure Rust, protox: no system `protoc`); then,
//! from the REST handlers, `gen/openapi.json` (by running `keyhouse openapi`, which is built
//! on the freshly generated code).
//!
//! Usage: `cargo run -p keyhouse-codegen` (writes) or `cargo run -p keyhouse-codegen -- --check`
//! (fails when the checked-in files differ from what the protos produce).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;

const PROTOS: &[&str] = &[
    "keyhouse/v1/user_keys.proto",
    "keyhouse/v1/platform_keys.proto",
];

/// Messages that carry a secret: their `Debug` is written by hand in `gen/src/lib.rs` so that
/// printing one shows a mask.
const SECRET_MESSAGES: &[&str] = &[
    "keyhouse.v1.IssuedKey",
    "keyhouse.v1.VerifyKeyRequest",
    "keyhouse.v1.PutProviderKeyRequest",
    "keyhouse.v1.UpdatePlatformKeyRequest",
    "keyhouse.v1.GetDecryptedPlatformKeyResponse",
    "keyhouse.v1.PlatformKeyEvent",
    "keyhouse.v1.GetProviderKeyForUserResponse",
];

fn main() -> Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("gen/src");

    let staging = std::env::temp_dir().join(format!("keyhouse-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&staging)?;
    generate(&root.join("proto"), &staging)?;

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&staging)? {
        let generated = entry?.path();
        let name = generated
            .file_name()
            .context("generated file has no name")?;
        let target = out.join(name);
        compare_or_write(&std::fs::read(generated)?, &target, check, &mut stale)?;
    }
    if stale.is_empty() {
        let openapi = openapi_document(&root)?;
        compare_or_write(&openapi, &root.join("gen/openapi.json"), check, &mut stale)?;
    }
    std::fs::remove_dir_all(&staging)?;
    if !stale.is_empty() {
        bail!(
            "generated code is stale: {}\nrun `cargo run -p keyhouse-codegen` and commit gen/",
            stale.join(", ")
        );
    }
    Ok(())
}

fn compare_or_write(new: &[u8], target: &Path, check: bool, stale: &mut Vec<String>) -> Result<()> {
    if std::fs::read(target).ok().as_deref() == Some(new) {
        return Ok(());
    }
    if check {
        stale.push(target.display().to_string());
    } else {
        std::fs::write(target, new)?;
        println!("wrote {}", target.display());
    }
    Ok(())
}

/// `keyhouse openapi`, built from this workspace.
fn openapi_document(root: &Path) -> Result<Vec<u8>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "run", "--quiet", "--locked", "-p", "keyhouse", "--", "openapi",
        ])
        .output()
        .context("running `keyhouse openapi`")?;
    if !output.status.success() {
        bail!(
            "`keyhouse openapi` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

fn generate(proto_dir: &Path, out: &Path) -> Result<()> {
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    let fds = protox::compile(&files, [proto_dir]).context("compiling the protos")?;
    std::fs::write(out.join("keyhouse_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .out_dir(out)
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_fds(fds)
        .context("generating Rust code")?;
    Ok(())
}
