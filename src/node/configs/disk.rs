//! The configuration directory's I/O, blocking (run it off the async
//! workers): listing it, reading a file bounded, and writing a file so
//! that it is either whole or absent, then reading it back.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::SystemTime;

use super::core::watched_file;

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub inode: u64,
}

impl Meta {
    fn of(m: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(m);
        #[cfg(not(unix))]
        let inode = 0;
        Meta {
            len: m.len(),
            modified: m.modified().ok(),
            inode,
        }
    }
}

/// What identifies the directory itself (device and inode), if it exists.
pub fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    let m = fs::metadata(dir).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        Some((0, 0))
    }
}

/// The watched files of `dir` (see [`watched_file`]), at most `max`, and
/// whether there were more.
pub fn list(dir: &Path, max: usize) -> std::io::Result<(Vec<String>, bool)> {
    let mut files = Vec::new();
    let mut more = false;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !watched_file(&name) {
            continue;
        }
        if files.len() >= max {
            more = true;
            break;
        }
        files.push(name);
    }
    files.sort();
    Ok((files, more))
}

/// A file's state on disk.
#[derive(Debug)]
pub enum Stat {
    Missing,
    /// Not a regular file (a directory, a symlink, a device).
    Other,
    File(Meta),
}

pub fn stat(path: &Path) -> std::io::Result<Stat> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(Stat::File(Meta::of(&m))),
        Ok(_) => Ok(Stat::Other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stat::Missing),
        Err(e) => Err(e),
    }
}

/// At most `bytes_max + 1` bytes of `path` (one more than allowed, so that
/// an oversize file is seen as such without reading all of it).
pub fn read_bounded(path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(bytes_max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The temporary file a write of `file` goes through: hidden, so the
/// watcher skips it.
pub fn temp_name(file: &str) -> String {
    format!(".{file}.utopia-tmp")
}

/// Writes `bytes` as `dir/file`: a temporary file in `dir`, fsynced, renamed
/// over `file`, the directory fsynced; then reads `file` back and compares
/// its blake3 with `hash`. Returns the written file's metadata, or what
/// failed.
pub fn write_verified(dir: &Path, file: &str, bytes: &[u8], hash: &str) -> Result<Meta, String> {
    let temp = dir.join(temp_name(file));
    let target = dir.join(file);
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&temp, &target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        // Best effort: nothing is left half-written under the real name.
        let _ = fs::remove_file(&temp);
        return Err(format!("write {}: {e}", target.display()));
    }
    let back = read_bounded(&target, bytes.len() as u64)
        .map_err(|e| format!("read back {}: {e}", target.display()))?;
    let got = crate::xmlconf::vote::hash(&back);
    if got != hash {
        return Err(format!(
            "{} reads back with hash {}, expected {}",
            target.display(),
            super::core::short(&got),
            super::core::short(hash)
        ));
    }
    match stat(&target) {
        Ok(Stat::File(meta)) => Ok(meta),
        Ok(_) => Err(format!("{} is no longer a regular file", target.display())),
        Err(e) => Err(format!("stat {}: {e}", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.xml"), b"old").unwrap();
        let hash = crate::xmlconf::vote::hash(b"new content");
        let meta = write_verified(dir.path(), "a.xml", b"new content", &hash).unwrap();
        assert_eq!(meta.len, 11);
        assert_eq!(fs::read(dir.path().join("a.xml")).unwrap(), b"new content");
        assert!(!dir.path().join(temp_name("a.xml")).exists());
        // A hash the bytes do not have: the read-back check fails.
        let err = write_verified(dir.path(), "a.xml", b"x", &hash).unwrap_err();
        assert!(err.contains("reads back with hash"), "{err}");
    }

    #[test]
    fn a_write_into_a_missing_dir_fails_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = write_verified(&gone, "a.xml", b"x", "h").unwrap_err();
        assert!(err.contains("gone"), "{err}");
    }

    #[test]
    fn list_skips_hidden_and_other_files_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "b.xml",
            "a.xml",
            ".a.xml.utopia-tmp",
            ".h.xml",
            "n.txt",
            "c.xml",
        ] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        assert_eq!(
            list(dir.path(), 10).unwrap(),
            (vec!["a.xml".into(), "b.xml".into(), "c.xml".into()], false)
        );
        assert_eq!(list(dir.path(), 2).unwrap().0.len(), 2);
        assert!(list(dir.path(), 2).unwrap().1);
        assert!(matches!(
            stat(&dir.path().join("a.xml")).unwrap(),
            Stat::File(_)
        ));
        assert!(matches!(
            stat(&dir.path().join("zz.xml")).unwrap(),
            Stat::Missing
        ));
        assert!(matches!(stat(dir.path()).unwrap(), Stat::Other));
    }

    #[test]
    fn reads_stop_one_byte_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.xml");
        fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&p, 10).unwrap().len(), 11);
        assert_eq!(read_bounded(&p, 1000).unwrap().len(), 100);
    }
}
