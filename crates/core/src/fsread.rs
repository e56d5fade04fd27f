//! Reading a file layerwise (or a user) hands a stage: regular files only, opened without
//! blocking, read up to the size its format allows.
//!
//! A FIFO, a device (a symlink to `/dev/zero`), a socket or a folder in an artifact's
//! place is refused at once with what it is, instead of hanging the stage on a pipe or
//! reading until memory runs out; a regular file larger than its format allows is refused
//! before a byte of it is read.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The largest JSON document layerwise reads (`train.json`, `eval.json`, lists): 64 MiB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// The largest text file layerwise reads (a pipeline, notes): 16 MiB.
pub const MAX_TEXT_BYTES: u64 = 16 << 20;

/// What a path that is not a regular file is, in words.
fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Open `path` (`what` names it in messages) for reading, without blocking on a FIFO, and
/// refuse anything but a regular file. Symlinks are followed: a link to a regular file is
/// read, a link to `/dev/zero` is refused as a device.
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |m: &std::fs::Metadata| -> Result<()> {
        if m.is_file() {
            return Ok(());
        }
        bail!(
            "{} is {}, not a {what} (a regular file): remove it or give the path of the file",
            path.display(),
            kind(m)
        )
    };
    // Checked before opening too, so a folder is named as one whatever open() says.
    if let Ok(m) = std::fs::metadata(path) {
        refuse(&m)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {what} {}", path.display()))?;
    // Checked again on what was opened: the path may have been replaced in between.
    refuse(&file.metadata().with_context(|| format!("cannot inspect {what} {}", path.display()))?)?;
    Ok(file)
}

/// Read all of the regular file `path` if it holds at most `max` bytes.
pub fn read_capped(path: &Path, what: &str, max: u64) -> Result<Vec<u8>> {
    let file = open_regular(path, what)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        bail!(
            "{} holds {len} bytes, more than a {what} can ({max} bytes): it is damaged or not a {what}",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds the read even if the file grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{} grew past the size a {what} can have ({max} bytes) while it was read", path.display());
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, what: &str, max: u64) -> Result<String> {
    let bytes = read_capped(path, what, max)?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text: it is not a {what}", path.display()))
}

/// Whether `path` exists (following links) and is something other than a regular file:
/// `Some` names what it is.
pub fn not_regular(path: &Path) -> Option<&'static str> {
    std::fs::metadata(path).ok().filter(|m| !m.is_file()).map(|m| kind(&m))
}

#[cfg(test)]
mod tests {
    use crate::fsread::not_regular;
    use crate::fsread::read_capped;

    #[test]
    fn only_regular_files_are_read_and_never_past_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.json");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_capped(&file, "document", 10).unwrap(), b"0123456789");
        let err = format!("{:#}", read_capped(&file, "document", 9).unwrap_err());
        assert!(err.contains("more than a document can"), "{err}");
        // A folder, a FIFO and a link to /dev/zero are refused at once, naming what they are.
        let err = format!("{:#}", read_capped(dir.path(), "training state", 100).unwrap_err());
        assert!(err.contains("is a folder, not a training state"), "{err}");
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path string this test owns.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = format!("{:#}", read_capped(&fifo, "training state", 100).unwrap_err());
        assert!(err.contains("named pipe"), "{err}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = format!("{:#}", read_capped(&zero, "eval.json", u64::MAX).unwrap_err());
        assert!(err.contains("a device"), "{err}");
        assert_eq!(not_regular(&zero), Some("a device"));
        assert_eq!(not_regular(&file), None);
        assert_eq!(not_regular(&dir.path().join("missing")), None);
    }
}
