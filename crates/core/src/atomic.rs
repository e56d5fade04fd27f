//! Atomic artifact writes: a temp file in the destination folder, flushed, then renamed.
//!
//! A reader therefore sees either the previous file, or the complete new one, never a
//! half-written artifact. A failed write removes its temp file; so does SIGINT, SIGTERM
//! or SIGHUP once a binary has called [`install_signal_cleanup`]; the temp file of a
//! writer killed with SIGKILL is removed by the next write of the same artifact. A path
//! that exists and is not a regular file (a device, a folder, a socket) is never
//! replaced.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temp files being written by this process right now (removed on a signal).
static IN_PROGRESS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn in_progress() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remove the temp files this process is writing that `which` selects; returns how many
/// were removed.
pub fn remove_in_progress(which: impl Fn(&Path) -> bool) -> usize {
    in_progress().iter().filter(|p| which(p) && std::fs::remove_file(p).is_ok()).count()
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temp files being written, say so, and exit
/// with 130 (the shell's code for an interrupt). Call once at the start of a binary;
/// later calls do nothing.
pub fn install_signal_cleanup() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("{}", interrupted_message(remove_in_progress(|_| true)));
        std::process::exit(130);
    });
}

/// What an interrupted process says, having removed `removed` unfinished files.
pub fn interrupted_message(removed: usize) -> String {
    let cleaned = if removed > 0 {
        format!("removed {removed} unfinished file(s), so nothing half-written is left; ")
    } else {
        String::new()
    };
    format!(
        "interrupted: {cleaned}what was complete is kept. Rerun the same command to resume: a greedy run goes on \
         from its first incomplete depth, a training run from its last finished epoch"
    )
}

/// Refuse to replace `path` when it exists and is not a regular file.
pub fn check_replaceable(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => bail!(
            "{} exists and is not a regular file ({}): refusing to replace it; give a file path that is free or holds \
             a file",
            path.display(),
            if m.is_dir() { "a folder" } else { "a device, socket or pipe" }
        ),
        _ => Ok(()),
    }
}

/// The temp path used while `path` is being written: `.NAME.tmp-PID` in the same folder,
/// so the final rename never crosses a file system.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "artifact".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Remove temp files that an earlier, killed writer of `path` left behind (`.NAME.tmp-PID`
/// where no process PID runs any more): a prepared dataset's is 700 MB.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let artifact = name.to_string_lossy();
    remove_temps_of_dead_writers(dir, |a| a == artifact);
}

/// Remove every temp file in `dir` whose writer is dead (`.NAME.tmp-PID`, no process PID):
/// the orchestrator's sweep after a run, for artifacts that will not be written again.
/// Returns how many were removed.
pub fn remove_dead_temps(dir: &Path) -> usize {
    remove_temps_of_dead_writers(dir, |_| true)
}

