//! CI keeps the harness honest: `herald-bench short` against this build of Herald must lose,
//! duplicate and reorder nothing. Figures are printed, never asserted: the machine is shared.

use std::path::PathBuf;
use std::process::Command;

/// The `herald` binary `cargo test --workspace` builds beside this crate's binaries (the root
/// package's integration tests need it, and cargo builds every target before running any).
fn herald_binary() -> PathBuf {
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_herald-bench"));
    let herald = harness.with_file_name("herald");
    assert!(
        herald.exists(),
        "{} is missing: run the workspace's tests (`cargo test --workspace --all-targets`), \
         which build it, or `cargo build --bin herald` first",
        herald.display()
    );
    herald
}

#[test]
fn short_mode_loses_nothing() {
    let out = std::env::temp_dir().join(format!("herald-bench-short-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("--herald-bin")
        .arg(herald_binary())
        .arg("--out")
        .arg(&out)
        .arg("--no-plots")
        .arg("short")
        .status()
        .expect("run herald-bench");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    println!("{report}");
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        status.success(),
        "herald-bench short reported lost, duplicated or out-of-order events (or failed)"
    );
    assert!(
        report.contains("raw TCP floor"),
        "the floor run is missing from the report"
    );
}
