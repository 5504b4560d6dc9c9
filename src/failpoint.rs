//! Failpoints for crash tests: `REKEY_FAILPOINT=NAME` (or `NAME:N` for the
//! N-th time that point is reached) makes the process abort at that point,
//! exactly between two side effects, as a `kill -9` would. Unset, a
//! failpoint is one relaxed atomic load.
//!
//! `REKEY_FAILPOINT=error@NAME` instead makes [`error`] report a failure
//! at that point every time it is reached, without aborting: tests use it
//! to stand for a store write that fails (a full disk) and check that the
//! daemon backs off instead of spinning. Error points: `record_sink_ack`.
//!
//! `REKEY_FAILPOINT=stop@NAME` makes the process stop itself (`SIGSTOP`)
//! the first time it reaches that point, as a VM freeze or a long GC pause
//! would: the HA tests resume it with `SIGCONT` once another node leads, to
//! check what a deposed leader does next (DESIGN §8).
//!
//! `REKEY_FAILPOINT=delay@NAME:MS` makes [`delay`] wait MS milliseconds
//! every time that point is reached, as a slow disk or a busy machine
//! would: tests use it to make a group of checks run past a schedule
//! window. Delay points: `check` (each policy's check, after its listing).
//!
//! Points: `before_create`, `after_create` (the provider returned the new
//! key, nothing committed), `after_record_created`, `after_prepare` (the
//! provider's after-create step, Tencent's binding, is done, not
//! committed), `before_publish` (the secret is unsealed, a sink is about to
//! be written), `after_publish` (a sink wrote the key, its ack not
//! committed), `after_publish_all`, `before_delete`, `after_disable` (the
//! provider's before-delete step, Tencent's unbind and disable, is done, not
//! committed), `after_record_disabled`, `after_delete` (deleted at the
//! provider, not committed).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("REKEY_FAILPOINT").ok()?;
            let (name, nth) = match v.split_once(':') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                None => (v, 1),
            };
            Some(Armed {
                name,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Abort here if this failpoint is armed (and this is its N-th hit); stop
/// the process here if `stop@NAME` is armed (first hit).
pub fn hit(name: &str) {
    if let Some(a) = armed()
        && a.name.strip_prefix("stop@") == Some(name)
        && a.hits.fetch_add(1, Ordering::SeqCst) == 0
    {
        eprintln!("rekey: failpoint stop@{name} reached: stopping (SIGSTOP)");
        // SAFETY: raise(3) with a valid signal number.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
        eprintln!("rekey: failpoint stop@{name}: continued");
        return;
    }
    if let Some(a) = armed()
        && a.name == name
    {
        let n = a.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if n == a.nth {
            eprintln!("rekey: failpoint {name} reached (hit {n}): aborting");
            std::process::abort();
        }
    }
}

/// Whether the error failpoint `error@NAME` is armed here (every hit).
pub fn error(name: &str) -> bool {
    armed().is_some_and(|a| a.name.strip_prefix("error@") == Some(name))
}

/// Wait here if `delay@NAME:MS` is armed (every hit, MS milliseconds).
pub async fn delay(name: &str) {
    if let Some(a) = armed()
        && a.name.strip_prefix("delay@") == Some(name)
    {
        tokio::time::sleep(std::time::Duration::from_millis(a.nth)).await;
    }
}
