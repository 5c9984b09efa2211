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

use crate::xds::resource::{EncodedResource, CLUSTER, ENDPOINT, LISTENER, ROUTE, VIRTUAL_HOST};
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

impl ParseCache {
    /// The parse of each of `files` (the reading this cache was built from), in order.
    pub(super) fn parts(&self, files: &[SourceFile]) -> Vec<(String, Arc<Parsed>)> {
        files
            .iter()
            .filter_map(|f| {
                self.files
                    .get(&f.path)
                    .map(|c| (f.path.clone(), c.parsed.clone()))
            })
            .collect()
    }
}

/// The lowering of the ServiceEntries, WorkloadEntries and DestinationRules of one reading
/// ([`lower::Services`]), kept for the next reading: when the files that changed hold none of
/// those (before or after the change), it is what a full lowering would compute again.
pub(super) struct ServicesCache {
    options: Options,
    /// Path and parse of every file of the reading, in order (a parse is shared with the
    /// [`ParseCache`] while the file's text is unchanged, so an unchanged file is the same
    /// `Arc`).
    files: Vec<(String, Arc<Parsed>)>,
    services: Arc<lower::Services>,
}

impl std::fmt::Debug for ServicesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicesCache")
            .field("files", &self.files.len())
            .finish()
    }
}

fn has_service_inputs(parsed: &Parsed) -> bool {
    parsed.resources.iter().any(lower::is_service_input)
}

impl ServicesCache {
    /// The cached services, if they are those of `files` (path and parse of each file of a
    /// reading, in order) with `options`: same options, same paths in the same order, and every
    /// file either the same parse or one without service inputs before and after. Then the
    /// ServiceEntries, WorkloadEntries and DestinationRules of the combined parse are the same,
    /// in the same order (duplicates are dropped per kind, so also the same ones).
    fn services_for(
        &self,
        files: &[(String, Arc<Parsed>)],
        options: &Options,
    ) -> Option<Arc<lower::Services>> {
        let same = self.options == *options
            && self.files.len() == files.len()
            && self.files.iter().zip(files).all(|((op, old), (np, new))| {
                op == np
                    && (Arc::ptr_eq(old, new)
                        || (!has_service_inputs(old) && !has_service_inputs(new)))
            });
        same.then(|| self.services.clone())
    }
}

/// Where one reload's time went.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Timings {
    /// Files parsed again (the others came from the cache) and the parse, cache lookups and
    /// duplicate check included.
    pub files_parsed: usize,
    pub parse: Duration,
    /// Whether the lowering of the services was the previous reading's (only VirtualServices
    /// or Gateways changed).
    pub services_reused: bool,
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
            services_reused = self.services_reused,
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
    finish_translation(model, diagnostics, options, timings)
}

/// [`translate_timed`] of `parsed`, the combination of `parts` (the parse of each file of the
/// reading, `(path, parse)` in order), reusing the lowering of the services of `previous`
/// when it is theirs ([`ServicesCache`]). Returns the cache for the next reading and whether
/// it was reused. Same result as [`translate_timed`] (tested on random edits).
pub(super) fn translate_incremental(
    parsed: &Parsed,
    parts: Vec<(String, Arc<Parsed>)>,
    options: &Options,
    previous: Option<(&ServicesCache, &Translation)>,
    timings: &mut Timings,
) -> (Translation, Reused, ServicesCache, bool) {
    let previous = previous.filter(|(cache, _)| cache.options == *options);
    let mut diagnostics = parsed.diagnostics.clone();
    let (model, services, reused) = timed(&mut timings.lower, || {
        let cached = previous.and_then(|(p, _)| p.services_for(&parts, options));
        let reused = cached.is_some();
        let services =
            cached.unwrap_or_else(|| Arc::new(lower::lower_services(&parsed.resources, options)));
        let model =
            lower::lower_with_services(&parsed.resources, &services, options, &mut diagnostics);
        (model, services, reused)
    });
    let cache = ServicesCache {
        options: options.clone(),
        files: parts,
        services,
    };
    let (translation, built) = finish_translation_reusing(
        model,
        diagnostics,
        options,
        previous.map(|(_, t)| t),
        timings,
    );
    (translation, built, cache, reused)
}

fn finish_translation(
    model: shadowplane_translator::ir::Model,
    diagnostics: Vec<diag::Diagnostic>,
    options: &Options,
    timings: &mut Timings,
) -> Translation {
    finish_translation_reusing(model, diagnostics, options, None, timings).0
}

