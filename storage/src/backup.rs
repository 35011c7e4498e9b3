//! Backups: a consistent point-in-time copy of the state machine in one
//! file, checked before it is trusted, and restored into a new data
//! directory from which a new cluster starts.
//!
//! The file: a magic line (its last digit is the format), a length-prefixed
//! CBOR [`Manifest`], the state machine's snapshot stream (the same records
//! and trailer Raft snapshots use, see `snapshot.rs`), then the
//! 32-byte blake3 of every byte before it. A backup is read twice: once to
//! check the final hash, then to read the records (whose own trailer is
//! checked again).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::keys::{meta, Cf, Collection};
use crate::snapshot::{SnapshotEncoder, SnapshotReader};
use crate::state_machine::snapshot_of_view;
use crate::{Db, StoreError};

/// The start of every backup file; the digit is the format.
pub const MAGIC: &[u8; 14] = b"UTOPIABACKUP1\n";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The largest manifest read, in bytes.
const MANIFEST_BYTES_MAX: u32 = 64 * 1024;
/// Bytes written per restore batch.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// What a backup is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The cluster it was taken from.
    pub cluster_id: u64,
    /// The member that produced it.
    pub node_id: u64,
    /// The key-value revision it holds.
    pub revision: i64,
    pub compact_revision: i64,
    /// The last log entry applied to it.
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// When it was taken (the producing member's clock), ms since the epoch.
    pub created_ms: u64,
    /// The utopia version that wrote it.
    pub utopia_version: String,
}

/// Why a file is not a usable backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(String),
    #[error("{path}: not a utopia backup")]
    NotABackup { path: String },
    #[error("{path}: backup format {found} is newer than this build reads ({FORMAT}); use a newer utopia")]
    NewerFormat { path: String, found: String },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A backup's bytes, produced as they are read.
pub struct BackupStream {
    head: io::Cursor<Vec<u8>>,
    body: SnapshotEncoder,
    hasher: blake3::Hasher,
    tail: Option<io::Cursor<Vec<u8>>>,
    manifest: Manifest,
}

