//! Regenerates everything in `gen/`: from `proto/`, the Rust messages and tonic stubs, the crate
//! root `gen/src/lib.rs` (with a masked `Debug` for every message with a field marked
//! `[(keyhouse.v1.secret) = true]`) and the encoded descriptor set that reflection serves (pure
//! Rust, protox: no system `protoc`), and the descriptors of Envoy's ext_authz service taken from
//! the `envoy-types` crate (`envoy.rs`); then, from the REST handlers, `gen/openapi.json` (by running
//! `keyhouse openapi`, which is built on the freshly generated code).
//!
//! Usage: `cargo run -p keyhouse-codegen` (writes) or `cargo run -p keyhouse-codegen -- --check`
//! (fails when the checked-in files differ from what the protos produce).

mod crate_root;
mod envoy;
mod secrets;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protox::Compiler;

/// The files that define services; the files they import come along.
const PROTOS: &[&str] = &[
    "keyhouse/v1/user_keys.proto",
    "keyhouse/v1/platform_keys.proto",
];

fn main() -> Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("gen/src");

    let staging = std::env::temp_dir().join(format!("keyhouse-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&staging)?;
    generate(&root.join("proto"), &staging)?;
    let types_bin = envoy::descriptor_set_path(&root)?;
    let types_bin =
        std::fs::read(&types_bin).with_context(|| format!("reading {}", types_bin.display()))?;
    std::fs::write(
        staging.join("ext_authz_descriptor.bin"),
        envoy::ext_authz_descriptor_set(&types_bin)?,
    )?;

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&staging)? {
        let generated = entry?.path();
        let name = generated
            .file_name()
            .context("generated file has no name")?;
        let target = out.join(name);
        compare_or_write(&std::fs::read(generated)?, &target, check, &mut stale)?;
    }
    // Only what this program writes may sit in gen/src: a hand-written file there would pass
    // for generated code.
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        let name = path.file_name().context("file has no name")?;
        if !staging.join(name).exists() {
            foreign.push(path.display().to_string());
        }
    }
    if stale.is_empty() && foreign.is_empty() {
        let openapi = openapi_document(&root)?;
        compare_or_write(&openapi, &root.join("gen/openapi.json"), check, &mut stale)?;
    }
    std::fs::remove_dir_all(&staging)?;
    if !foreign.is_empty() {
        bail!(
            "not generated, yet in gen/src: {}\nmove them out of gen/",
            foreign.join(", ")
        );
    }
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

/// Compiles the protos with source info (the comments become doc comments) and every import
/// (reflection clients need them).
fn compile(proto_dir: &Path) -> Result<Compiler> {
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    let mut compiler = Compiler::new([proto_dir]).context("compiling the protos")?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)
        .context("compiling the protos")?;
    Ok(compiler)
}

fn generate(proto_dir: &Path, out: &Path) -> Result<()> {
    let compiler = compile(proto_dir)?;
    let pool = compiler.descriptor_pool();
    // Refuse early, when the field is being added, rather than in the test run.
    let unmarked = secrets::unmarked_secrets(&pool);
    if !unmarked.is_empty() {
        bail!("{}", secrets::unmarked_message(&unmarked));
    }
    let secrets = secrets::secret_fields(&pool)?;
    // Unlike prost-types, this encoding keeps custom options, so reflection clients see the
    // secret marks too.
    std::fs::write(
        out.join("keyhouse_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    std::fs::write(out.join("lib.rs"), crate_root::render(&secrets)?)?;
    let masked: Vec<String> = crate_root::masked_messages(&secrets)
        .iter()
        .map(|m| m.full_name().to_owned())
        .collect();
    tonic_prost_build::configure()
        .out_dir(out)
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .skip_debug(masked)
        .compile_fds(compiler.file_descriptor_set())
        .context("generating Rust code")?;
    Ok(())
}
