//! The reading, kept up to date by what changed rather than rendered again from the whole
//! store on every event.
//!
//! The watchers record every change in the store's [`Tracker`]: the Services whose
//! ServiceEntry may render differently and the Istio objects changed. A Service's
//! ServiceEntry depends on the Service, its EndpointSlices and the labels of the Pods those
//! slices point at, so the tracker indexes slices by Service and by Pod: a changed slice dirties
//! its Service (the old and the new one when its label moved), a changed Pod the Services of
//! the slices naming it. [`Reading::update`] re-renders only those and keeps every other file
//! as it was (the same text, so caches keyed by a file's text keep hitting), in path order, so
//! the files are byte for byte what [`full_render`] of the same store gives.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use shadowplane_translator::SourceFile;

use super::convert::{self, ObjectKey, Rendered, SliceInfo};
use super::watch::Store;

/// What changed in the store since the last [`Reading::update`], and the indexes that say
/// which Services a slice or Pod change affects.
#[derive(Default)]
pub(super) struct Tracker {
    /// Services whose ServiceEntry may have changed.
    services: BTreeSet<ObjectKey>,
    /// Istio objects changed: (kind, key).
    istio: BTreeSet<(&'static str, ObjectKey)>,
    /// Service → the keys of the slices labelled with it.
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Pod → the keys of the slices with an endpoint naming it.
    slices_by_pod: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
}

impl Tracker {
    pub fn service_changed(&mut self, key: &ObjectKey) {
        self.services.insert(key.clone());
    }

    pub fn istio_changed(&mut self, kind: &'static str, key: &ObjectKey) {
        self.istio.insert((kind, key.clone()));
    }

