//! The file sink: one file per lineage (`path` may hold `{lineage}` and
//! `{policy}`), written atomically.
//!
//! **Confinement** ([`Confined`]): the directory the template fixes before
//! its first placeholder is the sink's base; a rendered target must stay
//! beneath it (no empty, `.` or `..` component, no NUL), the directories
//! below the base are opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (or an `O_NOFOLLOW` walk where `openat2` is
//! missing), and every create, rename and read happens relative to that
//! directory descriptor. A target that is a symbolic link is refused with
//! an error naming it. This holds whatever a key name holds (defence in
//! depth behind the planner's safe-name rule).
//!
//! Write path: a temp file in the target's directory (created exclusively,
//! `O_NOFOLLOW`, with the configured mode, never wider), write, fsync,
//! optional chown, rename over the target, fsync the directory. A reader
//! sees the old file or the new one, never half of either, and a crash
//! after the rename cannot lose it. Then the optional `on_publish` command
//! runs ([`super::hook`]: argv, no shell, a minimal environment, its own
//! process group, a timeout); a non-zero exit fails the publication. The
//! command gets the key's id, name and expiry as environment variables,
//! never the secret.
//!
//! Fence token (PostgreSQL state only, DESIGN §8): when the publication
//! carries the leader's fence, a token file `.<name>.rekey-fence` beside the
//! target is locked (`flock`), a higher token there refuses the write (a
//! newer leader wrote the target; the node stops), and the fence is stored
//! in it before the rename, all under the lock. On SQLite no token file is
//! made.
//!
//! Formats: `raw` (one secret field, byte for byte as the provider issued
//! it, nothing added: the provider's primary field or the sink's `field`),
//! `env` (`NAME=value` lines, plus `REKEY_KEY_ID`, `REKEY_KEY_NAME`,
//! `REKEY_EXPIRES_AT`), `json` (`{"secret": {…}, "key_id", …}`). A secret
//! field that is not UTF-8 is written base64 (standard, padded) in `env` as
//! `NAME_BASE64=…` and in `json` as `{"base64": "…"}`. Read-back parses the
//! same format and fingerprints the secret fields it finds; for `raw` it
//! ignores one trailing newline on both sides, so files written before raw
//! became byte-exact (which had one appended) still read back as published.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::hook;
use super::{Publication, ReadBack, Sink, SinkError};
use crate::config::{FileFormat, FileSinkConfig, TargetTemplate};
use crate::secret::{Secret, SecretFields};

pub struct FileSink {
    name: String,
    cfg: FileSinkConfig,
}

impl FileSink {
    pub fn new(name: &str, cfg: &FileSinkConfig) -> Self {
        FileSink {
            name: name.to_string(),
            cfg: cfg.clone(),
        }
    }

    fn env_name(&self, field: &str) -> String {
        self.cfg
            .env_names
            .get(field)
            .cloned()
            .unwrap_or_else(|| field.to_ascii_uppercase().replace(['-', '.'], "_"))
    }

    /// The field a `raw` file holds.
    fn raw_field<'s>(&self, secret: &'s SecretFields) -> Result<&'s Secret, SinkError> {
        match &self.cfg.field {
            Some(f) => secret.get(f).ok_or_else(|| {
                let names: Vec<&str> = secret.iter().map(|(k, _)| k).collect();
                SinkError::permanent(
                    &self.name,
                    format!(
                        "field {f:?} is not among this key's secret fields ({})",
                        names.join(", ")
                    ),
                )
            }),
            None => secret.primary().map(|(_, v)| v).ok_or_else(|| {
                SinkError::permanent(&self.name, "format raw needs a key with one primary secret field; set `field`, or use env or json for this provider")
            }),
        }
    }

    fn render(&self, p: &Publication<'_>) -> Result<zeroize::Zeroizing<Vec<u8>>, SinkError> {
        if self.cfg.format == FileFormat::Raw {
            // Byte for byte: nothing added, nothing re-encoded.
            return Ok(zeroize::Zeroizing::new(
                self.raw_field(p.secret)?.expose_bytes().to_vec(),
            ));
        }
        let mut out = zeroize::Zeroizing::new(String::new());
        match self.cfg.format {
            FileFormat::Raw => {}
            FileFormat::Env => {
                // Checked before anything is written: a mistyped field
                // would write the default name and leave the configured one
                // unset in the application (for providers whose fields are
                // known only now, e.g. Huawei's credential.csv columns).
                if let Some(field) = self
                    .cfg
                    .env_names
                    .keys()
                    .find(|f| !p.secret.iter().any(|(k, _)| k == f.as_str()))
                {
                    let have: Vec<&str> = p.secret.iter().map(|(k, _)| k).collect();
                    return Err(SinkError::permanent(
                        &self.name,
                        format!(
                            "env_names names field `{field}`, which this key does not have (its fields: {}); nothing was written",
                            have.join(", ")
                        ),
                    ));
                }
                out.push_str(
                    "# Written by rekey. Do not edit: the next rotation replaces this file.\n",
                );
                for (field, value) in p.secret.iter() {
                    let (text, b64) = value.text_or_base64();
                    out.push_str(&self.env_name(field));
                    if b64 {
                        out.push_str(BASE64_SUFFIX);
                    }
                    out.push('=');
                    out.push_str(&env_quote(&text));
                    out.push('\n');
                }
                for (k, v) in [
                    ("REKEY_KEY_ID", p.key_id.unwrap_or("")),
                    ("REKEY_KEY_NAME", p.key_name),
                    ("REKEY_LINEAGE", p.lineage),
                ] {
                    out.push_str(&format!("{k}={}\n", env_quote(v)));
                }
                if let Some(e) = p.expires_at {
                    out.push_str(&format!("REKEY_EXPIRES_AT={}\n", e.to_rfc3339()));
                }
            }
            FileFormat::Json => {
                let secret: serde_json::Map<String, serde_json::Value> = p
                    .secret
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json_value()))
                    .collect();
                let doc = serde_json::json!({
                    "secret": secret,
                    "key_id": p.key_id,
                    "key_name": p.key_name,
                    "lineage": p.lineage,
                    "policy": p.policy,
                    "provider": p.provider,
                    "rotation_id": p.rotation_id,
                    "created_at": p.created_at,
                    "expires_at": p.expires_at,
                });
                out.push_str(&serde_json::to_string_pretty(&doc).unwrap_or_default());
                out.push('\n');
            }
        }
        Ok(zeroize::Zeroizing::new(out.as_bytes().to_vec()))
    }

    fn parse(&self, bytes: &[u8]) -> SecretFields {
        let mut fields = SecretFields::new();
        if self.cfg.format == FileFormat::Raw {
            // Raw files hold one field; its name does not matter for the
            // comparison as long as publish and read-back agree.
            fields.insert("raw", raw_normalized(bytes));
            return fields;
        }
        let text = String::from_utf8_lossy(bytes);
        let text = zeroize::Zeroizing::new(text.into_owned());
        match self.cfg.format {
            FileFormat::Raw => {}
            FileFormat::Env => {
                let reverse: BTreeMap<String, String> = self
                    .cfg
                    .env_names
                    .iter()
                    .map(|(f, n)| (n.clone(), f.clone()))
                    .collect();
                for line in text.lines() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((name, value)) = line.split_once('=') else {
                        continue;
                    };
                    if name.starts_with("REKEY_") {
                        continue;
                    }
                    let (name, value) = match name.strip_suffix(BASE64_SUFFIX) {
                        Some(base) => {
                            use base64::Engine as _;
                            match base64::engine::general_purpose::STANDARD
                                .decode(env_unquote(value))
                            {
                                Ok(b) => (base, Secret::from_bytes(b)),
                                Err(_) => (name, Secret::new(env_unquote(value))),
                            }
                        }
                        None => (name, Secret::new(env_unquote(value))),
                    };
                    let field = reverse
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| name.to_ascii_lowercase());
                    fields.insert(&field, value);
                }
            }
            FileFormat::Json => {
                if let Ok(serde_json::Value::Object(doc)) =
                    serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(serde_json::Value::Object(secret)) = doc.get("secret")
                {
                    for (k, v) in secret {
                        if let Some(s) = Secret::from_json_value(v) {
                            fields.insert(k, s);
                        }
                    }
                }
            }
        }
        fields
    }

    /// The fingerprint read-back compares: computed over what `parse` would
    /// return for the rendered publication.
    fn expected_fingerprint(&self, secret: &SecretFields) -> String {
        match self.cfg.format {
            FileFormat::Raw => match self.raw_field(secret) {
                Ok(v) => {
                    SecretFields::single("raw", raw_normalized(v.expose_bytes())).fingerprint()
                }
                Err(_) => secret.fingerprint(),
            },
            FileFormat::Env => {
                let mut f = SecretFields::new();
                for (field, value) in secret.iter() {
                    let name = self.env_name(field);
                    let back = self
                        .cfg
                        .env_names
                        .iter()
                        .find(|(_, n)| **n == name)
                        .map(|(f, _)| f.clone())
                        .unwrap_or_else(|| name.to_ascii_lowercase());
                    f.insert(&back, value.clone());
                }
                f.fingerprint()
            }
            FileFormat::Json => secret.fingerprint(),
        }
    }
}

