//! Host checks shared by `rekey check` and `rekey run` (through
//! [`super::load_with`]): the state directory and the fixed part of every
//! file sink's path exist and are writable by the user the service runs as.
//!
//! rekey creates neither: a missing directory is a typo more often than a
//! wish, and a directory created by the daemon outside `StateDirectory=`
//! would belong to whoever ran it. The one exception is the service's own
//! `StateDirectory=` (`$STATE_DIRECTORY`, `/var/lib/rekey`), which systemd
//! creates at start: its absence is a warning.
//!
//! "The user the service runs as": the current user under systemd (the
//! unit's `ExecStartPre=`); in a shell on a host with the packaged `rekey`
//! user (root, or an operator), that user, judged from the directories'
//! owner, group and mode bits.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::secret_ref::Env;
use super::{Config, Diagnostic, Severity, SinkKind};

/// The static service user the package creates (sysusers.d).
pub const SERVICE_USER: &str = "rekey";
/// Where the packaged unit's `StateDirectory=rekey` lives.
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/rekey";

/// Whose access the checks judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceUser {
    /// The user running this command (under systemd: the service's user).
    Current,
    /// Another user, judged by mode bits.
    Named {
        name: String,
        uid: u32,
        /// Primary and supplementary groups.
        gids: Vec<u32>,
    },
}

impl ServiceUser {
    /// Outside systemd, on a host with a `rekey` user that is not us →
    /// that user; otherwise → ourselves.
    pub fn detect() -> Self {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
        if !under_systemd
            && let Some(u @ ServiceUser::Named { uid, .. }) = ServiceUser::lookup(SERVICE_USER)
            && uid != me
        {
            return u;
        }
        ServiceUser::Current
    }

    /// A user by name, with its groups; `None` when there is no such user.
    pub fn lookup(name: &str) -> Option<Self> {
        let c = CString::new(name).ok()?;
        // SAFETY: getpwnam returns NULL or a pointer to static storage; the
        // fields are copied out before any other libc call.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if pw.is_null() {
            return None;
        }
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        let mut n: libc::c_int = 64;
        let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
        // SAFETY: the buffer holds `n` entries; getgrouplist writes at most
        // that many and sets `n` to the real count.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc < 0 {
            groups.resize(n.max(0) as usize, 0);
            unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        }
        groups.truncate(n.max(0) as usize);
        if !groups.contains(&gid) {
            groups.push(gid);
        }
        Some(ServiceUser::Named {
            name: name.to_string(),
            uid,
            gids: groups,
        })
    }

    /// For messages: "user rekey" or "the current user".
    pub fn describe(&self) -> String {
        match self {
            ServiceUser::Current => "the current user".to_string(),
            ServiceUser::Named { name, .. } => format!("user {name}"),
        }
    }

    /// Whether this user can create files in `dir` (write and search).
    pub fn can_write_dir(&self, dir: &Path) -> bool {
        match self {
            ServiceUser::Current => {
                let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
                    return false;
                };
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
            }
            ServiceUser::Named { uid, gids, .. } => {
                if *uid == 0 {
                    return true;
                }
                let allows = |p: &Path, bits: u32| -> bool {
                    let Ok(m) = std::fs::metadata(p) else {
                        return false;
                    };
                    let mode = m.mode();
                    let shift = if m.uid() == *uid {
                        6
                    } else if gids.contains(&m.gid()) {
                        3
                    } else {
                        0
                    };
                    (mode >> shift) & bits == bits
                };
                // Search permission on every ancestor, then write + search
                // on the directory itself.
                let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
                abs.ancestors().skip(1).all(|a| allows(a, 0o1)) && allows(&abs, 0o3)
            }
        }
    }
}

