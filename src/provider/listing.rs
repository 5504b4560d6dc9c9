//! One listing type for every consumer of a provider walk: the planner,
//! orphan (abandoned attempt) resolution, id lookups after create, and the
//! "is the next key still listed?" check before a delete.
//!
//! A [`Listing`] records when its walk *started* (wall clock, for comparing
//! with times the store keeps across restarts, and monotonic, for the
//! running process) and whether the walk *completed*. Every rule of the form
//! "only a listing that started after X may prove Y" is checked here, in
//! one place:
//!
//! - [`Listing::proves_absent`]: a name missing from a listing proves that no
//!   key of that name existed only when the walk completed and started
//!   after the event that could have created it (a create attempt). A walk
//!   that began before the create cannot have seen its result; with offset
//!   paging a walk can also skip a key, so absence is never taken from one
//!   listing alone where it matters (see DESIGN §3, abandoned attempts).
//! - [`Listing::started_after`]: the planner does not plan a lineage from a
//!   listing that began before the lineage's latest rotation finished (the
//!   walk may show the deleted old key and miss the new one).
//!
//! Sharing ([`Walks`]): walks are per provider *account and credentials*
//! (`config::ownership::listing_scope`: two `[providers.*]` entries on one
//! account with the same credentials share; different credentials never
//! do). A consumer joins the walk in flight or reuses one that started
//! within [`FRESHNESS`] (2 s, on both the monotonic and the injected clock);
//! a consumer that needs a walk that started after some instant T (an id
//! lookup after a create; proof of absence for an abandoned create attempt
//! that began at T) only takes a walk that started strictly after T and
//! gets a new one otherwise. An id lookup takes any walk that *shows* the
//! key, and asks for one that started after the create when it does not.
//! A new walk first waits (at most [`CREATE_HOLD`]) for creates already in
//! flight in its scope, so the id lookups of many concurrent creates share
//! one walk. A failed walk fails every consumer waiting on it with the same
//! error and is never reused. The daemon plans the checks of every policy
//! of one scope that fall due together from one walk.
//!
//! Freshness: a listing is judged by its start, never its end; the keys it
//! holds are those the walk's filter kept, in walk order, possibly with a key
//! repeated (offset paging while keys are created and deleted shifts items
//! between pages), which [`Listing::walk`] removes (first occurrence wins).
//!
//! Storage (issue 13, scale memory): a walk's keys are one [`KeyTable`]
//! (every id and name in one string arena, a 40-byte row per key, the rare
//! meta maps on the side), filled page by page by the provider
//! ([`Provider::list_into`]) so no `Vec<ProviderKey>` of the whole walk
//! exists; consumers read [`ListedKey`] views and copy a key
//! ([`ListedKey::to_owned`]) only where they keep it. A policy's listing
//! ([`Listing::filtered`], [`Listing::subset`]) is a view: the walk's table
//! behind an `Arc` and the positions of its rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::{Provider, ProviderError, ProviderKey, SharedProvider};
use crate::arena::Arena;
use crate::clock::{Clock, SharedClock};

/// `nanos` of a [`Row`] time that is absent (a real time's are below
/// 2,000,000,000, leap seconds included).
const NO_TIME: u32 = u32::MAX;

/// `meta` of a [`Row`] without provider facts.
const NO_META: u32 = u32::MAX;

/// One listed key: 40 bytes, its strings in the table's arena (the id at
/// `id`, the name right after it, up to `name_end`), its times as seconds
/// and nanoseconds since the epoch ([`NO_TIME`] nanoseconds: none), its
/// meta map an index into the table's side list ([`NO_META`]: empty).
#[derive(Debug, Clone, Copy)]
struct Row {
    created_secs: i64,
    expires_secs: i64,
    id: u32,
    name: u32,
    name_end: u32,
    created_nanos: u32,
    expires_nanos: u32,
    meta: u32,
}

/// The keys of one walk, compactly: one string arena for every id and name
/// and a fixed-size [`Row`] per key (~40 bytes plus the id's and name's
/// bytes, against ~190 bytes for a [`ProviderKey`] with its heap). The
/// rare meta maps (a time that did not parse; Tencent's status) are kept
/// on the side, a run of equal maps stored once.
///
/// Providers fill it page by page as they walk ([`Provider::list_into`]);
/// [`Listing::from_table`] drops repeated ids and freezes it. Read through
/// [`Listing`] and its [`ListedKey`] views.
#[derive(Default)]
pub struct KeyTable {
    text: Arena,
    rows: Vec<Row>,
    metas: Vec<BTreeMap<String, serde_json::Value>>,
}

/// Sizes only: a walk's table holds every id and name of an account, which
/// must not end up in a log line or an error.
impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("rows", &self.rows.len())
            .field("text_bytes", &self.text.text().len())
            .field("metas", &self.metas.len())
            .finish()
    }
}

/// A time as a row stores it.
fn split_time(t: Option<DateTime<Utc>>) -> (i64, u32) {
    match t {
        Some(t) => (t.timestamp(), t.timestamp_subsec_nanos()),
        None => (0, NO_TIME),
    }
}

/// A row's time back; `None` for [`NO_TIME`] (or a value `chrono` cannot
/// hold, which [`split_time`] never writes).
fn join_time(secs: i64, nanos: u32) -> Option<DateTime<Utc>> {
    if nanos == NO_TIME {
        return None;
    }
    DateTime::from_timestamp(secs, nanos)
}

impl KeyTable {
    /// Append a key as the walk read it (borrowed: the page's strings are
    /// copied into the arena, nothing else is allocated per key unless
    /// `meta` differs from the previous key's and is not empty).
    ///
    /// # Panics
    /// When the walk's ids and names pass 4 GiB of text, or its rows
    /// `u32::MAX` (positions are `u32`). [`Walks`] turns a walk's panic
    /// into an error.
    pub fn push(
        &mut self,
        id: &str,
        name: &str,
        created_at: Option<DateTime<Utc>>,
        expires_at: Option<DateTime<Utc>>,
        meta: BTreeMap<String, serde_json::Value>,
    ) {
        assert!(
            self.rows.len() < u32::MAX as usize,
            "a walk holds under 4 G keys"
        );
        let id = self.text.push(id);
        let name = self.text.push(name);
        let meta = if meta.is_empty() {
            NO_META
        } else {
            match self.metas.last() {
                Some(last) if *last == meta => (self.metas.len() - 1) as u32,
                _ => {
                    self.metas.push(meta);
                    u32::try_from(self.metas.len() - 1).expect("under 4 G meta maps")
                }
            }
        };
        let (created_secs, created_nanos) = split_time(created_at);
        let (expires_secs, expires_nanos) = split_time(expires_at);
        self.rows.push(Row {
            created_secs,
            expires_secs,
            id: id.start,
            name: name.start,
            name_end: name.start + name.len,
            created_nanos,
            expires_nanos,
            meta,
        });
    }

