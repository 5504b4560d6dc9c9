//! A policy's per-key and per-lineage status held compactly: the one
//! representation `/status` renders and the per-key metric series read
//! (DESIGN §4, §9).
//!
//! What is held, and why it is held at all: the key states and lineage
//! decisions are the planner's output (`current`, `retiring`, `stale`, the
//! decision message…), not rows of the store, so `/status` cannot be
//! rendered from the store at request time without re-planning every policy
//! per request (a SQLite read of every key plus the planner: far over the
//! endpoint's 2 ms p99 at 100,000 keys, and a second read connection for the
//! status thread). The engine therefore keeps its last plan's result here,
//! once, in the smallest form that still renders byte for byte what the
//! plain structs ([`KeyStatus`], [`LineageStatus`]) render:
//!
//! - each table's strings live in one arena (a `String`), referenced by
//!   8-byte spans: no heap allocation (and its 16–32 bytes of overhead and
//!   rounding) per id, name or message;
//! - strings that repeat across rows (a key's lineage, a lineage's reason)
//!   are stored once per table ([`Arena::intern`]);
//! - states, health and conditions are one-byte enums; a lineage's
//!   conditions are a span of one shared `Vec<Condition>`;
//! - the commonest lineage message, the planner's "key {name} is fresh;
//!   due at {rotate_at}" ([`fresh_message`]), is stored as its key name —
//!   the lineage's own name span when they are equal, as for every adopted
//!   key — and rendered again when read (~50 bytes less per lineage);
//!   only a message that renders back byte for byte is stored that way;
//! - a lineage's rotation summary, present only for lineages that rotated,
//!   is boxed (8 bytes when absent);
//! - timestamps stay `Option<DateTime<Utc>>` (12 bytes, no heap): exact to
//!   the nanosecond, which an `i64` of nanoseconds is not past 2262.
//! - each table is behind an `Arc`: cloning a status (a check that
//!   changed nothing republishes it with new check times) shares its
//!   tables; a change to a shared table copies it first (`Arc::make_mut`).
//!
//! About 52 bytes per key row and 64 per lineage row plus their text, where
//! the plain structs took ~760 bytes per key and lineage (measured by
//! `compact_rows_are_a_fraction_of_the_plain_structs`).
//!
//! Rows are read through borrowed views ([`KeyRef`], [`LineageRef`]);
//! [`Keys::to_vec`] / [`LineageRef::to_status`] give the plain structs back.
//! Equality is by content, not by how the arena happens to be laid out.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::health::{Condition, Health};
use super::report::{KeyState, KeyStatus, LineageStatus, RotationSummary};
use crate::arena::{Arena, Span};

/// How many interned strings are searched before a string is stored anew.
const INTERN_WINDOW: usize = 32;

#[derive(Debug, Clone)]
struct KeyRow {
    id: Span,
    name: Span,
    lineage: Span,
    created_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    state: KeyState,
}

/// A policy's live keys (`keys` of `/status`), compact. Serializes as the
/// JSON array of [`KeyStatus`] objects, byte for byte.
///
/// The table is behind an `Arc`: a clone (as when a check that changed
/// nothing republishes a status with new check times) shares it; a change
/// to a shared table copies it first.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    table: Arc<KeyTable>,
}

#[derive(Debug, Clone, Default)]
struct KeyTable {
    arena: Arena,
    rows: Vec<KeyRow>,
}

/// One key of [`Keys`].
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    arena: &'a Arena,
    row: &'a KeyRow,
}

impl<'a> KeyRef<'a> {
    /// The provider's key id.
    pub fn id(&self) -> &'a str {
        self.arena.get(self.row.id)
    }
    pub fn name(&self) -> &'a str {
        self.arena.get(self.row.name)
    }
    pub fn lineage(&self) -> &'a str {
        self.arena.get(self.row.lineage)
    }
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.row.created_at
    }
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.row.expires_at
    }
    pub fn state(&self) -> KeyState {
        self.row.state
    }
    /// The plain struct (owned strings).
    pub fn to_status(&self) -> KeyStatus {
        KeyStatus {
            id: self.id().to_string(),
            name: self.name().to_string(),
            lineage: self.lineage().to_string(),
            created_at: self.created_at(),
            expires_at: self.expires_at(),
            state: self.state(),
        }
    }
}