/// Which resources of a build are those of the previous build (same model element, so the
/// same proto): their encodings can be reused without comparing the protos.
#[derive(Debug, Default)]
pub(super) struct Reused {
    listeners: Vec<bool>,
    routes: Vec<bool>,
    clusters: Vec<bool>,
    /// By cluster name: the cluster load assignment of a reused cluster is reused too.
    endpoints: std::collections::BTreeSet<String>,
}

/// Of each of `new`: its index in `old` if `old` has an equal element of the same name.
fn unchanged<T: PartialEq>(new: &[T], old: &[T], name: impl Fn(&T) -> &str) -> Vec<Option<usize>> {
    // Names are unique per list in a model (sorted by name).
    let by_name: BTreeMap<&str, usize> =
        old.iter().enumerate().map(|(i, o)| (name(o), i)).collect();
    new.iter()
        .map(|n| {
            by_name
                .get(name(n))
                .copied()
                .filter(|&i| old.get(i).is_some_and(|o| o == n))
        })
        .collect()
}

/// [`xds::build_with_config_source`] of `model`, and which of its resources are those of
/// `previous` (the model and resources of a build with the same `config_source`): the ones
/// whose model element is equal to the previous one of the same name, as each proto is a
/// function of its model element and the config source alone. (Building again is cheaper than
/// cloning the previous protos; what the marks save is the encoding.) Tested.
pub(super) fn build_reusing(
    model: &shadowplane_translator::ir::Model,
    config_source: &shadowplane_translator::ConfigSourceKind,
    previous: Option<(&shadowplane_translator::ir::Model, &Resources)>,
) -> (Resources, Reused) {
    let resources = xds::build_with_config_source(model, config_source);
    let Some((old_model, old)) = previous else {
        return (resources, Reused::default());
    };
    let listeners = unchanged(&model.listeners, &old_model.listeners, |l| &l.name);
    let routes = unchanged(&model.route_configs, &old_model.route_configs, |r| &r.name);
    let clusters = unchanged(&model.clusters, &old_model.clusters, |c| &c.name);
    let old_endpoints: std::collections::BTreeSet<&str> = old
        .endpoints
        .iter()
        .map(|e| e.cluster_name.as_str())
        .collect();
    let endpoints = model
        .clusters
        .iter()
        .zip(&clusters)
        .filter(|(c, same)| same.is_some() && old_endpoints.contains(c.name.as_str()))
        .map(|(c, _)| c.name.clone())
        .collect();
    let reused = Reused {
        listeners: listeners.iter().map(Option::is_some).collect(),
        routes: routes.iter().map(Option::is_some).collect(),
        clusters: clusters.iter().map(Option::is_some).collect(),
        endpoints,
    };
    (resources, reused)
}

