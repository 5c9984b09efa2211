//! The walkthrough the demo plays: the calc seed's three steps, with its YAML verbatim.
//!
//! Each step rewrites files of the watched config folder exactly as `examples/calc/<step>/`
//! holds them (embedded at build time, so the demo needs no checkout), the way a user would
//! `kubectl apply` them. The ServiceEntry is the demo's own: it stands in for the Kubernetes
//! Service and its pods, with the ports the demo picked.

use std::io::Write as _;
use std::path::Path;

/// One step of the walkthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `baseline`, `mirror`, `reset` (the folder of `examples/calc/`).
    pub name: &'static str,
    /// What the rules do, in one line.
    pub explain: &'static str,
    /// The files written, `(file name, contents)`, verbatim from `examples/calc/<name>/`.
    pub files: &'static [(&'static str, &'static str)],
}

/// The three steps, in order.
pub const STEPS: [Step; 3] = [
    Step {
        name: "baseline",
        explain: "Mobile user-agents go to v2, everyone else to v1",
        files: &[
            (
                "destination-rule.yaml",
                include_str!("../../examples/calc/baseline/destination-rule.yaml"),
            ),
            (
                "virtual-service.yaml",
                include_str!("../../examples/calc/baseline/virtual-service.yaml"),
            ),
        ],
    },
    Step {
        name: "mirror",
        explain: "v3 (the new algorithm) gets a copy of every request v1 serves; its answers are thrown away",
        files: &[
            (
                "deployment-v3.yaml",
                include_str!("../../examples/calc/mirror/deployment-v3.yaml"),
            ),
            (
                "destination-rule.yaml",
                include_str!("../../examples/calc/mirror/destination-rule.yaml"),
            ),
            (
                "virtual-service.yaml",
                include_str!("../../examples/calc/mirror/virtual-service.yaml"),
            ),
        ],
    },
    Step {
        name: "reset",
        explain: "back to the baseline rules: the mirror stops",
        files: &[
            (
                "destination-rule.yaml",
                include_str!("../../examples/calc/reset/destination-rule.yaml"),
            ),
            (
                "virtual-service.yaml",
                include_str!("../../examples/calc/reset/virtual-service.yaml"),
            ),
        ],
    },
];

/// The file name of the generated ServiceEntry.
pub const SERVICE_ENTRY_FILE: &str = "service-entry.yaml";

/// The ServiceEntry for `calcbackendsvc` in namespace `challengeistio`: service port
/// `service_port` (the proxy's listener) and one endpoint per version on 127.0.0.1, labelled
/// `version: v1|v2|v3`, as `examples/calc/service-entry.yaml` but with the demo's ports.
pub fn service_entry(service_port: u16, backend_ports: [u16; 3]) -> String {
    let mut endpoints = String::new();
    for (version, port) in ["v1", "v2", "v3"].iter().zip(backend_ports) {
        endpoints.push_str(&format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {port}\n    labels:\n      version: {version}\n"
        ));
    }
    format!(
        "# Written by `shadowplane demo`: the calc backend as a ServiceEntry, standing in for the\n\
         # Kubernetes Service and its pods (one in-process backend per version).\n\
         apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata:\n  name: calcbackendsvc\n  namespace: challengeistio\n\
         spec:\n  hosts:\n  - calcbackendsvc.challengeistio.svc.cluster.local\n  \
         location: MESH_INTERNAL\n  ports:\n  - number: {service_port}\n    name: http\n    \
         protocol: HTTP\n  resolution: STATIC\n  endpoints:\n{endpoints}"
    )
}

/// Write `contents` to `dir/name` atomically: a hidden temporary file (the config walker skips
/// hidden entries) renamed over the target, so the watcher never reads half a file.
pub fn write_atomic(dir: &Path, name: &str, contents: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))
}

/// Write the step's files into `dir`.
pub fn apply(dir: &Path, step: &Step) -> std::io::Result<()> {
    for (name, contents) in step.files {
        write_atomic(dir, name, contents)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowplane_translator::SourceFile;

    fn translate(files: &[(&str, String)]) -> shadowplane_translator::Translation {
        let sources: Vec<SourceFile> = files
            .iter()
            .map(|(name, text)| SourceFile {
                path: name.to_string(),
                text: text.clone(),
            })
            .collect();
        let options = shadowplane_translator::Options {
            bind_address: "127.0.0.1".into(),
            ..Default::default()
        };
        shadowplane_translator::translate_files(&sources, &options)
    }

    #[test]
    fn steps_are_the_examples_verbatim() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/calc");
        for step in STEPS {
            for (name, contents) in step.files {
                let on_disk =
                    std::fs::read_to_string(root.join(step.name).join(name)).expect("example file");
                assert_eq!(&on_disk, contents, "{}/{name}", step.name);
            }
        }
        assert!(STEPS[1].files[2].1.contains("mirror:"));
        assert!(!STEPS[2].files[1].1.contains("mirror:"));
    }

    #[test]
    fn each_step_translates_to_the_clusters_and_mirror_it_describes() {
        let se = service_entry(18080, [19001, 19002, 19003]);
        let mut files: Vec<(&str, String)> = vec![(SERVICE_ENTRY_FILE, se)];
        let mut clusters_per_step = Vec::new();
        for step in STEPS {
            for (name, contents) in step.files {
                files.retain(|(n, _)| n != name);
                files.push((name, contents.to_string()));
            }
            let t = translate(&files);
            assert!(!t.has_errors(), "{}: {:?}", step.name, t.diagnostics);
            let names: Vec<String> = t
                .resources
                .clusters
                .iter()
                .map(|c| c.name.clone())
                .collect();
            let mirrored = t.resources.routes.iter().any(|r| {
                r.virtual_hosts
                    .iter()
                    .flat_map(|v| &v.routes)
                    .any(|route| match &route.action {
                        Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(
                            a,
                        )) => !a.request_mirror_policies.is_empty(),
                        _ => false,
                    })
            });
            clusters_per_step.push((names, mirrored));
        }
        let v3 = "outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local".to_string();
        let v1 = "outbound|18080|v1|calcbackendsvc.challengeistio.svc.cluster.local".to_string();
        assert!(clusters_per_step.iter().all(|(c, _)| c.contains(&v1)));
        assert!(!clusters_per_step[0].0.contains(&v3));
        assert!(clusters_per_step[1].0.contains(&v3));
        assert!(!clusters_per_step[2].0.contains(&v3));
        let mirrored: Vec<bool> = clusters_per_step.iter().map(|(_, m)| *m).collect();
        assert_eq!(mirrored, [false, true, false]);
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_atomic(dir.path(), "a.yaml", "one").expect("write");
        write_atomic(dir.path(), "a.yaml", "two").expect("rewrite");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.yaml")).expect("read"),
            "two"
        );
    }
}
