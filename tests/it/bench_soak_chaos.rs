//! The harness's `soak` and `chaos` scenarios (#13) at small sizes against this build's
//! `herald`: about a minute of soak, twice 12 s of chaos. Only correctness is asserted (no
//! event lost, duplicated or out of order, RSS within the soak's bound, no crash, Herald
//! ready at the end, floods and oversized messages cut); the speed figures are printed, not
//! judged, since the two cores are shared. The harness is built here (`cargo build -p
//! herald-bench`, a no-op when the workspace is built) so `cargo test` alone runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The dev-profile `herald-bench` next to this test binary (`<target>/debug/deps/it-…`).
fn harness() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--quiet", "-p", "herald-bench"])
        // One build job: the rest of the suite runs beside it on the same two cores.
        .env("CARGO_BUILD_JOBS", "1")
        .status()
        .expect("cargo build -p herald-bench");
    assert!(status.success(), "building herald-bench: {status}");
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps");
    profile_dir.join("herald-bench")
}

/// Runs one scenario and returns its run from `results.json`.
fn scenario(bench: &Path, args: &[&str]) -> Value {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(bench)
        .arg("--herald-bin")
        .arg(env!("CARGO_BIN_EXE_herald"))
        .arg("--out")
        .arg(out.path())
        .args(["--no-plots", "--wait-s", "30"])
        .args(args)
        .output()
        .expect("run herald-bench");
    let results = std::fs::read_to_string(out.path().join("results.json")).unwrap_or_else(|e| {
        panic!(
            "{args:?} wrote no results.json ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let doc: Value = serde_json::from_str(&results).unwrap();
    let run = doc["runs"][0].clone();
    println!(
        "herald-bench {}: ok={} notes={}",
        args[0], run["ok"], run["notes"]
    );
    for f in run["figures"].as_array().into_iter().flatten() {
        println!(
            "  {} = {} {}",
            f["key"].as_str().unwrap_or(""),
            f["value"],
            f["unit"].as_str().unwrap_or("")
        );
    }
    run
}

fn fig(run: &Value, key: &str) -> f64 {
    run["figures"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["key"] == key)
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("no figure {key} in {run}"))
}

#[test]
fn soak_and_chaos_lose_nothing_and_crash_nothing() {
    let bench = harness();
    let soak = scenario(
        &bench,
        &[
            "soak",
            "--connections",
            "100",
            "--channels",
            "5",
            "--rate",
            "50",
            "--duration-s",
            "60",
            "--warmup-s",
            "10",
            "--churn-s",
            "2",
        ],
    );
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "unexpected",
        "recover_failed",
        "failures",
    ] {
        assert_eq!(fig(&soak, key), 0.0, "soak: {key}");
    }
    assert_eq!(
        fig(&soak, "rss_within_bound"),
        1.0,
        "soak: RSS growth past the bound"
    );
    for key in ["joins", "leaves", "reconnects", "recovered", "delivered"] {
        assert!(fig(&soak, key) > 0.0, "soak: no {key}");
    }
    assert_eq!(soak["ok"], true, "soak: {}", soak["notes"]);

    let chaos = scenario(
        &bench,
        &[
            "chaos",
            "--subscribers",
            "50",
            "--rate",
            "20",
            "--phase-s",
            "12",
            "--per-kind",
            "2",
        ],
    );
    for key in [
        "crashes",
        "calm_lost",
        "chaos_lost",
        "chaos_duplicated",
        "chaos_out_of_order",
        "chaos_disconnected",
    ] {
        assert_eq!(fig(&chaos, key), 0.0, "chaos: {key}");
    }
    assert_eq!(
        fig(&chaos, "readyz_ok"),
        1.0,
        "chaos: /readyz after the abuse"
    );
    for key in [
        "frames_tried",
        "flood_cut",
        "oversized_cut",
        "bad_frames_cut",
    ] {
        assert!(fig(&chaos, key) > 0.0, "chaos: no {key}");
    }
    assert_eq!(chaos["ok"], true, "chaos: {}", chaos["notes"]);
}
