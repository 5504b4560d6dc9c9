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
//! Sharing ([`Walks`]): walks are per provider entry (one set of
//! credentials, never shared across entries). A consumer joins the walk in
//! flight or reuses one that started within [`FRESHNESS`] (2 s, on both the
//! monotonic and the injected clock); a consumer that needs proof of absence
//! for something that began at T (an abandoned create attempt) asks for a
//! walk that started strictly after T and gets a new one otherwise. An id
//! lookup takes any walk that *shows* the key, and asks for one that started
//! after the create when it does not. A failed walk fails every consumer
//! waiting on it with the same error and is never reused.
//!
//! Freshness: a listing is judged by its start, never its end; the keys it
//! holds are those the walk's filter kept, in walk order, possibly with a key
//! repeated (offset paging while keys are created and deleted shifts items
//! between pages), which [`Listing::walk`] removes (first occurrence wins).

use std::collections::{HashMap, HashSet};
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
        keys: Vec<ProviderKey>,
        started_at: DateTime<Utc>,
        started_mono: Instant,
        complete: bool,
    ) -> Listing {
        let mut seen = HashSet::new();
        let keys = keys
            .into_iter()
            .filter(|k| seen.insert(k.id.clone()))
            .collect();
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

type WalkFuture = Shared<BoxFuture<'static, Result<Arc<Listing>, ProviderError>>>;

struct Slot {
    started_at: DateTime<Utc>,
    started_mono: Instant,
    walk: WalkFuture,
}

/// Walks shared per provider entry (one set of credentials; never across
/// entries): a consumer joins the walk in flight, or reuses one that
/// started within [`FRESHNESS`], unless it needs a walk that started after
/// some instant (`not_before`: the proof of absence for an abandoned
/// create attempt), in which case a new walk starts. A walk that fails
/// fails every consumer waiting on it, with the same error; the next
/// consumer starts a new one. Each consumer filters what it needs
/// ([`Listing::filtered`]).
#[derive(Default)]
pub struct Walks {
    slots: Mutex<HashMap<String, Slot>>,
    /// Walks started, for tests and metrics.
    started: std::sync::atomic::AtomicU64,
}

impl Walks {
    /// A complete walk of every key of `provider`; see [`Walks`] for when
    /// it is shared. `not_before`: only a walk that started strictly after
    /// this instant will do.
    ///
    /// Errors: the provider's (shared by every consumer of that walk).
    pub async fn listing(
        &self,
        provider: &SharedProvider,
        clock: &SharedClock,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<Arc<Listing>, ProviderError> {
        let walk = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let reusable = slots.get(provider.name()).filter(|s| {
                // Fresh on both clocks: the monotonic one cannot be fooled
                // by a wall-clock step; the injected one is what tests move.
                let wall_age = clock.now() - s.started_at;
                let fresh = s.started_mono.elapsed() <= FRESHNESS
                    && wall_age >= chrono::Duration::zero()
                    && wall_age.to_std().is_ok_and(|a| a <= FRESHNESS);
                let usable = match s.walk.peek() {
                    None => true,
                    Some(Ok(_)) => fresh,
                    Some(Err(_)) => false,
                };
                usable && not_before.is_none_or(|t| s.started_at > t)
            });
            match reusable {
                Some(s) => s.walk.clone(),
                None => {
                    let started_at = clock.now();
                    let started_mono = Instant::now();
                    let p = provider.clone();
                    let walk = async move {
                        let all = |_: &str| true;
                        p.list(&all).await.map(|keys| {
                            Arc::new(Listing::from_walk(keys, started_at, started_mono, true))
                        })
                    }
                    .boxed()
                    .shared();
                    self.started
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    slots.insert(
                        provider.name().to_string(),
                        Slot {
                            started_at,
                            started_mono,
                            walk: walk.clone(),
                        },
                    );
                    walk
                }
            }
        };
        walk.await
    }

    /// How many walks were started (shared ones count once).
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }
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
}