/// [`finish_translation`], building with [`build_reusing`] from `previous` (a translation with
/// the same options).
pub(super) fn finish_translation_reusing(
    model: shadowplane_translator::ir::Model,
    mut diagnostics: Vec<diag::Diagnostic>,
    options: &Options,
    previous: Option<&Translation>,
    timings: &mut Timings,
) -> (Translation, Reused) {
    let (resources, reused) = timed(&mut timings.build, || {
        let (mut resources, reused) = build_reusing(
            &model,
            &options.config_source,
            previous.map(|p| (&p.model, &p.resources)),
        );
        if options.vhds && options.config_source == shadowplane_translator::ConfigSourceKind::Ads {
            xds::virtual_host::enable_vhds(&mut resources.routes);
        }
        (resources, reused)
    });
    diag::sort(&mut diagnostics);
    (
        Translation {
            model,
            resources,
            diagnostics,
        },
        reused,
    )
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

/// Whether element `i` is marked reused (an index past the marks is not).
fn marked(marks: &[bool], i: usize) -> bool {
    marks.get(i).copied().unwrap_or(false)
}

/// The snapshot of `resources`, as [`Snapshot::from_resources`] builds it, reusing the encoding
/// (canonical bytes and content hash) of every resource that `reused` marks as the previous
/// build's (see [`build_reusing`]), from `previous_snapshot`, the snapshot of that build: after
/// a one-route change only the changed resources are encoded and hashed again, and no proto is
/// compared.
pub(super) fn snapshot_reusing(
    resources: &Resources,
    previous: Option<(&Reused, &Snapshot)>,
) -> Result<Snapshot, SnapshotError> {
    let Some((reused, old_snapshot)) = previous else {
        return Snapshot::from_resources(resources);
    };
    if resources.routes.iter().any(|r| r.vhds.is_some()) {
        // VHDS views: route configurations are split into virtual hosts (not reused here).
        return Snapshot::from_resources(resources);
    }
    let mut items = Vec::with_capacity(
        resources.listeners.len()
            + resources.routes.len()
            + resources.clusters.len()
            + resources.endpoints.len(),
    );
    // The order of Snapshot::from_resources, so a duplicate name is reported the same way.
    reuse(&mut items, &resources.listeners, old_snapshot, |i, l| {
        marked(&reused.listeners, i).then_some(&l.name)
    });
    reuse(&mut items, &resources.routes, old_snapshot, |i, r| {
        marked(&reused.routes, i).then_some(&r.name)
    });
    reuse(&mut items, &resources.clusters, old_snapshot, |i, c| {
        marked(&reused.clusters, i).then_some(&c.name)
    });
    reuse(&mut items, &resources.endpoints, old_snapshot, |_, e| {
        reused
            .endpoints
            .contains(&e.cluster_name)
            .then_some(&e.cluster_name)
    });
    Snapshot::new(items)
}

/// Push the encoding of each of `new` onto `out`: the one of `old_snapshot` when `same` says
/// the message (by its index) is the one `old_snapshot` was built from (its name), else a
/// fresh one.
fn reuse<M: prost::Message + prost::Name + ResourceName>(
    out: &mut Vec<EncodedResource>,
    new: &[M],
    old_snapshot: &Snapshot,
    same: impl Fn(usize, &M) -> Option<&String>,
) {
    let type_url = M::type_url();
    for (i, m) in new.iter().enumerate() {
        let previous = same(i, m).and_then(|n| old_snapshot.get(&type_url, n));
        out.push(match previous {
            Some(encoded) => (**encoded).clone(),
            None => EncodedResource::new(type_url.clone(), m.resource_name(), canonical::encode(m)),
        });
    }
}

/// The xDS resource name of a message.
trait ResourceName {
    fn resource_name(&self) -> String;
}

impl ResourceName for envoy_types::pb::envoy::config::listener::v3::Listener {
    fn resource_name(&self) -> String {
        self.name.clone()
    }
}

impl ResourceName for envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    fn resource_name(&self) -> String {
        self.name.clone()
    }
}

impl ResourceName for envoy_types::pb::envoy::config::cluster::v3::Cluster {
    fn resource_name(&self) -> String {
        self.name.clone()
    }
}

impl ResourceName for envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    fn resource_name(&self) -> String {
        self.cluster_name.clone()
    }
}

