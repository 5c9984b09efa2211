//! What a stream is subscribed to, for one type URL: the wildcard and explicit names,
//! following xds_protocol.rst "How the client specifies what resources to return".

use std::collections::BTreeSet;

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

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// True while no request for this type has named anything (`*` included): the legacy
    /// wildcard reading of an empty list is still available.
    legacy: bool,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            wildcard: false,
            names: BTreeSet::new(),
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

    pub fn is_explicit(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether the client wants `name` (explicitly or through the wildcard).
    pub fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// For status: `*` first if subscribed, then the names.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.names.len() + 1);
        if self.wildcard {
            out.push(WILDCARD.to_string());
        }
        out.extend(self.names.iter().cloned());
        out
    }

    /// SotW: every request carries the whole list. Returns the explicit names that were
    /// added.
    pub fn apply_sotw(&mut self, requested: &[String], legacy_allowed: bool) -> BTreeSet<String> {
        let before = std::mem::take(&mut self.names);
        if self.legacy && requested.is_empty() {
            self.wildcard = legacy_allowed;
        } else {
            self.legacy = false;
            self.wildcard = requested.iter().any(|n| n == WILDCARD);
            self.names = requested
                .iter()
                .filter(|n| *n != WILDCARD)
                .cloned()
                .collect();
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
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
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
    fn sotw_legacy_disabled() {
        let mut s = Subscription::default();
        s.apply_sotw(&[], false);
        assert!(!s.is_wildcard());
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
        assert!(!s.is_wildcard() && !s.covers("A") && s.describe().is_empty());
    }
}
