//! Secret references: `{ env = "NAME" }`, `{ file = "/path" }`,
//! `{ credential = "name" }` (systemd `LoadCredential=`, read from
//! `$CREDENTIALS_DIRECTORY/name`) or a literal string.
//!
//! Resolution is the only I/O config loading does; its errors name the
//! reference, never the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::secret::Secret;

#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Credential(String),
    Literal(Secret),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
            SecretRef::Credential(n) => write!(f, "credential:{n}"),
            SecretRef::Literal(_) => f.write_str("literal:[redacted]"),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where references are resolved from: the process environment and
/// `$CREDENTIALS_DIRECTORY`. Tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub credentials_dir: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let credentials_dir = vars.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Env {
            vars,
            credentials_dir,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("secret file {0} is empty")]
    FileEmpty(PathBuf),
    #[error(
        "credential {0} requested but $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)"
    )]
    NoCredentialsDir(String),
    #[error("credential {name} not found in {dir}")]
    CredentialMissing { name: String, dir: PathBuf },
}

impl SecretRef {
    pub fn resolve(&self, env: &Env) -> Result<Secret, ResolveError> {
        match self {
            SecretRef::Literal(s) => Ok(s.clone()),
            SecretRef::Env(name) => match env.vars.get(name) {
                None => Err(ResolveError::EnvMissing(name.clone())),
                Some(v) if v.is_empty() => Err(ResolveError::EnvEmpty(name.clone())),
                Some(v) => Ok(Secret::new(v.clone())),
            },
            SecretRef::File(path) => read_secret_file(path),
            SecretRef::Credential(name) => {
                let dir = env
                    .credentials_dir
                    .as_ref()
                    .ok_or_else(|| ResolveError::NoCredentialsDir(name.clone()))?;
                let path = dir.join(name);
                if !path.exists() {
                    return Err(ResolveError::CredentialMissing {
                        name: name.clone(),
                        dir: dir.clone(),
                    });
                }
                read_secret_file(&path)
            }
        }
    }

    /// Resolve against the process environment (what the daemon does).
    pub fn resolve_now(&self) -> Result<Secret, ResolveError> {
        self.resolve(&Env::from_process())
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, ResolveError> {
    let text = std::fs::read_to_string(path).map_err(|e| ResolveError::File {
        path: path.to_path_buf(),
        reason: e.kind().to_string(),
    })?;
    // A trailing newline is how editors and `echo` write files; it is never
    // part of a key.
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(ResolveError::FileEmpty(path.to_path_buf()));
    }
    Ok(Secret::new(trimmed.to_string()))
}