/// Remove the temp files `.NAME.tmp-PID` in `dir` of the artifacts NAME that `which`
/// selects, where no process PID runs any more. Only where `/proc` tells which processes
/// run (Linux); elsewhere nothing is removed. Returns how many were removed.
fn remove_temps_of_dead_writers(dir: &Path, which: impl Fn(&str) -> bool) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some((artifact, pid)) = file.strip_prefix('.').and_then(|f| f.rsplit_once(".tmp-")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if which(artifact)
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Get the temp path of `path` ready for a writer: refuse a target that is not a regular
/// file, create the folder, remove dead writers' temp files, and register the temp path
/// for removal on a signal (the caller unregisters it when done).
fn start_temp(path: &Path) -> Result<PathBuf> {
    check_replaceable(path)?;
    ensure_parent(path)?;
    remove_stale_temps(path);
    let tmp = temp_path_for(path);
    in_progress().push(tmp.clone());
    Ok(tmp)
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
    let tmp = start_temp(path)?;
    let result = write(&tmp).and_then(|()| {
        // Make the bytes durable before the rename makes them visible.
        File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot flush {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} into place as {}", tmp.display(), path.display()))?;
        sync_parent(path)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    in_progress().retain(|p| p != &tmp);
    result
}

/// Write several files all or nothing: every temp file first, then the renames. If any
/// write fails, no file is replaced (a report never ends with some of its files new and
/// others missing because the disk filled up).
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut temps: Vec<PathBuf> = Vec::new();
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
        in_progress().retain(|p| !temps.contains(p));
    };
    for (path, bytes) in files {
        let written = start_temp(path).and_then(|tmp| {
            temps.push(tmp.clone());
            File::create(&tmp)
                .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
                .with_context(|| format!("cannot write {}: is the disk full or the folder read-only?", tmp.display()))
        });
        if let Err(e) = written {
            cleanup(&temps);
            return Err(e.context(format!(
                "nothing written: {} and the files beside it are left as they were",
                path.display()
            )));
        }
    }
    for ((path, _), tmp) in files.iter().zip(&temps) {
        if let Err(e) = std::fs::rename(tmp, path) {
            cleanup(&temps);
            return Err(e).with_context(|| format!("cannot move {} into place as {}", tmp.display(), path.display()));
        }
    }
    in_progress().retain(|p| !temps.contains(p));
    // Each folder flushed once (a report's files share one).
    for (i, (path, _)) in files.iter().enumerate() {
        if files[..i].iter().all(|(p, _)| p.parent() != path.parent()) {
            sync_parent(path)?;
        }
    }
    Ok(())
}

/// Make a rename durable: fsync the folder that holds `path`. Without it a power loss can
/// lose a file renamed into place, which a SIGKILL cannot. A file system that cannot sync a
/// folder (EINVAL) is passed over: there is nothing more to do on it.
pub fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match File::open(parent).and_then(|dir| dir.sync_all()) {
        Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => Err(anyhow::Error::from(e).context(format!(
            "cannot flush folder {} after writing {}: is the disk failing?",
            parent.display(),
            path.display()
        ))),
        _ => Ok(()),
    }
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
    use crate::atomic::check_replaceable;
    use crate::atomic::interrupted_message;
    use crate::atomic::remove_in_progress;
    use crate::atomic::sync_parent;
    use crate::atomic::write_all_atomic;
    use crate::atomic::write_atomic;
    use crate::atomic::write_atomic_with;
    use crate::atomic::write_bytes_atomic;
    use crate::atomic::Path;

    #[test]
    fn an_interrupt_says_how_to_resume() {
        let m = interrupted_message(2);
        assert!(m.starts_with("interrupted: removed 2 unfinished file(s)"), "{m}");
        assert!(m.contains("Rerun the same command to resume"), "{m}");
        assert!(interrupted_message(0).contains("Rerun the same command"));
    }

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
    fn what_is_not_a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let err = format!("{:#}", write_bytes_atomic(&folder, b"x").unwrap_err());
        assert!(err.contains("not a regular file") && err.contains("a folder"), "{err}");
        assert!(folder.is_dir());
        if Path::new("/dev/null").exists() {
            let err = format!("{:#}", check_replaceable(Path::new("/dev/null")).unwrap_err());
            assert!(err.contains("device"), "{err}");
        }
        let err = write_all_atomic(&[(&dir.path().join("a"), b"a"), (&folder, b"b")]).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"));
        assert!(!dir.path().join("a").exists(), "all or nothing");
    }

    #[test]
    fn all_or_nothing_leaves_the_old_files_when_one_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("sub/b"));
        write_all_atomic(&[(&a, b"1"), (&b, b"1")]).unwrap();
        // The second file's folder becomes unwritable: a file where the folder should be.
        std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub"), b"").unwrap();
        assert!(write_all_atomic(&[(&a, b"2"), (&b, b"2")]).is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"1", "a is not replaced when b fails");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
    }

    #[test]
    fn temp_files_in_progress_are_removed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut seen = 0;
        write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, b"partial").unwrap();
            seen = remove_in_progress(|p| p.starts_with(dir.path()));
            anyhow::bail!("interrupted")
        })
        .unwrap_err();
        assert_eq!(seen, 1, "the temp file being written was registered and removed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_folder_is_flushed_after_the_rename_also_for_a_bare_file_name() {
        let dir = tempfile::tempdir().unwrap();
        sync_parent(&dir.path().join("x.json")).unwrap();
        sync_parent(Path::new("x.json")).unwrap();
        let e = sync_parent(&dir.path().join("missing").join("x.json")).unwrap_err();
        assert!(format!("{e:#}").contains("cannot flush folder"), "{e:#}");
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
