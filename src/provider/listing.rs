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
//! Freshness: a listing is judged by its start, never its end; the keys it
//! holds are those the walk's filter kept, in walk order, possibly with a key
//! repeated (offset paging while keys are created and deleted shifts items
//! between pages), which [`Listing::walk`] removes (first occurrence wins).

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{Provider, ProviderError, ProviderKey};
use crate::clock::Clock;

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
