//! A policy's key rows ([`KnownKey`]) held compactly: what the engine's
//! cached ledger keeps of every key between checks (DESIGN §9).
//!
//! The cached ledgers hold every known key of every policy for as long as
//! each policy's ledger generation stands, so their size is the daemon's
//! size: as plain structs a key row took about 200 bytes inline plus five
//! heap strings (id, name, lineage, origin, state), each with its
//! allocator overhead and rounding. Here, with the status tables'
//! [`crate::arena`]:
//!
//! - a table's strings live in one arena (a `String`), referred to by
//!   8-byte spans: no heap allocation per id, name, lineage or rotation id;
//! - a lineage equal to the key's name or id reuses that span (a key that
//!   starts its own lineage);
//! - origins and states, a handful of distinct words per table, are stored
//!   once in a per-table word list and a row holds a 2-byte index into it
//!   (a table with more distinct words than an index holds keeps the rest
//!   in a side list keyed by row: slower to read, never wrong);
//! - the unparsed-times JSON (`unknown_time`), almost always absent, lives
//!   in a side list keyed by row: nothing in the row, 12 bytes per row
//!   that has one;
//! - timestamps stay `Option<DateTime<Utc>>` (12 bytes, exact to the
//!   nanosecond, any date chrono holds).
//!
//! About 72 bytes per row (four spans, three timestamps, two word indexes;
//! it was 92 with every string a span) plus its id, name, (distinct)
//! lineage and rotation id.
//! Nothing is normalised or parsed: every string comes back byte for byte
//! (unknown origins and states included), in the order the rows were
//! given, so planning from a [`KnownKeys`] is planning from the rows the
//! store returned ([`KnownKeys::to_vec`] gives those rows back).

use chrono::{DateTime, Utc};

use super::KnownKey;
use crate::arena::{Arena, Span};

/// How many of the oldest and of the newest distinct words (origins,
/// states) are looked up before a word is stored anew: the store knows a
/// handful, so this only bounds the search (at most twice this many
/// comparisons per word) against a hostile or corrupt table.
const WORD_LIMIT: usize = 16;

/// A row's origin or state: an index into [`KnownKeys::words`], or
/// [`OVERFLOW`].
type WordIx = u16;

/// The word list is full (65,535 words, a hostile table): this row's word
/// is in the table's side list for that field instead.
const OVERFLOW: WordIx = WordIx::MAX;

/// 72 bytes: the spans and timestamps are 4-aligned, the two word indexes
/// fill one 4-byte slot.
#[derive(Debug, Clone)]
struct Row {
    key_id: Span,
    name: Span,
    lineage: Span,
    rotation_id: Span,
    created_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    gone_since: Option<DateTime<Utc>>,
    origin: WordIx,
    state: WordIx,
}

/// Strings of a few rows, keyed by row index (ascending: rows are only
/// appended), for a field that is almost always absent.
#[derive(Debug, Clone, Default)]
struct Sparse(Vec<(u32, Span)>);

impl Sparse {
    /// Record `sp` for row `ix`, which is after every row recorded so far.
    fn push(&mut self, ix: u32, sp: Span) {
        debug_assert!(self.0.last().is_none_or(|(last, _)| *last < ix));
        self.0.push((ix, sp));
    }

    /// Row `ix`'s span, if it has one (a binary search).
    fn get(&self, ix: usize) -> Option<Span> {
        let i = self
            .0
            .binary_search_by_key(&ix, |(r, _)| *r as usize)
            .ok()?;
        Some(self.0[i].1)
    }

    fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

/// A policy's key rows, compact ([module doc](self)). Built from plain rows
/// ([`KnownKeys::push`], `collect`, `From<Vec<KnownKey>>`) and read through
/// borrowed views ([`KnownRef`]) in the order given.
#[derive(Clone, Default)]
pub struct KnownKeys {
    /// Every row's strings.
    arena: Arena,
    /// Distinct origins and states (spans into `arena`), in the order first
    /// seen; a row's `origin` and `state` index this. At most `OVERFLOW`
    /// entries; a word missed by the bounded search is stored again.
    words: Vec<Span>,
    rows: Vec<Row>,
    /// `unknown_time` of the rows that have one.
    unknown_times: Sparse,
    /// Origins of the rows whose `origin` is [`OVERFLOW`].
    origins_over: Sparse,
    /// States of the rows whose `state` is [`OVERFLOW`].
    states_over: Sparse,
}

impl KnownKeys {
    /// No rows.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, sp: Span) -> &str {
        self.arena.get(sp)
    }