/// [`KeyStatus`]'s serde shape, borrowed.
#[derive(Serialize)]
struct KeyOut<'a> {
    id: &'a str,
    name: &'a str,
    lineage: &'a str,
    created_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    state: KeyState,
}

impl Serialize for KeyRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        KeyOut {
            id: self.id(),
            name: self.name(),
            lineage: self.lineage(),
            created_at: self.created_at(),
            expires_at: self.expires_at(),
            state: self.state(),
        }
        .serialize(s)
    }
}

impl Keys {
    /// Append one key (its lineage string is shared with the previous
    /// keys of the same lineage, or with its own name or id when the
    /// lineage is named after it).
    pub fn push(&mut self, k: &KeyStatus) {
        self.push_parts(
            &k.id,
            &k.name,
            &k.lineage,
            k.created_at,
            k.expires_at,
            k.state,
        );
    }

    /// [`Keys::push`] from borrowed parts (no owned [`KeyStatus`] needed).
    pub fn push_parts(
        &mut self,
        id: &str,
        name: &str,
        lineage: &str,
        created_at: Option<DateTime<Utc>>,
        expires_at: Option<DateTime<Utc>>,
        state: KeyState,
    ) {
        let t = Arc::make_mut(&mut self.table);
        let id_span = t.arena.push(id);
        let name_span = if name == id {
            id_span
        } else {
            t.arena.push(name)
        };
        // A key that starts its own lineage (named after its name or id,
        // as every adopted key is) reuses that text, as `KnownKeys` does.
        let lineage = if lineage == name {
            name_span
        } else if lineage == id {
            id_span
        } else {
            t.arena.intern(lineage, INTERN_WINDOW)
        };
        let row = KeyRow {
            id: id_span,
            name: name_span,
            lineage,
            created_at,
            expires_at,
            state,
        };
        t.rows.push(row);
    }

    /// Release spare capacity (call once every key is pushed).
    pub fn finish(mut self) -> Self {
        let t = Arc::make_mut(&mut self.table);
        t.arena.finish();
        t.rows.shrink_to_fit();
        self
    }

    pub fn len(&self) -> usize {
        self.table.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.rows.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<KeyRef<'_>> {
        self.table.rows.get(i).map(|row| KeyRef {
            arena: &self.table.arena,
            row,
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = KeyRef<'_>> + Clone + '_ {
        self.table.rows.iter().map(|row| KeyRef {
            arena: &self.table.arena,
            row,
        })
    }

    /// Keep the keys `keep` accepts (the arena keeps the others' text).
    pub fn retain(&mut self, mut keep: impl FnMut(KeyRef<'_>) -> bool) {
        let t = Arc::make_mut(&mut self.table);
        let arena = &t.arena;
        t.rows.retain(|row| keep(KeyRef { arena, row }));
    }

    /// Change one key's state.
    pub fn set_state(&mut self, i: usize, state: KeyState) {
        if i < self.len() {
            Arc::make_mut(&mut self.table).rows[i].state = state;
        }
    }

    /// Whether `self` and `other` hold one table (a clone not changed
    /// since), not two equal ones.
    pub fn shares_table(&self, other: &Keys) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }

    /// Every key as the plain struct.
    pub fn to_vec(&self) -> Vec<KeyStatus> {
        self.iter().map(|k| k.to_status()).collect()
    }

    /// Bytes held: rows and text (for the memory test and figures).
    pub fn heap_bytes(&self) -> usize {
        self.table.rows.capacity() * std::mem::size_of::<KeyRow>() + self.table.arena.heap_bytes()
    }
}

impl PartialEq for KeyRef<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.id() == o.id()
            && self.name() == o.name()
            && self.lineage() == o.lineage()
            && self.created_at() == o.created_at()
            && self.expires_at() == o.expires_at()
            && self.state() == o.state()
    }
}

impl PartialEq for Keys {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().zip(o.iter()).all(|(a, b)| a == b)
    }
}

impl<'a> FromIterator<&'a KeyStatus> for Keys {
    fn from_iter<I: IntoIterator<Item = &'a KeyStatus>>(iter: I) -> Self {
        let mut k = Keys::default();
        for s in iter {
            k.push(s);
        }
        k.finish()
    }
}

