//! The Helm chart's offline checks (`bash helm/check`: lint, render, Kubernetes schema validation,
//! wiring, the Dockerfile's contract, bad values refused), run as part of the test suite.

use std::path::Path;
use std::process::Command;

#[test]
fn the_helm_chart_passes_its_offline_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg("helm/check")
        .current_dir(&root)
        // The tools are installed once into the build's scratch directory.
        .env(
            "KEYHOUSE_HELM_CHECK_CACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-check"),
        )
        .output()
        .expect("bash helm/check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("helm/check: all chart checks passed"),
        "helm/check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