    fn get_opt(&self, sp: Span) -> Option<&str> {
        self.arena.get_opt(sp)
    }

    /// `s`'s index in the word list: found among the first and the newest
    /// [`WORD_LIMIT`] words, else added; [`OVERFLOW`] when the list is full.
    fn word(&mut self, s: &str) -> WordIx {
        let n = self.words.len();
        let oldest = 0..n.min(WORD_LIMIT);
        let newest = n.saturating_sub(WORD_LIMIT).max(oldest.end)..n;
        if let Some(i) = oldest
            .chain(newest.rev())
            .find(|&i| self.arena.get(self.words[i]) == s)
        {
            // Every index in the list fits: the list stops before OVERFLOW.
            return i as WordIx;
        }
        if n >= OVERFLOW as usize {
            return OVERFLOW;
        }
        self.words.push(self.arena.push(s));
        n as WordIx
    }

    /// Append one row.
    ///
    /// # Panics
    /// When the table's text would pass 4 GiB, or its rows 4 billion (a
    /// table of one policy never does).
    pub fn push(&mut self, k: &KnownKey) {
        let ix = u32::try_from(self.rows.len()).expect("a table holds under 4 billion rows");
        let key_id = self.arena.push(&k.key_id);
        let name = if k.name == k.key_id {
            key_id
        } else {
            self.arena.push(&k.name)
        };
        let lineage = if k.lineage == k.name {
            name
        } else if k.lineage == k.key_id {
            key_id
        } else {
            self.arena.push(&k.lineage)
        };
        let origin = self.word(&k.origin);
        if origin == OVERFLOW {
            let sp = self.arena.push(&k.origin);
            self.origins_over.push(ix, sp);
        }
        let rotation_id = self.arena.push_opt(k.rotation_id.as_deref());
        let state = self.word(&k.state);
        if state == OVERFLOW {
            let sp = self.arena.push(&k.state);
            self.states_over.push(ix, sp);
        }
        if let Some(t) = &k.unknown_time {
            let sp = self.arena.push(t);
            self.unknown_times.push(ix, sp);
        }
        self.rows.push(Row {
            key_id,
            name,
            lineage,
            rotation_id,
            created_at: k.created_at,
            expires_at: k.expires_at,
            gone_since: k.gone_since,
            origin,
            state,
        });
    }

    /// Drop the spare capacity once every row is in (rows pushed later are
    /// still stored right).
    pub fn shrink_to_fit(&mut self) {
        self.arena.finish();
        self.words.shrink_to_fit();
        self.rows.shrink_to_fit();
        self.unknown_times.shrink_to_fit();
        self.origins_over.shrink_to_fit();
        self.states_over.shrink_to_fit();
    }

    /// Bytes held on the heap (rows, text, word list, side lists).
    pub fn heap_bytes(&self) -> usize {
        let sparse = |s: &Sparse| s.0.capacity() * std::mem::size_of::<(u32, Span)>();
        self.arena.heap_bytes()
            + self.words.capacity() * std::mem::size_of::<Span>()
            + self.rows.capacity() * std::mem::size_of::<Row>()
            + sparse(&self.unknown_times)
            + sparse(&self.origins_over)
            + sparse(&self.states_over)
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, in the order they were pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = KnownRef<'_>> + '_ {
        self.rows.iter().enumerate().map(move |(ix, row)| KnownRef {
            keys: self,
            row,
            ix,
        })
    }

    /// The row of key `key_id` (the first, should the rows repeat an id).
    pub fn find(&self, key_id: &str) -> Option<KnownRef<'_>> {
        self.iter().find(|k| k.key_id() == key_id)
    }

    /// The plain rows back.
    pub fn to_vec(&self) -> Vec<KnownKey> {
        self.iter().map(|k| k.to_owned()).collect()
    }
}

impl FromIterator<KnownKey> for KnownKeys {
    fn from_iter<I: IntoIterator<Item = KnownKey>>(iter: I) -> Self {
        let mut keys = KnownKeys::new();
        for k in iter {
            keys.push(&k);
        }
        keys.shrink_to_fit();
        keys
    }
}

impl From<Vec<KnownKey>> for KnownKeys {
    fn from(rows: Vec<KnownKey>) -> Self {
        let mut keys = KnownKeys {
            rows: Vec::with_capacity(rows.len()),
            ..KnownKeys::default()
        };
        for k in &rows {
            keys.push(k);
        }
        keys.shrink_to_fit();
        keys
    }
}