impl FromIterator<KeyStatus> for Keys {
    fn from_iter<I: IntoIterator<Item = KeyStatus>>(iter: I) -> Self {
        let mut k = Keys::default();
        for s in iter {
            k.push(&s);
        }
        k.finish()
    }
}

impl From<Vec<KeyStatus>> for Keys {
    fn from(v: Vec<KeyStatus>) -> Self {
        v.iter().collect()
    }
}

impl Serialize for Keys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<KeyStatus>::deserialize(d)?.into())
    }
}

/// The planner's message for a fresh key with a due time
/// (`policy::decide`): "key {name} is fresh; due at {due, RFC 3339 to the
/// second}".
pub fn fresh_message(key_name: &str, due: DateTime<Utc>) -> String {
    format!(
        "key {key_name} is fresh; due at {}",
        due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The key name of `message` when it is exactly [`fresh_message`] of some
/// name and `due` (prefix, name, middle and due time, byte for byte).
fn fresh_key_name(message: &str, due: DateTime<Utc>) -> Option<&str> {
    let due = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    message
        .strip_prefix("key ")?
        .strip_suffix(due.as_str())?
        .strip_suffix(" is fresh; due at ")
}

#[derive(Debug, Clone)]
struct LineageRow {
    name: Span,
    current_key: Span,
    reason: Span,
    /// The message's text, or — when `fresh_message` — only the key name
    /// of the planner's "key {name} is fresh; due at {rotate_at}" (the
    /// lineage's own name span when they are equal).
    message: Span,
    /// `message` holds only the key name of [`fresh_message`]'s text.
    fresh_message: bool,
    /// Into [`Lineages::conditions`].
    conditions: Span,
    rotate_at: Option<DateTime<Utc>>,
    health: Health,
    rotation: Option<Box<RotationSummary>>,
}

/// A policy's lineages (`lineages` of `/status`), compact. Serializes as
/// the JSON array of [`LineageStatus`] objects, byte for byte. The table is
/// behind an `Arc`, shared by clones, as [`Keys`]'.
#[derive(Debug, Clone, Default)]
pub struct Lineages {
    table: Arc<LineageTable>,
}

#[derive(Debug, Clone, Default)]
struct LineageTable {
    arena: Arena,
    conditions: Vec<Condition>,
    rows: Vec<LineageRow>,
}

/// One lineage of [`Lineages`].
#[derive(Debug, Clone, Copy)]
pub struct LineageRef<'a> {
    table: &'a LineageTable,
    row: &'a LineageRow,
}

impl<'a> LineageRef<'a> {
    pub fn name(&self) -> &'a str {
        self.table.arena.get(self.row.name)
    }
    pub fn health(&self) -> Health {
        self.row.health
    }
    /// The current key's id.
    pub fn current_key(&self) -> Option<&'a str> {
        self.table.arena.get_opt(self.row.current_key)
    }
    /// The planner's reason, or the deciding stuck condition.
    pub fn reason(&self) -> &'a str {
        self.table.arena.get(self.row.reason)
    }
    /// The decision's message (rendered again when stored as a fresh
    /// key's name: [`fresh_message`]).
    pub fn message(&self) -> Cow<'a, str> {
        let text = self.table.arena.get(self.row.message);
        match (self.row.fresh_message, self.row.rotate_at) {
            (true, Some(t)) => Cow::Owned(fresh_message(text, t)),
            _ => Cow::Borrowed(text),
        }
    }
    pub fn rotate_at(&self) -> Option<DateTime<Utc>> {
        self.row.rotate_at
    }
    /// Every stuck condition that holds, in the planner's order.
    pub fn conditions(&self) -> &'a [Condition] {
        let c = self.row.conditions;
        &self.table.conditions[c.start as usize..(c.start + c.len) as usize]
    }
    /// The latest rotation (unfinished, or the last to finish).
    pub fn rotation(&self) -> Option<&'a RotationSummary> {
        self.row.rotation.as_deref()
    }
    /// The plain struct (owned strings).
    pub fn to_status(&self) -> LineageStatus {
        LineageStatus {
            name: self.name().to_string(),
            health: self.health(),
            current_key: self.current_key().map(str::to_string),
            reason: self.reason().to_string(),
            message: self.message().to_string(),
            rotate_at: self.rotate_at(),
            conditions: self.conditions().to_vec(),
            rotation: self.rotation().cloned(),
        }
    }
}

