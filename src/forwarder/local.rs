//! `shadowplane forward --config PATH...`: the forwarder without a control plane.
//!
//! The paths are watched with the same [`FileSource`] as `serve`, each reading is translated
//! in-process with `shadowplane_translator`, the resulting Envoy resources go through
//! [`XdsResources::from_translator`] and [`compile`] — the same path as xDS — and every good
//! table is handed to `on_table`. A reading that cannot be served (unreadable files,
//! diagnostics that block serving, a resource the forwarder cannot honour) is logged and the
//! last good table stays in service, as in `serve`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use shadowplane_translator::{Diagnostic, Options, SourceFile};

use super::compile::{compile, error_detail, CompileError, XdsResources};
use super::table::Table;
use super::xds_client::ClientStatus;
use crate::app::blocks_serving;
use crate::config_source::{ConfigLoad, Debounce, FileSource, WatchError};

/// What to watch and how to translate it.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `--config` paths (files or folders).
    pub paths: Vec<PathBuf>,
    /// Translation options (`bind_address`, `disable_shadow_host_suffix`, `proxy_namespace`,
    /// ...). `Options::default()` matches `serve`'s view of a proxy without a namespace.
    pub options: Options,
    pub debounce: Debounce,
}

impl LocalConfig {
    pub fn new(paths: Vec<PathBuf>) -> LocalConfig {
        LocalConfig {
            paths,
            options: Options::default(),
            debounce: Debounce::default(),
        }
    }
}

/// Why a reading is not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalProblem {
    #[error("cannot read the config: {0}")]
    Read(String),
    #[error("the config has errors:\n{}", render_diagnostics(.0))]
    Diagnostics(Vec<Diagnostic>),
    #[error("{}", error_detail(.0))]
    Compile(Vec<CompileError>),
}

