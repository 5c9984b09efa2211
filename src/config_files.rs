//! Reading the user's config: `--config` paths (files or folders) → [`SourceFile`]s.
//!
//! Folders are walked recursively in sorted order, taking `*.yaml` and `*.yml` and skipping
//! hidden files and folders (names starting with `.`). A file named explicitly is read
//! whatever its extension. Paths keep the form the user gave (relative stays relative) so
//! diagnostics point at what they typed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use shadowplane_translator::SourceFile;

/// Why the config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFilesError {
    #[error(
        "config path {path} does not exist; pass an existing YAML file or a folder of *.yaml files"
    )]
    NotFound { path: String },
    #[error("cannot read {path}: {source}; check that it exists and is readable")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid UTF-8; save it as UTF-8 YAML")]
    NotUtf8 { path: String },
    #[error("no *.yaml or *.yml files under {path}; pass a folder that holds Istio YAML, or the files themselves")]
    NoYamlFiles { path: String },
    #[error("no config given; pass --config PATH (a YAML file or a folder)")]
    NoPaths,
}

/// Read every config file named by `paths`, in order: each path's files in sorted order,
/// paths in the order given. A file reached twice (named and inside a named folder) is read once.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<SourceFile>, ConfigFilesError> {
    if paths.is_empty() {
        return Err(ConfigFilesError::NoPaths);
    }
    let mut files: Vec<PathBuf> = Vec::new();
    // A file can only be reached twice through a second path or a symlink in a folder.
    let mut may_repeat = paths.len() > 1;
    for path in paths {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigFilesError::NotFound {
                    path: display(path),
                })
            }
            Err(source) => {
                return Err(ConfigFilesError::Io {
                    path: display(path),
                    source,
                })
            }
        };
        if meta.is_dir() {
            let before = files.len();
            walk(path, &mut files, &mut may_repeat)?;
            if files.len() == before {
                return Err(ConfigFilesError::NoYamlFiles {
                    path: display(path),
                });
            }
        } else {
            files.push(path.clone());
        }
    }

    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        // Deduplicate on the canonical path when there is one; the printed path stays as given.
        if may_repeat {
            let key = fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if !seen.insert(key) {
                continue;
            }
        }
        out.push(read(&file)?);
    }
    Ok(out)
}

/// Recursively add the YAML files under `dir` in sorted order; note a symlink.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, symlinks: &mut bool) -> Result<(), ConfigFilesError> {
    let io_err = |source| ConfigFilesError::Io {
        path: display(dir),
        source,
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        // The entry's own type (not followed), known from the directory listing.
        if entry.file_type().map_or(true, |t| t.is_symlink()) {
            *symlinks = true;
        }
        entries.push(entry.path());
    }
    entries.sort();
    for entry in entries {
        let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks: a linked folder or file counts like a real one.
        let meta = fs::metadata(&entry).map_err(|source| ConfigFilesError::Io {
            path: display(&entry),
            source,
        })?;
        if meta.is_dir() {
            walk(&entry, out, symlinks)?;
        } else if is_yaml(name) {
            out.push(entry);
        }
    }
    Ok(())
}

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// A file name a folder walk reads: `*.yaml` or `*.yml`, not hidden.
pub(crate) fn is_config_file_name(name: &str) -> bool {
    !name.starts_with('.') && is_yaml(name)
}

fn read(path: &Path) -> Result<SourceFile, ConfigFilesError> {
    let bytes = fs::read(path).map_err(|source| ConfigFilesError::Io {
        path: display(path),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigFilesError::NotUtf8 {
        path: display(path),
    })?;
    Ok(SourceFile {
        path: display(path),
        text,
    })
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create test folder");
        }
        fs::write(path, text).expect("write test file");
    }

    fn names(files: &[SourceFile], root: &Path) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                Path::new(&f.path)
                    .strip_prefix(root)
                    .expect("file under root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn folder_is_walked_recursively_in_sorted_order_taking_only_yaml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "b.yaml", "b");
        write(root, "a.yml", "a");
        write(root, "notes.txt", "ignored");
        write(root, "sub/z.yaml", "z");
        write(root, "sub/deeper/c.yaml", "c");
        write(root, "c.yaml", "c");
        let files = collect(&[root.to_path_buf()]).expect("collect");
        assert_eq!(
            names(&files, root),
            vec![
                "a.yml",
                "b.yaml",
                "c.yaml",
                "sub/deeper/c.yaml",
                "sub/z.yaml"
            ]
        );
        assert_eq!(files[0].text, "a");
    }

    #[test]
    fn hidden_files_and_folders_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, ".hidden.yaml", "x");
        write(root, ".git/config.yaml", "x");
        write(root, "visible.yaml", "v");
        let files = collect(&[root.to_path_buf()]).expect("collect");
        assert_eq!(names(&files, root), vec!["visible.yaml"]);
    }

    #[test]
    fn explicit_file_is_taken_whatever_its_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "istio.txt", "kind: VirtualService");
        let path = dir.path().join("istio.txt");
        let files = collect(std::slice::from_ref(&path)).expect("collect");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, path.display().to_string());
        assert_eq!(files[0].text, "kind: VirtualService");
    }

    #[test]
    fn paths_keep_the_order_given_and_are_read_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "z.yaml", "z");
        write(root, "folder/a.yaml", "a");
        let files = collect(&[
            root.join("z.yaml"),
            root.join("folder"),
            root.join("folder/a.yaml"),
        ])
        .expect("collect");
        assert_eq!(names(&files, root), vec!["z.yaml", "folder/a.yaml"]);
    }

    /// One folder: a file reached through a symlink in it too is read once.
    #[cfg(unix)]
    #[test]
    fn a_file_linked_twice_in_one_folder_is_read_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "a.yaml", "a");
        std::os::unix::fs::symlink(root.join("a.yaml"), root.join("b.yaml")).expect("symlink");
        write(root, "c.yaml", "c");
        let files = collect(&[root.to_path_buf()]).expect("collect");
        assert_eq!(names(&files, root), vec!["a.yaml", "c.yaml"]);
    }

    #[test]
    fn relative_paths_stay_relative() {
        // The crate root holds Cargo.toml; tests run with the package root as working dir.
        let files = collect(&[PathBuf::from("Cargo.toml")]).expect("collect");
        assert_eq!(files[0].path, "Cargo.toml");
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.yaml");
        let err = collect(std::slice::from_ref(&missing)).expect_err("missing path");
        let msg = err.to_string();
        assert!(matches!(err, ConfigFilesError::NotFound { .. }));
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");
    }

    #[test]
    fn folder_without_yaml_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "readme.md", "x");
        write(dir.path(), ".hidden.yaml", "x");
        let err = collect(&[dir.path().to_path_buf()]).expect_err("no yaml");
        assert!(matches!(err, ConfigFilesError::NoYamlFiles { .. }));
        assert!(err
            .to_string()
            .starts_with("no *.yaml or *.yml files under "));
    }

    #[test]
    fn non_utf8_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        fs::write(&path, [0xff, 0xfe, 0x00, 0x41]).expect("write");
        let err = collect(&[dir.path().to_path_buf()]).expect_err("not utf-8");
        assert!(matches!(err, ConfigFilesError::NotUtf8 { .. }));
        assert!(err.to_string().contains("bad.yaml"));
    }

    #[test]
    fn no_paths_is_an_error() {
        assert!(matches!(collect(&[]), Err(ConfigFilesError::NoPaths)));
    }
}
