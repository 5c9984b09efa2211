//! What a config change costs between the file source's reading and the snapshots in the
//! cache, and what keeps that cost proportional to the change:
//!
//! - [`ParseCache`]: each file's parse, kept while its text is unchanged, so a one-file change
//!   parses one file (the rest is [`parse::combine`], which also checks duplicates across
//!   files exactly as a parse of all the files does);
//! - [`translate_timed`]: the translator's [`shadowplane_translator::translate`], stage by
//!   stage, so the reload's debug line says where the time went;
//! - [`snapshot_reusing`]: the snapshot, encoding again only the resources that changed;
//! - [`Timings`]: that debug line (`RUST_LOG=shadowplane::app=debug`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowplane_translator::{
    canonical, diag, lower, parse, xds, Options, Parsed, Resources, SourceFile, Translation,
};

use crate::xds::resource::{EncodedResource, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::xds::{Snapshot, SnapshotError};

/// The parse of each file of the last reading, by path, with the text it was parsed from.
#[derive(Default)]
pub(super) struct ParseCache {
    files: BTreeMap<String, CachedFile>,
}

struct CachedFile {
    /// Compared in full (not a hash): a stale parse must never be served.
    text: Arc<str>,
    parsed: Arc<Parsed>,
}

impl std::fmt::Debug for ParseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseCache")
            .field("files", &self.files.len())
            .finish()
    }
}

impl ParseCache {
    /// Parse `files` (what [`parse::parse_files`] gives), parsing again only the files whose
    /// path is new or whose text changed since `self` was built. Returns the cache of this
    /// reading (the files of `files` only) and how many files were parsed.
    pub(super) fn parse(&self, files: &[SourceFile]) -> (Parsed, ParseCache, usize) {
        let mut next = BTreeMap::new();
        let mut parsed_now = 0;
        for file in files {
            let entry = match self.files.get(&file.path) {
                Some(cached) if *cached.text == *file.text => CachedFile {
                    text: cached.text.clone(),
                    parsed: cached.parsed.clone(),
                },
                _ => {
                    parsed_now += 1;
                    CachedFile {
                        text: Arc::from(file.text.as_str()),
                        parsed: Arc::new(parse::parse_file_unchecked(&file.path, &file.text)),
                    }
                }
            };
            // A path read twice is kept once by `config_files::collect`; if it ever came twice,
            // both copies are combined below in order, so nothing differs from parse_files.
            next.insert(file.path.clone(), entry);
        }
        let parsed = parse::combine(
            files
                .iter()
                .filter_map(|f| next.get(&f.path).map(|c| &*c.parsed)),
        );
        (parsed, ParseCache { files: next }, parsed_now)
    }
}

/// Where one reload's time went.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Timings {
    /// Files parsed again (the others came from the cache) and the parse, cache lookups and
    /// duplicate check included.
    pub files_parsed: usize,
    pub parse: Duration,
    /// Istio → model (the default view).
    pub lower: Duration,
    /// Model → Envoy protos (the default view).
    pub build: Duration,
    /// Canonical encoding and content hashes (the default view's snapshot).
    pub encode: Duration,
    /// The snapshot's cross-reference check (a diagnostic).
    pub check: Duration,
    /// Every other node view: translated and encoded.
    pub views: Duration,
    pub other_groups: usize,
    /// Targets set in the cache (make-before-break phases included).
    pub set: Duration,
}

