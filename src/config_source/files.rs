//! The `--config` paths, watched: every change is re-read after a quiet time and handed on as
//! a new [`ConfigLoad`] through a [`tokio::sync::watch`] channel (latest wins).
//!
//! What is watched, and why:
//! - a folder: recursively, so files in subfolders count;
//! - the parent of every path (or its nearest existing ancestor), non-recursively, so a file
//!   replaced by rename (editors' atomic save, `kubectl`-style symlink swaps) and a folder that
//!   is removed and created again are both seen. A path that does not exist yet is picked up
//!   when it appears.
//!
//! A reading waits for the file system to be quiet for [`Debounce::quiet`], and, on Linux,
//! for every config file written in place to be closed by its writer (inotify reports both the
//! writes and the close), at most [`Debounce::max_delay`] after the first event: a file is not
//! read half written, however slowly it is written. (A half-written file that is read anyway,
//! at the max delay or by a writer that closes and reopens it, is only a risk when it happens
//! to be a valid config: one that does not parse is rejected and the last good config stays.)
//!
//! After each burst of events the watches are set up again (inotify drops the watch of a
//! removed folder) *before* the files are read, so a change made while re-watching is read too.
//! A reading identical to the previous one (same paths, same text, or the same error) is not
//! emitted: reading our own files, editor swap files and unrelated files next to a watched file
//! cause no reload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{Event, EventKind, RecursiveMode, Watcher};
use shadowplane_translator::SourceFile;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::config_files::{self, ConfigFilesError};

/// How long to wait for the file system to settle before re-reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Re-read once no event arrived for this long.
    pub quiet: Duration,
    /// Re-read at the latest this long after the first event of a burst, even if events keep
    /// arriving (a busy folder must not starve reloads).
    pub max_delay: Duration,
}

/// Default quiet time. One save (an editor's write-then-rename, `kubectl cp`, a ConfigMap's
/// symlink swap) produces its events within a few milliseconds, and files written in place are
/// read only once closed (see the module documentation), so the quiet time only has to cover
/// the gap between the events of one save, not the time a slow writer takes.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(20);

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: DEFAULT_QUIET,
            max_delay: Duration::from_secs(1),
        }
    }
}

/// One reading of the config paths.
#[derive(Debug, Clone)]
pub struct ConfigLoad {
    /// 1 for the reading at start, then +1 for each reading that differs from the previous one.
    pub generation: u64,
    /// The files (in [`config_files::collect`] order), or why they could not be read
    /// (a path that disappeared, a file that is not UTF-8, ...).
    pub result: Result<Vec<SourceFile>, Arc<ConfigFilesError>>,
}

