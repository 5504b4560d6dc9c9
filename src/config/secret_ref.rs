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
        reason: io_reason(&e),
    })?;
    // A trailing newline is how editors and `echo` write files; it is never
    // part of a key.
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(ResolveError::FileEmpty(path.to_path_buf()));
    }
    Ok(Secret::new(trimmed.to_string()))
}

/// An I/O error in plain words (`no such file`, not `entity not found`),
/// without the OS's error number.
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file or directory".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "it is a directory".into(),
        K::NotADirectory => "a part of the path is not a directory".into(),
        K::InvalidData => "it is not UTF-8 text".into(),
        K::ReadOnlyFilesystem => "the file system is read-only".into(),
        _ => e.to_string(),
    }
}

/// The shape a secret's value must have where it is used. `rekey check`
/// and the daemon's start-up both call [`SecretForm::check`] (through
/// `config::load`), and the code that uses the value at run time parses it
/// with the same functions, so a value `check` accepts is one `run`
/// accepts, with the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretForm {
    /// Sent as an HTTP header or used as a key (provider credentials, Vault
    /// tokens, the admin token): one line, no control characters.
    Token,
    /// A Standard Webhooks signing secret, `whsec_<base64>` (webhook sinks,
    /// notify targets); parsed by `notify::signing::WebhookSecret::parse`.
    WebhookKey,
    /// The state sealing key: 64 hex characters (32 bytes), parsed by
    /// `state::seal::Sealer::from_hex`.
    SealKey,
}

impl SecretForm {
    /// `Ok` when `value` has this form; otherwise why not, in words that
    /// never repeat the value.
    pub fn check(self, value: &Secret) -> Result<(), String> {
        match self {
            SecretForm::Token => {
                if value.expose().chars().any(char::is_control) {
                    Err(
                        "the value holds a control character (a line break or tab inside it?); \
                         secrets are one line"
                            .into(),
                    )
                } else {
                    Ok(())
                }
            }
            SecretForm::WebhookKey => crate::notify::signing::WebhookSecret::parse(value.expose())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            SecretForm::SealKey => crate::state::seal::Sealer::from_hex(value)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// What to do about a value of the wrong form.
    pub fn hint(self) -> &'static str {
        match self {
            SecretForm::Token => "write the secret on one line; a trailing newline is fine",
            SecretForm::WebhookKey => {
                "Standard Webhooks secrets are written whsec_<base64>, e.g. from `printf 'whsec_%s' \"$(openssl rand -base64 32)\"`"
            }
            SecretForm::SealKey => "generate one with `openssl rand -hex 32`",
        }
    }
}
