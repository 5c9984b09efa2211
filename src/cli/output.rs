//! Writing output files atomically: a temporary file in the same folder, then a rename, so a
//! reader (or Envoy watching the file) never sees a half-written file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Write `bytes` to `path`: all of it or, on failure, nothing (the old file stays as it was).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("--output {} is not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));

    let result = write_then_rename(&tmp, path, bytes);
    if result.is_err() {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .with_context(|| {
            format!(
                "cannot create {}; check that the folder exists and is writable",
                tmp.display()
            )
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    fs::rename(tmp, path)
        .with_context(|| format!("cannot replace {} with {}", path.display(), tmp.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.yaml");
        fs::write(&path, "old").expect("seed");
        write_atomically(&path, b"new content\n").expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new content\n");
        let entries: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(entries.len(), 1, "only the output file remains");
    }

    #[test]
    fn missing_folder_is_an_error_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("out.yaml");
        let err = write_atomically(&path, b"x").expect_err("no folder");
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
        assert!(!path.exists());
    }
}
