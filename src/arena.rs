//! A string arena: many short strings stored back to back in one `String`
//! and referred to by 8-byte [`Span`]s, for tables that hold a row per key
//! (DESIGN §9: the daemon's size is the size of those tables).
//!
//! A `String` per id, name or lineage costs the string's bytes plus a
//! 24-byte header and the allocator's overhead and rounding (16–32 bytes);
//! here a string costs its bytes and an 8-byte span. Strings that repeat
//! across rows (a lineage's reason, a key's origin or state) can be stored
//! once ([`Arena::intern`]). Nothing is normalised: [`Arena::get`] gives
//! back the exact bytes given.
//!
//! Used by the status tables (`rotation::compact`) and the cached ledger's
//! key rows (`state::known`); it lives here, below both, because the state
//! layer must not depend on the rotation layer.

/// A string in an [`Arena`]: byte offset and length (also used by tables
/// for a run of rows in a side `Vec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// An absent optional string ([`Arena::push_opt`], [`Arena::get_opt`]).
pub const NO_SPAN: Span = Span {
    start: u32::MAX,
    len: 0,
};

/// One table's strings, back to back.
#[derive(Debug, Clone, Default)]
pub struct Arena {
    text: String,
    /// Spans handed out by [`Arena::intern`], searched newest first.
    interned: Vec<Span>,
}

impl Arena {
    /// Store `s`; its span.
    ///
    /// # Panics
    /// When the arena would pass 4 GiB (a table of one policy never does).
    pub fn push(&mut self, s: &str) -> Span {
        let start = u32::try_from(self.text.len()).expect("an arena holds under 4 GiB of text");
        let len = u32::try_from(s.len()).expect("an arena string is under 4 GiB");
        // The end too: a span's `start + len` must not wrap (release
        // builds do not check the addition; the next push would be too
        // late for this span).
        start
            .checked_add(len)
            .expect("an arena holds under 4 GiB of text");
        self.text.push_str(s);
        Span { start, len }
    }

    /// [`Arena::push`] of `Some`, [`NO_SPAN`] for `None`.
    pub fn push_opt(&mut self, s: Option<&str>) -> Span {
        s.map_or(NO_SPAN, |s| self.push(s))
    }

    /// [`Arena::push`], reusing an equal string among the `window` strings
    /// interned most recently. The window bounds the search (and so the
    /// cost of a table of hostile, all-distinct strings): the repeated
    /// strings of one table are few (reasons, origins, states) or
    /// consecutive (a lineage's keys).
    pub fn intern(&mut self, s: &str, window: usize) -> Span {
        if let Some(found) = self
            .interned
            .iter()
            .rev()
            .take(window)
            .find(|sp| self.get(**sp) == s)
        {
            return *found;
        }
        let sp = self.push(s);
        self.interned.push(sp);
        sp
    }

    /// The string at `sp`.
    ///
    /// # Panics
    /// When `sp` did not come from this arena.
    pub fn get(&self, sp: Span) -> &str {
        let start = sp.start as usize;
        &self.text[start..start + sp.len as usize]
    }

    /// The string at `sp`, `None` for [`NO_SPAN`].
    pub fn get_opt(&self, sp: Span) -> Option<&str> {
        (sp != NO_SPAN).then(|| self.get(sp))
    }

    /// Drop the spare capacity and the intern list once the table is built
    /// (strings pushed later are stored anew, never wrongly shared).
    pub fn finish(&mut self) {
        self.text.shrink_to_fit();
        self.interned = Vec::new();
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.interned.capacity() * std::mem::size_of::<Span>()
    }

    /// The stored text (tests: what is stored once).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_come_back_byte_for_byte_and_none_stays_none() {
        let mut a = Arena::default();
        let s = ["", "app-1", "ключ-\u{202e}evil\u{0}", &"x".repeat(100_000)];
        let spans: Vec<Span> = s.iter().map(|x| a.push(x)).collect();
        let none = a.push_opt(None);
        let some_empty = a.push_opt(Some(""));
        for (x, sp) in s.iter().zip(&spans) {
            assert_eq!(a.get(*sp), *x);
        }
        assert_eq!(a.get_opt(none), None);
        assert_eq!(a.get_opt(some_empty), Some(""));
    }

    #[test]
    fn intern_stores_a_repeated_string_once_within_its_window() {
        let mut a = Arena::default();
        let first = a.intern("fresh", 4);
        assert_eq!(a.intern("fresh", 4), first);
        assert_eq!(a.text().matches("fresh").count(), 1);
        // Pushed outside the window: stored again, still read back right.
        for i in 0..4 {
            a.intern(&format!("w{i}"), 4);
        }
        let again = a.intern("fresh", 4);
        assert_ne!(again, first);
        assert_eq!(a.get(again), "fresh");
        // After finish nothing is shared with what came before.
        a.finish();
        let after = a.intern("w3", 4);
        assert_eq!(a.get(after), "w3");
        assert_eq!(a.text().matches("w3").count(), 2);
    }
}