/// The snapshot of the VHDS view derived from the default view (see [`derive_vhds`]), from
/// the default view's translation `plain` and its snapshot `plain_snapshot`, without
/// translating or encoding it again: listeners, clusters and endpoints are the default view's
/// encodings, route configurations are encoded without their virtual hosts, and each virtual
/// host is encoded, or taken from `previous` (the default translation and VHDS snapshot of the
/// last reload, same options) when its model is unchanged. The same snapshot as
/// `Snapshot::from_resources(&derive_vhds(&plain.resources, vhds_options))` (tested).
pub(super) fn vhds_snapshot(
    plain: &Translation,
    plain_snapshot: &Snapshot,
    vhds_options: &Options,
    previous: Option<(&Translation, &Snapshot)>,
) -> Result<Snapshot, SnapshotError> {
    use shadowplane_translator::ir;
    if !(vhds_options.vhds
        && vhds_options.config_source == shadowplane_translator::ConfigSourceKind::Ads)
        || plain.resources.routes.iter().any(|r| r.vhds.is_some())
        || plain.resources.routes.len() != plain.model.route_configs.len()
    {
        return Snapshot::from_resources(&derive_vhds(&plain.resources, vhds_options));
    }
    let encoded = |type_url: &str| {
        plain_snapshot
            .resources(type_url)
            .values()
            .map(|r| (**r).clone())
            .collect::<Vec<_>>()
    };
    let mut items = encoded(LISTENER);
    for rc in &plain.model.route_configs {
        let mut shell = [xds::route::build_route_configuration(&ir::RouteConfig {
            name: rc.name.clone(),
            virtual_hosts: Vec::new(),
        })];
        xds::virtual_host::enable_vhds(&mut shell);
        let [shell] = shell;
        items.push(EncodedResource::new(
            ROUTE,
            shell.name.clone(),
            canonical::encode(&shell),
        ));
    }
    items.extend(encoded(CLUSTER));
    items.extend(encoded(ENDPOINT));
    let old_hosts: BTreeMap<(&str, &str), &ir::VirtualHost> = previous
        .iter()
        .flat_map(|(t, _)| &t.model.route_configs)
        .flat_map(|rc| {
            rc.virtual_hosts
                .iter()
                .map(move |vh| ((rc.name.as_str(), vh.name.as_str()), vh))
        })
        .collect();
    for (rc, built) in plain
        .model
        .route_configs
        .iter()
        .zip(&plain.resources.routes)
    {
        for (vh, proto) in rc.virtual_hosts.iter().zip(&built.virtual_hosts) {
            let name = xds::virtual_host::vhds_name(&rc.name, &proto.name);
            let unchanged = old_hosts
                .get(&(rc.name.as_str(), vh.name.as_str()))
                .is_some_and(|old| *old == vh);
            let previous_encoding = previous
                .filter(|_| unchanged)
                .and_then(|(_, snapshot)| snapshot.get(VIRTUAL_HOST, &name));
            items.push(match previous_encoding {
                Some(e) => (**e).clone(),
                None => {
                    let mut vh = proto.clone();
                    vh.name = name;
                    EncodedResource::new(VIRTUAL_HOST, vh.name.clone(), canonical::encode(&vh))
                }
            });
        }
    }
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
            shadowplane_translator::translate_files(&files, &Options::default())
        };
        let dr2 = format!("{DR}  - name: v2\n    labels:\n      version: v2\n");
        let before = translate(VS, DR);
        let after = translate(&VS.replace("subset: v1", "subset: v2"), &dr2);
        assert_ne!(before.resources, after.resources);
        let before_snapshot = Snapshot::from_resources(&before.resources).expect("snapshot");
        for new in [&after, &before] {
            let (built, reused) = build_reusing(
                &new.model,
                &Options::default().config_source,
                Some((&before.model, &before.resources)),
            );
            assert_eq!(built, new.resources);
            for previous in [None, Some((&reused, &before_snapshot))] {
                let snapshot = snapshot_reusing(&built, previous).expect("snapshot");
                let fresh = Snapshot::from_resources(&new.resources).expect("snapshot");
                assert_eq!(snapshot, fresh);
                assert_eq!(snapshot.versions(), fresh.versions());
            }
        }
        // Unchanged resources are marked reused and share the previous encoding: the cluster
        // of subset v1 did not change, the route configuration did.
        let (built, marks) = build_reusing(
            &after.model,
            &Options::default().config_source,
            Some((&before.model, &before.resources)),
        );
        assert!(marks.clusters.iter().any(|r| *r) && marks.clusters.iter().any(|r| !*r));
        assert_eq!(marks.routes, vec![false]);
        let reused = snapshot_reusing(&built, Some((&marks, &before_snapshot))).expect("snapshot");
        let v1 = "outbound|80|v1|svc.ns.svc.cluster.local";
        assert_eq!(
            reused.get(CLUSTER, v1).map(|r| r.version()),
            before_snapshot.get(CLUSTER, v1).map(|r| r.version())
        );
        assert_ne!(
            reused.version(crate::xds::resource::ROUTE),
            before_snapshot.version(crate::xds::resource::ROUTE)
        );

        // A new cluster changes the references; a route change alone does not.
        assert!(!same_references(&before_snapshot, &reused));
        assert!(same_references(&before_snapshot, &before_snapshot));
        let route_only = translate(&VS.replace("  - route:", "  - timeout: 5s\n    route:"), DR);
        let route_only = Snapshot::from_resources(&route_only.resources).expect("snapshot");
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

    /// A small mesh in several files, edited at random: every step's incremental result
    /// (services' lowering kept, protos and encodings reused, VHDS view derived) must be the
    /// full translation's, byte for byte, diagnostics included.
    #[test]
    fn incremental_reloads_give_the_full_translation_on_random_edits() {
        fn se(i: usize, port: u16) -> String {
            format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s{i}\n  namespace: ns\nspec:\n  hosts:\n  - s{i}.ns.svc.cluster.local\n  location: MESH_INTERNAL\n  ports:\n  - number: {port}\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.{i}\n    labels:\n      version: v1\n  - address: 10.0.1.{i}\n    labels:\n      version: v2\n")
        }
        fn dr(i: usize, subsets: &[&str]) -> String {
            let mut text = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: s{i}\n  namespace: ns\nspec:\n  host: s{i}\n  subsets:\n");
            for s in subsets {
                text.push_str(&format!("  - name: {s}\n    labels:\n      version: {s}\n"));
            }
            text
        }
        fn vs(name: &str, host: &str, subset: &str, timeout: u32) -> String {
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: ns\nspec:\n  hosts:\n  - {host}\n  http:\n  - name: r\n    timeout: {timeout}s\n    route:\n    - destination:\n        host: {host}\n        subset: {subset}\n")
        }
        // A fixed xorshift sequence: the same edits on every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        const N: usize = 4;
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for i in 0..N {
            files.insert(
                format!("s{i}.yaml"),
                format!("{}---\n{}", se(i, 80), dr(i, &["v1", "v2"])),
            );
            files.insert(
                format!("vs{i}.yaml"),
                vs(&format!("vs{i}"), &format!("s{i}"), "v1", 1),
            );
        }
        let options = Options::default();
        let vhds_options = Options {
            vhds: true,
            ..options.clone()
        };
        let mut parse_cache = ParseCache::default();
        let mut previous: Option<(ServicesCache, Translation, Snapshot, Snapshot)> = None;
        let mut reused_services = 0;
        for step in 0..160 {
            let i = next(N);
            let subset = ["v1", "v2", "v3"][next(3)];
            let (path, text) = match next(9) {
                0..=2 => (
                    format!("vs{i}.yaml"),
                    vs(
                        &format!("vs{i}"),
                        &format!("s{i}"),
                        subset,
                        1 + next(3) as u32,
                    ),
                ),
                // A VirtualService for another service, or a duplicate name.
                3 => (
                    format!("vs{i}.yaml"),
                    vs(
                        &format!("vs{}", next(N)),
                        &format!("s{}", next(N)),
                        subset,
                        2,
                    ),
                ),
                // Half-written.
                4 => {
                    let t = vs(&format!("vs{i}"), &format!("s{i}"), subset, 1);
                    (
                        format!("vs{i}.yaml"),
                        t[..t.len() / 2 + next(8)].to_string(),
                    )
                }
                5 => (
                    format!("s{i}.yaml"),
                    format!(
                        "{}---\n{}",
                        se(i, [80, 8080][next(2)]),
                        dr(i, &[["v1", "v2"], ["v1", "v3"]][next(2)])
                    ),
                ),
                // A DestinationRule moved into a VirtualService's file, and back.
                6 => (
                    format!("vs{i}.yaml"),
                    format!(
                        "{}---\n{}",
                        vs(&format!("vs{i}"), &format!("s{i}"), subset, 1),
                        dr(next(N), &["v2"])
                    ),
                ),
                7 => (
                    format!("extra{}.yaml", next(2)),
                    vs(&format!("x{i}"), &format!("s{i}"), subset, 3),
                ),
                _ => (
                    format!("s{i}.yaml"),
                    format!("{}---\n{}", se(i, 80), dr(i, &["v1", "v2"])),
                ),
            };
            if next(10) == 0 {
                files.remove(&path);
            } else {
                files.insert(path, text);
            }
            let reading: Vec<SourceFile> = files.iter().map(|(p, t)| file(p, t)).collect();

            let (parsed, next_cache, _) = parse_cache.parse(&reading);
            let (translation, built, services, reused) = translate_incremental(
                &parsed,
                next_cache.parts(&reading),
                &options,
                previous.as_ref().map(|(c, t, _, _)| (c, t)),
                &mut Timings::default(),
            );
            reused_services += usize::from(reused);
            let full = shadowplane_translator::translate_files(&reading, &options);
            assert_eq!(translation.model, full.model, "step {step}");
            assert_eq!(translation.resources, full.resources, "step {step}");
            assert_eq!(translation.diagnostics, full.diagnostics, "step {step}");
            let Ok(fresh) = Snapshot::from_resources(&full.resources) else {
                // Not served (e.g. a duplicate name): the next reload starts afresh.
                parse_cache = next_cache;
                previous = None;
                continue;
            };
            let snapshot = snapshot_reusing(
                &translation.resources,
                previous.as_ref().map(|(_, _, s, _)| (&built, s)),
            )
            .expect("snapshot");
            assert_eq!(snapshot, fresh, "step {step}");
            assert_eq!(snapshot.versions(), fresh.versions(), "step {step}");
            let vhds = vhds_snapshot(
                &translation,
                &snapshot,
                &vhds_options,
                previous.as_ref().map(|(_, t, _, v)| (t, v)),
            )
            .expect("vhds snapshot");
            let vhds_full = Snapshot::from_resources(
                &shadowplane_translator::translate_files(&reading, &vhds_options).resources,
            )
            .expect("vhds snapshot");
            assert_eq!(vhds, vhds_full, "step {step}");
            assert_eq!(vhds.versions(), vhds_full.versions(), "step {step}");
            parse_cache = next_cache;
            previous = Some((services, translation, snapshot, vhds));
        }
        // The cache was exercised, and so was its invalidation.
        assert!(reused_services > 20, "{reused_services}");
        assert!(reused_services < 140, "{reused_services}");
    }
}