impl BackupStream {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

impl Read for BackupStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(tail) = &mut self.tail {
            return tail.read(buf);
        }
        let mut n = self.head.read(buf)?;
        if n == 0 {
            n = self.body.read(buf)?;
        }
        if n == 0 {
            let hash = self.hasher.finalize();
            let mut tail = io::Cursor::new(hash.as_bytes().to_vec());
            let n = tail.read(buf)?;
            self.tail = Some(tail);
            return Ok(n);
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Who takes a backup, for its manifest.
#[derive(Debug, Clone)]
pub struct Producer {
    pub cluster_id: u64,
    pub node_id: u64,
    pub created_ms: u64,
    pub utopia_version: String,
}

/// A backup of the state machine as it is now (one consistent view).
pub fn backup(db: &Db, producer: Producer) -> Result<BackupStream, BackupError> {
    let view = db.view();
    let revision: i64 = decode_or_zero(meta::REVISION, view.get(Cf::SmMeta, meta::REVISION)?)?;
    let compact_revision: i64 = decode_or_zero(
        meta::COMPACT_REVISION,
        view.get(Cf::SmMeta, meta::COMPACT_REVISION)?,
    )?;
    let Some((snapshot_meta, body)) = snapshot_of_view(view)? else {
        return Err(BackupError::Io(
            "nothing has been applied yet: there is nothing to back up".into(),
        ));
    };
    let last = snapshot_meta
        .last_log_id
        .expect("a snapshot of applied state");
    let manifest = Manifest {
        format: FORMAT,
        cluster_id: producer.cluster_id,
        node_id: producer.node_id,
        revision,
        compact_revision,
        last_log_index: last.index(),
        last_log_term: last.leader_id.term,
        created_ms: producer.created_ms,
        utopia_version: producer.utopia_version,
    };
    let encoded = codec::encode(&manifest);
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    head.extend_from_slice(&encoded);
    Ok(BackupStream {
        head: io::Cursor::new(head),
        body,
        hasher: blake3::Hasher::new(),
        tail: None,
        manifest,
    })
}

fn decode_or_zero(key: &[u8], raw: Option<Vec<u8>>) -> Result<i64, StoreError> {
    raw.map(|b| codec::decode(Cf::SmMeta, key, &b))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// What `utopia snapshot status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct BackupStatus {
    pub manifest: Manifest,
    /// File size.
    pub bytes: u64,
    /// blake3 of the file (every byte before the final hash), hex.
    pub blake3: String,
    /// Records in the state machine snapshot.
    pub records: u64,
    /// Current keys of the key-value store.
    pub keys: u64,
    /// Documents per collection.
    pub documents: BTreeMap<String, u64>,
    /// Leases.
    pub leases: u64,
}

/// Checks a backup through and through and says what it holds.
pub fn inspect(path: &Path) -> Result<BackupStatus, BackupError> {
    let (manifest, body_at, bytes, hash) = check(path)?;
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let records = read_records(path, body_at, bytes, |cf, _, _| {
        *counts.entry(cf.name()).or_default() += 1;
        Ok(())
    })?;
    Ok(BackupStatus {
        manifest,
        bytes,
        blake3: hash,
        records,
        keys: counts.get(Cf::Kv.name()).copied().unwrap_or(0),
        documents: Collection::ALL
            .iter()
            .map(|c| {
                let n = counts.get(c.cf().name()).copied().unwrap_or(0);
                (c.name().to_string(), n)
            })
            .collect(),
        leases: counts.get(Cf::Leases.name()).copied().unwrap_or(0),
    })
}

/// `part` with `.part` appended to its file name: where a backup is
/// written before [`publish`] gives it its name.
pub fn part_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Writes `stream` into `path`'s part file, syncs it, then [`publish`]es
/// it.
pub fn write_file(stream: &mut impl Read, path: &Path) -> Result<BackupStatus, BackupError> {
    let part = part_path(path);
    let written = (|| {
        let mut out = File::create(&part)?;
        io::copy(stream, &mut out)?;
        out.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(BackupError::Io(format!("write {}: {e}", part.display())));
    }
    publish(&part, path)
}

/// Makes `part`, a backup written in full and synced, the file `path`:
/// checks it end to end, renames it, syncs the directory. A part that does
/// not check is removed.
pub fn publish(part: &Path, path: &Path) -> Result<BackupStatus, BackupError> {
    let status = match inspect(part) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(part);
            return Err(e);
        }
    };
    let io_err = |what: &str, e: io::Error| BackupError::Io(format!("{what}: {e}"));
    std::fs::rename(part, path).map_err(|e| io_err(&format!("rename to {}", path.display()), e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(&format!("sync {}", dir.display()), e))?;
    Ok(status)
}

/// What a restore wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub manifest: Manifest,
    pub records: u64,
}

/// Writes the state machine of the backup at `path` into `db`, a new data
/// directory's store: everything but the applied log position and
/// membership, so that the member starts a new cluster (its own
/// `--initial-cluster`) over the restored state. Checked in full before
/// anything is written; synced when done. `progress` is called with the
/// bytes read so far.
pub fn restore(
    path: &Path,
    db: &Db,
    mut progress: impl FnMut(u64),
) -> Result<Restored, BackupError> {
    let (manifest, body_at, bytes, _) = check(path)?;
    let mut batch = WriteBatch::default();
    let mut err = None;
    let records = read_records_with_progress(
        path,
        body_at,
        bytes,
        |cf, k, v| {
            let position = cf == Cf::SmMeta
                && [meta::APPLIED, meta::MEMBERSHIP, meta::INSTALLING].contains(&k);
            if !position {
                batch.put_cf(db.cf(cf), k, v);
            }
            if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                if let Err(e) = db.db.write(std::mem::take(&mut batch)) {
                    err = Some(e);
                }
            }
            Ok(())
        },
        &mut progress,
    )?;
    if let Some(e) = err {
        return Err(StoreError::from(e).into());
    }
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.db.write_opt(batch, &opts).map_err(StoreError::from)?;
    db.db.flush_wal(true).map_err(StoreError::from)?;
    Ok(Restored { manifest, records })
}

