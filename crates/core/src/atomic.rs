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

/// Remove temp files that an earlier, killed writer of `path` left behind (`.NAME.tmp-PID`
/// where no process PID runs any more): a prepared dataset's is 700 MB. Only where
/// `/proc` tells which processes run (Linux); elsewhere nothing is removed.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
    remove_stale_temps(path);
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
    fn temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.safetensors");
        // a pid far above any pid_max: no such process
        let stale = dir.path().join(".data.safetensors.tmp-4294967295");
        let other = dir.path().join(".other.bin.tmp-4294967295");
        std::fs::write(&stale, b"half a dataset").unwrap();
        std::fs::write(&other, b"not ours").unwrap();
        write_bytes_atomic(&path, b"whole").unwrap();
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists());
        }
        assert!(other.exists(), "only the same artifact's temp files are touched");
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
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
