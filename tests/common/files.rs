//! What tests do to configuration directories from outside a server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `bytes` as `dir/file` whole (through a hidden temporary file and
/// a rename), as an operator's tool would.
pub fn drop_file(dir: &Path, file: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".{file}.incoming"));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, dir.join(file)).unwrap();
}

/// Makes a directory immutable (`chattr +i`: no file can be created,
/// renamed or removed in it, even by root) until dropped.
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn set(dir: &Path) -> Immutable {
        chattr("+i", dir);
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

fn chattr(flag: &str, dir: &Path) {
    let out = Command::new("chattr").arg(flag).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "chattr {flag} {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
