//! The fast serialization paths give the same bytes as the reference ones, on the translation
//! of every golden case input (`testdata/translate/*`) and of a generated mesh (one route
//! configuration with many virtual hosts, some with two per-filter configs):
//! - `print::write_resources_json` / `write_resources_yaml` (streamed) against
//!   `to_json_string` / `to_yaml_string` of `resources_to_json` (one tree);
//! - `canonical::encode` (which skips the wire walk when no map needs reordering) against
//!   `canonical::canonicalize` (always walks) of prost's bytes.

// A test harness reads fixtures; the purity rule is for the library.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::{Path, PathBuf};

use prost::{Message, Name};
use shadowplane_translator::{canonical, print, translate_files, Options, Resources, SourceFile};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata")
        .join("translate")
}

/// Every YAML file of a case's input (`input.yaml` or the files of `input/`), sorted.
fn case_inputs(case: &Path) -> Vec<SourceFile> {
    let mut paths = Vec::new();
    let single = case.join("input.yaml");
    if single.is_file() {
        paths.push(single);
    }
    if let Ok(entries) = fs::read_dir(case.join("input")) {
        for entry in entries.flatten() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| SourceFile {
            path: p.display().to_string(),
            text: fs::read_to_string(&p).expect("a case input is readable"),
        })
        .collect()
}

fn all_cases() -> Vec<(String, Resources)> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("testdata/translate exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() > 20, "expected the golden cases, found {dirs:?}");
    dirs.into_iter()
        .map(|dir| {
            let files = case_inputs(&dir);
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            (name, translate_files(&files, &Options::default()).resources)
        })
        .collect()
}

fn assert_canonical<M: Message + Name>(case: &str, items: &[M]) {
    let descriptor = print::descriptor_pool()
        .get_message_by_name(&M::full_name())
        .expect("every emitted type is in the descriptor set");
    for (i, item) in items.iter().enumerate() {
        let reference = canonical::canonicalize(&descriptor, &item.encode_to_vec());
        assert!(
            canonical::encode(item) == reference,
            "{case}: {} #{i} encodes differently from the canonical walk",
            M::full_name()
        );
    }
}

fn check(case: &str, resources: &Resources) {
    let tree = print::resources_to_json(resources);
    let mut json = Vec::new();
    print::write_resources_json(resources, &mut json).expect("writing to memory");
    assert!(
        String::from_utf8(json).unwrap() == print::to_json_string(&tree),
        "{case}: streamed JSON differs"
    );
    let mut yaml = Vec::new();
    print::write_resources_yaml(resources, &mut yaml).expect("writing to memory");
    assert!(
        String::from_utf8(yaml).unwrap() == print::to_yaml_string(&tree),
        "{case}: streamed YAML differs"
    );
    assert_canonical(case, &resources.listeners);
    assert_canonical(case, &resources.routes);
    assert_canonical(case, &resources.clusters);
    assert_canonical(case, &resources.endpoints);
}

#[test]
fn fast_serialization_matches_the_reference_on_every_golden_case() {
    let mut checked = 0;
    for (case, resources) in all_cases() {
        check(&case, &resources);
        checked += resources.routes.len() + resources.clusters.len();
    }
    assert!(checked > 100, "only {checked} resources checked");
}

#[test]
fn fast_serialization_matches_the_reference_on_maps_with_several_entries() {
    // Routes with both a fault and a CORS policy: two `typed_per_filter_config` entries, in
    // HashMap order in prost's bytes.
    let text = fs::read_to_string(cases_dir().join("vs-fault-and-cors").join("input.yaml"))
        .expect("the vs-fault-and-cors case exists");
    let files = [SourceFile {
        path: "input.yaml".into(),
        text,
    }];
    // Each translation fills fresh HashMaps, each with its own random order.
    for _ in 0..10 {
        let resources = translate_files(&files, &Options::default()).resources;
        let maps = resources
            .routes
            .iter()
            .flat_map(|r| &r.virtual_hosts)
            .flat_map(|v| &v.routes)
            .filter(|r| r.typed_per_filter_config.len() >= 2)
            .count();
        assert!(maps > 0, "the case has a route with two per-filter configs");
        check("vs-fault-and-cors", &resources);
    }
}

/// A mesh of `n` services in two namespaces: ServiceEntry, DestinationRule with subsets and a
/// VirtualService splitting and mirroring; with `filters`, every third one also injects a
/// fault and allows CORS (two `typed_per_filter_config` entries: not a plain message).
fn mesh(n: usize, filters: bool) -> Vec<SourceFile> {
    (0..n)
        .map(|i| {
            let ns = format!("ns-{}", i % 2);
            let extra = if filters && i % 3 == 0 {
                "    fault:\n      abort:\n        httpStatus: 503\n        percentage:\n          value: 1\n    corsPolicy:\n      allowOrigins:\n      - exact: https://example.com\n"
            } else {
                ""
            };
            let text = format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s{i}\n  namespace: {ns}\nspec:\n  hosts:\n  - s{i}.{ns}.svc.cluster.local\n  ports:\n  - number: 8080\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.{a}\n    labels:\n      version: v1\n  - address: 10.0.1.{a}\n    labels:\n      version: v2\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: s{i}\n  namespace: {ns}\nspec:\n  host: s{i}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: s{i}\n  namespace: {ns}\nspec:\n  hosts:\n  - s{i}\n  http:\n  - match:\n    - uri:\n        prefix: /api\n    route:\n    - destination:\n        host: s{i}\n        subset: v1\n      weight: 90\n    - destination:\n        host: s{i}\n        subset: v2\n      weight: 10\n    mirror:\n      host: s{i}\n      subset: v2\n{extra}",
                a = i % 250 + 1,
            );
            SourceFile {
                path: format!("mesh/s{i}.yaml"),
                text,
            }
        })
        .collect()
}

#[test]
fn fast_serialization_matches_the_reference_on_a_generated_mesh() {
    for filters in [false, true] {
        let translation = translate_files(&mesh(60, filters), &Options::default());
        assert!(!translation.has_errors(), "{:#?}", translation.diagnostics);
        let resources = translation.resources;
        assert_eq!(resources.routes.len(), 1);
        assert!(resources.routes[0].virtual_hosts.len() >= 60);
        let plain = shadowplane_translator::canonical::encode(&resources.routes[0])
            == resources.routes[0].encode_to_vec();
        assert_eq!(
            plain, !filters,
            "the route configuration is plain without filters"
        );
        check("generated mesh", &resources);
    }
}