impl ConfigLoad {
    fn same_content(&self, other: &ConfigLoad) -> bool {
        match (&self.result, &other.result) {
            (Ok(a), Ok(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.path == y.path && x.text == y.text)
            }
            (Err(a), Err(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// Why the file watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the config paths for changes: {0}; check the inotify limits (fs.inotify.max_user_watches)")]
    Notify(#[source] notify::Error),
    #[error("cannot resolve config path {path}: {source}")]
    Path {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running watch of the `--config` paths. Dropping it stops watching.
pub struct FileSource {
    rx: watch::Receiver<Arc<ConfigLoad>>,
    task: JoinHandle<()>,
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileSource {
    /// Read the paths once (the first [`ConfigLoad`], generation 1, available at once through
    /// [`FileSource::subscribe`]) and start watching them. Must be called inside a tokio runtime.
    ///
    /// A path that does not exist is not an error here: the reading says so, and the path is
    /// read again when it appears.
    pub fn start(paths: Vec<PathBuf>, debounce: Debounce) -> Result<FileSource, WatchError> {
        let absolute = paths
            .iter()
            .map(|p| {
                std::path::absolute(p).map_err(|source| WatchError::Path {
                    path: p.display().to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (signal_tx, signal_rx) = mpsc::channel::<()>(1);
        let watched_roots = absolute.clone();
        let writes = Arc::new(OpenWrites::default());
        let writes_seen = writes.clone();
        let handler = move |event: notify::Result<Event>| match event {
            Ok(event) => {
                let closed = writes_seen.track(&event, &watched_roots);
                if closed || is_relevant(&event, &watched_roots) {
                    // A full channel already holds a pending signal: nothing is lost.
                    let _ = signal_tx.try_send(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "config watch error; re-reading the config");
                let _ = signal_tx.try_send(());
            }
        };
        let watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
            Ok(w) => {
                // inotify reports writes and their close; other back ends may not report closes.
                writes
                    .enabled
                    .store(cfg!(target_os = "linux"), Ordering::Relaxed);
                Box::new(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot use file system notifications; polling the config every second instead");
                Box::new(
                    notify::PollWatcher::new(
                        handler,
                        notify::Config::default().with_poll_interval(Duration::from_secs(1)),
                    )
                    .map_err(WatchError::Notify)?,
                )
            }
        };

        let mut watches = Watches {
            watcher,
            targets: BTreeMap::new(),
        };
        watches.refresh(&absolute);
        let first = ConfigLoad {
            generation: 1,
            result: config_files::collect(&paths).map_err(Arc::new),
        };
        log_load(&first);
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(reload_loop(
            paths,
            absolute,
            Arc::new(Mutex::new(watches)),
            writes,
            signal_rx,
            tx,
            debounce,
        ));
        Ok(FileSource { rx, task })
    }

    /// A receiver of the readings: `borrow_and_update()` gives the latest, `changed().await`
    /// waits for the next one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigLoad>> {
        self.rx.clone()
    }

    /// The latest reading.
    pub fn current(&self) -> Arc<ConfigLoad> {
        self.rx.borrow().clone()
    }
}

fn log_load(load: &ConfigLoad) {
    match &load.result {
        Ok(files) => tracing::debug!(
            generation = load.generation,
            files = files.len(),
            "config read"
        ),
        Err(e) => tracing::error!(generation = load.generation, "{e}"),
    }
}

/// Wait for a burst of events, let it settle, re-watch, re-read, emit if different.
async fn reload_loop(
    paths: Vec<PathBuf>,
    absolute: Vec<PathBuf>,
    watches: Arc<Mutex<Watches>>,
    writes: Arc<OpenWrites>,
    mut signals: mpsc::Receiver<()>,
    tx: watch::Sender<Arc<ConfigLoad>>,
    debounce: Debounce,
) {
    loop {
        if signals.recv().await.is_none() {
            return;
        }
        let first_event = Instant::now();
        let hard_deadline = first_event + debounce.max_delay;
        let mut bursts = 1u32;
        loop {
            // A file still open for writing: wait for its close (it signals), not a quiet time.
            let deadline = if writes.busy() {
                hard_deadline
            } else {
                (Instant::now() + debounce.quiet).min(hard_deadline)
            };
            tokio::select! {
                more = signals.recv() => {
                    if more.is_none() {
                        return;
                    }
                    bursts += 1;
                }
                _ = sleep_until(deadline) => break,
            }
        }
        if writes.busy() {
            tracing::debug!(max_delay = ?debounce.max_delay, "reading the config while a file is still open for writing: the max delay is reached");
            // A close that was never reported must not hold later readings.
            writes.clear();
        }
        let settled = Instant::now();
        if tx.is_closed() {
            return;
        }
        let (paths_c, absolute_c, watches_c) = (paths.clone(), absolute.clone(), watches.clone());
        let read = tokio::task::spawn_blocking(move || {
            // Re-watch first, read second: a change made in between is in what we read.
            match watches_c.lock() {
                Ok(mut w) => w.refresh(&absolute_c),
                Err(_) => tracing::error!("config watcher state poisoned; changes may be missed"),
            }
            config_files::collect(&paths_c).map_err(Arc::new)
        })
        .await;
        let result = match read {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "config reader task failed; keeping the last reading");
                continue;
            }
        };
        tracing::debug!(
            debounce_ms = ms(settled - first_event),
            signals = bursts,
            read_ms = ms(settled.elapsed()),
            "config change settled and read"
        );
        let previous = tx.borrow().clone();
        let mut load = ConfigLoad {
            generation: previous.generation,
            result,
        };
        if load.same_content(&previous) {
            tracing::trace!("config files unchanged");
            continue;
        }
        load.generation += 1;
        log_load(&load);
        if tx.send(Arc::new(load)).is_err() {
            return;
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The set of paths given to the watcher, kept so it can be rebuilt.
struct Watches {
    watcher: Box<dyn Watcher + Send>,
    targets: BTreeMap<PathBuf, bool>,
}

impl Watches {
    /// Drop every watch and set up the current targets again.
    fn refresh(&mut self, paths: &[PathBuf]) {
        for path in std::mem::take(&mut self.targets).keys() {
            // The watch of a removed folder is already gone: nothing to report.
            let _ = self.watcher.unwatch(path);
        }
        for (path, recursive) in watch_targets(paths) {
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.watcher.watch(&path, mode) {
                Ok(()) => {
                    self.targets.insert(path, recursive);
                }
                // Raced with a removal: the parent's watch reports the next change.
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot watch"),
            }
        }
    }
}

/// Which paths to watch for `paths` (absolute): `true` = recursively.
fn watch_targets(paths: &[PathBuf]) -> BTreeMap<PathBuf, bool> {
    let mut targets: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for path in paths {
        if path.is_dir() {
            targets.insert(path.clone(), true);
        }
        if let Some(ancestor) = nearest_existing_ancestor(path) {
            targets.entry(ancestor).or_insert(false);
        }
    }
    // A path inside a recursively watched folder is already covered.
    let recursive: Vec<PathBuf> = targets
        .iter()
        .filter(|(_, r)| **r)
        .map(|(p, _)| p.clone())
        .collect();
    targets.retain(|p, _| !recursive.iter().any(|r| p != r && p.starts_with(r)));
    targets
}

fn nearest_existing_ancestor(path: &Path) -> Option<PathBuf> {
    let mut current = path.parent();
    while let Some(dir) = current {
        if dir.is_dir() {
            return Some(dir.to_path_buf());
        }
        current = dir.parent();
    }
    None
}

/// Config files written in place whose writer has not closed them yet.
#[derive(Default)]
struct OpenWrites {
    /// Only where closes are reported (inotify).
    enabled: AtomicBool,
    paths: Mutex<BTreeSet<PathBuf>>,
}

impl OpenWrites {
    /// Follow one event. True when a tracked file was closed (or went away): a reading may be
    /// waiting for it.
    fn track(&self, event: &Event, roots: &[PathBuf]) -> bool {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let mut paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        match event.kind {
            EventKind::Modify(ModifyKind::Data(_)) => {
                for p in &event.paths {
                    if is_config_file(p, roots) {
                        paths.insert(p.clone());
                    }
                }
                false
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_)) => {
                let before = paths.len();
                for p in &event.paths {
                    paths.remove(p);
                }
                paths.len() != before
            }
            _ => false,
        }
    }

    fn busy(&self) -> bool {
        !self
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn clear(&self) {
        self.paths.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A file that a reading would read: a config path itself, or a YAML file inside a config
/// folder (not hidden: editors' temporary files are written elsewhere and renamed).
fn is_config_file(p: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| {
        p == root
            || (p.starts_with(root)
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(config_files::is_config_file_name))
    })
}

/// Does this event concern one of the config paths: something inside it, the path itself, a
/// folder on the way to it, or an entry next to it that can change what the path points at
/// (Kubernetes ConfigMap volumes update a mounted file, a symlink, by swapping a `..data`
/// symlink beside it)? Reads (`Access`) and metadata-only changes are not changes, and neither
/// are other files next to a config path that is not a symlink (a log file beside the config
/// folder would otherwise cause a re-read per log line).
fn is_relevant(event: &Event, roots: &[PathBuf]) -> bool {
    use notify::event::ModifyKind;
    match event.kind {
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return false,
        EventKind::Other => return true,
        _ => {}
    }
    if event.need_rescan() || event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|p| {
        roots.iter().any(|root| {
            p.starts_with(root)
                || root.starts_with(p)
                || (p.parent() == root.parent() && (is_dot_dot_entry(p) || root.is_symlink()))
        })
    })
}

/// `..data`, `..2026_01_01...`: the entries of Kubernetes' atomic volume writer.
fn is_dot_dot_entry(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, ModifyKind};

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn reads_and_metadata_changes_are_not_relevant() {
        let roots = vec![PathBuf::from("/cfg")];
        assert!(!is_relevant(
            &event(EventKind::Access(AccessKind::Any), "/cfg/a.yaml"),
            &roots
        ));
        assert!(!is_relevant(
            &event(
                EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
                "/cfg/a.yaml"
            ),
            &roots
        ));
        assert!(is_relevant(
            &event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/cfg/a.yaml"
            ),
            &roots
        ));
    }

    #[test]
    fn events_elsewhere_are_not_relevant_but_ancestors_and_siblings_are() {
        let roots = vec![PathBuf::from("/etc/mesh/vs.yaml")];
        let create = EventKind::Create(CreateKind::Any);
        assert!(!is_relevant(&event(create, "/etc/other/vs.yaml"), &roots));
        assert!(!is_relevant(&event(create, "/etc/mesh/sub/x.yaml"), &roots));
        assert!(is_relevant(&event(create, "/etc/mesh/vs.yaml"), &roots));
        assert!(is_relevant(&event(create, "/etc/mesh"), &roots));
        assert!(is_relevant(&event(create, "/etc/mesh/..data"), &roots));
        // Not a symlink (it does not even exist): other files beside it are not its business.
        let modify = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(!is_relevant(&event(modify, "/etc/mesh/serve.log"), &roots));
        let folder = vec![PathBuf::from("/run/x/mesh")];
        assert!(!is_relevant(&event(modify, "/run/x/serve.log"), &folder));
        assert!(is_relevant(&event(modify, "/run/x/mesh/a.yaml"), &folder));
    }

    #[test]
    fn folders_are_watched_recursively_and_parents_flat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("conf");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        let file = root.join("sub/a.yaml");
        let missing = dir.path().join("later/deeper/x.yaml");
        let targets = watch_targets(&[root.clone(), file, missing]);
        let expected: BTreeMap<PathBuf, bool> = [(dir.path().to_path_buf(), false), (root, true)]
            .into_iter()
            .collect();
        assert_eq!(targets, expected);
    }

    /// Wait (bounded) for a reading after `after` and return it.
    async fn next_load(rx: &mut watch::Receiver<Arc<ConfigLoad>>, after: u64) -> Arc<ConfigLoad> {
        let wait = async {
            loop {
                let current = rx.borrow_and_update().clone();
                if current.generation > after {
                    return current;
                }
                rx.changed().await.expect("file source alive");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("no config reading after generation {after} within 5s"))
    }

    fn texts(load: &ConfigLoad) -> Vec<String> {
        match &load.result {
            Ok(files) => files.iter().map(|f| f.text.clone()).collect(),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    fn fast() -> Debounce {
        Debounce {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn folder_edits_atomic_replaces_and_new_files_are_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "one").expect("write");
        let source = FileSource::start(vec![conf.clone()], fast()).expect("start");
        let mut rx = source.subscribe();
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.generation, 1);
        assert_eq!(texts(&first), vec!["one"]);

        // In-place write.
        std::fs::write(conf.join("a.yaml"), "two").expect("write");
        let load = next_load(&mut rx, 1).await;
        assert_eq!(texts(&load), vec!["two"]);

        // Editor-style atomic save: write a temp file, rename over the original.
        std::fs::write(conf.join(".a.yaml.tmp"), "three").expect("write");
        std::fs::rename(conf.join(".a.yaml.tmp"), conf.join("a.yaml")).expect("rename");
        let load = next_load(&mut rx, load.generation).await;
        assert_eq!(texts(&load), vec!["three"]);

        // A new file in a new subfolder.
        std::fs::create_dir(conf.join("sub")).expect("mkdir");
        std::fs::write(conf.join("sub/b.yaml"), "b").expect("write");
        let mut load = next_load(&mut rx, load.generation).await;
        // The folder creation may be read before the file lands: wait for the file.
        while texts(&load) != vec!["three", "b"] {
            load = next_load(&mut rx, load.generation).await;
        }
    }

    #[tokio::test]
    async fn a_watched_file_replaced_by_rename_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("vs.yaml");
        std::fs::write(&file, "v1").expect("write");
        let source = FileSource::start(vec![file.clone()], fast()).expect("start");
        let mut rx = source.subscribe();
        assert_eq!(texts(&rx.borrow_and_update()), vec!["v1"]);
        for (generation, text) in [(1, "v2"), (2, "v3")] {
            let tmp = dir.path().join("vs.yaml.new");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &file).expect("rename");
            let load = next_load(&mut rx, generation).await;
            assert_eq!(texts(&load), vec![text]);
        }
    }

    /// A Kubernetes ConfigMap volume: `vs.yaml -> ..data/vs.yaml`, `..data -> ..<timestamp>`;
    /// an update writes a new timestamped folder and renames a new `..data` symlink over the old.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_configmap_style_symlink_swap_is_read_again() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path();
        std::fs::create_dir(mount.join("..2026_01")).expect("mkdir");
        std::fs::write(mount.join("..2026_01/vs.yaml"), "first").expect("write");
        symlink("..2026_01", mount.join("..data")).expect("symlink");
        symlink("..data/vs.yaml", mount.join("vs.yaml")).expect("symlink");
        let file = mount.join("vs.yaml");
        let source = FileSource::start(vec![file], fast()).expect("start");
        let mut rx = source.subscribe();
        assert_eq!(texts(&rx.borrow_and_update()), vec!["first"]);

        std::fs::create_dir(mount.join("..2026_02")).expect("mkdir");
        std::fs::write(mount.join("..2026_02/vs.yaml"), "second").expect("write");
        symlink("..2026_02", mount.join("..data_tmp")).expect("symlink");
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("rename");
        let load = next_load(&mut rx, 1).await;
        assert_eq!(texts(&load), vec!["second"]);
    }

    #[tokio::test]
    async fn a_folder_that_disappears_is_an_error_and_its_return_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "one").expect("write");
        let source = FileSource::start(vec![conf.clone()], fast()).expect("start");
        let mut rx = source.subscribe();
        rx.borrow_and_update();

        std::fs::remove_dir_all(&conf).expect("rm");
        let gone = next_load(&mut rx, 1).await;
        let err = gone.result.as_ref().expect_err("folder is gone");
        assert!(
            err.to_string().contains("does not exist"),
            "unexpected error: {err}"
        );

        // Back, with different content; and then edited (the new folder is watched).
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "again").expect("write");
        let mut load = next_load(&mut rx, gone.generation).await;
        while texts(&load) != vec!["again"] {
            load = next_load(&mut rx, load.generation).await;
        }
        std::fs::write(conf.join("a.yaml"), "edited").expect("write");
        let load = next_load(&mut rx, load.generation).await;
        assert_eq!(texts(&load), vec!["edited"]);
    }

    #[tokio::test]
    async fn a_path_missing_at_start_is_picked_up_when_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("later/conf");
        let source = FileSource::start(vec![conf.clone()], fast()).expect("start");
        let mut rx = source.subscribe();
        assert!(rx.borrow_and_update().result.is_err());
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "hello").expect("write");
        let mut load = next_load(&mut rx, 1).await;
        while texts(&load) != vec!["hello"] {
            load = next_load(&mut rx, load.generation).await;
        }
    }

    /// `kubectl cp`, `cat > file`: a file written in place, in pieces further apart than the
    /// quiet time, is read only once its writer closed it, never half written.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_file_written_slowly_in_place_is_read_only_once_closed() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "one").expect("write");
        let debounce = Debounce {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_secs(5),
        };
        let source = FileSource::start(vec![conf.clone()], debounce).expect("start");
        let mut rx = source.subscribe();
        rx.borrow_and_update();

        let mut file = std::fs::File::create(conf.join("a.yaml")).expect("open");
        for piece in ["first ", "second ", "third"] {
            file.write_all(piece.as_bytes()).expect("write");
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(
                rx.borrow().generation,
                1,
                "read while still being written: {:?}",
                texts(&rx.borrow())
            );
        }
        drop(file);
        let load = next_load(&mut rx, 1).await;
        assert_eq!(texts(&load), vec!["first second third"]);
    }

    /// A writer that keeps the file open does not hold readings back for longer than the
    /// max delay.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_file_held_open_is_read_at_the_max_delay() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "one").expect("write");
        let debounce = Debounce {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
        };
        let source = FileSource::start(vec![conf.clone()], debounce).expect("start");
        let mut rx = source.subscribe();
        rx.borrow_and_update();

        let mut file = std::fs::File::create(conf.join("a.yaml")).expect("open");
        let written = std::time::Instant::now();
        file.write_all(b"kept open").expect("write");
        let load = next_load(&mut rx, 1).await;
        assert_eq!(texts(&load), vec!["kept open"]);
        assert!(
            written.elapsed() >= Duration::from_millis(300),
            "read after {:?}, before the max delay",
            written.elapsed()
        );
        drop(file);
        // The close is not a change: no new reading.
        let waited = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
        assert!(waited.is_err(), "unexpected reading: {:?}", rx.borrow());
    }

    #[tokio::test]
    async fn reading_the_files_and_unrelated_changes_cause_no_new_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("a.yaml"), "one").expect("write");
        let source = FileSource::start(vec![conf.clone()], fast()).expect("start");
        let mut rx = source.subscribe();
        rx.borrow_and_update();
        std::fs::write(conf.join("notes.txt"), "not config").expect("write");
        std::fs::read_to_string(conf.join("a.yaml")).expect("read");
        let waited = tokio::time::timeout(Duration::from_millis(400), rx.changed()).await;
        assert!(waited.is_err(), "unexpected reading: {:?}", rx.borrow());
    }
}
