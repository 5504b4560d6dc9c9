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

impl FileSink {
    fn write_atomically(&self, path: &Path, content: &[u8]) -> Result<(), SinkError> {
        let io = |what: &str, e: std::io::Error| {
            SinkError::retryable(&self.name, format!("{what} {}: {e}", path.display()))
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(SinkError::retryable(
                &self.name,
                format!("directory {} does not exist", dir.display()),
            ));
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
                        humantime::format_duration(self.cfg.on_publish_timeout)
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
            if let Some(t) = v.as_text().filter(|t| !t.is_empty()) {
                stderr = stderr.replace(t, "[redacted]");
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
        tokio::task::spawn_blocking(move || sink.write_atomically(&this_path, &content))
            .await
            .map_err(|e| SinkError::retryable(&self.name, format!("write task failed: {e}")))??;
        if let Some(argv) = &self.cfg.on_publish {
            self.run_on_publish(argv, &path, p).await?;
        }
        Ok(Some(path.display().to_string()))
    }

    async fn read_back(&self, policy: &str, lineage: &str) -> Result<ReadBack, SinkError> {
        let path = self.path_for(policy, lineage);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                Ok(ReadBack::Fingerprint(self.parse(&bytes).fingerprint()))
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
                field: None,
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
}