    /// Slice `key` went from `old` to `new` (either may be absent).
    pub fn slice_changed(
        &mut self,
        key: &ObjectKey,
        old: Option<&SliceInfo>,
        new: Option<&SliceInfo>,
    ) {
        if let Some(old) = old {
            if let Some(service) = old.service_key() {
                remove_from(&mut self.slices_by_service, &service, key);
                self.services.insert(service);
            }
            for pod in old.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                remove_from(&mut self.slices_by_pod, pod, key);
            }
        }
        if let Some(new) = new {
            if let Some(service) = new.service_key() {
                self.slices_by_service
                    .entry(service.clone())
                    .or_default()
                    .insert(key.clone());
                self.services.insert(service);
            }
            for pod in new.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                self.slices_by_pod
                    .entry(pod.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
    }

    /// Pod `key`'s labels changed (or it came or went): dirty the Services of the slices
    /// naming it. `slices` is the store's.
    pub fn pod_changed(&mut self, key: &ObjectKey, slices: &BTreeMap<ObjectKey, SliceInfo>) {
        let Some(names) = self.slices_by_pod.get(key) else {
            return;
        };
        for slice in names {
            if let Some(service) = slices.get(slice).and_then(SliceInfo::service_key) {
                self.services.insert(service);
            }
        }
    }
}

fn remove_from(
    index: &mut BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    key: &ObjectKey,
    value: &ObjectKey,
) {
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// What one [`Reading::update`] changed.
#[derive(Debug, Default)]
pub(super) struct Update {
    /// Whether any file's path or text changed.
    pub files_changed: bool,
    /// The references to set (`Some`) or drop (`None`), by path.
    pub references: Vec<(String, Option<ObjectReference>)>,
}

/// The files of the latest reading, by path.
#[derive(Default)]
pub(super) struct Reading {
    files: BTreeMap<String, Rendered>,
    /// The path of each Istio object's file.
    istio_paths: BTreeMap<(&'static str, ObjectKey), String>,
}

impl Reading {
    /// Bring the files up to date with `store`, re-rendering only what its tracker names, and
    /// clear the tracker's changes.
    pub fn update(&mut self, store: &mut Store, domain_suffix: &str) -> Update {
        let mut update = Update::default();
        let services = std::mem::take(&mut store.tracker.services);
        let istio = std::mem::take(&mut store.tracker.istio);
        for key in services {
            let path = convert::service_path(&key.0, &key.1);
            let rendered = store.services.get(&key).and_then(|svc| {
                let slices: Vec<&SliceInfo> = store
                    .tracker
                    .slices_by_service
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| store.slices.get(s))
                    .collect();
                convert::service_entry(svc, &slices, &store.pods, domain_suffix)
            });
            self.set(path, rendered, &mut update);
        }
        for (kind, key) in istio {
            let rendered = store.istio.get(kind).and_then(|t| t.get(&key)).cloned();
            let old_path = self.istio_paths.remove(&(kind, key.clone()));
            match rendered {
                Some(r) => {
                    if let Some(old) = old_path.filter(|p| *p != r.file.path) {
                        self.set(old, None, &mut update);
                    }
                    self.istio_paths.insert((kind, key), r.file.path.clone());
                    self.set(r.file.path.clone(), Some(r), &mut update);
                }
                None => {
                    if let Some(old) = old_path {
                        self.set(old, None, &mut update);
                    }
                }
            }
        }
        update
    }

    fn set(&mut self, path: String, rendered: Option<Rendered>, update: &mut Update) {
        match rendered {
            Some(r) => {
                let (text_changed, reference_changed) = match self.files.get(&path) {
                    Some(old) => (old.file.text != r.file.text, old.reference != r.reference),
                    None => (true, true),
                };
                if text_changed || reference_changed {
                    update.files_changed |= text_changed;
                    update
                        .references
                        .push((path.clone(), Some(r.reference.clone())));
                    self.files.insert(path, r);
                }
            }
            None => {
                if self.files.remove(&path).is_some() {
                    update.files_changed = true;
                    update.references.push((path, None));
                }
            }
        }
    }

    /// The files, sorted by path.
    pub fn files(&self) -> Vec<SourceFile> {
        self.files.values().map(|r| r.file.clone()).collect()
    }
}

/// Every file of `store` rendered from scratch, sorted by path: what [`Reading`] must equal.
#[cfg(test)]
pub(super) fn full_render(store: &Store, domain_suffix: &str) -> Vec<Rendered> {
    let mut out =
        convert::service_entries(&store.services, &store.slices, &store.pods, domain_suffix);
    out.extend(store.istio.values().flat_map(|t| t.values().cloned()));
    out.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_source::kubernetes::convert::{
        object_path, Labels, ServiceInfo, ServicePortInfo, SliceEndpoint, ISTIO_KINDS,
    };
    use crate::config_source::kubernetes::watch::{
        apply, replace, IstioTable, PodTable, ServiceTable, SliceTable, Table,
    };

    /// xorshift64*: a fixed, seedable sequence (no randomness in tests).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const NAMESPACES: [&str; 2] = ["shop", "web"];

    fn key(rng: &mut Rng, prefix: &str, count: usize) -> ObjectKey {
        (
            NAMESPACES[rng.below(2)].to_string(),
            format!("{prefix}{}", rng.below(count)),
        )
    }

    fn random_service(rng: &mut Rng, key: &ObjectKey) -> ServiceInfo {
        let names = ["http", "grpc-x", "", "tcp"];
        let ports = (0..rng.below(3))
            .map(|i| ServicePortInfo {
                name: names[rng.below(names.len())].to_string(),
                port: 80 + i as i32 * rng.below(2) as i32,
                protocol: rng.chance(20).then(|| "UDP".to_string()),
                app_protocol: None,
                target_port: rng.chance(50).then(|| 8000 + rng.below(3) as i32),
            })
            .collect();
        ServiceInfo {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: Some(format!("uid-{}", rng.below(3))),
            external_name: rng.chance(10).then(|| "db.example.com".to_string()),
            ports,
        }
    }

    fn random_slice(rng: &mut Rng, key: &ObjectKey) -> SliceInfo {
        let endpoints = (0..rng.below(4))
            .map(|_| SliceEndpoint {
                address: format!("10.0.0.{}", rng.below(5)),
                ready: rng.chance(70),
                pod: rng.chance(80).then(|| key_in(rng, &key.0, "pod", 6)),
            })
            .collect();
        SliceInfo {
            namespace: key.0.clone(),
            name: key.1.clone(),
            service: rng.chance(90).then(|| format!("svc{}", rng.below(5))),
            address_type: if rng.chance(90) { "IPv4" } else { "FQDN" }.to_string(),
            ports: (0..rng.below(3))
                .map(|i| {
                    (
                        ["http", "grpc-x", ""][i].to_string(),
                        9000 + rng.below(2) as i32,
                    )
                })
                .collect(),
            endpoints,
        }
    }

    /// A Pod key, mostly in `namespace`.
    fn key_in(rng: &mut Rng, namespace: &str, prefix: &str, count: usize) -> ObjectKey {
        let ns = if rng.chance(90) {
            namespace.to_string()
        } else {
            NAMESPACES[rng.below(2)].to_string()
        };
        (ns, format!("{prefix}{}", rng.below(count)))
    }

    fn random_labels(rng: &mut Rng) -> Labels {
        (0..rng.below(3))
            .map(|i| {
                (
                    ["version", "app", "zone"][i].to_string(),
                    format!("v{}", rng.below(3)),
                )
            })
            .collect()
    }

    fn istio(kind: usize, key: &ObjectKey, rng: &mut Rng) -> Rendered {
        let k = ISTIO_KINDS[kind];
        let path = object_path("networking.istio.io/v1", k.plural, &key.0, &key.1);
        Rendered {
            file: SourceFile {
                path,
                text: format!("kind: {}\nspec: {}\n", k.kind, rng.below(3)),
            },
            reference: ObjectReference {
                kind: Some(k.kind.to_string()),
                name: Some(key.1.clone()),
                namespace: Some(key.0.clone()),
                ..ObjectReference::default()
            },
        }
    }

    /// A random complete list of `table`: some objects of the current one kept, some changed,
    /// some new, some gone.
    fn relist<K, T: Table<K>>(
        rng: &mut Rng,
        store: &mut Store,
        table: &T,
        mut make: impl FnMut(&mut Rng, &ObjectKey) -> T::Value,
        prefix: &str,
        count: usize,
    ) where
        T::Value: Clone,
    {
        let mut listed: BTreeMap<ObjectKey, T::Value> = table
            .table(store)
            .iter()
            .filter(|_| rng.chance(80))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for _ in 0..rng.below(3) {
            let k = key(rng, prefix, count);
            let v = make(rng, &k);
            listed.insert(k, v);
        }
        replace(table, store, listed);
    }

    /// Path and text of each file (SourceFile has no `PartialEq`).
    fn pairs(files: Vec<SourceFile>) -> Vec<(String, String)> {
        files.into_iter().map(|f| (f.path, f.text)).collect()
    }

    fn check(reading: &Reading, references: &BTreeMap<String, ObjectReference>, store: &Store) {
        let full = full_render(store, "cluster.local");
        let expected: Vec<SourceFile> = full.iter().map(|r| r.file.clone()).collect();
        assert_eq!(pairs(reading.files()), pairs(expected));
        let expected_refs: BTreeMap<String, ObjectReference> = full
            .into_iter()
            .map(|r| (r.file.path, r.reference))
            .collect();
        assert_eq!(*references, expected_refs);
    }

    #[test]
    fn after_random_events_the_reading_equals_a_full_render() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut store = Store::default();
            let mut reading = Reading::default();
            let mut references: BTreeMap<String, ObjectReference> = BTreeMap::new();
            let mut emitted: Vec<(String, String)> = Vec::new();
            let istio_tables: Vec<IstioTable> = (0..2)
                .map(|i| IstioTable {
                    api_version: "networking.istio.io/v1".into(),
                    kind: ISTIO_KINDS[i],
                })
                .collect();
            for step in 0..400 {
                match rng.below(10) {
                    0 | 1 => {
                        let k = key(&mut rng, "svc", 5);
                        let v = rng.chance(85).then(|| random_service(&mut rng, &k));
                        apply(&ServiceTable, &mut store, k, v);
                    }
                    2..=4 => {
                        let k = key(&mut rng, "slice", 7);
                        let v = rng.chance(85).then(|| random_slice(&mut rng, &k));
                        apply(&SliceTable, &mut store, k, v);
                    }
                    5 | 6 => {
                        let k = key(&mut rng, "pod", 6);
                        let v = rng.chance(85).then(|| random_labels(&mut rng));
                        apply(&PodTable, &mut store, k, v);
                    }
                    7 => {
                        let i = rng.below(2);
                        let k = key(&mut rng, "obj", 3);
                        let v = rng.chance(80).then(|| istio(i, &k, &mut rng));
                        apply(&istio_tables[i], &mut store, k, v);
                    }
                    _ => match rng.below(4) {
                        0 => relist(
                            &mut rng,
                            &mut store,
                            &ServiceTable,
                            random_service,
                            "svc",
                            5,
                        ),
                        1 => relist(&mut rng, &mut store, &SliceTable, random_slice, "slice", 7),
                        2 => relist(
                            &mut rng,
                            &mut store,
                            &PodTable,
                            |r, _| random_labels(r),
                            "pod",
                            6,
                        ),
                        _ => {
                            let i = rng.below(2);
                            relist(
                                &mut rng,
                                &mut store,
                                &istio_tables[i],
                                |r, k| istio(i, k, r),
                                "obj",
                                3,
                            )
                        }
                    },
                }
                if rng.chance(40) || step == 399 {
                    let update = reading.update(&mut store, "cluster.local");
                    for (path, reference) in update.references {
                        match reference {
                            Some(r) => references.insert(path, r),
                            None => references.remove(&path),
                        };
                    }
                    check(&reading, &references, &store);
                    let files = pairs(reading.files());
                    assert_eq!(
                        update.files_changed,
                        files != emitted,
                        "seed {seed} step {step}: files_changed is wrong"
                    );
                    emitted = files;
                }
            }
            assert!(
                !emitted.is_empty(),
                "seed {seed}: the test renders something"
            );
        }
    }