/// [`LineageStatus`]'s serde shape, borrowed (same field order and
/// omissions).
#[derive(Serialize)]
struct LineageOut<'a> {
    name: &'a str,
    health: Health,
    current_key: Option<&'a str>,
    reason: &'a str,
    message: Cow<'a, str>,
    rotate_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "<[Condition]>::is_empty")]
    conditions: &'a [Condition],
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<&'a RotationSummary>,
}

impl Serialize for LineageRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LineageOut {
            name: self.name(),
            health: self.health(),
            current_key: self.current_key(),
            reason: self.reason(),
            message: self.message(),
            rotate_at: self.rotate_at(),
            conditions: self.conditions(),
            rotation: self.rotation(),
        }
        .serialize(s)
    }
}

/// What [`Lineages::push`] takes, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct LineageParts<'a> {
    pub name: &'a str,
    pub health: Health,
    pub current_key: Option<&'a str>,
    pub reason: &'a str,
    pub message: &'a str,
    pub rotate_at: Option<DateTime<Utc>>,
    pub conditions: &'a [Condition],
}

impl Lineages {
    /// Append one lineage.
    pub fn push(&mut self, l: LineageParts<'_>, rotation: Option<RotationSummary>) {
        let t = Arc::make_mut(&mut self.table);
        let start = u32::try_from(t.conditions.len()).expect("conditions fit u32");
        t.conditions.extend_from_slice(l.conditions);
        let name = t.arena.push(l.name);
        // The commonest message, "key {name} is fresh; due at {rotate_at}",
        // is stored as its key name (usually the lineage's own) and
        // rendered again when read: ~50 bytes less per lineage. Only a
        // message that renders back byte for byte takes this form.
        let fresh_key = (l.reason == "fresh")
            .then_some(l.rotate_at)
            .flatten()
            .and_then(|t| fresh_key_name(l.message, t));
        let (message, fresh_message) = match fresh_key {
            Some(k) if k == l.name => (name, true),
            Some(k) => (t.arena.push(k), true),
            None => (t.arena.push(l.message), false),
        };
        let row = LineageRow {
            name,
            current_key: t.arena.push_opt(l.current_key),
            reason: t.arena.intern(l.reason, INTERN_WINDOW),
            message,
            fresh_message,
            conditions: Span {
                start,
                len: l.conditions.len() as u32,
            },
            rotate_at: l.rotate_at,
            health: l.health,
            rotation: rotation.map(Box::new),
        };
        t.rows.push(row);
    }

    /// [`Lineages::push`] of a plain struct.
    pub fn push_status(&mut self, l: &LineageStatus) {
        self.push(
            LineageParts {
                name: &l.name,
                health: l.health,
                current_key: l.current_key.as_deref(),
                reason: &l.reason,
                message: &l.message,
                rotate_at: l.rotate_at,
                conditions: &l.conditions,
            },
            l.rotation.clone(),
        );
    }

    /// Release spare capacity (call once every lineage is pushed).
    pub fn finish(mut self) -> Self {
        let t = Arc::make_mut(&mut self.table);
        t.arena.finish();
        t.rows.shrink_to_fit();
        t.conditions.shrink_to_fit();
        self
    }

    pub fn len(&self) -> usize {
        self.table.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.rows.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<LineageRef<'_>> {
        let table = &*self.table;
        table.rows.get(i).map(|row| LineageRef { table, row })
    }

    pub fn first(&self) -> Option<LineageRef<'_>> {
        self.get(0)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = LineageRef<'_>> + Clone + '_ {
        let table = &*self.table;
        table.rows.iter().map(move |row| LineageRef { table, row })
    }

