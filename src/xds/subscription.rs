//! What a stream is subscribed to, for one type URL: the wildcard and explicit names,
//! following xds_protocol.rst "How the client specifies what resources to return".

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The special wildcard resource name.
pub const WILDCARD: &str = "*";

/// Which types treat a client that never named anything as subscribed to `*` (the spec's
/// "legacy wildcard"). Envoy relies on it for listeners and clusters; gRPC xDS clients never
/// mean it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyWildcard {
    /// Listeners and clusters only (istiod's choice; the spec's wildcard-capable types).
    #[default]
    ListenersAndClusters,
    /// Every type (go-control-plane's default).
    AllTypes,
    /// Never: an empty name list always means "nothing".
    Never,
}

impl LegacyWildcard {
    pub fn applies_to(self, type_url: &str) -> bool {
        match self {
            LegacyWildcard::ListenersAndClusters => super::resource::is_full_state(type_url),
            LegacyWildcard::AllTypes => true,
            LegacyWildcard::Never => false,
        }
    }
}

/// A set of explicitly subscribed names, shared: identical sets are one allocation (see
/// [`intern`]), so a thousand proxies subscribed to the same 4,000 endpoint names hold one
/// copy between them.
pub(crate) type Names = Arc<BTreeSet<String>>;

/// The shared copy of `set`: an existing identical set if one is alive, else `set` itself.
/// Costs one hash of the set, paid when a subscription changes (never per push).
pub(crate) fn intern(set: BTreeSet<String>) -> Names {
    type Table = HashMap<u64, Vec<Weak<BTreeSet<String>>>>;
    static EMPTY: OnceLock<Names> = OnceLock::new();
    static TABLE: OnceLock<Mutex<(Table, usize)>> = OnceLock::new();
    if set.is_empty() {
        return EMPTY.get_or_init(|| Arc::new(BTreeSet::new())).clone();
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    set.hash(&mut hasher);
    let key = hasher.finish();
    let mut guard = TABLE
        .get_or_init(|| Mutex::new((HashMap::new(), 0)))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let (table, inserts) = &mut *guard;
    let bucket = table.entry(key).or_default();
    bucket.retain(|w| w.strong_count() > 0);
    if let Some(shared) = bucket.iter().filter_map(Weak::upgrade).find(|s| **s == set) {
        return shared;
    }
    let shared = Arc::new(set);
    bucket.push(Arc::downgrade(&shared));
    *inserts += 1;
    if *inserts % 1024 == 0 {
        // Drop the buckets of sets nobody holds any more.
        table.retain(|_, b| {
            b.retain(|w| w.strong_count() > 0);
            !b.is_empty()
        });
    }
    shared
}

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    wildcard: bool,
    names: Names,
    /// True while no request for this type has named anything (`*` included): the legacy
    /// wildcard reading of an empty list is still available.
    legacy: bool,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            wildcard: false,
            names: intern(BTreeSet::new()),
            legacy: true,
        }
    }
}

impl Subscription {
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Explicitly named resources (without `*`).
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// The same, shared.
    pub fn shared_names(&self) -> &Names {
        &self.names
    }