/// Every host problem of `cfg`, located at the key that names the place.
pub fn check(cfg: &Config, env: &Env, user: &ServiceUser) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Some(state) = cfg.daemon.state.sqlite_path() {
        let dir = parent_dir(state);
        let service_dir = env
            .vars
            .get("STATE_DIRECTORY")
            .map(|d| PathBuf::from(d.split(':').next().unwrap_or(d)))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIRECTORY));
        let items = ["daemon.state", "daemon"];
        if !dir.exists() {
            if dir == service_dir {
                out.push(cfg.diagnostic_at(
                    Severity::Warning,
                    &items,
                    format!("state directory {} does not exist yet", dir.display()),
                    Some("systemd creates it when the service starts (StateDirectory=rekey); outside systemd, `rekey run` creates it".into()),
                ));
            } else {
                out.push(cfg.error_at(
                    &items,
                    format!("state directory {} does not exist", dir.display()),
                    Some(format!(
                        "rekey does not create it: create it (install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 0700 {}) or point daemon.state into {}",
                        dir.display(),
                        service_dir.display()
                    )),
                ));
            }
        } else if !dir.is_dir() {
            out.push(cfg.error_at(
                &items,
                format!("state directory {} is not a directory", dir.display()),
                None,
            ));
        } else if !user.can_write_dir(&dir) {
            out.push(cfg.error_at(
                &items,
                format!(
                    "state directory {} is not writable by {}",
                    dir.display(),
                    user.describe()
                ),
                Some("the DB, its lock and its WAL files live there; give the service user write access".into()),
            ));
        }
    }
    for (name, sink) in &cfg.sinks {
        let SinkKind::File(f) = &sink.kind else {
            continue;
        };
        let dir = f.path.fixed_dir();
        let items = [format!("sinks.{name}.path"), format!("sinks.{name}")];
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        let placeholder = if f.path.as_str().contains('{') {
            " (the part before the first placeholder; directories below it are created as needed)"
        } else {
            ""
        };
        // A warning, not a refusal: the sink fails each publish with this
        // message (the old key stays) until the directory exists, and other
        // sinks and policies keep working; rekey never creates it.
        if !dir.is_dir() {
            out.push(cfg.diagnostic_at(
                Severity::Warning,
                &items,
                format!(
                    "directory {} of [sinks.{name}] does not exist{placeholder}",
                    dir.display()
                ),
                Some(format!(
                    "create it before rekey writes there, e.g. install -d -o root -g {SERVICE_USER} -m 2770 {} (a setgid directory of the consumer's group; systemd/README.md)",
                    dir.display()
                )),
            ));
        } else if !user.can_write_dir(&dir) {
            out.push(cfg.diagnostic_at(
                Severity::Warning,
                &items,
                format!(
                    "directory {} of [sinks.{name}] is not writable by {}",
                    dir.display(),
                    user.describe()
                ),
                Some(
                    "give the service user write access (a group it belongs to, mode 2770), and list it in ReadWritePaths= of the unit"
                        .into(),
                ),
            ));
        }
    }
    out
}

/// The directory a file path lives in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn user(uid: u32, gids: &[u32]) -> ServiceUser {
        ServiceUser::Named {
            name: "svc".into(),
            uid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn another_user_is_judged_by_owner_group_and_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let set = |mode: u32| {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let meta = std::fs::metadata(&d).unwrap();
        let (owner, group) = (meta.uid(), meta.gid());
        let stranger = user(owner.wrapping_add(4242), &[group.wrapping_add(4242)]);
        let member = user(owner.wrapping_add(4242), &[group]);
        let same_owner = user(owner, &[]);
        set(0o700);
        assert!(same_owner.can_write_dir(&d));
        assert!(!member.can_write_dir(&d));
        assert!(!stranger.can_write_dir(&d));
        set(0o2770);
        assert!(member.can_write_dir(&d), "a setgid group directory");
        assert!(!stranger.can_write_dir(&d));
        set(0o750);
        assert!(!member.can_write_dir(&d), "read-only for the group");
        set(0o777);
        assert!(stranger.can_write_dir(&d));
        // Search permission on the way there counts too.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!stranger.can_write_dir(&d));
    }
}
