//! Sealing created secrets at rest: XChaCha20-Poly1305 with a random
//! 24-byte nonce per seal and the rotation id as associated data, so a
//! sealed blob cannot be replayed into another rotation's row.
//!
//! The 32-byte key comes from `daemon.seal_key` (a secret reference holding
//! 64 hex characters, e.g. a systemd credential) or from a key file beside
//! the DB (`state.db.key`, created 0600 on first start, never rewritten).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::secret::{Secret, SecretFields};

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("seal key must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("cannot read or create seal key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("seal key file {0} is readable by others; chmod 0600 it")]
    KeyFileMode(PathBuf),
    #[error(
        "sealed secret of rotation {0} does not open with this key (wrong seal key, or tampered row)"
    )]
    Open(String),
}

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    pub fn from_hex(key: &Secret) -> Result<Self, SealError> {
        let bytes =
            Zeroizing::new(hex::decode(key.expose().trim()).map_err(|_| SealError::BadKey)?);
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(Sealer { cipher })
    }

    /// A fresh random key, for tests and in-memory stores.
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        Sealer {
            cipher: XChaCha20Poly1305::new_from_slice(k.as_ref()).expect("32-byte key"),
        }
    }

    /// Load the key file beside the DB, creating it (0600) if absent.
    pub fn from_key_file(path: &Path) -> Result<Self, SealError> {
        let err = |e: std::io::Error| SealError::KeyFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        if !path.exists() {
            let mut k = Zeroizing::new([0u8; 32]);
            rand::rng().fill_bytes(k.as_mut());
            let hexed = Zeroizing::new(hex::encode(k.as_ref()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(err)?;
            f.write_all(hexed.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
            if let Some(dir) = path.parent() {
                let d = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::File::open(d)
                    .and_then(|d| d.sync_all())
                    .map_err(err)?;
            }
        }
        // Opened without following a link, then checked on the descriptor:
        // no window in which the path can be swapped.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
            return Err(SealError::KeyFileMode(path.to_path_buf()));
        }
        let mut text = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut f, &mut text).map_err(err)?;
        Self::from_hex(&Secret::new(text.trim().to_string()))
    }

    pub fn seal(&self, rotation_id: &str, fields: &SecretFields) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let plain = fields.to_json();
        let ct = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: rotation_id.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, rotation_id: &str, sealed: &[u8]) -> Result<SecretFields, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open(rotation_id.to_string()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| SealError::Open(rotation_id.to_string()))?;
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: ct,
                        aad: rotation_id.as_bytes(),
                    },
                )
                .map_err(|_| SealError::Open(rotation_id.to_string()))?,
        );
        let text =
            std::str::from_utf8(&plain).map_err(|_| SealError::Open(rotation_id.to_string()))?;
        SecretFields::from_json(text).ok_or_else(|| SealError::Open(rotation_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_opens_only_for_its_rotation() {
        let s = Sealer::random();
        let f = SecretFields::single("api_key", Secret::new("sk_live_123"));
        let blob = s.seal("aaaa0001", &f);
        assert!(!String::from_utf8_lossy(&blob).contains("sk_live_123"));
        assert_eq!(s.open("aaaa0001", &blob).unwrap(), f);
        assert!(s.open("aaaa0002", &blob).is_err());
        assert!(Sealer::random().open("aaaa0001", &blob).is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db.key");
        let a = Sealer::from_key_file(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let f = SecretFields::single("k", Secret::new("v"));
        let blob = a.seal("r1", &f);
        let b = Sealer::from_key_file(&p).unwrap();
        assert_eq!(b.open("r1", &blob).unwrap(), f);
    }
}