/// Suffix of an env variable whose value is base64 (a secret field that
/// is not UTF-8).
pub const BASE64_SUFFIX: &str = "_BASE64";

/// A raw file's bytes as read-back compares them: one trailing newline
/// ignored (files written before raw became byte-exact had one appended).
fn raw_normalized(bytes: &[u8]) -> Secret {
    Secret::from_bytes(bytes.strip_suffix(b"\n").unwrap_or(bytes).to_vec())
}

fn env_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.+/=:@,".contains(c)
}

/// Quote a value for an env file readable by systemd `EnvironmentFile=`
/// and POSIX shells.
fn env_quote(v: &str) -> String {
    if !v.is_empty() && v.chars().all(env_safe) {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '$' => s.push_str("\\$"),
            '`' => s.push_str("\\`"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn env_unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn lookup_uid(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL; we
    // copy the uid out immediately and hold no reference.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        None
    } else {
        Some(unsafe { (*pw).pw_uid })
    }
}

fn lookup_gid(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: as for getpwnam.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        None
    } else {
        Some(unsafe { (*gr).gr_gid })
    }
}

/// A rendered target, confined: the base directory its template fixes
/// (everything before the first placeholder, up to the last `/`) and the
/// components beneath it, each non-empty, not `.` or `..`, without NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// Opened as given (the operator chose it; links in it are followed).
    pub base: PathBuf,
    /// Directories beneath `base`, then the file name. Never a link.
    pub rel: Vec<String>,
}

/// The most of a fence token file read: an `i64` and a newline fit.
const TOKEN_MAX_BYTES: u64 = 32;

