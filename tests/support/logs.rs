//! Capture everything `tracing` emits at TRACE on the current thread, so a
//! test can search it for secrets.
//!
//! One global subscriber (installed once, at TRACE) writes each line to the
//! capture buffer of the thread that emitted it, if that thread is
//! capturing. A global subscriber avoids the callsite-interest races of
//! per-thread `set_default` subscribers when tests run in parallel. Use
//! with `#[tokio::test]` (the current-thread runtime), so the test's
//! spawned tasks log on its thread. If some other code installed a global
//! subscriber first, nothing is captured and the tests' "the logs mention
//! X" checks fail loudly rather than pass vacuously.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    static CAPTURE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

#[derive(Clone, Default)]
pub struct CapturedLogs(Buffer);

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

/// Writes to the current thread's capture buffer, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(b) = c.borrow().as_ref() {
                b.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops capturing on drop.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Start capturing this thread's logs at TRACE.
pub fn capture_logs_at_trace() -> (CapturedLogs, CaptureGuard) {
    INSTALL.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .try_init();
    });
    let logs = CapturedLogs::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(logs.0.clone()));
    (logs, CaptureGuard(()))
}
