//! DestinationRules → a per-host index (merged as istiod merges them) and the clusters:
//! `outbound|<port>||<fqdn>` for every service port plus one per defined subset, with
//! traffic-policy precedence subset port-level > subset > DR port-level > DR.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, ResourceRef};
use crate::ir::Cluster;
use crate::istio::{ConsistentHashLb, Subset, TrafficPolicy};
use crate::lower::registry::Registry;
use crate::source::Resource;
use crate::Options;

/// The merged DestinationRule of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRule {
    /// Fully qualified host (short names resolved in the rule's namespace).
    pub host: String,
    /// Subsets in definition order; the first definition of a duplicate name wins.
    pub subsets: Vec<Subset>,
    /// The first non-empty top-level traffic policy.
    pub traffic_policy: Option<TrafficPolicy>,
    /// The rules that contributed, in input order.
    pub sources: Vec<ResourceRef>,
}

/// DestinationRules by fully qualified host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleIndex {
    pub rules: BTreeMap<String, MergedRule>,
}

impl RuleIndex {
    pub fn get(&self, host: &str) -> Option<&MergedRule> {
        self.rules.get(host)
    }

    /// Is `subset` defined for `host` by some DestinationRule?
    pub fn has_subset(&self, host: &str, subset: &str) -> bool {
        self.get(host)
            .is_some_and(|r| r.subsets.iter().any(|s| s.name == subset))
    }

    /// The subset names defined for `host`, in definition order (for hints).
    pub fn subset_names(&self, host: &str) -> Vec<String> {
        self.get(host)
            .map(|r| r.subsets.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The consistent-hash setting that applies to traffic for host/subset/port, with istiod's
    /// precedence (subset port-level > subset > DR port-level > DR). TODO: implemented by the
    /// DestinationRule helper.
    pub fn consistent_hash(
        &self,
        _host: &str,
        _subset: Option<&str>,
        _port: u32,
    ) -> Option<&ConsistentHashLb> {
        None
    }
}

/// Index the DestinationRules. TODO: implemented by the DestinationRule helper.
pub fn index(
    _resources: &[Resource],
    _registry: &Registry,
    _options: &Options,
    _diags: &mut Vec<Diagnostic>,
) -> RuleIndex {
    RuleIndex::default()
}

/// Build every cluster. TODO: implemented by the DestinationRule helper.
pub fn build_clusters(
    _registry: &Registry,
    _rules: &RuleIndex,
    _options: &Options,
    _diags: &mut Vec<Diagnostic>,
) -> Vec<Cluster> {
    Vec::new()
}
