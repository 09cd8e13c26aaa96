//! The JavaScript client's own suite (`clients/js`: node:test against a real Herald, and
//! headless Chromium through playwright-core), run from here so the README's one test
//! command runs it too. It installs what it needs the first time: the npm packages from the
//! committed lockfile, and Debian's Chromium.

use std::path::Path;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

fn run(what: &str, command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(status.success(), "{what}: {status}");
}

#[test]
fn javascript_client_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    if !Path::new(CHROMIUM).exists() {
        run("apt-get update", Command::new("apt-get").arg("update"));
        run(
            "apt-get install chromium",
            Command::new("apt-get").args(["install", "-y", "chromium"]),
        );
    }
    if !dir.join("node_modules").exists() {
        run(
            "npm ci in clients/js",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
        );
    }
    run(
        "node --test (clients/js)",
        Command::new("node")
            .args(["--test", "test/"])
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .current_dir(&dir),
    );
}