/// By content, row by row (not by how the arena is laid out).
impl PartialEq for KnownKeys {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().zip(o.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for KnownKeys {}

/// As the plain rows print.
impl std::fmt::Debug for KnownKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One row of a [`KnownKeys`], borrowed: the fields of [`KnownKey`].
#[derive(Clone, Copy)]
pub struct KnownRef<'a> {
    keys: &'a KnownKeys,
    row: &'a Row,
    /// The row's index in `keys` (its side lists are keyed by it).
    ix: usize,
}

impl<'a> KnownRef<'a> {
    /// The word at index `w`, or this row's entry in `over` for
    /// [`OVERFLOW`].
    fn word(&self, w: WordIx, over: &'a Sparse) -> &'a str {
        let sp = if w == OVERFLOW {
            over.get(self.ix)
                .expect("a row whose word overflowed has it in the side list")
        } else {
            self.keys.words[usize::from(w)]
        };
        self.keys.get(sp)
    }

    pub fn key_id(&self) -> &'a str {
        self.keys.get(self.row.key_id)
    }

    pub fn name(&self) -> &'a str {
        self.keys.get(self.row.name)
    }

    pub fn lineage(&self) -> &'a str {
        self.keys.get(self.row.lineage)
    }

    /// `created`, `adopted`, `orphan`, `unrecognised` (as stored).
    pub fn origin(&self) -> &'a str {
        self.word(self.row.origin, &self.keys.origins_over)
    }

    pub fn rotation_id(&self) -> Option<&'a str> {
        self.keys.get_opt(self.row.rotation_id)
    }

    /// `live`, `retiring`, `gone`, `deleted`… (as stored).
    pub fn state(&self) -> &'a str {
        self.word(self.row.state, &self.keys.states_over)
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.row.created_at
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.row.expires_at
    }

    /// JSON of the times the last listing carried that did not parse.
    pub fn unknown_time(&self) -> Option<&'a str> {
        let sp = self.keys.unknown_times.get(self.ix)?;
        Some(self.keys.get(sp))
    }

    /// For a `gone` key, since when ([`KnownKey::gone_since`]).
    pub fn gone_since(&self) -> Option<DateTime<Utc>> {
        self.row.gone_since
    }

    /// The plain row.
    pub fn to_owned(&self) -> KnownKey {
        KnownKey {
            key_id: self.key_id().to_string(),
            name: self.name().to_string(),
            lineage: self.lineage().to_string(),
            origin: self.origin().to_string(),
            rotation_id: self.rotation_id().map(str::to_string),
            state: self.state().to_string(),
            created_at: self.created_at(),
            expires_at: self.expires_at(),
            unknown_time: self.unknown_time().map(str::to_string),
            gone_since: self.gone_since(),
        }
    }
}

impl PartialEq for KnownRef<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.key_id() == o.key_id()
            && self.name() == o.name()
            && self.lineage() == o.lineage()
            && self.origin() == o.origin()
            && self.rotation_id() == o.rotation_id()
            && self.state() == o.state()
            && self.created_at() == o.created_at()
            && self.expires_at() == o.expires_at()
            && self.unknown_time() == o.unknown_time()
            && self.gone_since() == o.gone_since()
    }
}

