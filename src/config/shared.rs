//! Compiled forms of configuration text shared by every policy that writes
//! the same text (DESIGN §9, issue 13).
//!
//! A policy's name-template parser (a `Regex`) and its schedule (a parsed
//! cron line) are pure functions of their text: 100 policies with the
//! default name template and one schedule held 100 copies of each (about
//! 10 KB per regex with its search caches, 5 KB per schedule). A
//! [`SharedByText`] hands out one `Arc` per distinct text for as long as
//! any configuration holds it: entries are weak, so a reload that drops a
//! text frees its compiled form, and an entry found dead is compiled anew.
//! Sharing cannot change behaviour: the value depends on the text alone
//! (the callers compile with fixed options), and the values are immutable
//! (a `Regex` is safe to search from several threads at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Compiled values by their source text, held weakly ([module doc](self)).
pub struct SharedByText<T>(Mutex<HashMap<String, Weak<T>>>);

impl<T> SharedByText<T> {
    /// Empty (usable in a `static`).
    pub fn new() -> Self {
        SharedByText(Mutex::new(HashMap::new()))
    }

    /// The value compiled from `text`: the one already held by someone, or
    /// `compile(text)`'s (whose error is returned as is, nothing kept).
    pub fn get_or_compile<E>(
        &self,
        text: &str,
        compile: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(v) = self.lock().get(text).and_then(Weak::upgrade) {
            return Ok(v);
        }
        // Compiled outside the lock; should two callers race, the second
        // entry replaces the first (both values are equal).
        let v = Arc::new(compile(text)?);
        let mut map = self.lock();
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(text.to_string(), Arc::downgrade(&v));
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<T>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Default for SharedByText<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_text_while_held_and_compiled_anew_once_dropped() {
        let shared = SharedByText::<String>::new();
        let compiled = std::cell::Cell::new(0);
        let make = |t: &str| -> Result<String, ()> {
            compiled.set(compiled.get() + 1);
            Ok(t.to_uppercase())
        };
        let a = shared.get_or_compile("x", make).unwrap();
        let b = shared.get_or_compile("x", make).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = shared.get_or_compile("y", make).unwrap();
        assert_eq!((a.as_str(), c.as_str()), ("X", "Y"));
        assert_eq!(compiled.get(), 2);
        drop((a, b));
        let again = shared.get_or_compile("x", make).unwrap();
        assert_eq!(again.as_str(), "X");
        assert_eq!(compiled.get(), 3, "a dropped value is compiled anew");
        // The dead entry was pruned, the live one kept.
        assert_eq!(shared.lock().len(), 2);
    }

    #[test]
    fn an_error_is_returned_and_nothing_kept() {
        let shared = SharedByText::<String>::new();
        let e = shared.get_or_compile("bad", |_| Err::<String, _>("no"));
        assert_eq!(e.unwrap_err(), "no");
        assert!(shared.lock().is_empty());
        let ok = shared.get_or_compile("bad", |t| Ok::<_, &str>(t.to_string()));
        assert_eq!(ok.unwrap().as_str(), "bad");
    }
}