/// Checks magic, format and the final hash; returns the manifest, where
/// the snapshot stream starts, the file size and its hash.
fn check(path: &Path) -> Result<(Manifest, u64, u64, String), BackupError> {
    let shown = path.display().to_string();
    let io_err = |what: &str, e: io::Error| BackupError::Io(format!("{what} {shown}: {e}"));
    let mut file = File::open(path).map_err(|e| io_err("open", e))?;
    let bytes = file.metadata().map_err(|e| io_err("stat", e))?.len();
    let mut magic = [0u8; MAGIC.len()];
    if bytes < (MAGIC.len() + 4 + 32) as u64 {
        return Err(BackupError::NotABackup { path: shown });
    }
    file.read_exact(&mut magic).map_err(|e| io_err("read", e))?;
    let family = &MAGIC[..MAGIC.len() - 2];
    if magic[..family.len()] != *family || magic[MAGIC.len() - 1] != b'\n' {
        return Err(BackupError::NotABackup { path: shown });
    }
    if magic != *MAGIC {
        return Err(BackupError::NewerFormat {
            path: shown,
            found: String::from_utf8_lossy(&magic[family.len()..MAGIC.len() - 1]).into_owned(),
        });
    }
    let corrupt = |reason: String| BackupError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    // The final hash first: nothing else is believed before it matches.
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_err("read", e))?;
    let mut hasher = blake3::Hasher::new();
    let mut body = BufReader::with_capacity(1 << 20, (&mut file).take(bytes - 32));
    io::copy(&mut body, &mut hasher).map_err(|e| io_err("read", e))?;
    let mut stored = [0u8; 32];
    file.read_exact(&mut stored)
        .map_err(|e| io_err("read", e))?;
    let hash = hasher.finalize();
    if hash.as_bytes() != &stored {
        return Err(corrupt(
            "checksum mismatch: the file is damaged or truncated".into(),
        ));
    }
    file.seek(SeekFrom::Start(MAGIC.len() as u64))
        .map_err(|e| io_err("read", e))?;
    let mut len = [0u8; 4];
    file.read_exact(&mut len).map_err(|e| io_err("read", e))?;
    let len = u32::from_be_bytes(len);
    if len > MANIFEST_BYTES_MAX || u64::from(len) + (MAGIC.len() + 4 + 32) as u64 > bytes {
        return Err(corrupt(format!("manifest of {len} bytes")));
    }
    let mut raw = vec![0u8; len as usize];
    file.read_exact(&mut raw).map_err(|e| io_err("read", e))?;
    let manifest: Manifest =
        ciborium::from_reader(&raw[..]).map_err(|e| corrupt(format!("manifest: {e}")))?;
    if manifest.format > FORMAT {
        return Err(BackupError::NewerFormat {
            path: shown,
            found: manifest.format.to_string(),
        });
    }
    let body_at = (MAGIC.len() + 4) as u64 + u64::from(len);
    Ok((manifest, body_at, bytes, hash.to_hex().to_string()))
}

