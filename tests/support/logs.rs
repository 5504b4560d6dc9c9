//! Capture everything `tracing` emits at TRACE on the current thread, so a
//! test can search it for secrets. Use with `#[tokio::test]` (the
//! current-thread runtime), so spawned tasks log on the same thread.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Panic if any of `needles` occurs in the captured output.
    pub fn assert_free_of(&self, needles: &[&str]) {
        let text = self.text();
        for n in needles {
            assert!(!n.is_empty());
            assert!(
                !text.contains(n),
                "captured logs contain a secret ({} chars starting {:?}):\n{text}",
                n.len(),
                &n[..n.len().min(3)]
            );
        }
    }
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Start capturing; capture stops when the guard drops.
pub fn capture_logs_at_trace() -> (CapturedLogs, DefaultGuard) {
    let logs = CapturedLogs::default();
    let buf = logs.0.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || Writer(buf.clone()))
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, guard)
}