    /// [`KeyTable::push`] of an owned key.
    pub fn push_key(&mut self, k: ProviderKey) {
        self.push(&k.id, &k.name, k.created_at, k.expires_at, k.meta);
    }

    /// Keys pushed so far (repeats included).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no key was pushed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn id(&self, r: &Row) -> &str {
        let t = self.text.text();
        &t[r.id as usize..r.name as usize]
    }

    fn key<'a>(&'a self, r: &'a Row) -> ListedKey<'a> {
        ListedKey {
            table: self,
            row: r,
        }
    }

    /// Drop every row whose id an earlier row has (the first occurrence
    /// wins; order otherwise kept: a walk with offset paging can list a key
    /// twice while keys are created and deleted; ids are compared borrowed)
    /// and the spare capacity. A dropped row's strings stay in the arena
    /// (repeats are rare: offset paging while keys come and go).
    fn finish(&mut self) {
        let repeated: Vec<bool> = {
            let mut seen = std::collections::HashSet::with_capacity(self.rows.len());
            self.rows.iter().map(|r| !seen.insert(self.id(r))).collect()
        };
        if repeated.contains(&true) {
            let mut at = 0;
            self.rows.retain(|_| {
                at += 1;
                !repeated[at - 1]
            });
        }
        self.rows.shrink_to_fit();
        self.text.finish();
        self.metas.shrink_to_fit();
    }

    /// The keys in order, owned, repeated ids dropped (the first
    /// occurrence wins): for [`Provider::list`] built on
    /// [`Provider::list_into`].
    pub fn into_keys(mut self) -> Vec<ProviderKey> {
        self.finish();
        self.rows.iter().map(|r| self.key(r).to_owned()).collect()
    }
}

/// A borrowed view of one listed key (see [`KeyTable`]); [`ListedKey::to_owned`]
/// where a [`ProviderKey`] is really needed.
#[derive(Clone, Copy)]
pub struct ListedKey<'a> {
    table: &'a KeyTable,
    row: &'a Row,
}

/// The meta of a key without any.
static NO_META_MAP: BTreeMap<String, serde_json::Value> = BTreeMap::new();

impl<'a> ListedKey<'a> {
    /// The provider's key id.
    pub fn id(self) -> &'a str {
        self.table.id(self.row)
    }

    /// The key's name.
    pub fn name(self) -> &'a str {
        &self.table.text.text()[self.row.name as usize..self.row.name_end as usize]
    }

    /// When the provider says the key was created, if it says.
    pub fn created_at(self) -> Option<DateTime<Utc>> {
        join_time(self.row.created_secs, self.row.created_nanos)
    }

    /// When the key expires, if it does.
    pub fn expires_at(self) -> Option<DateTime<Utc>> {
        join_time(self.row.expires_secs, self.row.expires_nanos)
    }

    /// Provider-specific facts ([`ProviderKey::meta`]); empty for most keys.
    pub fn meta(self) -> &'a BTreeMap<String, serde_json::Value> {
        match self.row.meta {
            NO_META => &NO_META_MAP,
            i => &self.table.metas[i as usize],
        }
    }

    /// The key as an owned [`ProviderKey`] (every field copied).
    pub fn to_owned(self) -> ProviderKey {
        ProviderKey {
            id: self.id().to_string(),
            name: self.name().to_string(),
            created_at: self.created_at(),
            expires_at: self.expires_at(),
            meta: self.meta().clone(),
        }
    }
}

impl std::fmt::Debug for ListedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListedKey")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("created_at", &self.created_at())
            .field("expires_at", &self.expires_at())
            .field("meta", self.meta())
            .finish()
    }
}

/// The result of one complete walk of a provider's keys, or a view of some
/// of its keys ([`Listing::filtered`], [`Listing::subset`]): views share the
/// walk's [`KeyTable`] (an `Arc`) and hold only the positions of their rows,
/// so cloning a listing or narrowing it for a policy copies no key.
#[derive(Clone)]
pub struct Listing {
    table: Arc<KeyTable>,
    /// The rows of `table` in this listing, in walk order; `None`: all.
    positions: Option<Arc<[u32]>>,
    /// Wall-clock time the walk started (from the injected clock).
    pub started_at: DateTime<Utc>,
    /// Monotonic time the walk started, for comparisons inside this process
    /// that a wall-clock step must not fool.
    pub started_mono: Instant,
    /// Whether every page was read. A failed walk is an error, not a
    /// listing, so this is `true` for walks; it is `false` only for views
    /// built from partial data (e.g. the store's last known keys).
    pub complete: bool,
}

/// Sizes and times only (see [`KeyTable`]'s `Debug`): no id or name.
impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing")
            .field("len", &self.len())
            .field("view", &self.positions.is_some())
            .field("table", &*self.table)
            .field("started_at", &self.started_at)
            .field("complete", &self.complete)
            .finish()
    }
}

impl Listing {
    /// Walk `provider`'s keys, keeping those whose name `keep` accepts.
    ///
    /// Errors: the provider's, unchanged (a walk that fails part-way is not a
    /// listing).
    pub async fn walk(
        provider: &dyn Provider,
        clock: &dyn Clock,
        keep: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
    ) -> Result<Listing, ProviderError> {
        let started_at = clock.now();
        let started_mono = Instant::now();
        let mut table = KeyTable::default();
        provider.list_into(keep, &mut table).await?;
        Ok(Listing::from_table(table, started_at, started_mono, true))
    }

    /// A listing from keys already walked; repeated ids are dropped (the
    /// first occurrence wins).
    pub fn from_walk(
        keys: Vec<ProviderKey>,
        started_at: DateTime<Utc>,
        started_mono: Instant,
        complete: bool,
    ) -> Listing {
        let mut table = KeyTable::default();
        for k in keys {
            table.push_key(k);
        }
        Listing::from_table(table, started_at, started_mono, complete)
    }