/// As the plain row prints.
impl std::fmt::Debug for KnownRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_owned().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(id: &str, name: &str, lineage: &str, origin: &str, state: &str) -> KnownKey {
        KnownKey {
            key_id: id.into(),
            name: name.into(),
            lineage: lineage.into(),
            origin: origin.into(),
            rotation_id: None,
            state: state.into(),
            created_at: None,
            expires_at: None,
            unknown_time: None,
            gone_since: None,
        }
    }

    /// Every row of `compact` is the row of `rows` at its place, field for
    /// field (no `Debug` text: cheap enough for large tables).
    fn assert_fields(compact: &KnownKeys, rows: &[KnownKey]) {
        assert_eq!(compact.len(), rows.len());
        assert_eq!(compact.iter().len(), rows.len());
        for (r, k) in rows.iter().zip(compact.iter()) {
            assert_eq!(k.key_id(), r.key_id);
            assert_eq!(k.name(), r.name);
            assert_eq!(k.lineage(), r.lineage);
            assert_eq!(k.origin(), r.origin);
            assert_eq!(k.rotation_id(), r.rotation_id.as_deref());
            assert_eq!(k.state(), r.state);
            assert_eq!(k.created_at(), r.created_at);
            assert_eq!(k.expires_at(), r.expires_at);
            assert_eq!(k.unknown_time(), r.unknown_time.as_deref());
            assert_eq!(k.gone_since(), r.gone_since);
        }
    }

    fn assert_round_trip(rows: Vec<KnownKey>) {
        let compact = KnownKeys::from(rows.clone());
        let back = compact.to_vec();
        assert_eq!(format!("{back:?}"), format!("{rows:?}"));
        assert_eq!(format!("{compact:?}"), format!("{rows:?}"));
        assert_fields(&compact, &rows);
        // Pushed one by one, no shrink: the same rows.
        let mut pushed = KnownKeys::new();
        for r in &rows {
            pushed.push(r);
        }
        assert_fields(&pushed, &rows);
        assert_eq!(pushed, compact);
        let collected: KnownKeys = rows.into_iter().collect();
        assert_eq!(collected, compact);
    }

    #[test]
    fn rows_come_back_field_for_field_in_order() {
        let t = |s: i64, ns: u32| Some(Utc.timestamp_opt(s, ns).unwrap());
        let mut a = row("id-1", "app-1", "app-1", "adopted", "live");
        a.created_at = t(1_700_000_000, 123_456_789);
        a.expires_at = Some(DateTime::<Utc>::MAX_UTC);
        a.gone_since = Some(DateTime::<Utc>::MIN_UTC);
        let mut b = row("id-2", "rekey-app-2", "app", "created", "retiring");
        b.rotation_id = Some("r-9".into());
        b.unknown_time = Some(r#"{"expiresAt":"soon"}"#.into());
        // Strings that are present but empty are not absent.
        let mut c = row("", "", "", "", "");
        c.rotation_id = Some(String::new());
        c.unknown_time = Some(String::new());
        // The lineage named after the id, not the name.
        let d = row("id-4", "n", "id-4", "orphan", "gone");
        // Ids repeated, the same key twice.
        let e = row("id-1", "app-1", "other", "adopted", "deleted");
        assert_round_trip(vec![a, b, c, d, e]);
        assert_round_trip(Vec::new());
    }

    #[test]
    fn unicode_hostile_and_long_strings_come_back_byte_for_byte() {
        let long = "k".repeat(100_000);
        let hostile = "a\"b\\c\n\u{0}\u{1b}[31m\u{202e}é😀";
        let mut rows = vec![
            row(&long, &long, &long, "adopted", "live"),
            row(hostile, "名前", "линия", "unrecognised", "live"),
            row("x", hostile, hostile, hostile, hostile),
        ];
        // More distinct words than are looked up: still exact.
        for i in 0..(WORD_LIMIT * 2) {
            rows.push(row(
                &format!("id{i}"),
                "n",
                "l",
                &format!("origin{i}"),
                &format!("state{}", i % 3),
            ));
        }
        assert_round_trip(rows);
    }

    #[test]
    fn find_returns_the_first_row_of_an_id() {
        let keys = KnownKeys::from(vec![
            row("a", "n1", "l", "adopted", "live"),
            row("b", "n2", "l", "adopted", "gone"),
            row("a", "n3", "l", "adopted", "deleted"),
        ]);
        assert_eq!(keys.find("a").unwrap().name(), "n1");
        assert_eq!(keys.find("b").unwrap().state(), "gone");
        assert!(keys.find("c").is_none());
    }

    #[test]
    fn equality_is_by_content_not_layout() {
        let rows = vec![
            row("a", "n", "n", "adopted", "live"),
            row("b", "m", "l", "created", "live"),
        ];
        let one = KnownKeys::from(rows.clone());
        // Built another way: words stored in another order.
        let mut other = KnownKeys::new();
        other.arena.push("padding");
        for r in &rows {
            other.push(r);
        }
        assert_eq!(one, other);
        let mut changed = rows;
        changed[1].state = "gone".into();
        assert_ne!(one, KnownKeys::from(changed));
    }

    /// The point of the type: a fraction of the plain rows' heap. The row
    /// size is pinned so that a field added back to it fails here.
    #[test]
    fn a_compact_row_is_a_fraction_of_a_plain_one() {
        assert_eq!(std::mem::size_of::<Row>(), 72);
        assert_eq!(std::mem::size_of::<Option<DateTime<Utc>>>(), 12);
        assert!(std::mem::size_of::<KnownKey>() >= 2 * std::mem::size_of::<Row>());
    }

    /// Many distinct origins and states (more than a byte indexes, more
    /// than the search looks at), interleaved with the common words, and
    /// `unknown_time` on scattered rows: every row comes back exact, and
    /// the common words are stored once.
    #[test]
    fn many_distinct_words_and_scattered_unknown_times_come_back_exact() {
        let t = |s: i64| Some(Utc.timestamp_opt(s, 7).unwrap());
        let mut rows = Vec::new();
        for i in 0..1_000 {
            let mut r = if i % 3 == 0 {
                row(
                    &format!("id{i}"),
                    "n",
                    "l",
                    &format!("o{i}"),
                    &format!("s{i}"),
                )
            } else {
                let state = if i % 2 == 0 { "live" } else { "gone" };
                row(&format!("id{i}"), "n", "l", "adopted", state)
            };
            if i % 97 == 5 || i == 999 {
                r.unknown_time = Some(format!(r#"{{"expiresAt":"x{i}"}}"#));
            }
            if i % 89 == 0 {
                r.unknown_time = Some(String::new());
            }
            r.created_at = t(i);
            r.gone_since = (i % 2 == 1).then_some(DateTime::<Utc>::MAX_UTC);
            rows.push(r);
        }
        let with_unknown = rows.iter().filter(|r| r.unknown_time.is_some()).count();
        assert_eq!(with_unknown, 11 + 12 + 1);
        let compact = KnownKeys::from(rows.clone());
        assert_eq!(compact.to_vec().len(), rows.len());
        assert_round_trip(rows);
        for w in ["adopted", "live", "gone"] {
            assert_eq!(compact.arena.text().matches(w).count(), 1, "{w}");
        }
        // 334 distinct origins and states each, plus the three common words.
        assert_eq!(compact.words.len(), 2 * 334 + 3);
        assert!(compact.origins_over.0.is_empty() && compact.states_over.0.is_empty());
        assert_eq!(compact.unknown_times.0.len(), with_unknown);
    }

    /// More distinct words than an index holds: the rest go to the side
    /// lists, still exact, still in order, and the early common words stay
    /// shared.
    #[test]
    fn a_full_word_list_falls_back_to_the_side_lists() {
        let n = OVERFLOW as usize + 501;
        let rows: Vec<KnownKey> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    row("k", "n", "l", &format!("o{i}"), &format!("s{i}"))
                } else {
                    row("k", "n", "l", "adopted", "live")
                }
            })
            .collect();
        let compact = KnownKeys::from(rows.clone());
        assert_eq!(compact.words.len(), OVERFLOW as usize);
        assert!(!compact.origins_over.0.is_empty());
        assert!(!compact.states_over.0.is_empty());
        // Only the distinct words overflowed: the common ones are indexed.
        assert!(
            compact
                .rows
                .iter()
                .skip(1)
                .step_by(2)
                .all(|r| r.origin != OVERFLOW && r.state != OVERFLOW)
        );
        assert_fields(&compact, &rows);
        let back = compact.to_vec();
        assert_eq!(back.len(), n);
        assert_eq!(back[n - 2].origin, format!("o{}", n - 2));
        assert_eq!(back[n - 2].state, format!("s{}", n - 2));
    }

    /// What a table of typical rows holds: about the row size plus the
    /// strings (printed; `cargo test -- --nocapture` shows it).
    #[test]
    fn heap_per_typical_row() {
        let n = 10_000;
        let rows: Vec<KnownKey> = (0..n)
            .map(|i| {
                let mut r = row(
                    &format!("key-{i:08}"),
                    &format!("rekey-app-{i:08}"),
                    &format!("rekey-app-{i:08}"),
                    "adopted",
                    "live",
                );
                r.rotation_id = Some(format!("r-{i:06}"));
                r.created_at = Some(Utc.timestamp_opt(1_700_000_000 + i, 0).unwrap());
                r
            })
            .collect();
        let compact = KnownKeys::from(rows);
        let strings = n as usize * (12 + 18 + 8) + "adoptedlive".len();
        assert_eq!(compact.arena.text().len(), strings);
        let per_row = (compact.heap_bytes() - strings) / n as usize;
        println!(
            "KnownKeys: {} heap bytes, {per_row} per row beyond its strings",
            compact.heap_bytes()
        );
        assert!(per_row <= 72, "{per_row}");
    }
}
