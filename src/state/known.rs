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
//!   8-byte spans: no heap allocation per id, name or lineage;
//! - a lineage equal to the key's name or id reuses that span (a key that
//!   starts its own lineage); origins and states, a handful of distinct
//!   words, are stored once per table;
//! - timestamps stay `Option<DateTime<Utc>>` (12 bytes, exact to the
//!   nanosecond).
//!
//! About 92 bytes per row plus its id, name and (distinct) lineage.
//! Nothing is normalised or parsed: every string comes back byte for byte
//! (unknown origins and states included), in the order the rows were
//! given, so planning from a [`KnownKeys`] is planning from the rows the
//! store returned ([`KnownKeys::to_vec`] gives those rows back).

use chrono::{DateTime, Utc};

use super::KnownKey;
use crate::arena::{Arena, Span};

/// How many of the newest distinct words (origins, states) are looked up
/// before a word is stored anew: the store knows a handful, so this only
/// bounds the search against a hostile or corrupt table.
const WORD_LIMIT: usize = 16;

#[derive(Debug, Clone)]
struct Row {
    key_id: Span,
    name: Span,
    lineage: Span,
    origin: Span,
    rotation_id: Span,
    state: Span,
    unknown_time: Span,
    created_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    gone_since: Option<DateTime<Utc>>,
}

/// A policy's key rows, compact ([module doc](self)). Built from plain rows
/// ([`KnownKeys::push`], `collect`, `From<Vec<KnownKey>>`) and read through
/// borrowed views ([`KnownRef`]) in the order given.
#[derive(Clone, Default)]
pub struct KnownKeys {
    /// Every row's strings; origins and states interned.
    arena: Arena,
    rows: Vec<Row>,
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

    /// Append one row.
    pub fn push(&mut self, k: &KnownKey) {
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
        let origin = self.arena.intern(&k.origin, WORD_LIMIT);
        let rotation_id = self.arena.push_opt(k.rotation_id.as_deref());
        let state = self.arena.intern(&k.state, WORD_LIMIT);
        let unknown_time = self.arena.push_opt(k.unknown_time.as_deref());
        self.rows.push(Row {
            key_id,
            name,
            lineage,
            origin,
            rotation_id,
            state,
            unknown_time,
            created_at: k.created_at,
            expires_at: k.expires_at,
            gone_since: k.gone_since,
        });
    }

    /// Drop the spare capacity once every row is in.
    pub fn shrink_to_fit(&mut self) {
        self.arena.finish();
        self.rows.shrink_to_fit();
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
        self.rows
            .iter()
            .map(move |row| KnownRef { keys: self, row })
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
}

impl<'a> KnownRef<'a> {
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
        self.keys.get(self.row.origin)
    }

    pub fn rotation_id(&self) -> Option<&'a str> {
        self.keys.get_opt(self.row.rotation_id)
    }

    /// `live`, `retiring`, `gone`, `deleted`… (as stored).
    pub fn state(&self) -> &'a str {
        self.keys.get(self.row.state)
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.row.created_at
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.row.expires_at
    }

    /// JSON of the times the last listing carried that did not parse.
    pub fn unknown_time(&self) -> Option<&'a str> {
        self.keys.get_opt(self.row.unknown_time)
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

    fn assert_round_trip(rows: Vec<KnownKey>) {
        let compact = KnownKeys::from(rows.clone());
        assert_eq!(compact.len(), rows.len());
        let back = compact.to_vec();
        assert_eq!(format!("{back:?}"), format!("{rows:?}"));
        assert_eq!(format!("{compact:?}"), format!("{rows:?}"));
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

    /// The point of the type: a fraction of the plain rows' heap.
    #[test]
    fn a_compact_row_is_a_fraction_of_a_plain_one() {
        assert!(
            std::mem::size_of::<Row>() <= 96,
            "{}",
            std::mem::size_of::<Row>()
        );
        assert!(std::mem::size_of::<KnownKey>() >= 2 * std::mem::size_of::<Row>());
    }
}