impl Timings {
    pub(super) fn log(&self, generation: u64, total: Duration) {
        tracing::debug!(
            generation,
            total_ms = ms(total),
            parse_ms = ms(self.parse),
            files_parsed = self.files_parsed,
            lower_ms = ms(self.lower),
            build_ms = ms(self.build),
            encode_ms = ms(self.encode),
            check_ms = ms(self.check),
            views_ms = ms(self.views),
            other_groups = self.other_groups,
            set_ms = ms(self.set),
            "reload timings"
        );
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Run `f` and add its wall time to `slot`.
pub(super) fn timed<T>(slot: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *slot += start.elapsed();
    out
}

/// [`shadowplane_translator::translate`], with the lowering and the building of the Envoy
/// protos timed apart. Same steps, same result (tested).
pub(super) fn translate_timed(
    parsed: &Parsed,
    options: &Options,
    timings: &mut Timings,
) -> Translation {
    let mut diagnostics = parsed.diagnostics.clone();
    let model = timed(&mut timings.lower, || {
        lower::lower(&parsed.resources, options, &mut diagnostics)
    });
    let resources = timed(&mut timings.build, || {
        let mut resources = xds::build_with_config_source(&model, &options.config_source);
        if options.vhds && options.config_source == shadowplane_translator::ConfigSourceKind::Ads {
            xds::virtual_host::enable_vhds(&mut resources.routes);
        }
        resources
    });
    diag::sort(&mut diagnostics);
    Translation {
        model,
        resources,
        diagnostics,
    }
}

/// The resources of the view whose options are `vhds_options` (with `vhds: true`), derived
/// from `plain`, the resources of the same options without `vhds`: VHDS only adds a `vhds`
/// block to every route configuration after the build (when routes come over ADS), so this
/// is what [`translate_timed`] gives for `vhds_options` without translating again (tested).
pub(super) fn derive_vhds(plain: &Resources, vhds_options: &Options) -> Resources {
    let mut resources = plain.clone();
    if vhds_options.vhds
        && vhds_options.config_source == shadowplane_translator::ConfigSourceKind::Ads
    {
        xds::virtual_host::enable_vhds(&mut resources.routes);
    }
    resources
}

/// `f` of every item, in order, on up to as many threads as there are cores (on this thread
/// alone for one item).
pub(super) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(results) => results,
                // A panic in `f` is a bug: carry it on as if it had happened here.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// The snapshot of `resources`, as [`Snapshot::from_resources`] builds it, reusing the encoding
/// (canonical bytes and content hash) of every resource that is equal to the one of the same
/// name in `previous` (the resources `previous_snapshot` was built from): after a one-route
/// change only the changed resources are encoded and hashed again.
pub(super) fn snapshot_reusing(
    resources: &Resources,
    previous: Option<(&Resources, &Snapshot)>,
) -> Result<Snapshot, SnapshotError> {
    let Some((old, old_snapshot)) = previous else {
        return Snapshot::from_resources(resources);
    };
    if resources.routes.iter().any(|r| r.vhds.is_some()) {
        // VHDS views: route configurations are split into virtual hosts (not reused here).
        return Snapshot::from_resources(resources);
    }
    // Listeners and routes (a route configuration holding every virtual host is the biggest
    // resource by far) on a second thread; clusters and endpoints here.
    let (mut items, rest) = std::thread::scope(|scope| {
        let routing = scope.spawn(|| {
            let mut items = Vec::with_capacity(resources.listeners.len() + resources.routes.len());
            reuse(
                &mut items,
                &resources.listeners,
                &old.listeners,
                old_snapshot,
                |l| &l.name,
            );
            reuse(
                &mut items,
                &resources.routes,
                &old.routes,
                old_snapshot,
                |r| &r.name,
            );
            items
        });
        let mut rest = Vec::with_capacity(resources.clusters.len() + resources.endpoints.len());
        reuse(
            &mut rest,
            &resources.clusters,
            &old.clusters,
            old_snapshot,
            |c| &c.name,
        );
        reuse(
            &mut rest,
            &resources.endpoints,
            &old.endpoints,
            old_snapshot,
            |e| &e.cluster_name,
        );
        match routing.join() {
            Ok(items) => (items, rest),
            // A panic while encoding is a bug: carry it on as if it had happened here.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    // The order of Snapshot::from_resources, so a duplicate name is reported the same way.
    items.extend(rest);
    Snapshot::new(items)
}

/// Whether `a` and `b` have the same cross-references, so the same
/// [`Snapshot::consistent`] report: the same listeners and clusters (which hold the RDS and
/// EDS names) and the same route configuration and endpoint names.
pub(super) fn same_references(a: &Snapshot, b: &Snapshot) -> bool {
    a.version(LISTENER) == b.version(LISTENER)
        && a.version(CLUSTER) == b.version(CLUSTER)
        && a.resources(ROUTE).keys().eq(b.resources(ROUTE).keys())
        && a.resources(ENDPOINT)
            .keys()
            .eq(b.resources(ENDPOINT).keys())
}

/// Push the encoding of each of `new` onto `out`: the previous one when `old` has an equal
/// message of that name and `old_snapshot` its encoding, else a fresh one.
fn reuse<M: prost::Message + prost::Name + PartialEq>(
    out: &mut Vec<EncodedResource>,
    new: &[M],
    old: &[M],
    old_snapshot: &Snapshot,
    name: impl Fn(&M) -> &String,
) {
    let type_url = M::type_url();
    // Names are unique per type in a valid snapshot; a duplicate is caught by Snapshot::new.
    let old_by_name: BTreeMap<&str, &M> = old.iter().map(|m| (name(m).as_str(), m)).collect();
    for m in new {
        let n = name(m);
        let same = old_by_name.get(n.as_str()).is_some_and(|o| *o == m);
        let previous = if same {
            old_snapshot.get(&type_url, n)
        } else {
            None
        };
        out.push(match previous {
            Some(encoded) => (**encoded).clone(),
            None => EncodedResource::new(type_url.clone(), n.clone(), canonical::encode(m)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.to_string(),
            text: text.to_string(),
        }
    }

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc\n  namespace: ns\nspec:\n  hosts:\n  - svc.ns.svc.cluster.local\n  location: MESH_INTERNAL\n  ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.1\n    labels:\n      version: v1\n  - address: 10.0.0.2\n    labels:\n      version: v2\n";
    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\n  namespace: ns\nspec:\n  host: svc\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n";
    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\n  namespace: ns\nspec:\n  hosts:\n  - svc\n  http:\n  - route:\n    - destination:\n        host: svc\n        subset: v1\n";

    fn same(a: &Parsed, b: &Parsed) {
        assert_eq!(a.resources, b.resources);
        assert_eq!(a.diagnostics, b.diagnostics);
    }

    #[test]
    fn only_changed_files_are_parsed_again_and_the_result_is_a_full_parse() {
        let cache = ParseCache::default();
        let one = vec![file("a.yaml", DR), file("b.yaml", VS)];
        let (parsed, cache, n) = cache.parse(&one);
        assert_eq!(n, 2);
        same(&parsed, &parse::parse_files(&one));

        // Unchanged: nothing parsed.
        let (parsed, cache, n) = cache.parse(&one);
        assert_eq!(n, 0);
        same(&parsed, &parse::parse_files(&one));

        // One file changed to a duplicate of the other: one parse, and the duplicate across
        // files is reported as by a full parse.
        let two = vec![file("a.yaml", DR), file("b.yaml", DR)];
        let (parsed, cache, n) = cache.parse(&two);
        assert_eq!(n, 1);
        same(&parsed, &parse::parse_files(&two));
        assert!(parsed
            .diagnostics
            .iter()
            .any(|d| d.code == shadowplane_translator::Code::DuplicateResource));

        // A half-written file (a YAML syntax error) is parsed, not taken from the cache, and
        // a removed file is forgotten.
        let half = vec![file("b.yaml", &VS[..VS.len() / 2])];
        let (parsed, cache, n) = cache.parse(&half);
        assert_eq!(n, 1);
        same(&parsed, &parse::parse_files(&half));
        assert_eq!(cache.files.len(), 1);
    }

    #[test]
    fn parallel_results_keep_the_order_of_the_items() {
        for n in [0usize, 1, 2, 3, 10] {
            let items: Vec<usize> = (0..n).collect();
            let doubled = in_parallel(&items, |i| i * 2);
            assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        }
    }

    #[test]
    fn timed_translation_is_the_translation() {
        let files = vec![file("se.yaml", SE), file("a.yaml", DR), file("b.yaml", VS)];
        let parsed = parse::parse_files(&files);
        for options in [
            Options::default(),
            Options {
                proxy_namespace: Some("ns".to_string()),
                bind_address: "127.0.0.1".to_string(),
                ..Options::default()
            },
        ] {
            let mut timings = Timings::default();
            let timed = translate_timed(&parsed, &options, &mut timings);
            let plain = shadowplane_translator::translate(&parsed, &options);
            assert_eq!(timed.resources, plain.resources);
            assert_eq!(timed.diagnostics, plain.diagnostics);
            assert!(!timed.resources.clusters.is_empty());
        }
    }

    #[test]
    fn reused_encodings_give_the_snapshot_of_a_fresh_encoding() {
        let translate = |vs: &str, dr: &str| {
            let files = vec![file("se.yaml", SE), file("a.yaml", dr), file("b.yaml", vs)];
            shadowplane_translator::translate_files(&files, &Options::default()).resources
        };
        let dr2 = format!("{DR}  - name: v2\n    labels:\n      version: v2\n");
        let before = translate(VS, DR);
        let after = translate(&VS.replace("subset: v1", "subset: v2"), &dr2);
        assert_ne!(before, after);
        let before_snapshot = Snapshot::from_resources(&before).expect("snapshot");
        for (new, previous) in [
            (&after, None),
            (&after, Some((&before, &before_snapshot))),
            (&before, Some((&before, &before_snapshot))),
        ] {
            let reused = snapshot_reusing(new, previous).expect("snapshot");
            let fresh = Snapshot::from_resources(new).expect("snapshot");
            assert_eq!(reused, fresh);
            assert_eq!(reused.versions(), fresh.versions());
        }
        // Unchanged resources share the previous encoding: the cluster of subset v1 did not
        // change, the route configuration did.
        let reused = snapshot_reusing(&after, Some((&before, &before_snapshot))).expect("snapshot");
        let v1 = "outbound|80|v1|svc.ns.svc.cluster.local";
        assert_eq!(
            reused
                .get(crate::xds::resource::CLUSTER, v1)
                .map(|r| r.version()),
            before_snapshot
                .get(crate::xds::resource::CLUSTER, v1)
                .map(|r| r.version())
        );
        assert_ne!(
            reused.version(crate::xds::resource::ROUTE),
            before_snapshot.version(crate::xds::resource::ROUTE)
        );

        // A new cluster changes the references; a route change alone does not.
        assert!(!same_references(&before_snapshot, &reused));
        assert!(same_references(&before_snapshot, &before_snapshot));
        let route_only = translate(&VS.replace("  - route:", "  - timeout: 5s\n    route:"), DR);
        let route_only = Snapshot::from_resources(&route_only).expect("snapshot");
        assert_ne!(route_only.version(ROUTE), before_snapshot.version(ROUTE));
        assert!(same_references(&before_snapshot, &route_only));
    }

    #[test]
    fn derived_vhds_snapshot_is_the_snapshot_of_a_vhds_translation() {
        let se2 = SE
            .replace("name: svc\n", "name: other\n")
            .replace("svc.ns.svc.cluster.local", "other.ns.svc.cluster.local")
            .replace("number: 80", "number: 8080")
            .replace("name: http", "name: http-alt");
        let vs2 = VS
            .replace("name: vs\n", "name: vs2\n")
            .replace("  - svc\n", "  - other\n")
            .replace("host: svc\n        subset: v1", "host: other");
        let files = vec![
            file("se.yaml", SE),
            file("se2.yaml", &se2),
            file("a.yaml", DR),
            file("b.yaml", VS),
            file("c.yaml", &vs2),
        ];
        let parsed = parse::parse_files(&files);
        let plain_options = Options {
            config_source: shadowplane_translator::ConfigSourceKind::Ads,
            ..Options::default()
        };
        let vhds_options = Options {
            vhds: true,
            ..plain_options.clone()
        };
        let plain = translate_timed(&parsed, &plain_options, &mut Timings::default());
        assert!(
            !plain
                .diagnostics
                .iter()
                .any(|d| d.severity == diag::Severity::Error),
            "{:?}",
            plain.diagnostics
        );
        let full = translate_timed(&parsed, &vhds_options, &mut Timings::default());
        assert!(full.resources.routes.len() >= 2, "several ports");
        assert!(
            full.resources
                .routes
                .iter()
                .map(|r| r.virtual_hosts.len())
                .sum::<usize>()
                >= 2,
            "several hosts"
        );
        let derived = derive_vhds(&plain.resources, &vhds_options);
        assert_eq!(derived, full.resources);
        let derived = Snapshot::from_resources(&derived).expect("snapshot");
        let full = Snapshot::from_resources(&full.resources).expect("snapshot");
        assert!(!derived
            .resources(crate::xds::resource::VIRTUAL_HOST)
            .is_empty());
        assert_eq!(derived, full);
        assert_eq!(derived.versions(), full.versions());
    }
}