    /// A listing of the keys a walk pushed into `table`; repeated ids are
    /// dropped (the first occurrence wins).
    pub fn from_table(
        mut table: KeyTable,
        started_at: DateTime<Utc>,
        started_mono: Instant,
        complete: bool,
    ) -> Listing {
        table.finish();
        Listing {
            table: Arc::new(table),
            positions: None,
            started_at,
            started_mono,
            complete,
        }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        match &self.positions {
            Some(p) => p.len(),
            None => self.table.rows.len(),
        }
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row of `table` at this listing's position `i`.
    fn row(&self, i: usize) -> Option<u32> {
        match &self.positions {
            Some(p) => p.get(i).copied(),
            None => (i < self.table.rows.len()).then_some(i as u32),
        }
    }

    /// The key at position `i` (walk order), if there is one.
    pub fn get(&self, i: usize) -> Option<ListedKey<'_>> {
        let r = self.row(i)?;
        Some(self.table.key(&self.table.rows[r as usize]))
    }

    /// Every key, in walk order, each id once.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = ListedKey<'_>> + Clone + '_ {
        (0..self.len()).map(move |i| self.get(i).expect("a position below len"))
    }

    /// Every key as an owned [`ProviderKey`], in walk order.
    pub fn to_keys(&self) -> Vec<ProviderKey> {
        self.keys().map(ListedKey::to_owned).collect()
    }

    /// Whether `other` reads the same walk's rows (a view of it, or it of
    /// a view): no key was copied to make one from the other.
    pub fn shares_rows_with(&self, other: &Listing) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }

    /// A view of the rows at this listing's `positions` (in order).
    fn view(&self, positions: impl Iterator<Item = usize>) -> Listing {
        let rows: Arc<[u32]> = positions.filter_map(|i| self.row(i)).collect();
        Listing {
            table: self.table.clone(),
            positions: Some(rows),
            started_at: self.started_at,
            started_mono: self.started_mono,
            complete: self.complete,
        }
    }

    /// Whether the walk started strictly after `t` (wall clock).
    pub fn started_after(&self, t: DateTime<Utc>) -> bool {
        self.started_at > t
    }

    /// Whether the walk started strictly after the monotonic instant `t`.
    pub fn started_after_mono(&self, t: Instant) -> bool {
        self.started_mono > t
    }

    /// The keys `keep` accepts, with this walk's start and completeness:
    /// how one shared walk serves a policy. A view: shares the walk's rows.
    pub fn filtered(&self, keep: impl Fn(&str) -> bool) -> Listing {
        let keys: Vec<usize> = self
            .keys()
            .enumerate()
            .filter(|(_, k)| keep(k.name()))
            .map(|(i, _)| i)
            .collect();
        self.view(keys.into_iter())
    }

    /// [`filtered`](Self::filtered) for several consumers at once: entry
    /// `i` of the result holds the positions (in [`keys`](Self::keys)) of
    /// the keys whose name glob `i` of `set` matches, in walk order; take
    /// one consumer's listing with [`subset`](Self::subset). Each name is
    /// matched once against the whole set, not once per consumer (100
    /// policies over one 10,000-key walk: 10,000 matches, not 1,000,000).
    pub fn split(&self, set: &globset::GlobSet) -> Vec<Vec<u32>> {
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); set.len()];
        let mut hits = Vec::new();
        for (n, k) in self.keys().enumerate() {
            set.matches_into(k.name(), &mut hits);
            for &i in &hits {
                out[i].push(n as u32);
            }
        }
        out
    }

    /// The keys at `positions` (from [`split`](Self::split); positions past
    /// the end are skipped), with this walk's start and completeness. A
    /// view: shares the walk's rows.
    pub fn subset(&self, positions: &[u32]) -> Listing {
        self.view(positions.iter().map(|&n| n as usize))
    }

    /// Keys named `name` (a provider may allow several).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = ListedKey<'a>> + 'a {
        self.keys().filter(move |k| k.name() == name)
    }

    /// The key with id `id`, if listed.
    pub fn by_id(&self, id: &str) -> Option<ListedKey<'_>> {
        self.keys().find(|k| k.id() == id)
    }

    /// Whether this listing shows that no key named `name` existed when it
    /// ran: it completed, it started after `since` (the instant the key could
    /// have been created, e.g. a create attempt's start), and no key of that
    /// name is in it. One such listing is evidence, not proof, on a provider
    /// with eventually consistent lists or offset paging; callers that
    /// resolve abandoned attempts need several (DESIGN §3).
    pub fn proves_absent(&self, name: &str, since: DateTime<Utc>) -> bool {
        self.complete && self.started_after(since) && self.named(name).next().is_none()
    }
}

/// How long a finished walk keeps serving consumers that need no walk
/// started after a given instant (scheduled checks, id lookups, the check
/// before a delete). Measured on the monotonic clock from the walk's start.
pub const FRESHNESS: Duration = Duration::from_secs(2);

/// How long a walk that is about to start waits for creates already in
/// flight on its scope (providers that do not return the new key's id):
/// each of them will need a walk that started after it returned, so one
/// walk after all of them serves them all. Monotonic.
pub const CREATE_HOLD: Duration = Duration::from_secs(2);

type WalkFuture = Shared<BoxFuture<'static, Result<Arc<Listing>, ProviderError>>>;

struct Slot {
    started_at: DateTime<Utc>,
    started_mono: Instant,
    walk: WalkFuture,
}

/// Creates in flight in one scope: numbered as they begin.
#[derive(Default)]
struct Creates {
    next: u64,
    open: BTreeSet<u64>,
}

/// Why a consumer needed a walk: the `purpose` label of
/// `rekey_provider_walks_total` (only walks a consumer *started* count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A scheduled or manual policy check (the planner).
    Check,
    /// Finding a fresh key's id (providers that return none on create).
    IdLookup,
    /// Resolving an abandoned create attempt (orphans).
    Attempt,
    /// "Is the next key still listed?" before deleting the old key.
    BeforeDelete,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Check => "check",
            Purpose::IdLookup => "id_lookup",
            Purpose::Attempt => "attempt",
            Purpose::BeforeDelete => "before_delete",
        }
    }
}

/// Walks shared per provider *account and credentials*
/// ([`crate::config::ownership::listing_scope`]: two `[providers.*]`
/// entries on one account with the same credentials share; different
/// credentials never do): a consumer joins the walk in flight, or reuses
/// one that started within [`FRESHNESS`], unless it needs a walk that
/// started after some instant (`not_before`: an id lookup after a create,
/// the proof of absence for an abandoned create attempt), in which case a
/// new walk starts. Before a new walk starts it waits (at most
/// [`CREATE_HOLD`]) for the creates already in flight in its scope
/// ([`Walks::creating`]), so the id lookups of many concurrent creates are
/// answered by one walk. A walk that fails fails every consumer waiting on
/// it, with the same error; the next consumer starts a new one. Each
/// consumer filters what it needs ([`Listing::filtered`]).
#[derive(Default)]
pub struct Walks {
    /// Provider entry name → its sharing scope. An entry not in the map is
    /// a scope of its own.
    scopes: HashMap<String, String>,
    /// The latest walk per scope; dropped once past freshness, so an idle
    /// daemon holds no copy of the account's keys.
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    creates: Mutex<HashMap<String, Creates>>,
    /// Poked whenever a create in flight returns.
    settled: tokio::sync::Notify,
    /// Walks started, for tests and metrics.
    started: AtomicU64,
    /// `rekey_provider_walks_total`, when the daemon counts.
    metrics: Option<crate::metrics::Metrics>,
}