    pub fn is_explicit(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether the client wants `name` (explicitly or through the wildcard).
    pub fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// SotW: every request carries the whole list. Returns the explicit names that were
    /// added.
    pub fn apply_sotw(&mut self, requested: &[String], legacy_allowed: bool) -> BTreeSet<String> {
        let before = std::mem::replace(&mut self.names, intern(BTreeSet::new()));
        if self.legacy && requested.is_empty() {
            self.wildcard = legacy_allowed;
        } else {
            self.legacy = false;
            self.wildcard = requested.iter().any(|n| n == WILDCARD);
            // Compared as sets: a request may repeat a name (`[a, a]` is not `{a, b}`).
            let asked: BTreeSet<&str> = requested
                .iter()
                .map(String::as_str)
                .filter(|n| *n != WILDCARD)
                .collect();
            let same = asked.len() == before.len() && asked.iter().all(|n| before.contains(*n));
            if same {
                // An ACK repeats the list: keep the shared set.
                self.names = before;
                return BTreeSet::new();
            }
            self.names = intern(
                requested
                    .iter()
                    .filter(|n| *n != WILDCARD)
                    .cloned()
                    .collect(),
            );
        }
        self.names.difference(&before).cloned().collect()
    }

    /// Delta: apply subscribe/unsubscribe lists. `first` is the first request for this type
    /// on the stream: with nothing subscribed it starts the legacy wildcard, which (unlike
    /// SotW) lasts until `*` is unsubscribed explicitly.
    pub fn apply_delta(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        first: bool,
        legacy_allowed: bool,
    ) {
        if first && subscribe.is_empty() && legacy_allowed {
            self.wildcard = true;
        }
        if !subscribe.is_empty() {
            self.legacy = false;
        }
        let touches_names = subscribe.iter().chain(unsubscribe).any(|n| n != WILDCARD);
        let mut names = if touches_names {
            Some((*self.names).clone())
        } else {
            None
        };
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else if let Some(names) = names.as_mut() {
                names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else if let Some(names) = names.as_mut() {
                names.remove(name);
            }
        }
        if let Some(names) = names {
            if names != *self.names {
                self.names = intern(names);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sotw_spec_sequence() {
        let mut s = Subscription::default();
        s.apply_sotw(&[], true);
        assert!(s.is_wildcard());
        let added = s.apply_sotw(&v(&["*", "A"]), true);
        assert!(s.is_wildcard() && s.is_explicit("A"));
        assert_eq!(added.into_iter().collect::<Vec<_>>(), v(&["A"]));
        s.apply_sotw(&v(&["A"]), true);
        assert!(!s.is_wildcard() && s.covers("A") && !s.covers("B"));
        s.apply_sotw(&[], true);
        assert!(!s.is_wildcard() && !s.covers("A"));
    }

    #[test]
    fn sotw_a_repeated_name_is_not_the_same_list() {
        let mut s = Subscription::default();
        s.apply_sotw(&v(&["a", "b"]), true);
        s.apply_sotw(&v(&["a", "a"]), true);
        assert!(s.covers("a") && !s.covers("b"), "b was dropped by [a, a]");
    }

    #[test]
    fn sotw_legacy_disabled() {
        let mut s = Subscription::default();
        s.apply_sotw(&[], false);
        assert!(!s.is_wildcard());
    }

    #[test]
    fn identical_name_sets_are_shared() {
        let mut a = Subscription::default();
        let mut b = Subscription::default();
        a.apply_delta(&v(&["x", "y"]), &[], true, false);
        b.apply_delta(&v(&["y"]), &[], true, false);
        assert!(!Arc::ptr_eq(a.shared_names(), b.shared_names()));
        b.apply_delta(&v(&["x"]), &[], false, false);
        assert!(Arc::ptr_eq(a.shared_names(), b.shared_names()));
        // Changing one does not change the other.
        b.apply_delta(&[], &v(&["x"]), false, false);
        assert!(a.covers("x") && !b.covers("x"));
        let mut s = Subscription::default();
        s.apply_sotw(&v(&["x", "y"]), false);
        assert!(Arc::ptr_eq(a.shared_names(), s.shared_names()));
        // An ACK repeating the list adds nothing and keeps the set.
        assert!(s.apply_sotw(&v(&["y", "x"]), false).is_empty());
        assert!(Arc::ptr_eq(a.shared_names(), s.shared_names()));
    }

    #[test]
    fn delta_spec_sequence() {
        let mut s = Subscription::default();
        s.apply_delta(&[], &[], true, true);
        assert!(s.is_wildcard());
        s.apply_delta(&v(&["A"]), &[], false, true);
        assert!(s.is_wildcard() && s.is_explicit("A"));
        s.apply_delta(&[], &v(&["*"]), false, true);
        assert!(!s.is_wildcard() && s.covers("A"));
        s.apply_delta(&[], &v(&["A"]), false, true);
        assert!(!s.is_wildcard() && !s.covers("A") && s.names().is_empty());
    }
}