    /// Keep the lineages `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(LineageRef<'_>) -> bool) {
        let t = Arc::make_mut(&mut self.table);
        let rows = std::mem::take(&mut t.rows);
        let table = &*t;
        let kept = rows
            .into_iter()
            .filter(|row| keep(LineageRef { table, row }))
            .collect();
        t.rows = kept;
    }

    /// Whether `self` and `other` hold one table (a clone not changed
    /// since), not two equal ones.
    pub fn shares_table(&self, other: &Lineages) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }

    /// Every lineage as the plain struct.
    pub fn to_vec(&self) -> Vec<LineageStatus> {
        self.iter().map(|l| l.to_status()).collect()
    }

    /// Bytes held: rows, text, conditions and boxed rotation summaries
    /// (their strings included).
    pub fn heap_bytes(&self) -> usize {
        let summaries: usize = self
            .table
            .rows
            .iter()
            .filter_map(|r| r.rotation.as_deref())
            .map(|s| {
                std::mem::size_of::<RotationSummary>()
                    + s.id.capacity()
                    + s.state.capacity()
                    + s.new_key.as_ref().map_or(0, String::capacity)
                    + s.old_key.as_ref().map_or(0, String::capacity)
                    + s.error.as_ref().map_or(0, String::capacity)
            })
            .sum();
        self.table.rows.capacity() * std::mem::size_of::<LineageRow>()
            + self.table.arena.heap_bytes()
            + self.table.conditions.capacity()
            + summaries
    }
}

impl PartialEq for LineageRef<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.name() == o.name()
            && self.health() == o.health()
            && self.current_key() == o.current_key()
            && self.reason() == o.reason()
            && self.message() == o.message()
            && self.rotate_at() == o.rotate_at()
            && self.conditions() == o.conditions()
            && self.rotation() == o.rotation()
    }
}

impl PartialEq for Lineages {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().zip(o.iter()).all(|(a, b)| a == b)
    }
}

impl<'a> FromIterator<&'a LineageStatus> for Lineages {
    fn from_iter<I: IntoIterator<Item = &'a LineageStatus>>(iter: I) -> Self {
        let mut t = Lineages::default();
        for l in iter {
            t.push_status(l);
        }
        t.finish()
    }
}

impl From<Vec<LineageStatus>> for Lineages {
    fn from(v: Vec<LineageStatus>) -> Self {
        v.iter().collect()
    }
}

