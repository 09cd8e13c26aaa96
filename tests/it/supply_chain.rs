//! `cargo deny` on the dependency tree: licenses, banned or wildcard requirements, and
//! sources (crates.io only), as `deny.toml` sets them. Advisories are left out: their
//! database comes from GitHub, which this suite does not assume it can reach (see
//! `deny.toml`). cargo-deny is installed the first time.

use std::path::Path;
use std::process::Command;

#[test]
fn licenses_bans_and_sources_pass_cargo_deny() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate::support::ensure_cargo_tool("deny");
    // cargo deny reads the metadata of every platform's crates, and a build fetches only
    // this platform's (a fresh machine has no `windows-sys` sources, say).
    let fetched = Command::new("cargo")
        .current_dir(root)
        .arg("fetch")
        .status()
        .expect("cargo fetch");
    assert!(fetched.success(), "cargo fetch failed: {fetched}");
    let output = Command::new("cargo")
        .current_dir(root)
        .args(["deny", "--offline", "check", "--show-stats"])
        .args(["licenses", "bans", "sources"])
        .output()
        .expect("cargo deny");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in log.lines().filter(|l| l.contains(" errors, ")) {
        println!("cargo deny: {}", line.trim());
    }
    assert!(output.status.success(), "cargo deny failed:\n{log}");
}