fn render_diagnostics(ds: &[Diagnostic]) -> String {
    ds.iter()
        .filter(|d| blocks_serving(d))
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Translate and compile one set of files (no I/O). `version` goes into
/// [`Table::versions`] for every type.
pub fn compile_files(
    files: &[SourceFile],
    options: &Options,
    version: &str,
) -> Result<Table, LocalProblem> {
    let translation = shadowplane_translator::translate_files(files, options);
    for d in &translation.diagnostics {
        if d.is_error() {
            tracing::warn!("{d}");
        } else {
            tracing::info!("{d}");
        }
    }
    if translation.diagnostics.iter().any(blocks_serving) {
        return Err(LocalProblem::Diagnostics(translation.diagnostics));
    }
    let res = XdsResources::from_translator(&translation.resources, version);
    compile(&res).map_err(LocalProblem::Compile)
}

/// Compile one reading of the config paths.
pub fn compile_load(load: &ConfigLoad, options: &Options) -> Result<Table, LocalProblem> {
    match &load.result {
        Ok(files) => compile_files(files, options, &format!("local-{}", load.generation)),
        Err(e) => Err(LocalProblem::Read(e.to_string())),
    }
}

/// Watch the paths until `shutdown`; hand every good table to `on_table`. Fails only when the
/// watch cannot start. The first reading is compiled before this returns control to the
/// runtime's other tasks only in the sense that it is handled first: a bad first reading
/// leaves the forwarder without a table (and logs why) until the files are fixed.
pub async fn run<F>(
    cfg: LocalConfig,
    on_table: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WatchError>
where
    F: Fn(Arc<Table>) + Send + Sync,
{
    run_with_status(cfg, Arc::new(ClientStatus::default()), on_table, shutdown).await
}

/// [`run`], reporting into `status` (`tables`, `versions`, and the last problem in
/// `last_nack`; `connected` is true while watching).
pub async fn run_with_status<F>(
    cfg: LocalConfig,
    status: Arc<ClientStatus>,
    on_table: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WatchError>
where
    F: Fn(Arc<Table>) + Send + Sync,
{
    let source = FileSource::start(cfg.paths.clone(), cfg.debounce)?;
    let mut loads = source.subscribe();
    status.set_connected(true);
    tokio::pin!(shutdown);
    loop {
        let load = loads.borrow_and_update().clone();
        match compile_load(&load, &cfg.options) {
            Ok(table) => {
                tracing::info!(generation = load.generation, "forwarder config applied");
                status.table_applied(&table.versions);
                on_table(Arc::new(table));
            }
            Err(problem) => {
                tracing::error!(
                    generation = load.generation,
                    "config not applied, keeping the last good one: {problem}"
                );
                status.problem(problem.to_string());
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            changed = loads.changed() => {
                if changed.is_err() {
                    // The watcher task ended: nothing more will come.
                    break;
                }
            }
        }
    }
    status.set_connected(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_source::Debounce;

    fn seed_files() -> Vec<SourceFile> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/translate/seed-calc-mirror/input");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("seed input")
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| SourceFile {
                path: p.display().to_string(),
                text: std::fs::read_to_string(&p).expect("readable"),
            })
            .collect()
    }

    async fn next_table(rx: &mut tokio::sync::watch::Receiver<Option<Arc<Table>>>) -> Arc<Table> {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
            .await
            .expect("a table in time")
            .expect("sender alive");
        rx.borrow_and_update().clone().expect("a table")
    }

    /// The CLI spawns it: the future must be `Send`.
    #[test]
    fn run_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let fut = run(LocalConfig::new(vec![]), |_| {}, async {});
        is_send(&fut);
    }

    #[tokio::test]
    async fn a_watched_folder_hot_reloads_and_keeps_the_last_good_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        for f in seed_files() {
            let name = std::path::Path::new(&f.path)
                .file_name()
                .expect("file name")
                .to_owned();
            std::fs::write(dir.path().join(name), &f.text).expect("write");
        }
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        let status = Arc::new(ClientStatus::default());
        let mut cfg = LocalConfig::new(vec![dir.path().to_path_buf()]);
        cfg.debounce = Debounce {
            quiet: std::time::Duration::from_millis(30),
            max_delay: std::time::Duration::from_millis(300),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = status.clone();
        let task = tokio::spawn(run_with_status(
            cfg,
            st,
            move |t| {
                let _ = tx.send(Some(t));
            },
            async {
                let _ = stopped.await;
            },
        ));
        let first = next_table(&mut rx).await;
        assert_eq!(first.versions.listeners, "local-1");
        // A broken file: logged, no table, the last good one stays.
        let vs = dir.path().join("virtual-service.yaml");
        let good_vs = std::fs::read_to_string(&vs).expect("vs");
        std::fs::write(&vs, good_vs.replace("subset: v3", "subset: v9\n  bad: [")).expect("write");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while status.view().last_nack.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broken file was not reported"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(status.view().tables, 1);
        // Fixed again (without the mirror): a new table.
        std::fs::write(
            &vs,
            good_vs.replace(
                "    mirror:\n      host: calcbackendsvc\n      subset: v3\n",
                "",
            ),
        )
        .expect("write");
        let next = next_table(&mut rx).await;
        assert!(next.versions.listeners != "local-1");
        let no_mirror = |t: &Table| {
            t.route_configs["8080"].virtual_hosts[0].routes.iter().all(|r| {
                matches!(&r.action, crate::forwarder::table::Action::Forward(f) if f.mirrors.is_empty())
            })
        };
        assert!(!no_mirror(&first), "the seed mirrors");
        assert!(no_mirror(&next), "the reloaded config has no mirror");
        let _ = stop.send(());
        task.await.expect("task").expect("watch");
    }

    #[test]
    fn local_files_compile_like_xds() {
        let table = compile_files(&seed_files(), &Options::default(), "local-1").expect("seed");
        assert_eq!(table.versions.route_configs, "local-1");
        assert!(table.route_configs.contains_key("8080"));
        assert_eq!(table.clusters.len(), 4);
    }

    #[test]
    fn blocking_diagnostics_are_a_problem() {
        let bad = SourceFile {
            path: "bad.yaml".into(),
            text: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: x\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination:\n        host: a\n      weight: -1\n".into(),
        };
        match compile_files(&[bad], &Options::default(), "1") {
            Err(LocalProblem::Diagnostics(ds)) => assert!(ds.iter().any(blocks_serving)),
            other => panic!("expected diagnostics, got {other:?}"),
        }
    }
}
