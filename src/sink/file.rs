//! The file sink: one file per lineage (`path` may hold `{lineage}` and
//! `{policy}`), written atomically.
//!
//! Write path: a temp file in the target's directory (created with the
//! configured mode, never wider), write, fsync, optional chown, rename over
//! the target, fsync the directory. A reader sees the old file or the new
//! one, never half of either, and a crash after the rename cannot lose it.
//! Then the optional `on_publish` command runs (argv, no shell, with a
//! timeout); a non-zero exit fails the publication. The command gets the
//! key's id, name and expiry as environment variables, never the secret.
//!
//! Formats: `raw` (the secret only), `env` (`NAME=value` lines, plus
//! `REKEY_KEY_ID`, `REKEY_KEY_NAME`, `REKEY_EXPIRES_AT`), `json`
//! (`{"secret": {…}, "key_id", …}`). Read-back parses the same format and
//! fingerprints the secret fields it finds.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;

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

    fn path_for(&self, policy: &str, lineage: &str) -> PathBuf {
        PathBuf::from(self.cfg.path.render(lineage, policy))
    }

    fn env_name(&self, field: &str) -> String {
        self.cfg
            .env_names
            .get(field)
            .cloned()
            .unwrap_or_else(|| field.to_ascii_uppercase().replace(['-', '.'], "_"))
    }

    fn render(&self, p: &Publication<'_>) -> Result<zeroize::Zeroizing<String>, SinkError> {
        let mut out = zeroize::Zeroizing::new(String::new());
        match self.cfg.format {
            FileFormat::Raw => {
                let value = primary_field(p.secret).ok_or_else(|| {
                    SinkError::permanent(&self.name, "format raw needs a key with one secret field; use env or json for this provider")
                })?;
                out.push_str(value.expose());
                out.push('\n');
            }
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
                    out.push_str(&self.env_name(field));
                    out.push('=');
                    out.push_str(&env_quote(value.expose()));
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
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            serde_json::Value::String(v.expose().to_string()),
                        )
                    })
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
        Ok(out)
    }

    fn parse(&self, text: &str) -> SecretFields {
        let mut fields = SecretFields::new();
        match self.cfg.format {
            FileFormat::Raw => {
                let v = text.strip_suffix('\n').unwrap_or(text);
                // Raw files hold one field; its name does not matter for the
                // comparison as long as publish and read-back agree.
                fields.insert("raw", Secret::new(v.to_string()));
            }
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
                    let field = reverse
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| name.to_ascii_lowercase());
                    fields.insert(&field, Secret::new(env_unquote(value)));
                }
            }
            FileFormat::Json => {
                if let Ok(serde_json::Value::Object(doc)) =
                    serde_json::from_str::<serde_json::Value>(text)
                    && let Some(serde_json::Value::Object(secret)) = doc.get("secret")
                {
                    for (k, v) in secret {
                        if let Some(s) = v.as_str() {
                            fields.insert(k, Secret::new(s.to_string()));
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
            FileFormat::Raw => match primary_field(secret) {
                Some(v) => SecretFields::single("raw", v.clone()).fingerprint(),
                None => secret.fingerprint(),
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

/// The one field `raw` writes: the only field, or the one named like a secret.
fn primary_field(secret: &SecretFields) -> Option<&Secret> {
    if secret.len() == 1 {
        return secret.iter().next().map(|(_, v)| v);
    }
    secret
        .iter()
        .find(|(k, _)| k.contains("secret") || *k == "api_key" || *k == "credential")
        .map(|(_, v)| v)
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

impl FileSink {
    /// Create the directories of `dir` that come from placeholders
    /// (`{policy}/` in `/etc/keys/{policy}/{lineage}.env`), beneath the
    /// path's fixed part, which must exist: rekey never creates that one
    /// (`rekey check` reports it missing). Each creation is logged.
    fn create_placeholder_dirs(&self, dir: &Path) -> Result<(), SinkError> {
        let fixed = self.cfg.path.fixed_dir();
        let missing = |why: &str| {
            SinkError::retryable(
                &self.name,
                format!("directory {} does not exist{why}", dir.display()),
            )
        };
        if !fixed.is_dir() {
            return Err(missing(&format!(
                " (nor {}, the fixed part of the sink's path, which rekey does not create)",
                fixed.display()
            )));
        }
        let Ok(below) = dir.strip_prefix(&fixed) else {
            return Err(missing(""));
        };
        let mut at = fixed.clone();
        for c in below.components() {
            let std::path::Component::Normal(part) = c else {
                return Err(missing(" (its path leaves the sink's directory)"));
            };
            at.push(part);
            if at.is_dir() {
                continue;
            }
            match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o750)
                .create(&at)
            {
                Ok(()) => {
                    tracing::info!(sink = %self.name, dir = %at.display(), "created a directory for the sink's path");
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && at.is_dir() => {}
                Err(e) => {
                    return Err(SinkError::retryable(
                        &self.name,
                        format!("cannot create directory {}: {e}", at.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn write_atomically(&self, path: &Path, content: &[u8]) -> Result<(), SinkError> {
        let io = |what: &str, e: std::io::Error| {
            SinkError::retryable(&self.name, format!("{what} {}: {e}", path.display()))
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            self.create_placeholder_dirs(&dir)?;
        }
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{file_name}.rekey-{:08x}.tmp",
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.cfg.mode)
                .open(&tmp)
                .map_err(|e| io("cannot create temp file beside", e))?;
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
            std::fs::rename(&tmp, path).map_err(|e| io("cannot rename temp file onto", e))?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("cannot fsync directory of", e))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    async fn run_on_publish(
        &self,
        argv: &[String],
        path: &Path,
        p: &Publication<'_>,
    ) -> Result<(), SinkError> {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("REKEY_POLICY", p.policy)
            .env("REKEY_LINEAGE", p.lineage)
            .env("REKEY_KEY_ID", p.key_id.unwrap_or(""))
            .env("REKEY_KEY_NAME", p.key_name)
            .env(
                "REKEY_EXPIRES_AT",
                p.expires_at.map(|e| e.to_rfc3339()).unwrap_or_default(),
            )
            .env("REKEY_FILE", path)
            .env_remove(crate::daemon::sdnotify::CHILD_ENV_REMOVE[0])
            .env_remove(crate::daemon::sdnotify::CHILD_ENV_REMOVE[1])
            .env_remove(crate::daemon::sdnotify::CHILD_ENV_REMOVE[2])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            SinkError::retryable(
                &self.name,
                format!("on_publish: cannot run {:?}: {e}", argv[0]),
            )
        })?;
        let out = match tokio::time::timeout(self.cfg.on_publish_timeout, child.wait_with_output())
            .await
        {
            Err(_) => {
                return Err(SinkError::retryable(
                    &self.name,
                    format!(
                        "on_publish {:?} did not finish within {}",
                        argv[0],
                        crate::clock::human(self.cfg.on_publish_timeout)
                    ),
                ));
            }
            Ok(Err(e)) => {
                return Err(SinkError::retryable(
                    &self.name,
                    format!("on_publish {:?}: {e}", argv[0]),
                ));
            }
            Ok(Ok(o)) => o,
        };
        if out.status.success() {
            return Ok(());
        }
        // The command's stderr helps the operator, but it might echo the
        // file it was given: scrub every secret value out of it first.
        let mut stderr = String::from_utf8_lossy(&out.stderr).to_string();
        for (_, v) in p.secret.iter() {
            if !v.is_empty() {
                stderr = stderr.replace(v.expose(), "[redacted]");
            }
        }
        let stderr: String = stderr
            .trim()
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(SinkError::retryable(
            &self.name,
            format!(
                "on_publish {:?} failed ({}){}",
                argv[0],
                out.status,
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            ),
        ))
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
        let path = self.path_for(p.policy, p.lineage);
        let content = self.render(p)?;
        let this_path = path.clone();
        let sink = FileSink {
            name: self.name.clone(),
            cfg: self.cfg.clone(),
        };
        tokio::task::spawn_blocking(move || sink.write_atomically(&this_path, content.as_bytes()))
            .await
            .map_err(|e| SinkError::retryable(&self.name, format!("write task failed: {e}")))??;
        if let Some(argv) = &self.cfg.on_publish {
            self.run_on_publish(argv, &path, p).await?;
        }
        Ok(Some(path.display().to_string()))
    }

    async fn read_back(&self, policy: &str, lineage: &str) -> Result<ReadBack, SinkError> {
        let path = self.path_for(policy, lineage);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                let text = zeroize::Zeroizing::new(text);
                Ok(ReadBack::Fingerprint(self.parse(&text).fingerprint()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReadBack::Missing),
            Err(e) => Err(SinkError::retryable(
                &self.name,
                format!("cannot read back {}: {e}", path.display()),
            )),
        }
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
        }
    }

    fn sink_at(path: &str, env_names: &[(&str, &str)]) -> FileSink {
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
        let s = sink_at(
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
        let s = sink_at(
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
        let s = sink_at(
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
}