/// The fence token file's name for target file `name`:
/// `.<name>.rekey-fence`, or a digest of the name when that would be too
/// long for the file system.
pub fn token_name(name: &str) -> String {
    let plain = format!(".{name}.rekey-fence");
    if plain.len() <= NAME_MAX {
        return plain;
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!(".rekey-fence-{}", &digest[..32])
}

/// Longest component a file system takes (`NAME_MAX`).
const NAME_MAX: usize = 255;

impl Confined {
    /// Confine `template` rendered for `policy` and `lineage`. Errors say
    /// why the rendered target would leave its base (shown escaped).
    pub fn new(template: &TargetTemplate, policy: &str, lineage: &str) -> Result<Self, String> {
        let prefix = template.fixed_prefix();
        let rendered = template.render(lineage, policy);
        let cut = prefix.rfind('/').map(|i| i + 1).unwrap_or(0);
        let base = match &prefix[..cut] {
            "" => PathBuf::from("."),
            "/" => PathBuf::from("/"),
            b => PathBuf::from(b.trim_end_matches('/')),
        };
        let rest = &rendered[cut..];
        let shown = || crate::logging::escape(&rendered).into_owned();
        let mut rel = Vec::new();
        for c in rest.split('/') {
            if c.is_empty() || c == "." || c == ".." || c.contains('\0') || c.len() > NAME_MAX {
                return Err(format!(
                    "target {:?} does not stay beneath {}: it has an empty, '.', '..', over-long or NUL-holding component",
                    shown(),
                    base.display()
                ));
            }
            rel.push(c.to_string());
        }
        Ok(Confined { base, rel })
    }

    /// The whole path, for messages and `REKEY_FILE`.
    pub fn path(&self) -> PathBuf {
        let mut p = self.base.clone();
        for c in &self.rel {
            p.push(c);
        }
        p
    }

    fn file_name(&self) -> &str {
        self.rel.last().map(String::as_str).unwrap_or("")
    }

    /// The directory holding the file, opened beneath `base` without
    /// following a link in any component: `openat2(RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS)` (Linux 5.6+), else one `openat(O_NOFOLLOW)` per
    /// component, which is the same rule since no component is `..`.
    fn open_parent(&self) -> std::io::Result<OwnedFd> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let base = rustix::fs::open(&self.base, dir_flags, Mode::empty())?;
        let dirs = &self.rel[..self.rel.len() - 1];
        if dirs.is_empty() {
            return Ok(base);
        }
        match rustix::fs::openat2(
            &base,
            dirs.join("/"),
            dir_flags | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            // No openat2 (before Linux 5.6), or a seccomp filter refusing it.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => walk_beneath(base, dirs),
            r => Ok(r?),
        }
    }

    /// As [`Confined::open_parent`], creating the directories beneath
    /// `base` that are missing: those come from placeholders (`{policy}/`
    /// in `/etc/keys/{policy}/{lineage}.env`). `base`, the fixed part, is
    /// never created (`rekey check` reports it missing). Each step is an
    /// `openat(O_NOFOLLOW)` or `mkdirat` of one component, so the walk stays
    /// beneath `base` and follows no link; `created` receives each
    /// directory made (mode 0750, less the umask; a setgid `base` passes its
    /// group on).
    fn open_parent_creating(&self, created: &mut dyn FnMut(&Path)) -> std::io::Result<OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        match self.open_parent() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => return r,
        }
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mut fd = rustix::fs::open(&self.base, flags & !OFlags::NOFOLLOW, Mode::empty())?;
        let mut at = self.base.clone();
        for d in &self.rel[..self.rel.len() - 1] {
            at.push(d);
            match rustix::fs::openat(&fd, d.as_str(), flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&fd, d.as_str(), Mode::from_raw_mode(0o750)) {
                        Ok(()) => created(&at),
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    fd = rustix::fs::openat(&fd, d.as_str(), flags, Mode::empty())?;
                }
                r => fd = r?,
            }
        }
        Ok(fd)
    }
}

/// Open `dirs` one by one beneath `base`, each with `O_NOFOLLOW`: without
/// `..` components this confines like `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
fn walk_beneath(base: OwnedFd, dirs: &[String]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut fd = base;
    for d in dirs {
        fd = rustix::fs::openat(&fd, d.as_str(), flags, Mode::empty())?;
    }
    Ok(fd)
}

/// Name an I/O failure under a confined target; a link met on the way is
/// said plainly.
fn confined_error(sink: &str, what: &str, c: &Confined, e: std::io::Error) -> SinkError {
    let esc = |p: &Path| crate::logging::escape(&p.display().to_string()).into_owned();
    let path = esc(&c.path());
    let base = esc(&c.base);
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => SinkError::permanent(
            sink,
            format!(
                "{what} {path}: a directory beneath {base} is a symbolic link; rekey does not follow links below a sink's base"
            ),
        ),
        Some(libc::ENOTDIR) => SinkError::permanent(
            sink,
            format!("{what} {path}: a component beneath {base} is not a directory (or is a link)"),
        ),
        _ if e.kind() == std::io::ErrorKind::NotFound && !c.base.is_dir() => SinkError::retryable(
            sink,
            format!(
                "{what} {path}: directory {base} does not exist (the fixed part of the sink's path, which rekey does not create)"
            ),
        ),
        _ if e.kind() == std::io::ErrorKind::NotFound => SinkError::retryable(
            sink,
            format!(
                "{what} {path}: directory {} does not exist",
                esc(c.path().parent().unwrap_or(&c.base))
            ),
        ),
        _ => SinkError::retryable(sink, format!("{what} {path}: {e}")),
    }
}

impl FileSink {
    fn confine(&self, policy: &str, lineage: &str) -> Result<Confined, SinkError> {
        Confined::new(&self.cfg.path, policy, lineage)
            .map_err(|m| SinkError::permanent(&self.name, m))
    }