    #[test]
    fn an_endpoint_change_re_renders_only_its_service() {
        let mut store = Store::default();
        let mut reading = Reading::default();
        for i in 0..3 {
            let k = ("shop".to_string(), format!("svc{i}"));
            let svc = ServiceInfo {
                namespace: k.0.clone(),
                name: k.1.clone(),
                uid: None,
                external_name: None,
                ports: vec![ServicePortInfo {
                    name: "http".into(),
                    port: 80,
                    protocol: None,
                    app_protocol: None,
                    target_port: None,
                }],
            };
            apply(&ServiceTable, &mut store, k.clone(), Some(svc));
            let slice = SliceInfo {
                namespace: "shop".into(),
                name: format!("svc{i}-a"),
                service: Some(format!("svc{i}")),
                address_type: "IPv4".into(),
                ports: vec![("http".into(), 9080)],
                endpoints: vec![SliceEndpoint {
                    address: format!("10.0.0.{i}"),
                    ready: true,
                    pod: Some(("shop".into(), format!("pod{i}"))),
                }],
            };
            apply(&SliceTable, &mut store, slice.key(), Some(slice));
            let labels: Labels = [("version".to_string(), "v1".to_string())].into();
            apply(
                &PodTable,
                &mut store,
                ("shop".into(), format!("pod{i}")),
                Some(labels),
            );
        }
        let first = reading.update(&mut store, "cluster.local");
        assert!(first.files_changed);
        assert_eq!(first.references.len(), 3);
        // Nothing to do when nothing changed.
        assert!(store.tracker.services.is_empty());
        // svc1's endpoint goes not ready: only svc1 is rendered again.
        let mut slice = store.slices[&("shop".to_string(), "svc1-a".to_string())].clone();
        slice.endpoints[0].ready = false;
        apply(&SliceTable, &mut store, slice.key(), Some(slice));
        assert_eq!(
            store.tracker.services,
            [("shop".to_string(), "svc1".to_string())].into()
        );
        let update = reading.update(&mut store, "cluster.local");
        assert!(update.files_changed);
        let paths: Vec<&str> = update.references.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["kubernetes:/api/v1/namespaces/shop/services/svc1"]);
        // A Pod's labels: only the Service whose slice names it.
        let labels: Labels = [("version".to_string(), "v2".to_string())].into();
        apply(
            &PodTable,
            &mut store,
            ("shop".into(), "pod2".into()),
            Some(labels),
        );
        assert_eq!(
            store.tracker.services,
            [("shop".to_string(), "svc2".to_string())].into()
        );
        // A Pod no slice names changes nothing.
        apply(
            &PodTable,
            &mut store,
            ("shop".into(), "other".into()),
            Some(Labels::new()),
        );
        assert_eq!(store.tracker.services.len(), 1);
        let update = reading.update(&mut store, "cluster.local");
        assert!(update.files_changed);
        let files = pairs(reading.files());
        assert!(files[2].1.contains("version: v2"), "{}", files[2].1);
        assert_eq!(
            files,
            pairs(
                full_render(&store, "cluster.local")
                    .into_iter()
                    .map(|r| r.file)
                    .collect()
            )
        );
    }
}