fn read_records(
    path: &Path,
    body_at: u64,
    bytes: u64,
    visit: impl FnMut(Cf, &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    read_records_with_progress(path, body_at, bytes, visit, &mut |_| {})
}

/// Reads the snapshot records of a checked backup, in order.
fn read_records_with_progress(
    path: &Path,
    body_at: u64,
    bytes: u64,
    mut visit: impl FnMut(Cf, &[u8], &[u8]) -> Result<(), BackupError>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BackupError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BackupError::Io(format!("open {shown}: {e}")))?;
    file.seek(SeekFrom::Start(body_at))
        .map_err(|e| BackupError::Io(format!("read {shown}: {e}")))?;
    let read = Rc::new(Cell::new(body_at));
    let counted = Counted {
        inner: BufReader::with_capacity(1 << 20, file.take(bytes - 32 - body_at)),
        read: read.clone(),
    };
    let mut reader = SnapshotReader::open(counted, path)?;
    let mut records = 0u64;
    while let Some((cf_name, k, v)) = reader.next_entry()? {
        let cf = Cf::from_name(&cf_name)
            .filter(|cf| Cf::STATE_MACHINE.contains(cf))
            .ok_or_else(|| BackupError::Corrupt {
                path: shown.clone(),
                reason: format!("unknown column family {cf_name:?}"),
            })?;
        visit(cf, &k, &v)?;
        records += 1;
        if records.is_multiple_of(4096) {
            progress(read.get());
        }
    }
    progress(bytes);
    Ok(records)
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use openraft::vote::leader_id_adv::LeaderId;
    use utopia_raft::openraft_api::LogIdOf;
    use utopia_raft::TypeConfig;

    fn producer() -> Producer {
        Producer {
            cluster_id: 77,
            node_id: 2,
            created_ms: 1_000,
            utopia_version: "test".into(),
        }
    }

    /// A store with `n` keys, one device document, revision 5, applied up
    /// to entry 10 of term 3.
    fn source(dir: &Path, n: u32) -> crate::OpenedStore {
        let store = crate::open(dir).unwrap();
        let db = &store.db;
        for i in 0..n {
            db.db
                .put_cf(db.cf(Cf::Kv), format!("key{i:05}"), [b'v'; 64])
                .unwrap();
        }
        db.db
            .put_cf(db.cf(Cf::Devices), keys::document_key("h/c/1"), b"{}")
            .unwrap();
        let applied = LogIdOf::<TypeConfig>::new(
            LeaderId {
                term: 3,
                node_id: 1,
            },
            10,
        );
        for (k, v) in [
            (meta::REVISION, codec::encode(&5i64)),
            (meta::APPLIED, codec::encode(&Some(applied))),
        ] {
            db.db.put_cf(db.cf(Cf::SmMeta), k, v).unwrap();
        }
        store
    }

    fn save(store: &crate::OpenedStore, path: &Path) {
        let mut stream = backup(&store.db, producer()).unwrap();
        let mut out = File::create(path).unwrap();
        io::copy(&mut stream, &mut out).unwrap();
    }

    #[test]
    fn a_backup_reads_back_and_restores_without_its_log_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = source(&dir.path().join("a"), 20_000);
        let path = dir.path().join("b.utopia");
        save(&store, &path);

        let status = inspect(&path).unwrap();
        assert_eq!(status.manifest.revision, 5);
        assert_eq!(status.manifest.last_log_index, 10);
        assert_eq!(status.manifest.last_log_term, 3);
        assert_eq!(status.manifest.cluster_id, 77);
        assert_eq!(status.keys, 20_000);
        assert_eq!(status.documents["devices"], 1);
        assert_eq!(status.documents["zones"], 0);
        assert_eq!(status.bytes, std::fs::metadata(&path).unwrap().len());

        let target = crate::open(&dir.path().join("c")).unwrap();
        let mut seen = Vec::new();
        let restored = restore(&path, &target.db, |b| seen.push(b)).unwrap();
        assert_eq!(restored.records, status.records);
        assert_eq!(seen.last(), Some(&status.bytes));
        let view = target.db.view();
        assert_eq!(view.get(Cf::Kv, b"key19999").unwrap(), Some(vec![b'v'; 64]));
        assert_eq!(
            view.get(Cf::SmMeta, meta::REVISION).unwrap(),
            Some(codec::encode(&5i64))
        );
        assert_eq!(view.get(Cf::SmMeta, meta::APPLIED).unwrap(), None);
    }

    #[test]
    fn damaged_truncated_and_newer_backups_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = source(&dir.path().join("a"), 100);
        let path = dir.path().join("b.utopia");
        save(&store, &path);
        let good = std::fs::read(&path).unwrap();
        let variant = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            inspect(&p).map(|_| ()).unwrap_err().to_string()
        };

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x10;
        assert!(variant("flipped", &flipped).contains("checksum mismatch"));
        let truncated = &good[..good.len() - 100];
        assert!(variant("truncated", truncated).contains("checksum mismatch"));
        let mut newer = good.clone();
        newer[MAGIC.len() - 2] = b'2';
        let msg = variant("newer", &newer);
        assert!(msg.contains("format 2 is newer"), "{msg}");
        assert!(
            variant("other", b"hello, this is not a backup at all, no no no")
                .contains("not a utopia backup")
        );

        // Nothing is written by a refused restore.
        let target = crate::open(&dir.path().join("c")).unwrap();
        let p = dir.path().join("flipped");
        assert!(restore(&p, &target.db, |_| {}).is_err());
        assert_eq!(target.db.view().get(Cf::Kv, b"key00001").unwrap(), None);
    }
}