    /// Temp file beside the target (created exclusively, never through a
    /// link), write, fsync, chown, rename over the target, fsync the
    /// directory. A target that is a symbolic link is refused by name.
    fn write_atomically(
        &self,
        c: &Confined,
        content: &[u8],
        fence: Option<i64>,
    ) -> Result<(), SinkError> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        let shown = || crate::logging::escape(&c.path().display().to_string()).into_owned();
        let dir = c
            .open_parent_creating(&mut |d| {
                tracing::info!(
                    sink = %self.name,
                    dir = %crate::logging::escape(&d.display().to_string()),
                    "created a directory for the sink's path"
                );
            })
            .map_err(|e| confined_error(&self.name, "cannot open the directory of", c, e))?;
        let name = c.file_name();
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {}
                FileType::Symlink => {
                    return Err(SinkError::permanent(
                        &self.name,
                        format!(
                            "target {} is a symbolic link; refusing to replace it (point the sink at the real file, or remove the link)",
                            shown()
                        ),
                    ));
                }
                _ => {
                    return Err(SinkError::permanent(
                        &self.name,
                        format!("target {} exists and is not a regular file", shown()),
                    ));
                }
            },
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(confined_error(&self.name, "cannot inspect", c, e.into()));
            }
        }
        // Held (locked) until the target is renamed into place.
        let _token = match fence {
            Some(mine) => Some(self.claim_token(&dir, c, mine)?),
            None => None,
        };
        let tmp = format!(".{name}.rekey-{:08x}.tmp", rand::random::<u32>());
        let tmp = if tmp.len() > NAME_MAX {
            format!(".rekey-{:016x}.tmp", rand::random::<u64>())
        } else {
            tmp
        };
        let io = |what: &str, e: std::io::Error| {
            SinkError::retryable(&self.name, format!("{what} {}: {e}", shown()))
        };
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(self.cfg.mode),
        )
        .map_err(|e| io("cannot create temp file beside", e.into()))?;
        let mut f = std::fs::File::from(fd);
        let result = (|| {
            // The umask may have narrowed the mode; set it exactly.
            f.set_permissions(std::fs::Permissions::from_mode(self.cfg.mode))
                .map_err(|e| io("cannot set mode on temp file for", e))?;
            f.write_all(content)
                .map_err(|e| io("cannot write temp file for", e))?;
            f.sync_all()
                .map_err(|e| io("cannot fsync temp file for", e))?;
            if self.cfg.owner.is_some() || self.cfg.group.is_some() {
                let uid = match &self.cfg.owner {
                    Some(o) => Some(lookup_uid(o).ok_or_else(|| {
                        SinkError::permanent(&self.name, format!("unknown owner {o:?}"))
                    })?),
                    None => None,
                };
                let gid = match &self.cfg.group {
                    Some(g) => Some(lookup_gid(g).ok_or_else(|| {
                        SinkError::permanent(&self.name, format!("unknown group {g:?}"))
                    })?),
                    None => None,
                };
                std::os::unix::fs::fchown(&f, uid, gid)
                    .map_err(|e| io("cannot chown temp file for", e))?;
            }
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)
                .map_err(|e| io("cannot rename temp file onto", e.into()))?;
            rustix::fs::fsync(&dir).map_err(|e| io("cannot fsync directory of", e.into()))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        }
        result
    }

    /// The fence token beside the target (PostgreSQL state, DESIGN §8):
    /// `.<name>.rekey-fence` in the target's directory, locked with
    /// `flock(LOCK_EX)`; a token higher than `mine` refuses the write (a
    /// newer leader wrote the target), otherwise `mine` is written and
    /// fsynced before the target is replaced. Returned open: the lock lasts
    /// until the caller drops it, after its rename.
    fn claim_token(
        &self,
        dir: &OwnedFd,
        c: &Confined,
        mine: i64,
    ) -> Result<std::fs::File, SinkError> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        use std::io::{Read, Seek};
        let name = token_name(c.file_name());
        let io = |what: &str, e: std::io::Error| {
            SinkError::retryable(
                &self.name,
                format!(
                    "{what} the fence token of {}: {e}",
                    crate::logging::escape(&c.path().display().to_string())
                ),
            )
        };
        let fd = rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io("cannot open", e.into()))?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)
            .map_err(|e| io("cannot lock", e.into()))?;
        let mut f = std::fs::File::from(fd);
        // Only a regular file is a token (a FIFO planted there would block
        // the read for good), and no more than a token's worth of it is read
        // (a huge file is garbage, replaced below like any other).
        if !f.metadata().map_err(|e| io("cannot stat", e))?.is_file() {
            return Err(SinkError::permanent(
                &self.name,
                format!(
                    "the fence token of {} is not a regular file; remove it",
                    crate::logging::escape(&c.path().display().to_string())
                ),
            ));
        }
        let mut text = Vec::new();
        (&mut f)
            .take(TOKEN_MAX_BYTES)
            .read_to_end(&mut text)
            .map_err(|e| io("cannot read", e))?;
        // The first line is the token: a crash between the write and the
        // truncation below leaves a whole token line before any older tail.
        let held: Option<i64> = String::from_utf8_lossy(&text)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok());
        if let Some(held) = held
            && held > mine
            && super::TOKENS_CHECKED
        {
            return Err(SinkError::fenced(
                &self.name,
                &crate::logging::escape(&c.path().display().to_string()),
                held,
                mine,
            ));
        }
        if held != Some(mine) {
            // Overwrite in place, then cut what was longer: never a moment
            // (a crash between two calls) with no token in the file, which
            // would let a deposed leader's lower token through.
            let line = format!("{mine}\n");
            f.rewind().map_err(|e| io("cannot rewind", e))?;
            f.write_all(line.as_bytes())
                .map_err(|e| io("cannot write", e))?;
            f.set_len(line.len() as u64)
                .map_err(|e| io("cannot truncate", e))?;
            f.sync_all().map_err(|e| io("cannot fsync", e))?;
        }
        Ok(f)
    }

    /// Read the target back under the same rules as the write.
    /// The file's bytes (a `raw` file holds the secret byte for byte, which
    /// need not be text).
    fn read_confined(
        &self,
        c: &Confined,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, SinkError> {
        use rustix::fs::{Mode, OFlags};
        use std::io::Read;
        let dir = match c.open_parent() {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(confined_error(&self.name, "cannot read back", c, e)),
        };
        let fd = match rustix::fs::openat(
            &dir,
            c.file_name(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(SinkError::permanent(
                    &self.name,
                    format!(
                        "target {} is a symbolic link; rekey neither reads nor writes through it",
                        crate::logging::escape(&c.path().display().to_string())
                    ),
                ));
            }
            Err(e) => return Err(confined_error(&self.name, "cannot read back", c, e.into())),
        };
        let mut f = std::fs::File::from(fd);
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        f.read_to_end(&mut bytes)
            .map_err(|e| confined_error(&self.name, "cannot read back", c, e))?;
        Ok(Some(bytes))
    }

    /// Run `on_publish` ([`hook::run`]) with the minimal environment.
    async fn run_on_publish(
        &self,
        argv: &[String],
        path: &Path,
        p: &Publication<'_>,
    ) -> Result<(), SinkError> {
        let rekey_env = [
            ("REKEY_POLICY", p.policy.to_string()),
            ("REKEY_LINEAGE", p.lineage.to_string()),
            ("REKEY_KEY_ID", p.key_id.unwrap_or("").to_string()),
            ("REKEY_KEY_NAME", p.key_name.to_string()),
            (
                "REKEY_EXPIRES_AT",
                p.expires_at.map(|e| e.to_rfc3339()).unwrap_or_default(),
            ),
            ("REKEY_FILE", path.display().to_string()),
        ];
        let env = hook::environment(&rekey_env, &self.cfg.pass_env, &|k| std::env::var_os(k));
        let out = hook::run(argv, &env, self.cfg.on_publish_timeout).await;
        let shown_cmd = crate::logging::escape(&argv[0]).into_owned();
        match out {
            Err(e) => Err(SinkError::retryable(
                &self.name,
                format!("on_publish: cannot run {shown_cmd:?}: {e}"),
            )),
            Ok(hook::Outcome::TimedOut) => Err(SinkError::retryable(
                &self.name,
                format!(
                    "on_publish {shown_cmd:?} did not finish within {}; its process group was killed",
                    crate::clock::human(self.cfg.on_publish_timeout)
                ),
            )),
            Ok(hook::Outcome::Exited { status, .. }) if status.success() => Ok(()),
            Ok(hook::Outcome::Exited { status, stderr }) => {
                // The command's stderr helps the operator, but it might echo
                // the file it was given: scrub every secret value out of it
                // first, then keep an escaped tail.
                let mut text = String::from_utf8_lossy(&stderr).to_string();
                for (_, v) in p.secret.iter() {
                    if let Some(t) = v.as_text().filter(|t| !t.is_empty()) {
                        text = text.replace(t, "[redacted]");
                    }
                }
                let tail: String = {
                    let t = text.trim();
                    let n = t.chars().count();
                    t.chars().skip(n.saturating_sub(300)).collect()
                };
                let tail = crate::logging::escape(&tail).into_owned();
                Err(SinkError::retryable(
                    &self.name,
                    format!(
                        "on_publish {shown_cmd:?} failed ({status}){}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {tail}")
                        }
                    ),
                ))
            }
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "file"
    }

    fn target(&self) -> Option<&TargetTemplate> {
        Some(&self.cfg.path)
    }

    async fn publish(&self, p: &Publication<'_>) -> Result<Option<String>, SinkError> {
        let confined = self.confine(p.policy, p.lineage)?;
        let path = confined.path();
        let content = self.render(p)?;
        let sink = FileSink {
            name: self.name.clone(),
            cfg: self.cfg.clone(),
        };
        let fence = p.fence;
        tokio::task::spawn_blocking(move || sink.write_atomically(&confined, &content, fence))
            .await
            .map_err(|e| SinkError::retryable(&self.name, format!("write task failed: {e}")))??;
        if let Some(argv) = &self.cfg.on_publish {
            self.run_on_publish(argv, &path, p).await?;
        }
        Ok(Some(path.display().to_string()))
    }

    async fn read_back(&self, policy: &str, lineage: &str) -> Result<ReadBack, SinkError> {
        let confined = self.confine(policy, lineage)?;
        let sink = FileSink {
            name: self.name.clone(),
            cfg: self.cfg.clone(),
        };
        let text = tokio::task::spawn_blocking(move || sink.read_confined(&confined))
            .await
            .map_err(|e| SinkError::retryable(&self.name, format!("read task failed: {e}")))??;
        Ok(match text {
            Some(text) => ReadBack::Fingerprint(self.parse(&text).fingerprint()),
            None => ReadBack::Missing,
        })
    }

    async fn read_back_key(
        &self,
        policy: &str,
        lineage: &str,
    ) -> Result<Option<super::HeldKey>, SinkError> {
        let confined = self.confine(policy, lineage)?;
        let sink = FileSink {
            name: self.name.clone(),
            cfg: self.cfg.clone(),
        };
        let bytes = match tokio::task::spawn_blocking(move || sink.read_confined(&confined))
            .await
            .map_err(|e| SinkError::retryable(&self.name, format!("read task failed: {e}")))??
        {
            Some(t) => t,
            None => return Ok(None),
        };
        let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        let (key_id, key_name) = match self.cfg.format {
            FileFormat::Raw => return Ok(None),
            FileFormat::Env => {
                let mut id = None;
                let mut name = None;
                for line in text.lines() {
                    match line.trim().split_once('=') {
                        Some(("REKEY_KEY_ID", v)) => id = Some(env_unquote(v)),
                        Some(("REKEY_KEY_NAME", v)) => name = Some(env_unquote(v)),
                        _ => {}
                    }
                }
                (id, name)
            }
            FileFormat::Json => {
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let field = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
                (field("key_id"), field("key_name"))
            }
        };
        let key_id = key_id.filter(|s| !s.is_empty());
        let key_name = key_name.filter(|s| !s.is_empty());
        if key_id.is_none() && key_name.is_none() {
            return Ok(None);
        }
        Ok(Some(super::HeldKey {
            key_id,
            key_name,
            fingerprint: self.parse(&bytes).fingerprint(),
        }))
    }

    fn expected_fingerprint(&self, secret: &SecretFields) -> String {
        FileSink::expected_fingerprint(self, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetTemplate;
    use std::time::Duration;

    fn sink(dir: &Path, format: FileFormat, on_publish: Option<Vec<String>>) -> FileSink {
        FileSink::new(
            "f",
            &FileSinkConfig {
                path: TargetTemplate::parse(&format!("{}/{{lineage}}.out", dir.display())).unwrap(),
                format,
                mode: 0o600,
                owner: None,
                group: None,
                on_publish,
                on_publish_timeout: Duration::from_secs(5),
                env_names: BTreeMap::new(),
                field: None,
                pass_env: Vec::new(),
                shared: false,
            },
        )
    }

    fn publication<'a>(secret: &'a SecretFields, fp: &'a str) -> Publication<'a> {
        Publication {
            policy: "p",
            lineage: "app-a",
            provider: "ob",
            provider_kind: "oceanbase",
            rotation_id: "0000000a",
            key_id: Some("id-1"),
            key_name: "app-a-20261122-r0000000a-1",
            created_at: None,
            expires_at: None,
            secret,
            fingerprint: fp,
            fence: None,
        }
    }

    fn env_sink_at(path: &str, env_names: &[(&str, &str)]) -> FileSink {
        FileSink::new(
            "f",
            &FileSinkConfig {
                path: TargetTemplate::parse(path).unwrap(),
                format: FileFormat::Env,
                mode: 0o600,
                owner: None,
                group: None,
                on_publish: None,
                on_publish_timeout: Duration::from_secs(5),
                env_names: env_names
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                pass_env: Vec::new(),
                shared: false,
                field: None,
            },
        )
    }

    /// Fields known only at run time (Huawei's credential.csv columns):
    /// an `env_names` key that is not among them fails the publication
    /// before anything is written, instead of writing the default name and
    /// leaving the configured variable unset in the application.
    #[tokio::test]
    async fn env_names_naming_a_field_the_key_lacks_fails_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let s = env_sink_at(
            &format!("{}/{{lineage}}.env", dir.path().display()),
            &[("acces_key", "HW_AK")],
        );
        let mut secret = SecretFields::new();
        secret.insert("access_key", Secret::new("ak-value"));
        secret.insert("secret_key", Secret::new("sk-value"));
        let fp = secret.fingerprint();
        let e = s.publish(&publication(&secret, &fp)).await.unwrap_err();
        assert!(!e.retryable, "retrying cannot fix the config");
        assert_eq!(
            e.message,
            "env_names names field `acces_key`, which this key does not have (its fields: access_key, secret_key); nothing was written"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn placeholder_directories_are_created_beneath_the_fixed_part_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretFields::single("api_key", Secret::new("k"));
        let fp = secret.fingerprint();
        let s = env_sink_at(
            &format!("{}/{{policy}}/{{lineage}}.env", dir.path().display()),
            &[],
        );
        let written = s
            .publish(&publication(&secret, &fp))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(written, format!("{}/p/app-a.env", dir.path().display()));
        let mode = std::fs::metadata(dir.path().join("p"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode & 0o022,
            0,
            "created directories are not world-writable"
        );

        // The fixed part itself is never created.
        let missing = dir.path().join("missing");
        let s = env_sink_at(
            &format!("{}/{{policy}}/{{lineage}}.env", missing.display()),
            &[],
        );
        let e = s.publish(&publication(&secret, &fp)).await.unwrap_err();
        assert!(
            e.message.contains("which rekey does not create"),
            "{}",
            e.message
        );
        assert!(!missing.exists());
    }

    #[tokio::test]
    async fn every_format_reads_back_to_the_published_fingerprint() {
        for format in [FileFormat::Raw, FileFormat::Env, FileFormat::Json] {
            let dir = tempfile::tempdir().unwrap();
            let s = sink(dir.path(), format, None);
            let secret =
                SecretFields::single("api_key", Secret::new("sk with \"quotes\" $and\nnewline"));
            let fp = secret.fingerprint();
            let detail = s
                .publish(&publication(&secret, &fp))
                .await
                .unwrap()
                .unwrap();
            let mode = std::fs::metadata(&detail).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{format:?}");
            assert_eq!(
                s.read_back("p", "app-a").await.unwrap(),
                ReadBack::Fingerprint(s.expected_fingerprint(&secret)),
                "{format:?}"
            );
            let other = SecretFields::single("api_key", Secret::new("different"));
            assert_ne!(
                s.expected_fingerprint(&other),
                s.expected_fingerprint(&secret)
            );
            assert_eq!(s.read_back("p", "app-b").await.unwrap(), ReadBack::Missing);
            // No temp files left behind.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    fn nes_secret() -> SecretFields {
        let mut f = SecretFields::new();
        f.insert("credential", Secret::new("id,api_key\nc-1,abc\n"));
        f.insert(
            "credential_zip",
            Secret::from_bytes(vec![b'P', b'K', 3, 4, 0xff, 0x00, 0x80]),
        );
        f
    }

    #[tokio::test]
    async fn raw_writes_the_primary_field_byte_for_byte_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), FileFormat::Raw, None);
        let secret = nes_secret();
        let fp = secret.fingerprint();
        let path = s
            .publish(&publication(&secret, &fp))
            .await
            .unwrap()
            .unwrap();
        // Exactly the CSV text, its own trailing newline and no other.
        assert_eq!(std::fs::read(&path).unwrap(), b"id,api_key\nc-1,abc\n");
        assert_eq!(
            s.read_back("p", "app-a").await.unwrap(),
            ReadBack::Fingerprint(s.expected_fingerprint(&secret))
        );
    }

    #[tokio::test]
    async fn raw_can_write_a_chosen_field_that_is_not_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), FileFormat::Raw, None);
        s.cfg.field = Some("credential_zip".into());
        let secret = nes_secret();
        let fp = secret.fingerprint();
        let path = s
            .publish(&publication(&secret, &fp))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            vec![b'P', b'K', 3, 4, 0xff, 0x00, 0x80]
        );
        assert_eq!(
            s.read_back("p", "app-a").await.unwrap(),
            ReadBack::Fingerprint(s.expected_fingerprint(&secret))
        );
        s.cfg.field = Some("nope".into());
        let e = s.publish(&publication(&secret, &fp)).await.unwrap_err();
        assert!(e.message.contains("\"nope\""), "{}", e.message);
    }

    #[tokio::test]
    async fn a_raw_file_written_before_the_upgrade_with_a_newline_still_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), FileFormat::Raw, None);
        let secret = SecretFields::single("api_key", Secret::new("sk_old"));
        std::fs::write(dir.path().join("app-a.out"), "sk_old\n").unwrap();
        assert_eq!(
            s.read_back("p", "app-a").await.unwrap(),
            ReadBack::Fingerprint(s.expected_fingerprint(&secret))
        );
        let fp = secret.fingerprint();
        let path = s
            .publish(&publication(&secret, &fp))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"sk_old");
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_go_base64_in_env_and_json_and_read_back() {
        use base64::Engine as _;
        let b64 =
            base64::engine::general_purpose::STANDARD.encode([b'P', b'K', 3, 4, 0xff, 0x00, 0x80]);
        for format in [FileFormat::Env, FileFormat::Json] {
            let dir = tempfile::tempdir().unwrap();
            let s = sink(dir.path(), format, None);
            let secret = nes_secret();
            let fp = secret.fingerprint();
            let path = s
                .publish(&publication(&secret, &fp))
                .await
                .unwrap()
                .unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            match format {
                FileFormat::Env => {
                    assert!(
                        text.contains(&format!("CREDENTIAL_ZIP_BASE64={b64}")),
                        "{text}"
                    )
                }
                _ => {
                    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(doc["secret"]["credential_zip"]["base64"], b64.as_str());
                    assert_eq!(doc["secret"]["credential"], "id,api_key\nc-1,abc\n");
                }
            }
            assert_eq!(
                s.read_back("p", "app-a").await.unwrap(),
                ReadBack::Fingerprint(s.expected_fingerprint(&secret)),
                "{format:?}"
            );
        }
    }

    #[tokio::test]
    async fn failing_on_publish_fails_the_publication_without_leaking_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "cat \"$REKEY_FILE\" >&2; exit 3".to_string(),
        ];
        let s = sink(dir.path(), FileFormat::Raw, Some(argv));
        let secret = SecretFields::single("api_key", Secret::new("sk_live_leaky"));
        let fp = secret.fingerprint();
        let err = s.publish(&publication(&secret, &fp)).await.unwrap_err();
        assert!(err.message.contains("exit status: 3"), "{}", err.message);
        assert!(!err.message.contains("sk_live_leaky"), "{}", err.message);
    }

    #[tokio::test]
    async fn missing_directory_is_a_clear_error() {
        let s = sink(Path::new("/nonexistent/rekey-test"), FileFormat::Env, None);
        let secret = SecretFields::single("api_key", Secret::new("x"));
        let fp = secret.fingerprint();
        let err = s.publish(&publication(&secret, &fp)).await.unwrap_err();
        assert!(err.message.contains("does not exist"), "{}", err.message);
    }

    fn sink_at(template: &str) -> FileSink {
        FileSink::new(
            "f",
            &FileSinkConfig {
                path: TargetTemplate::parse(template).unwrap(),
                format: FileFormat::Raw,
                mode: 0o600,
                owner: None,
                group: None,
                on_publish: None,
                on_publish_timeout: Duration::from_secs(5),
                env_names: BTreeMap::new(),
                field: None,
                pass_env: Vec::new(),
                shared: false,
            },
        )
    }

    fn publication_for<'a>(
        lineage: &'a str,
        secret: &'a SecretFields,
        fp: &'a str,
    ) -> Publication<'a> {
        Publication {
            lineage,
            key_name: lineage,
            ..publication(secret, fp)
        }
    }

    /// Every file under `root`, links included, not followed.
    fn walk(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                }
                out.push(e.path());
            }
        }
        out
    }

    #[tokio::test]
    async fn a_traversing_key_name_writes_nothing_outside_the_sink_directory() {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::create_dir(root.path().join("escaped")).unwrap();
        let s = sink_at(&format!("{}/{{lineage}}.env", keys.display()));
        let secret = SecretFields::single("api_key", Secret::new("sk_live_x"));
        let fp = secret.fingerprint();
        for name in [
            "../../escaped/pwn",
            "../escaped/pwn",
            "a/../../escaped/x",
            "x/../../y",
            "nul\0byte",
            "a//b",
        ] {
            let err = s
                .publish(&publication_for(name, &secret, &fp))
                .await
                .unwrap_err();
            assert!(!err.retryable, "{name}: {err:?}");
            assert!(
                err.message.contains("does not stay beneath"),
                "{}",
                err.message
            );
            assert!(s.read_back("p", name).await.is_err(), "{name}");
        }
        // The whole tree holds only the two directories.
        assert_eq!(walk(root.path()).len(), 2, "{:?}", walk(root.path()));
    }

    #[tokio::test]
    async fn a_symlinked_target_or_directory_is_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&keys).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("victim"), "precious\n").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("victim"), keys.join("app.env")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, keys.join("sub")).unwrap();
        let s = sink_at(&format!("{}/{{lineage}}.env", keys.display()));
        let secret = SecretFields::single("api_key", Secret::new("sk_live_x"));
        let fp = secret.fingerprint();

        let err = s
            .publish(&publication_for("app", &secret, &fp))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("app.env is a symbolic link"),
            "{}",
            err.message
        );
        let err = s.read_back("p", "app").await.unwrap_err();
        assert!(err.message.contains("symbolic link"), "{}", err.message);
        // The link and its target are untouched.
        assert!(
            std::fs::symlink_metadata(keys.join("app.env"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("victim")).unwrap(),
            "precious\n"
        );

        // A link among the directories beneath the base is not followed.
        let err = s
            .publish(&publication_for("sub/victim", &secret, &fp))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("symbolic link") || err.message.contains("not a directory"),
            "{}",
            err.message
        );
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("victim")).unwrap(),
            "precious\n"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    }

    /// A property test over hostile names: whatever the name, a rendered
    /// target is confined beneath its base (or refused), a publish writes
    /// nothing outside it, and every error is one line.
    #[tokio::test]
    async fn every_rendered_target_stays_beneath_its_base() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("REKEY_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        std::fs::create_dir(&base).unwrap();
        std::fs::create_dir(base.join("sub")).unwrap();
        let templates = [
            format!("{}/{{lineage}}.env", base.display()),
            format!("{}/sub/{{policy}}-{{lineage}}", base.display()),
            format!("{}/{{lineage}}/key", base.display()),
        ];
        let pieces: &[&str] = &[
            "..",
            ".",
            "/",
            "//",
            "{",
            "}",
            "{lineage}",
            "\n",
            "\r",
            "\x1b[2J",
            "\0",
            "a",
            "svc",
            "-",
            "_",
            "~",
            " ",
            "%2e",
            "\u{202e}",
            "é",
            "\\",
            "*",
            "?",
        ];
        let secret = SecretFields::single("api_key", Secret::new("sk_live_x"));
        let fp = secret.fingerprint();
        for i in 0..400 {
            let mut name = String::new();
            let parts = rng.random_range(0..12);
            for _ in 0..parts {
                if rng.random_bool(0.2) {
                    // Random bytes, lossily as text.
                    let n = rng.random_range(1..8);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    name.push_str(&String::from_utf8_lossy(&bytes));
                } else {
                    name.push_str(pieces[rng.random_range(0..pieces.len())]);
                }
            }
            if i % 50 == 0 {
                name.push_str(&"x".repeat(rng.random_range(200..5000)));
            }
            let template = &templates[i % templates.len()];
            let t = TargetTemplate::parse(template).unwrap();
            match Confined::new(&t, "p", &name) {
                Ok(c) => {
                    let want = if i % templates.len() == 1 {
                        base.join("sub")
                    } else {
                        base.clone()
                    };
                    assert_eq!(c.base, want, "seed {seed} name {name:?}");
                    assert!(
                        c.rel
                            .iter()
                            .all(|p| p != ".." && p != "." && !p.is_empty() && !p.contains('/'))
                    );
                    let mut resolved = c.base.clone();
                    for p in &c.rel {
                        resolved.push(p);
                    }
                    assert!(resolved.starts_with(&base), "seed {seed} name {name:?}");
                }
                Err(m) => assert!(!m.contains('\n') && !m.contains('\r'), "seed {seed}: {m}"),
            }
            let s = sink_at(template);
            if let Err(e) = s.publish(&publication_for(&name, &secret, &fp)).await {
                assert!(
                    !e.message.contains('\n')
                        && !e.message.contains('\r')
                        && !e.message.contains('\x1b'),
                    "seed {seed}: {}",
                    e.message
                );
            }
        }
        for p in walk(root.path()) {
            assert!(p.starts_with(&base), "seed {seed}: {} escaped", p.display());
        }
    }

    #[test]
    fn the_fallback_walk_refuses_a_linked_directory_too() {
        use rustix::fs::{Mode, OFlags};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("base/real/sub")).unwrap();
        std::os::unix::fs::symlink(root.path().join("base/real"), root.path().join("base/link"))
            .unwrap();
        let open = || {
            rustix::fs::open(
                root.path().join("base"),
                OFlags::DIRECTORY | OFlags::RDONLY,
                Mode::empty(),
            )
            .unwrap()
        };
        assert!(walk_beneath(open(), &["real".into(), "sub".into()]).is_ok());
        let err = walk_beneath(open(), &["link".into(), "sub".into()]).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn without_a_fence_no_token_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut secret = SecretFields::new();
        secret.insert("api_key", Secret::new("sk_one"));
        let fp = secret.fingerprint();
        let s = sink(dir.path(), FileFormat::Env, None);
        s.publish(&publication(&secret, &fp)).await.unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["app-a.out".to_string()]);
    }

    #[tokio::test]
    async fn a_write_under_a_lower_fence_than_the_token_is_refused_and_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), FileFormat::Env, None);
        let mut newer = SecretFields::new();
        newer.insert("api_key", Secret::new("sk_from_leader_7"));
        let fp_newer = newer.fingerprint();
        s.publish(&Publication {
            fence: Some(7),
            ..publication(&newer, &fp_newer)
        })
        .await
        .unwrap();
        let token = dir.path().join(".app-a.out.rekey-fence");
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "7\n");
        let mut stale = SecretFields::new();
        stale.insert("api_key", Secret::new("sk_from_deposed_leader_6"));
        let fp_stale = stale.fingerprint();
        let refused = s
            .publish(&Publication {
                fence: Some(6),
                ..publication(&stale, &fp_stale)
            })
            .await;
        if super::super::TOKENS_CHECKED {
            let e = refused.unwrap_err();
            assert!(e.fenced && !e.retryable, "{e:?}");
            assert!(e.message.contains("fence token 7"), "{}", e.message);
            assert!(!e.message.contains("sk_from"), "no secret in the error");
            let held = std::fs::read_to_string(dir.path().join("app-a.out")).unwrap();
            assert!(held.contains("sk_from_leader_7"));
            assert_eq!(std::fs::read_to_string(&token).unwrap(), "7\n");
        } else {
            // The negative control (feature ha-test-unfenced): the stale
            // write goes through, which the HA tests detect.
            refused.unwrap();
        }
        // The same or a newer leader writes.
        s.publish(&Publication {
            fence: Some(8),
            ..publication(&newer, &fp_newer)
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "8\n");
    }

    /// The token was truncated before it was rewritten: a crash between
    /// the two left an empty token file, through which a deposed leader's
    /// lower token passed. Now the new line overwrites in place and the
    /// tail is cut after, and the first line is the token: the state a
    /// crash in between leaves (a new line before an older tail) still
    /// refuses a lower token.
    #[tokio::test]
    async fn a_token_left_half_rewritten_by_a_crash_still_refuses_a_lower_fence() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), FileFormat::Env, None);
        let token = dir.path().join(".app-a.out.rekey-fence");
        // "9\n" written over a longer older content (garbage a leader
        // replaced), killed before the truncation: the whole text is no
        // number, and read as "no token" the lower fence passed.
        std::fs::write(&token, "9\n00000000\n").unwrap();
        let mut stale = SecretFields::new();
        stale.insert("api_key", Secret::new("sk_from_deposed_leader_8"));
        let fp = stale.fingerprint();
        let r = s
            .publish(&Publication {
                fence: Some(8),
                ..publication(&stale, &fp)
            })
            .await;
        if super::super::TOKENS_CHECKED {
            assert!(r.unwrap_err().fenced);
        }
        // A newer leader rewrites it to exactly its line.
        std::fs::write(&token, "9\n0123456789\n").unwrap();
        s.publish(&Publication {
            fence: Some(10),
            ..publication(&stale, &fp)
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "10\n");
    }

    /// Found by the HA adversary: the token file was read whole with
    /// `read_to_string`, so a FIFO planted in its place hung the leader's
    /// publish for good, and a huge (sparse) file was read into memory.
    #[tokio::test]
    async fn a_fifo_or_a_huge_file_in_place_of_the_fence_token_neither_hangs_nor_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), FileFormat::Env, None);
        let mut secret = SecretFields::new();
        secret.insert("api_key", Secret::new("sk_fifo_case"));
        let fp = secret.fingerprint();
        let token = dir.path().join(".app-a.out.rekey-fence");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &token,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = s
            .publish(&Publication {
                fence: Some(3),
                ..publication(&secret, &fp)
            })
            .await
            .unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        assert!(!e.message.contains("sk_fifo_case"));
        assert!(!dir.path().join("app-a.out").exists(), "nothing published");

        // A 1 TiB sparse token (garbage): read no more than a token's
        // worth, then replaced by this node's fence.
        std::fs::remove_file(&token).unwrap();
        let f = std::fs::File::create(&token).unwrap();
        f.set_len(1 << 40).unwrap();
        drop(f);
        s.publish(&Publication {
            fence: Some(3),
            ..publication(&secret, &fp)
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "3\n");
    }

    #[test]
    fn a_token_name_too_long_for_the_file_system_is_shortened() {
        assert_eq!(token_name("k.env"), ".k.env.rekey-fence");
        let long = "x".repeat(250);
        let t = token_name(&long);
        assert!(t.len() <= NAME_MAX && t.starts_with(".rekey-fence-"), "{t}");
        assert_ne!(t, token_name(&"y".repeat(250)));
    }
}
