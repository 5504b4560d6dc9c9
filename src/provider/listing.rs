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

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::{Provider, ProviderError, ProviderKey, SharedProvider};
use crate::clock::{Clock, SharedClock};

/// The result of one complete walk of a provider's keys.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The keys the walk's filter kept, each id once.
    pub keys: Vec<ProviderKey>,
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
        let keys = provider.list(keep).await?;
        Ok(Listing::from_walk(keys, started_at, started_mono, true))
    }

    /// A listing from keys already walked; repeated ids are dropped (the
    /// first occurrence wins).
    pub fn from_walk(
        mut keys: Vec<ProviderKey>,
        started_at: DateTime<Utc>,
        started_mono: Instant,
        complete: bool,
    ) -> Listing {
        super::drop_repeated_ids(&mut keys);
        keys.shrink_to_fit();
        Listing {
            keys,
            started_at,
            started_mono,
            complete,
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
    /// how one shared walk serves a policy.
    pub fn filtered(&self, keep: impl Fn(&str) -> bool) -> Listing {
        Listing {
            keys: self
                .keys
                .iter()
                .filter(|k| keep(&k.name))
                .cloned()
                .collect(),
            started_at: self.started_at,
            started_mono: self.started_mono,
            complete: self.complete,
        }
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
        for (n, k) in self.keys.iter().enumerate() {
            set.matches_into(k.name.as_str(), &mut hits);
            for &i in &hits {
                out[i].push(n as u32);
            }
        }
        out
    }

    /// The keys at `positions` (from [`split`](Self::split)), with this
    /// walk's start and completeness.
    pub fn subset(&self, positions: &[u32]) -> Listing {
        Listing {
            keys: positions
                .iter()
                .filter_map(|&n| self.keys.get(n as usize))
                .cloned()
                .collect(),
            started_at: self.started_at,
            started_mono: self.started_mono,
            complete: self.complete,
        }
    }

    /// Keys named `name` (a provider may allow several).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ProviderKey> + 'a {
        self.keys.iter().filter(move |k| k.name == name)
    }

    /// The key with id `id`, if listed.
    pub fn by_id(&self, id: &str) -> Option<&ProviderKey> {
        self.keys.iter().find(|k| k.id == id)
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
            p.list(&all)
                .await
                .map(|keys| Arc::new(Listing::from_walk(keys, started_at, started_mono, true)))
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
            let ids = |l: &Listing| l.keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>();
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
        assert_eq!(l.keys.len(), 2);
        assert!(!l.proves_absent("a", t("2026-11-30T09:00:00Z")));
        assert_eq!(l.by_id("2").unwrap().name, "b");
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
        let got: Vec<(&str, &str)> = l
            .keys
            .iter()
            .map(|k| (k.id.as_str(), k.name.as_str()))
            .collect();
        assert_eq!(got, [("1", "a"), ("2", "b"), ("3", "c"), ("é/\u{0}", "x")]);
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
}
