//! The cargo-fuzz targets in `fuzz/` (client frames, envelopes, tokens, `Last-Event-ID`),
//! each run for a bounded time from its committed seeds; any crash fails the test. Run from
//! here so the README's one test command runs them; `cargo fuzz run <target>` by hand fuzzes
//! for as long as you like. cargo-fuzz is installed the first time.

use std::path::Path;
use std::process::Command;

/// Seconds of fuzzing per target.
const SECONDS_PER_TARGET: u32 = 15;
const TARGETS: [&str; 4] = ["client_frames", "envelope", "token", "last_event_id"];

#[test]
fn every_fuzz_target_runs_clean_for_a_bounded_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate::support::ensure_cargo_tool("fuzz");
    let corpus = tempfile::tempdir().unwrap();
    for target in TARGETS {
        let found = corpus.path().join(target);
        std::fs::create_dir_all(&found).unwrap();
        let output = Command::new("cargo")
            .current_dir(root)
            // The stable compiler takes the coverage flags libFuzzer needs this way; Rust
            // code needs no sanitizer to turn a bug into a crash: a panic is one.
            .env("RUSTC_BOOTSTRAP", "1")
            // Unoptimised: a bounded run needs the build more than the speed, and overflow
            // checks and debug assertions turn more bugs into crashes.
            .args(["fuzz", "run", "--dev", "--sanitizer", "none", target])
            .arg(&found)
            .arg(root.join("fuzz/seeds").join(target))
            .args([
                "--",
                &format!("-max_total_time={SECONDS_PER_TARGET}"),
                "-rss_limit_mb=2048",
                "-max_len=65536",
            ])
            .output()
            .expect("cargo fuzz run");
        let log = String::from_utf8_lossy(&output.stderr);
        let done = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("no summary");
        println!("fuzz {target}: {done}");
        assert!(
            output.status.success(),
            "fuzz target {target} failed:\n{}",
            log.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