/// A create in flight ([`Walks::creating`]); dropping it marks it returned.
pub struct CreateGuard<'a> {
    walks: &'a Walks,
    scope: String,
    seq: u64,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        let mut creates = self.walks.creates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = creates.get_mut(&self.scope) {
            c.open.remove(&self.seq);
        }
        drop(creates);
        self.walks.settled.notify_waiters();
    }
}

impl Walks {
    /// Walks for one configuration: entries with equal
    /// [`listing_scope`](crate::config::ownership::listing_scope)s share.
    pub fn for_config(
        cfg: &crate::config::Config,
        metrics: Option<crate::metrics::Metrics>,
    ) -> Walks {
        Walks {
            scopes: cfg
                .providers
                .iter()
                .map(|(name, p)| (name.clone(), crate::config::ownership::listing_scope(p)))
                .collect(),
            metrics,
            ..Walks::default()
        }
    }

    /// The scope provider entry `name` shares walks in.
    pub fn scope(&self, name: &str) -> String {
        match self.scopes.get(name) {
            Some(s) => s.clone(),
            None => format!("entry {name}"),
        }
    }

    /// Mark a create in flight on `provider` (an entry name) until the
    /// guard drops. Only for providers that do not return the new key's id
    /// (the others never list for it).
    pub fn creating(&self, provider: &str) -> CreateGuard<'_> {
        let scope = self.scope(provider);
        let mut creates = self.creates.lock().unwrap_or_else(|p| p.into_inner());
        let c = creates.entry(scope.clone()).or_default();
        let seq = c.next;
        c.next += 1;
        c.open.insert(seq);
        CreateGuard {
            walks: self,
            scope,
            seq,
        }
    }

    /// A complete walk of every key of `provider`; see [`Walks`] for when
    /// it is shared. `not_before`: only a walk that started strictly after
    /// this instant will do. `purpose` labels the walks this call starts.
    ///
    /// Errors: the provider's (shared by every consumer of that walk).
    pub async fn listing(
        &self,
        provider: &SharedProvider,
        clock: &SharedClock,
        not_before: Option<DateTime<Utc>>,
        purpose: Purpose,
    ) -> Result<Arc<Listing>, ProviderError> {
        let scope = self.scope(provider.name());
        // Creates that began before this call: a new walk waits for them.
        let before = self
            .creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&scope)
            .map(|c| c.next)
            .unwrap_or(0);
        let hold_until = tokio::time::Instant::now() + CREATE_HOLD;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if let Some(walk) = self.reusable(&scope, clock, not_before) {
                return walk.await;
            }
            let pending = self
                .creates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&scope)
                .is_some_and(|c| c.open.range(..before).next().is_some());
            if pending && tokio::time::Instant::now() < hold_until {
                tokio::select! {
                    _ = &mut settled => {}
                    _ = tokio::time::sleep_until(hold_until) => {}
                }
                continue;
            }
            let walk = self.start(&scope, provider, clock, not_before, purpose);
            return walk.await;
        }
    }

    /// The walk in flight or fresh in `scope` that suits `not_before`.
    fn reusable(
        &self,
        scope: &str,
        clock: &SharedClock,
        not_before: Option<DateTime<Utc>>,
    ) -> Option<WalkFuture> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        suitable(&slots, scope, clock, not_before)
    }

    /// Start a walk in `scope` unless a suitable one appeared meanwhile.
    fn start(
        &self,
        scope: &str,
        provider: &SharedProvider,
        clock: &SharedClock,
        not_before: Option<DateTime<Utc>>,
        purpose: Purpose,
    ) -> WalkFuture {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = suitable(&slots, scope, clock, not_before) {
            return w;
        }
        let started_at = clock.now();
        let started_mono = Instant::now();
        let p = provider.clone();
        let walk = async move {
            let all = |_: &str| true;
            let mut table = KeyTable::default();
            // A walk that panics (a bug, or a table past 4 GiB of text)
            // fails like a provider error: a `Shared` future that panicked
            // stays "in flight" for ever and panics every consumer that
            // joins it, so one panic would fail every later check of the
            // scope. The panic itself is reported by the panic hook; its
            // message is not copied into the error (it could quote data).
            match std::panic::AssertUnwindSafe(p.list_into(&all, &mut table))
                .catch_unwind()
                .await
            {
                Ok(walked) => walked
                    .map(|()| Arc::new(Listing::from_table(table, started_at, started_mono, true))),
                Err(_) => Err(ProviderError::new(
                    p.name(),
                    "list",
                    super::ProviderErrorKind::Protocol(
                        "the walk stopped on an internal error (a panic)".to_string(),
                    ),
                )),
            }
        }
        .boxed()
        .shared();
        self.started.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.provider_walks
                .with_label_values(&[provider.name(), purpose.as_str()])
                .inc();
        }
        slots.insert(
            scope.to_string(),
            Slot {
                started_at,
                started_mono,
                walk: walk.clone(),
            },
        );
        // Forget the walk once it can serve no one any more.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let all = self.slots.clone();
            let scope = scope.to_string();
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(FRESHNESS + Duration::from_millis(100)).await;
                    let mut slots = all.lock().unwrap_or_else(|p| p.into_inner());
                    match slots.get(&scope) {
                        Some(s) if s.started_mono == started_mono => {
                            if s.walk.peek().is_some() {
                                slots.remove(&scope);
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
        walk
    }

    /// Forget every finished walk (and the keys it holds), so an idle
    /// daemon keeps no listing in memory; the next consumer walks again.
    /// Walks in flight are kept (their consumers are waiting on them).
    pub fn release_finished(&self) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.walk.peek().is_none());
    }

    /// How many walks were started (shared ones count once).
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// The walk of `scope` in `slots` that `not_before` can use: in flight, or
/// finished without error and fresh (see [`FRESHNESS`]), and started after
/// `not_before` when one is given.
fn suitable(
    slots: &HashMap<String, Slot>,
    scope: &str,
    clock: &SharedClock,
    not_before: Option<DateTime<Utc>>,
) -> Option<WalkFuture> {
    let s = slots.get(scope)?;
    // Fresh on both clocks: the monotonic one cannot be fooled by a
    // wall-clock step; the injected one is what tests move.
    let wall_age = clock.now() - s.started_at;
    let fresh = s.started_mono.elapsed() <= FRESHNESS
        && wall_age >= chrono::Duration::zero()
        && wall_age.to_std().is_ok_and(|a| a <= FRESHNESS);
    let usable = match s.walk.peek() {
        None => true,
        Some(Ok(_)) => fresh,
        Some(Err(_)) => false,
    };
    (usable && not_before.is_none_or(|t| s.started_at > t)).then(|| s.walk.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, name: &str) -> ProviderKey {
        ProviderKey {
            id: id.into(),
            name: name.into(),
            created_at: None,
            expires_at: None,
            meta: Default::default(),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_listing_that_started_before_a_create_cannot_prove_its_key_absent() {
        let l = Listing::from_walk(vec![], t("2026-11-30T10:00:00Z"), Instant::now(), true);
        assert!(!l.proves_absent("app-x-1", t("2026-11-30T10:00:01Z")));
        assert!(!l.proves_absent("app-x-1", t("2026-11-30T10:00:00Z")));
        assert!(l.proves_absent("app-x-1", t("2026-11-30T09:59:59Z")));
    }

    #[test]
    fn splitting_a_walk_by_a_glob_set_gives_each_glob_what_filtering_by_it_gives() {
        let names = ["app-1", "app-12", "db-1", "app-1/x", "x", "app-2"];
        let keys = names
            .iter()
            .enumerate()
            .map(|(i, n)| key(&format!("k{i}"), n))
            .collect();
        let l = Listing::from_walk(keys, t("2026-11-30T10:00:00Z"), Instant::now(), true);
        let globs = ["app-*", "app-1?", "*-1", "", "nothing-*"];
        let matchers: Vec<globset::Glob> = globs
            .iter()
            .map(|g| crate::config::glob::parse(g).unwrap())
            .collect();
        let mut b = globset::GlobSetBuilder::new();
        for g in &matchers {
            b.add(g.clone());
        }
        let parts = l.split(&b.build().unwrap());
        assert_eq!(parts.len(), globs.len());
        for (g, part) in matchers.iter().zip(&parts) {
            let m = g.compile_matcher();
            let one = l.subset(part);
            let want = l.filtered(|n| m.is_match(n));
            let ids = |l: &Listing| l.keys().map(|k| k.id().to_string()).collect::<Vec<_>>();
            assert_eq!(ids(&one), ids(&want), "glob {}", g.glob());
            assert_eq!(one.started_at, l.started_at);
            assert!(one.complete);
        }
        // `*` does not cross `/`; order is the walk's.
        assert_eq!(parts[0], [0, 1, 5]);
    }

    #[test]
    fn an_incomplete_listing_proves_nothing_absent() {
        let l = Listing::from_walk(vec![], t("2026-11-30T10:00:00Z"), Instant::now(), false);
        assert!(!l.proves_absent("app-x-1", t("2026-11-30T09:00:00Z")));
    }

    #[test]
    fn a_listed_name_is_never_absent_and_repeats_are_dropped() {
        let l = Listing::from_walk(
            vec![key("1", "a"), key("2", "b"), key("1", "a")],
            t("2026-11-30T10:00:00Z"),
            Instant::now(),
            true,
        );
        assert_eq!(l.len(), 2);
        assert!(!l.proves_absent("a", t("2026-11-30T09:00:00Z")));
        assert_eq!(l.by_id("2").unwrap().name(), "b");
    }

    #[test]
    fn repeated_ids_are_dropped_in_walk_order_and_the_first_occurrence_wins() {
        let l = Listing::from_walk(
            vec![
                key("1", "a"),
                key("2", "b"),
                key("1", "a-moved"),
                key("3", "c"),
                key("2", "b"),
                key("é/\u{0}", "x"),
                key("é/\u{0}", "y"),
            ],
            t("2026-11-30T10:00:00Z"),
            Instant::now(),
            true,
        );
        let got: Vec<(&str, &str)> = l.keys().map(|k| (k.id(), k.name())).collect();
        assert_eq!(got, [("1", "a"), ("2", "b"), ("3", "c"), ("é/\u{0}", "x")]);
    }

    /// Keys with every field set in turn: no times, times before the epoch,
    /// sub-second and leap-second times, meta maps (repeated, and one after
    /// a key without), empty and non-ASCII strings, and repeated ids.
    fn varied_keys() -> Vec<ProviderKey> {
        let at = |s: i64, n: u32| DateTime::from_timestamp(s, n).unwrap();
        let meta = |v: &str| -> BTreeMap<String, serde_json::Value> {
            [
                ("status".to_string(), serde_json::json!(v)),
                (
                    super::super::META_UNKNOWN_TIME.to_string(),
                    serde_json::json!({ "createdAt": "yesterday" }),
                ),
            ]
            .into()
        };
        let mut keys = Vec::new();
        for i in 0..40u32 {
            let i64_ = i64::from(i);
            keys.push(ProviderKey {
                id: format!("id-{}", i % 33),
                name: match i % 5 {
                    0 => String::new(),
                    1 => format!("ключ-\u{202e}{i}\u{0}"),
                    _ => format!("app-{}", i % 7),
                },
                created_at: match i % 4 {
                    0 => None,
                    1 => Some(at(-86_400 * i64_ - 1, 999_999_999)),
                    2 => Some(at(1_764_000_000 + i64_, i * 1_000)),
                    _ => Some(at(1_483_228_799, 1_500_000_000)),
                },
                expires_at: match i % 3 {
                    0 => None,
                    _ => Some(at(1_900_000_000 + i64_, 0)),
                },
                meta: match i % 6 {
                    0 | 1 => meta("enabled"),
                    3 => meta("disabled"),
                    _ => BTreeMap::new(),
                },
            });
        }
        keys
    }

    /// What the walk's `Vec<ProviderKey>` held before the compact rows:
    /// the first key of each id, in order.
    fn deduped(keys: Vec<ProviderKey>) -> Vec<ProviderKey> {
        let mut seen = std::collections::HashSet::new();
        keys.into_iter()
            .filter(|k| seen.insert(k.id.clone()))
            .collect()
    }

    #[test]
    fn compact_rows_give_back_every_field_of_every_key_and_drop_repeated_ids() {
        let keys = varied_keys();
        let want = deduped(keys.clone());
        assert!(want.len() < keys.len(), "the fixture repeats ids");
        let l = Listing::from_walk(
            keys.clone(),
            t("2026-11-30T10:00:00Z"),
            Instant::now(),
            true,
        );
        assert_eq!(l.to_keys(), want);
        assert_eq!(l.len(), want.len());
        for (k, w) in l.keys().zip(&want) {
            assert_eq!(k.id(), w.id);
            assert_eq!(k.name(), w.name);
            assert_eq!(k.created_at(), w.created_at);
            assert_eq!(k.expires_at(), w.expires_at);
            assert_eq!(k.meta(), &w.meta);
        }
        // Pushed borrowed, as a provider's page is, the same rows.
        let mut table = KeyTable::default();
        for k in &keys {
            table.push(&k.id, &k.name, k.created_at, k.expires_at, k.meta.clone());
        }
        assert_eq!(table.len(), keys.len());
        let l2 = Listing::from_table(table, l.started_at, l.started_mono, true);
        assert_eq!(l2.to_keys(), want);
        let mut table = KeyTable::default();
        keys.iter().cloned().for_each(|k| table.push_key(k));
        assert_eq!(table.into_keys(), want);
        // Lookups read the rows.
        assert_eq!(l.by_id("id-3").unwrap().to_owned(), want[3]);
        assert!(l.by_id("id-33").is_none());
        assert_eq!(
            l.named("app-2").map(|k| k.id()).collect::<Vec<_>>(),
            want.iter()
                .filter(|k| k.name == "app-2")
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn subset_and_filtered_views_equal_the_clones_they_replace_and_share_the_rows() {
        let keys = varied_keys();
        let want = deduped(keys.clone());
        let l = Listing::from_walk(keys, t("2026-11-30T10:00:00Z"), Instant::now(), false);
        // filtered: as `keys.iter().filter(..).cloned()` did.
        let keep = |n: &str| n.starts_with("app-");
        let f = l.filtered(keep);
        let want_f: Vec<ProviderKey> = want.iter().filter(|k| keep(&k.name)).cloned().collect();
        assert_eq!(f.to_keys(), want_f);
        assert!(f.shares_rows_with(&l), "filtered copies no row");
        // subset: as `positions.iter().filter_map(|n| keys.get(n)).cloned()`
        // did (a position past the end skipped).
        let positions = [0u32, 2, 3, 7, 1, 30, 1000];
        let s = l.subset(&positions);
        let want_s: Vec<ProviderKey> = positions
            .iter()
            .filter_map(|&n| want.get(n as usize))
            .cloned()
            .collect();
        assert_eq!(s.to_keys(), want_s);
        assert!(s.shares_rows_with(&l), "subset copies no row");
        // A view of a view: positions are the view's own.
        let ss = s.subset(&[1, 3]);
        assert_eq!(ss.to_keys(), [want_s[1].clone(), want_s[3].clone()]);
        assert!(ss.shares_rows_with(&l));
        let sf = s.filtered(|n| n.is_empty());
        assert_eq!(
            sf.to_keys(),
            want_s
                .iter()
                .filter(|k| k.name.is_empty())
                .cloned()
                .collect::<Vec<_>>()
        );
        // The walk's start and completeness carry over.
        for v in [&f, &s, &ss, &sf] {
            assert_eq!(v.started_at, l.started_at);
            assert_eq!(v.started_mono, l.started_mono);
            assert!(!v.complete);
        }
        // A listing of other keys does not share them.
        let other = Listing::from_walk(want.clone(), l.started_at, l.started_mono, true);
        assert!(!other.shares_rows_with(&l));
        assert_eq!(other.to_keys(), l.to_keys());
    }

    /// A provider whose walks take 40 ms and are counted.
    struct Slow {
        name: &'static str,
        lists: std::sync::atomic::AtomicU32,
        keys: Mutex<Vec<ProviderKey>>,
    }

    impl Slow {
        fn new(name: &'static str) -> Arc<Slow> {
            Arc::new(Slow {
                name,
                lists: Default::default(),
                keys: Default::default(),
            })
        }
        fn lists(&self) -> u32 {
            self.lists.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl Provider for Slow {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> &'static str {
            "slow"
        }
        fn capabilities(&self) -> super::super::Capabilities {
            super::super::Capabilities {
                can_list: true,
                can_delete: true,
                disable_before_delete: false,
                has_expiry: false,
                returns_id_on_create: false,
            }
        }
        async fn list(
            &self,
            keep: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
        ) -> Result<Vec<ProviderKey>, ProviderError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<ProviderKey> = self.keys.lock().unwrap().clone();
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok(keys.into_iter().filter(|k| keep(&k.name)).collect())
        }
        async fn create(
            &self,
            _: &super::super::CreateRequest<'_>,
        ) -> Result<super::super::NewKey, ProviderError> {
            unreachable!("not used")
        }
        async fn delete(&self, _: &str) -> Result<super::super::DeleteOutcome, ProviderError> {
            unreachable!("not used")
        }
    }

    fn clock() -> SharedClock {
        Arc::new(crate::clock::SystemClock)
    }

    fn walks(scopes: &[(&str, &str)]) -> Walks {
        Walks {
            scopes: scopes
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ..Walks::default()
        }
    }

    #[tokio::test]
    async fn two_entries_of_one_scope_share_a_walk_and_other_credentials_never_do() {
        let w = walks(&[
            ("ob1", "acct A"),
            ("ob2", "acct A"),
            ("ob3", "acct A other"),
        ]);
        let (p1, p2, p3) = (Slow::new("ob1"), Slow::new("ob2"), Slow::new("ob3"));
        let (s1, s2, s3): (SharedProvider, SharedProvider, SharedProvider) =
            (p1.clone(), p2.clone(), p3.clone());
        let c = clock();
        let (a, b, d) = tokio::join!(
            w.listing(&s1, &c, None, Purpose::Check),
            w.listing(&s2, &c, None, Purpose::Check),
            w.listing(&s3, &c, None, Purpose::Check),
        );
        assert!(a.is_ok() && b.is_ok() && d.is_ok());
        assert_eq!(p1.lists() + p2.lists(), 1, "ob1 and ob2 share one walk");
        assert_eq!(p3.lists(), 1, "other credentials walk on their own");
        assert_eq!(w.started(), 2);
    }

    #[tokio::test]
    async fn a_walk_in_flight_that_began_before_a_create_is_not_offered_to_its_id_lookup() {
        let w = walks(&[]);
        let p = Slow::new("ob");
        let sp: SharedProvider = p.clone();
        let c = clock();
        let first = w.listing(&sp, &c, None, Purpose::Check);
        let later = async {
            // The create returns while the first walk is in flight.
            tokio::time::sleep(Duration::from_millis(10)).await;
            p.keys.lock().unwrap().push(key("k1", "app-1"));
            let created = c.now();
            let l = w.listing(&sp, &c, Some(created), Purpose::IdLookup).await;
            (created, l)
        };
        let (a, (created, b)) = tokio::join!(first, later);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.named("app-1").next().is_none());
        assert!(b.started_after(created) && b.named("app-1").next().is_some());
        assert_eq!(p.lists(), 2);
    }

    #[tokio::test]
    async fn id_lookups_wait_for_creates_in_flight_and_share_one_walk() {
        let w = walks(&[]);
        let p = Slow::new("ob");
        let sp: SharedProvider = p.clone();
        let c = clock();
        // Five creates in flight; they return one after another, 30 ms
        // apart, and each looks its key up right away.
        let guards: Vec<_> = (0..5).map(|_| w.creating("ob")).collect();
        let lookups = guards.into_iter().enumerate().map(|(i, g)| {
            let (w, sp, c, p) = (&w, &sp, &c, &p);
            async move {
                tokio::time::sleep(Duration::from_millis(30 * i as u64)).await;
                p.keys
                    .lock()
                    .unwrap()
                    .push(key(&format!("k{i}"), &format!("app-{i}")));
                let created = c.now();
                drop(g);
                let l = w
                    .listing(sp, c, Some(created), Purpose::IdLookup)
                    .await
                    .unwrap();
                l.named(&format!("app-{i}")).next().is_some()
            }
        });
        for found in futures_util::future::join_all(lookups).await {
            assert!(found, "every lookup finds its key");
        }
        assert_eq!(p.lists(), 1, "one walk after the last create served all");
    }

    #[tokio::test]
    async fn a_create_that_never_returns_holds_a_walk_back_at_most_create_hold() {
        let w = walks(&[]);
        let p = Slow::new("ob");
        let sp: SharedProvider = p.clone();
        let _stuck = w.creating("ob");
        let t = Instant::now();
        w.listing(&sp, &clock(), None, Purpose::Check)
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(
            took >= CREATE_HOLD && took < CREATE_HOLD + Duration::from_secs(2),
            "{took:?}"
        );
        // A create that began after the walk was asked for does not hold it.
        let w = walks(&[]);
        let late = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            w.creating("ob")
        };
        let t = Instant::now();
        let c = clock();
        let (l, _g) = tokio::join!(w.listing(&sp, &c, None, Purpose::Check), late);
        l.unwrap();
        assert!(t.elapsed() < CREATE_HOLD);
    }

    #[tokio::test]
    async fn walks_started_are_counted_once_per_walk_by_purpose() {
        let m = crate::metrics::Metrics::new();
        let w = Walks {
            metrics: Some(m.clone()),
            ..Walks::default()
        };
        let p = Slow::new("ob");
        let sp: SharedProvider = p.clone();
        let c = clock();
        let (a, b) = tokio::join!(
            w.listing(&sp, &c, None, Purpose::Check),
            w.listing(&sp, &c, None, Purpose::BeforeDelete),
        );
        a.unwrap();
        b.unwrap();
        w.listing(&sp, &c, Some(c.now()), Purpose::IdLookup)
            .await
            .unwrap();
        let text = m.render();
        assert!(
            text.contains(r#"rekey_provider_walks_total{provider="ob",purpose="check"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rekey_provider_walks_total{provider="ob",purpose="id_lookup"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"purpose="before_delete""#),
            "it joined: {text}"
        );
    }

    /// Adversarial round trips: hostile strings, times at chrono's ends and
    /// at the edges of a second, nested meta, and meta runs that alternate.
    #[test]
    fn hostile_strings_extreme_times_and_alternating_meta_come_back_exactly() {
        let leap = DateTime::parse_from_rfc3339("2016-12-31T23:59:60.999999999Z")
            .unwrap()
            .to_utc();
        assert!(leap.timestamp_subsec_nanos() >= 1_000_000_000);
        let times = [
            None,
            Some(DateTime::<Utc>::MIN_UTC),
            Some(DateTime::<Utc>::MAX_UTC),
            Some(DateTime::from_timestamp(-1, 999_999_999).unwrap()),
            Some(DateTime::from_timestamp(0, 0).unwrap()),
            Some(DateTime::from_timestamp(0, 1).unwrap()),
            Some(leap),
            Some(
                DateTime::parse_from_rfc3339("2016-12-31T23:59:60+05:30")
                    .unwrap()
                    .to_utc(),
            ),
        ];
        let nested = |v: i64| -> BTreeMap<String, serde_json::Value> {
            [(
                "deep".to_string(),
                serde_json::json!({"a": [1, {"b": null, "c": "\u{0}\u{202e}"}], "v": v}),
            )]
            .into()
        };
        let strings = [
            String::new(),
            "\u{0}".to_string(),
            "\u{0}\u{0}".to_string(),
            "\u{202e}evil\u{202c}".to_string(),
            "👩‍👩‍👧".to_string(),
            "\u{FEFF}a\r\n\t\u{7f}".to_string(),
            "x".repeat(3 << 20),
        ];
        let mut keys = Vec::new();
        for (i, s) in strings.iter().enumerate() {
            for (j, t) in times.iter().enumerate() {
                let n = i * times.len() + j;
                // Meta runs: A A B A none A (alternating, and a gap).
                let meta = match n % 6 {
                    0 | 1 | 3 | 5 => nested(1),
                    2 => nested(2),
                    _ => BTreeMap::new(),
                };
                keys.push(ProviderKey {
                    // Ids that differ only in a trailing NUL or are empty.
                    id: format!("{s}{}", "\u{0}".repeat(n)),
                    name: format!("{}{s}", n),
                    created_at: *t,
                    expires_at: times[(j + 3) % times.len()],
                    meta,
                });
            }
        }
        // The empty id once more, later, with other fields: dropped.
        keys.push(ProviderKey {
            id: String::new(),
            name: "late".into(),
            created_at: None,
            expires_at: None,
            meta: nested(9),
        });
        let want = deduped(keys.clone());
        assert_eq!(want.len(), keys.len() - 1);
        let l = Listing::from_walk(keys, t("2026-11-30T10:00:00Z"), Instant::now(), true);
        assert_eq!(l.to_keys(), want);
        for (k, w) in l.keys().zip(&want) {
            assert_eq!(k.created_at(), w.created_at, "{}", w.name.len());
            assert_eq!(k.expires_at(), w.expires_at);
            assert_eq!(k.meta(), &w.meta);
            assert_eq!(l.by_id(&w.id).map(|k| k.name()), Some(w.name.as_str()));
        }
        assert_eq!(l.by_id("").unwrap().name(), "0");
    }

    /// 100,000 keys, every id listed four times (offset paging gone
    /// wrong): the repeats are dropped in one pass.
    #[test]
    fn a_hundred_thousand_keys_with_many_repeats_keep_the_first_of_each() {
        let mut table = KeyTable::default();
        for round in 0..4 {
            for i in 0..100_000u32 {
                let name = format!("app-{i}-{round}");
                table.push(&format!("id-{i}"), &name, None, None, BTreeMap::new());
            }
        }
        assert_eq!(table.len(), 400_000);
        let l = Listing::from_table(table, t("2026-11-30T10:00:00Z"), Instant::now(), true);
        assert_eq!(l.len(), 100_000);
        assert!(l.keys().all(|k| k.name().ends_with("-0")));
        assert_eq!(l.get(99_999).unwrap().id(), "id-99999");
        assert!(l.get(100_000).is_none());
    }

    #[test]
    fn views_out_of_range_and_absence_on_views() {
        let keys: Vec<ProviderKey> = (0..10)
            .map(|i| key(&format!("k{i}"), &format!("app-{i}")))
            .collect();
        let l = Listing::from_walk(keys, t("2026-11-30T10:00:00Z"), Instant::now(), true);
        let s = l.subset(&[u32::MAX, 9, 10, 0]);
        // Past the end skipped.
        assert_eq!(s.keys().map(|k| k.id()).collect::<Vec<_>>(), ["k9", "k0"]);
        assert!(s.get(2).is_none());
        let ss = s.subset(&[1, 2, u32::MAX]);
        assert_eq!(ss.keys().map(|k| k.id()).collect::<Vec<_>>(), ["k0"]);
        let empty = l.subset(&[]);
        assert!(empty.is_empty() && empty.get(0).is_none());
        assert!(empty.by_id("k0").is_none());
        // A view holds only its keys: by_id/named see nothing else.
        let f = l.filtered(|n| n == "app-3");
        assert!(f.by_id("k4").is_none());
        assert_eq!(f.by_id("k3").unwrap().name(), "app-3");
        assert!(!f.proves_absent("app-3", t("2026-11-30T09:00:00Z")));
    }

    #[test]
    fn debug_of_a_listing_does_not_dump_its_keys() {
        let keys: Vec<ProviderKey> = (0..1000)
            .map(|i| key(&format!("id-{i}"), &format!("app-name-{i}")))
            .collect();
        let l = Listing::from_walk(keys, t("2026-11-30T10:00:00Z"), Instant::now(), true);
        let v = l.subset(&[1, 2]);
        for d in [
            format!("{l:?}"),
            format!("{v:?}"),
            format!("{:?}", *l.table),
        ] {
            assert!(!d.contains("app-name-5"), "{}", &d[..d.len().min(300)]);
            assert!(d.len() < 1000, "{} bytes", d.len());
        }
    }

    /// A provider whose first walk panics (a bug, or an input no one
    /// foresaw); later walks succeed.
    struct PanicsOnce {
        lists: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl Provider for PanicsOnce {
        fn name(&self) -> &str {
            "boom"
        }
        fn kind(&self) -> &'static str {
            "boom"
        }
        fn capabilities(&self) -> super::super::Capabilities {
            super::super::Capabilities {
                can_list: true,
                can_delete: true,
                disable_before_delete: false,
                has_expiry: false,
                returns_id_on_create: false,
            }
        }
        async fn list(
            &self,
            _: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
        ) -> Result<Vec<ProviderKey>, ProviderError> {
            if self.lists.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("walk blew up");
            }
            Ok(vec![key("k1", "app-1")])
        }
        async fn create(
            &self,
            _: &super::super::CreateRequest<'_>,
        ) -> Result<super::super::NewKey, ProviderError> {
            unreachable!("not used")
        }
        async fn delete(&self, _: &str) -> Result<super::super::DeleteOutcome, ProviderError> {
            unreachable!("not used")
        }
    }

    #[tokio::test]
    async fn a_walk_that_panicked_is_not_joined_by_later_checks() {
        let w = Arc::new(walks(&[]));
        let p: SharedProvider = Arc::new(PanicsOnce {
            lists: Default::default(),
        });
        let c = clock();
        let first = {
            let (w, p, c) = (w.clone(), p.clone(), c.clone());
            tokio::spawn(async move { w.listing(&p, &c, None, Purpose::Check).await })
        };
        // The first consumer gets an error (not a panic, not a listing)
        // that does not quote the panic.
        let e = first
            .await
            .expect("the first check does not panic")
            .unwrap_err();
        assert!(!e.to_string().contains("blew"), "{e}");
        // The next scheduled check walks anew instead of joining the
        // poisoned walk (which would panic every check of the scope).
        let second = {
            let (w, p, c) = (w.clone(), p.clone(), c.clone());
            tokio::spawn(async move { w.listing(&p, &c, None, Purpose::Check).await })
        };
        let l = second
            .await
            .expect("the second check does not panic")
            .unwrap();
        assert_eq!(l.by_id("k1").unwrap().name(), "app-1");
    }

    /// The default `list_into` (Huawei's path: `list`, then push): a key
    /// `list` repeats is listed once, the first occurrence kept, through a
    /// plain walk and through a shared one.
    #[tokio::test]
    async fn the_default_list_into_path_drops_repeats_and_keeps_the_first() {
        let p = Slow::new("hw");
        *p.keys.lock().unwrap() = vec![
            key("1", "app-a"),
            key("2", "app-b"),
            key("1", "app-a-moved"),
            key("2", "other"),
            key("3", "app-c"),
        ];
        let c = clock();
        let keep = |n: &str| n.starts_with("app-");
        let l = Listing::walk(&*p, &*c, &keep).await.unwrap();
        let got: Vec<(&str, &str)> = l.keys().map(|k| (k.id(), k.name())).collect();
        assert_eq!(got, [("1", "app-a"), ("2", "app-b"), ("3", "app-c")]);
        let sp: SharedProvider = p.clone();
        let shared = walks(&[])
            .listing(&sp, &c, None, Purpose::Check)
            .await
            .unwrap();
        let got: Vec<(&str, &str)> = shared.keys().map(|k| (k.id(), k.name())).collect();
        assert_eq!(got, [("1", "app-a"), ("2", "app-b"), ("3", "app-c")]);
    }
}
