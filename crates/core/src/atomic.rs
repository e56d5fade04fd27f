//! Atomic artifact writes: a temp file in the destination folder, flushed, then renamed.
//!
//! A reader therefore sees either the previous file, or the complete new one, never a
//! half-written artifact. A failed write removes its temp file.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temp path used while `path` is being written: `.NAME.tmp-PID` in the same folder,
/// so the final rename never crosses a file system.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "artifact".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Create the parent folder of `path` if needed, with a clear error.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("cannot create folder {}: check the path and its permissions", parent.display())
            })?;
        }
    }
    Ok(())
}

/// Write `path` atomically by handing a temp path to `write`, then renaming it into place.
/// `write` must create the file at the path it is given.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    ensure_parent(path)?;
    let tmp = temp_path_for(path);
    let result = write(&tmp).and_then(|()| {
        // Make the bytes durable before the rename makes them visible.
        File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot flush {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} into place as {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write `path` atomically through a buffered writer.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    write_atomic_with(path, |tmp| {
        let file =
            File::create(tmp).with_context(|| format!("cannot create {}: is the folder writable?", tmp.display()))?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        w.flush().with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(())
    })
}

/// Write a byte slice atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).with_context(|| format!("cannot write {}", path.display())))
}

/// Serialize `value` as pretty JSON (with a trailing newline) and write it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot serialize JSON")?;
    text.push('\n');
    write_bytes_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            anyhow::bail!("interrupted")
        });
        assert!(err.is_err());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn write_replaces_previous_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.txt");
        write_bytes_atomic(&path, b"one").unwrap();
        write_bytes_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
