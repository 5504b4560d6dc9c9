//! Helpers shared by every integration-test area: the built binary, CI
//! detection, and external tools that CI installs but a developer machine
//! may lack.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `rekey` binary cargo built for these tests.
pub fn rekey_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rekey")
}

/// Whether we run in CI (`CI=true`), where a missing tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Find an external tool on `PATH`. In CI its absence fails the test;
/// locally the caller skips, and this says so on stderr.
pub fn require_tool(name: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "{name} is not on PATH, and CI must run this check ({why})"
        );
        eprintln!("skipping: {name} is not on PATH ({why})");
    }
    found
}