impl Serialize for Lineages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Lineages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<LineageStatus>::deserialize(d)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64, ns: u32) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(s, ns)
    }

    pub(crate) fn sample_keys() -> Vec<KeyStatus> {
        vec![
            KeyStatus {
                id: "ak-1".into(),
                name: "app-1".into(),
                lineage: "app".into(),
                created_at: at(1_700_000_000, 123_456_789),
                expires_at: None,
                state: KeyState::Current,
            },
            KeyStatus {
                id: "ak-2".into(),
                name: "app-\u{1b}[2J\"2\"".into(),
                lineage: "app".into(),
                created_at: None,
                // Past 2262: a nanosecond i64 could not hold it.
                expires_at: at(253_402_300_799, 999_999_999),
                state: KeyState::Retiring,
            },
            KeyStatus {
                id: "".into(),
                name: "other-1".into(),
                lineage: "other".into(),
                created_at: at(0, 0),
                expires_at: at(1, 1_000),
                state: KeyState::UnsafeName,
            },
        ]
    }

    pub(crate) fn sample_lineages() -> Vec<LineageStatus> {
        vec![
            LineageStatus {
                name: "app".into(),
                health: Health::Rotating,
                current_key: Some("ak-1".into()),
                reason: "in_progress".into(),
                message: "rotation r1 is created".into(),
                rotate_at: None,
                conditions: vec![Condition::Conflict, Condition::UnknownTime],
                rotation: Some(RotationSummary {
                    id: "r1".into(),
                    state: "created".into(),
                    new_key: Some("ak-3".into()),
                    old_key: None,
                    failures: 2,
                    error: Some("boom".into()),
                    next_attempt_at: at(1_700_000_100, 0),
                    retire_at: None,
                    revoke_old_immediately: true,
                }),
            },
            LineageStatus {
                name: "other".into(),
                health: Health::Ok,
                current_key: None,
                reason: "fresh".into(),
                message: "".into(),
                rotate_at: at(1_800_000_000, 5),
                conditions: vec![],
                rotation: None,
            },
            LineageStatus {
                name: "third".into(),
                health: Health::Ok,
                current_key: Some("x".into()),
                reason: "fresh".into(),
                message: "key x is fresh".into(),
                rotate_at: None,
                conditions: vec![],
                rotation: None,
            },
        ]
    }

    #[test]
    fn compact_tables_render_what_the_plain_structs_render_and_read_back_equal() {
        let keys = sample_keys();
        let lineages = sample_lineages();
        let ck: Keys = keys.iter().collect();
        let cl: Lineages = lineages.iter().collect();
        assert_eq!(
            serde_json::to_string(&ck).unwrap(),
            serde_json::to_string(&keys).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&cl).unwrap(),
            serde_json::to_string(&lineages).unwrap()
        );
        assert_eq!(ck.to_vec(), keys);
        assert_eq!(cl.to_vec(), lineages);
        let back: Keys = serde_json::from_str(&serde_json::to_string(&ck).unwrap()).unwrap();
        assert_eq!(back, ck);
        let back: Lineages = serde_json::from_str(&serde_json::to_string(&cl).unwrap()).unwrap();
        assert_eq!(back, cl);
    }

    /// The planner's "key {name} is fresh; due at {t}" is stored as its key
    /// name (the lineage's own name span when equal) and rendered again;
    /// every lineage must still render and read back byte for byte,
    /// including messages that only look like it (another reason, another
    /// due time, a hostile name holding the template's words, nanoseconds
    /// the message rounds away).
    #[test]
    fn fresh_messages_stored_as_their_key_name_render_back_byte_for_byte() {
        let due = at(1_800_000_000, 123_456_789).unwrap();
        let other = at(1_800_000_001, 0).unwrap();
        let lineage = |name: &str, reason: &str, message: String, rotate_at| LineageStatus {
            name: name.into(),
            health: Health::Ok,
            current_key: Some(format!("id-{name}")),
            reason: reason.into(),
            message,
            rotate_at,
            conditions: vec![],
            rotation: None,
        };
        let hostile = "a is fresh; due at 2027-01-15T08:00:00Z\u{1b}[31m\n\"";
        let lineages = vec![
            lineage("app-1", "fresh", fresh_message("app-1", due), Some(due)),
            lineage(
                "app-2",
                "fresh",
                fresh_message("app-2-20261202-ab", due),
                Some(due),
            ),
            lineage(hostile, "fresh", fresh_message(hostile, due), Some(due)),
            lineage("app-3", "fresh", fresh_message("app-3", other), Some(due)),
            lineage("app-4", "due", fresh_message("app-4", due), Some(due)),
            lineage("app-5", "fresh", fresh_message("app-5", due), None),
            lineage(
                "app-6",
                "fresh",
                "key app-6 has no expiry and no max_age applies".into(),
                None,
            ),
            lineage(
                "app-7",
                "fresh",
                format!("{} ", fresh_message("app-7", due)),
                Some(due),
            ),
            lineage("", "fresh", fresh_message("", due), Some(due)),
        ];
        let cl: Lineages = lineages.iter().collect();
        assert_eq!(
            serde_json::to_string(&cl).unwrap(),
            serde_json::to_string(&lineages).unwrap()
        );
        assert_eq!(cl.to_vec(), lineages);
        let back: Lineages = serde_json::from_str(&serde_json::to_string(&cl).unwrap()).unwrap();
        assert_eq!(back, cl);
        let stored: Vec<bool> = cl.table.rows.iter().map(|r| r.fresh_message).collect();
        assert_eq!(
            stored,
            [true, true, true, false, false, false, false, false, true]
        );
        // A key named as its lineage stores its fresh message as nothing.
        let only: Lineages = lineages[..1].iter().collect();
        assert_eq!(only.table.arena.text(), "app-1id-app-1fresh");
    }

    /// Adversarial: every due time chrono can hold at its edges (year 0,
    /// negative years, past 9999, the minimum and maximum, a leap second,
    /// nanoseconds) and names built from the template itself (a name
    /// ending in " is fresh; due at {the same t}", one that is a whole
    /// fresh message, one that is only the suffix) render, compare, read
    /// back, survive `retain` and a clone's change exactly as the plain
    /// structs they were built from.
    #[test]
    fn fresh_messages_at_chronos_edges_and_self_similar_names_read_back_as_pushed() {
        let leap = at(1_483_228_799, 1_500_000_000).unwrap();
        let times = [
            at(0, 0).unwrap(),
            at(-62_167_219_200, 0).unwrap(),           // 0000-01-01
            at(-62_167_219_201, 999_999_999).unwrap(), // -0001-12-31
            at(253_402_300_800, 0).unwrap(),           // 10000-01-01
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            leap,
            at(1_800_000_000, 1).unwrap(),
        ];
        let mut plain = Vec::new();
        for (i, t) in times.iter().enumerate() {
            let ts = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let names = [
                format!("n{i}"),
                format!("n{i} is fresh; due at {ts}"),
                fresh_message(&format!("n{i}"), *t),
                format!(" is fresh; due at {ts}"),
                format!("key n{i}"),
                String::new(),
            ];
            for (j, name) in names.iter().enumerate() {
                for key in [name.clone(), format!("{name}-k{j}")] {
                    plain.push(LineageStatus {
                        name: name.clone(),
                        health: Health::Ok,
                        current_key: Some(key.clone()),
                        reason: "fresh".into(),
                        message: fresh_message(&key, *t),
                        rotate_at: Some(*t),
                        conditions: vec![],
                        rotation: None,
                    });
                }
            }
        }
        let cl: Lineages = plain.iter().collect();
        assert!(cl.table.rows.iter().all(|r| r.fresh_message));
        assert_eq!(cl.to_vec(), plain);
        for (l, p) in cl.iter().zip(&plain) {
            assert_eq!(l.message(), p.message.as_str());
            assert_eq!(l.to_status(), *p);
        }
        let json = serde_json::to_string(&cl).unwrap();
        assert_eq!(json, serde_json::to_string(&plain).unwrap());
        // Read back (every edge above survives serde's RFC 3339 too).
        let back: Lineages = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cl);
        assert!(back.table.rows.iter().all(|r| r.fresh_message));
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        // A clone that drops rows copies the table; neither changes the other.
        let mut kept = cl.clone();
        assert!(kept.shares_table(&cl));
        let mut i = 0;
        kept.retain(|_| {
            i += 1;
            i % 3 != 0
        });
        assert!(!kept.shares_table(&cl));
        assert_eq!(cl.to_vec(), plain);
        let mut i = 0;
        let expect: Vec<LineageStatus> = plain
            .iter()
            .filter(|_| {
                i += 1;
                i % 3 != 0
            })
            .cloned()
            .collect();
        assert_eq!(kept.to_vec(), expect);
        assert_eq!(kept, expect.iter().collect::<Lineages>());
        // Equal messages, one stored by name and one not (another
        // reason): the lineages differ by reason only, never by message.
        let mut due = plain[0].clone();
        due.reason = "due".into();
        let a: Lineages = std::slice::from_ref(&plain[0]).iter().collect();
        let b: Lineages = std::slice::from_ref(&due).iter().collect();
        assert!(!b.table.rows[0].fresh_message);
        assert_eq!(a.first().unwrap().message(), b.first().unwrap().message());
        assert_ne!(a, b);
    }

    #[test]
    fn repeated_lineage_and_reason_strings_are_stored_once() {
        let ck: Keys = sample_keys().iter().collect();
        assert_eq!(
            ck.table.arena.text().matches("app").count(),
            3,
            "{}",
            ck.table.arena.text()
        );
        let cl: Lineages = sample_lineages().iter().collect();
        assert_eq!(
            cl.table.arena.text().matches("fresh").count(),
            2,
            "{}",
            cl.table.arena.text()
        );
    }

    /// Every adopted key starts its own lineage, named after the key: its
    /// name was stored twice (once as name, once as lineage), ~2 MB at
    /// 100,000 keys.
    #[test]
    fn a_key_whose_lineage_is_its_name_or_id_stores_that_text_once() {
        let key = |id: &str, name: &str, lineage: &str| KeyStatus {
            id: id.into(),
            name: name.into(),
            lineage: lineage.into(),
            created_at: None,
            expires_at: None,
            state: KeyState::Current,
        };
        let keys = vec![
            key("k1", "alpha", "alpha"),
            key("beta", "beta", "beta"),
            key("gamma-id", "g-name", "gamma-id"),
            key("k4", "delta", "shared"),
            key("k5", "epsilon", "shared"),
        ];
        let ck: Keys = keys.iter().collect();
        let text = ck.table.arena.text();
        for s in ["alpha", "beta", "gamma-id", "shared"] {
            assert_eq!(text.matches(s).count(), 1, "{s} in {text}");
        }
        assert_eq!(ck.to_vec(), keys);
        assert_eq!(
            serde_json::to_string(&ck).unwrap(),
            serde_json::to_string(&keys).unwrap()
        );
    }

    #[test]
    fn retain_keeps_the_accepted_rows_in_order() {
        let mut ck: Keys = sample_keys().iter().collect();
        ck.retain(|k| k.lineage() == "app");
        assert_eq!(ck.to_vec(), sample_keys()[..2].to_vec());
        let mut cl: Lineages = sample_lineages().iter().collect();
        cl.retain(|l| l.name() != "other");
        let names: Vec<&str> = cl.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["app", "third"]);
        assert_eq!(cl.first().unwrap().conditions().len(), 2);
    }

    #[test]
    fn hostile_names_ids_and_empty_strings_render_and_read_back_as_the_plain_structs() {
        let hostile = [
            "",
            "q\"uote",
            "back\\slash",
            "nul\0byte",
            "\u{1}\u{1f}\u{7f}",
            "bidi\u{202e}cba",
            "\u{feff}bom",
            "dup",
            "dup",
            "\u{10ffff}",
        ];
        let big = "x".repeat(4096);
        let names = hostile.iter().copied().chain([big.as_str()]);
        let keys: Vec<KeyStatus> = names
            .clone()
            .enumerate()
            .map(|(i, n)| KeyStatus {
                id: if i % 2 == 0 {
                    n.to_string()
                } else {
                    String::new()
                },
                name: n.to_string(),
                lineage: hostile[i % 3].to_string(),
                created_at: at(i as i64, 0),
                expires_at: None,
                state: KeyState::Current,
            })
            .collect();
        let lineages: Vec<LineageStatus> = names
            .enumerate()
            .map(|(i, n)| LineageStatus {
                name: n.to_string(),
                health: Health::Ok,
                // An empty current key is not an absent one.
                current_key: (i % 2 == 0).then(String::new),
                reason: n.to_string(),
                message: n.to_string(),
                rotate_at: None,
                conditions: vec![],
                rotation: None,
            })
            .collect();
        let ck: Keys = keys.iter().collect();
        let cl: Lineages = lineages.iter().collect();
        let (jk, jl) = (
            serde_json::to_string(&ck).unwrap(),
            serde_json::to_string(&cl).unwrap(),
        );
        assert_eq!(jk, serde_json::to_string(&keys).unwrap());
        assert_eq!(jl, serde_json::to_string(&lineages).unwrap());
        assert_eq!(serde_json::from_str::<Vec<KeyStatus>>(&jk).unwrap(), keys);
        assert_eq!(
            serde_json::from_str::<Lineages>(&jl).unwrap().to_vec(),
            lineages
        );
        assert_eq!(cl.get(0).unwrap().current_key(), Some(""));
        assert_eq!(cl.get(1).unwrap().current_key(), None);
    }

    #[test]
    fn compact_rows_are_a_fraction_of_the_plain_structs() {
        // 1,000 keys and lineages shaped like the scale benchmark's.
        let keys: Vec<KeyStatus> = (0..1000)
            .map(|i| KeyStatus {
                id: format!("ak-{i:016}"),
                name: format!("app-{i:05}-1700000000"),
                lineage: format!("app-{i:05}"),
                created_at: at(1_700_000_000, 0),
                expires_at: at(1_800_000_000, 0),
                state: KeyState::Current,
            })
            .collect();
        let lineages: Vec<LineageStatus> = keys
            .iter()
            .map(|k| LineageStatus {
                name: k.lineage.clone(),
                health: Health::Ok,
                current_key: Some(k.id.clone()),
                reason: "fresh".into(),
                message: format!("key {} is fresh; due at 2026-12-22T12:00:00Z", k.name),
                rotate_at: at(1_799_000_000, 0),
                conditions: vec![],
                rotation: None,
            })
            .collect();
        let compact = Keys::from(keys).heap_bytes() + Lineages::from(lineages).heap_bytes();
        let per_row = compact / 1000;
        assert!(
            per_row <= 260,
            "{per_row} bytes per key and lineage (the plain structs: ~760)"
        );
    }
}
