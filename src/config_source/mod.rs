//! Where `serve` gets its config from, as a stream of file sets.
//!
//! Two sources: the file system ([`files`]: the `--config` paths, watched and re-read after a
//! short quiet time) and a Kubernetes API server ([`kubernetes`]: `--kubernetes`, Istio
//! objects and Services watched). [`Sources`] runs the ones asked for and, when both are,
//! merges them into one reading: the files first, then the Kubernetes objects. A source never
//! translates; it hands the text to [`crate::app`], which decides whether the result is good
//! enough to serve.

pub mod files;
pub mod kubernetes;

use std::path::PathBuf;
use std::sync::Arc;

use shadowplane_translator::SourceFile;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use files::{ConfigLoad, Debounce, FileSource, WatchError};
pub use kubernetes::{KubeSource, KubeSourceConfig, KubeSourceError};

/// Same files (paths and text) or the same error.
pub(crate) fn same_content(a: &ConfigLoad, b: &ConfigLoad) -> bool {
    match (&a.result, &b.result) {
        (Ok(x), Ok(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(f, g)| f.path == g.path && f.text == g.text)
        }
        (Err(x), Err(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

/// One reading of both sources: `None` until the Kubernetes source has its first reading
/// (generation 0 is not a reading). An unreadable config folder makes the whole reading
/// unreadable, as it does without Kubernetes.
pub fn merge(files: &ConfigLoad, kube: &ConfigLoad, generation: u64) -> Option<ConfigLoad> {
    if kube.generation == 0 {
        return None;
    }
    let result = match (&files.result, &kube.result) {
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        (Ok(f), Ok(k)) => {
            let mut all: Vec<SourceFile> = Vec::with_capacity(f.len() + k.len());
            all.extend(f.iter().cloned());
            all.extend(k.iter().cloned());
            Ok(all)
        }
    };
    Some(ConfigLoad { generation, result })
}

/// Why the sources could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Kube(#[from] KubeSourceError),
}

/// The running sources of one `serve`, as one stream of readings. Dropping it stops them.
pub struct Sources {
    rx: watch::Receiver<Arc<ConfigLoad>>,
    kube: Option<KubeSource>,
    _files: Option<FileSource>,
    merge_task: Option<JoinHandle<()>>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        if let Some(task) = &self.merge_task {
            task.abort();
        }
    }
}

impl Sources {
    /// Start the file source when `paths` is not empty and the Kubernetes source when `kube`
    /// is given (Service hosts ending in `domain_suffix`). The receiver holds generation 0
    /// (not a reading) until every source has read once.
    pub async fn start(
        paths: Vec<PathBuf>,
        debounce: Debounce,
        kube: Option<KubeSourceConfig>,
        domain_suffix: &str,
    ) -> Result<Sources, SourceError> {
        let files = if paths.is_empty() {
            None
        } else {
            Some(FileSource::start(paths, debounce)?)
        };
        let kube = match kube {
            Some(cfg) => Some(KubeSource::start_with_domain(cfg, domain_suffix).await?),
            None => None,
        };
        let (rx, merge_task) = match (&files, &kube) {
            (Some(f), None) => (f.subscribe(), None),
            (None, Some(k)) => (k.subscribe(), None),
            (Some(f), Some(k)) => {
                let (rx, task) = merged(f.subscribe(), k.subscribe());
                (rx, Some(task))
            }
            (None, None) => {
                let (_tx, rx) = watch::channel(Arc::new(ConfigLoad {
                    generation: 0,
                    result: Ok(Vec::new()),
                }));
                (rx, None)
            }
        };
        Ok(Sources {
            rx,
            kube,
            _files: files,
            merge_task,
        })
    }

    /// A receiver of the readings.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigLoad>> {
        self.rx.clone()
    }

    /// The Kubernetes source, when there is one.
    pub fn kube(&self) -> Option<&KubeSource> {
        self.kube.as_ref()
    }
}

/// Merge the file and Kubernetes readings: a new reading whenever either changes, once the
/// Kubernetes source has read once.
fn merged(
    mut files: watch::Receiver<Arc<ConfigLoad>>,
    mut kube: watch::Receiver<Arc<ConfigLoad>>,
) -> (watch::Receiver<Arc<ConfigLoad>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(ConfigLoad {
        generation: 0,
        result: Ok(Vec::new()),
    }));
    let task = tokio::spawn(async move {
        loop {
            let (f, k) = (
                files.borrow_and_update().clone(),
                kube.borrow_and_update().clone(),
            );
            let previous = tx.borrow().clone();
            let next = merge(&f, &k, previous.generation + 1)
                .filter(|load| previous.generation == 0 || !same_content(load, &previous));
            if let Some(load) = next {
                if tx.send(Arc::new(load)).is_err() {
                    return;
                }
            }
            tokio::select! {
                r = files.changed() => if r.is_err() { return },
                r = kube.changed() => if r.is_err() { return },
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn load(generation: u64, files: &[(&str, &str)]) -> ConfigLoad {
        ConfigLoad {
            generation,
            result: Ok(files
                .iter()
                .map(|(p, t)| SourceFile {
                    path: p.to_string(),
                    text: t.to_string(),
                })
                .collect()),
        }
    }

    fn paths(load: &ConfigLoad) -> Vec<String> {
        match &load.result {
            Ok(files) => files.iter().map(|f| f.path.clone()).collect(),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    #[test]
    fn files_come_first_then_kubernetes_objects() {
        let f = load(3, &[("a.yaml", "a"), ("b.yaml", "b")]);
        let k = load(1, &[("kubernetes:/api/v1/namespaces/x/services/s", "s")]);
        let m = merge(&f, &k, 7).expect("merged");
        assert_eq!(m.generation, 7);
        assert_eq!(
            paths(&m),
            [
                "a.yaml",
                "b.yaml",
                "kubernetes:/api/v1/namespaces/x/services/s"
            ]
        );
        // Nothing until Kubernetes has listed everything once.
        assert!(merge(&f, &load(0, &[]), 1).is_none());
        // An unreadable folder makes the reading unreadable.
        let broken = ConfigLoad {
            generation: 4,
            result: Err(Arc::new(crate::config_files::ConfigFilesError::NotFound {
                path: "conf".into(),
            })),
        };
        assert!(merge(&broken, &k, 8).expect("merged").result.is_err());
    }

    #[tokio::test]
    async fn the_merged_stream_waits_for_kubernetes_and_follows_both() {
        let (ftx, frx) = watch::channel(Arc::new(load(1, &[("a.yaml", "a")])));
        let (ktx, krx) = watch::channel(Arc::new(load(0, &[])));
        let (mut rx, _task) = merged(frx, krx);
        let next = |rx: &mut watch::Receiver<Arc<ConfigLoad>>| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(2), rx.changed())
                    .await
                    .expect("a merged reading")
                    .expect("merge alive");
                rx.borrow_and_update().clone()
            }
        };
        tokio::task::yield_now().await;
        assert_eq!(rx.borrow_and_update().generation, 0);
        ktx.send(Arc::new(load(1, &[("kubernetes:/k", "k")])))
            .expect("send");
        let m = next(&mut rx).await;
        assert_eq!(m.generation, 1);
        assert_eq!(paths(&m), ["a.yaml", "kubernetes:/k"]);
        rx.borrow_and_update();
        ftx.send(Arc::new(load(2, &[("a.yaml", "a2"), ("c.yaml", "c")])))
            .expect("send");
        let m = next(&mut rx).await;
        assert_eq!(m.generation, 2);
        assert_eq!(paths(&m), ["a.yaml", "c.yaml", "kubernetes:/k"]);
    }
}
