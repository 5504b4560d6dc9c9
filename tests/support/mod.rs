//! Helpers shared by every integration-test module: a hermetic secret
//! environment, scratch files, and paths into the repository. Keep them
//! generic; helpers for one area belong in that area's module.

#![allow(dead_code)]

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
