//! Snapshots of the state machine.
//!
//! The state machine is already durable in RocksDB, so a snapshot is not a
//! copy made ahead of time: building one takes a RocksDB snapshot (a
//! consistent view, free to take) right after the batch that applied its
//! last entry, and keeps it until the next one. Its bytes are produced only
//! when somebody reads them, a follower that needs them, by
//! [`SnapshotEncoder`], straight from that view.
//!
//! The format: a magic line, a CBOR header with the Raft snapshot metadata,
//! one CBOR record per state-machine key (column family, key, value) in
//! column-family and key order, then a trailer with the record count and
//! the blake3 hash of every byte before it. A follower writes what it
//! receives to a file, and [`SnapshotReader`] verifies the hash before the
//! install is committed.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utopia_raft::openraft_api::SnapshotMetaOf;
use utopia_raft::TypeConfig;

use crate::db::DbView;
use crate::keys::Cf;
use crate::StoreError;

const MAGIC: &[u8; 12] = b"UTOPIASNAP1\n";

pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

#[derive(Serialize, Deserialize)]
enum Record {
    Header {
        meta: SnapshotMeta,
    },
    Entry {
        cf: String,
        key: serde_bytes::ByteBuf,
        value: serde_bytes::ByteBuf,
    },
    Trailer {
        records: u64,
        blake3: String,
    },
}

/// What the encoder serializes: [`Record`]'s header and entries, borrowed
/// (same variant and field names, so the same bytes), so that writing a
/// record copies nothing.
#[derive(Serialize)]
enum RecordRef<'a> {
    Header {
        meta: &'a SnapshotMeta,
    },
    Entry {
        cf: &'a str,
        key: &'a serde_bytes::Bytes,
        value: &'a serde_bytes::Bytes,
    },
}

struct HashingReader<R: Read> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Bytes encoded per refill of a [`SnapshotEncoder`]'s buffer (the last
/// record may take it past this).
const ENCODE_CHUNK_BYTES: usize = 256 << 10;

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// Where an encoder is in its view.
enum Stage {
    Header,
    /// Records of `Cf::STATE_MACHINE[cf]` from key `from` on.
    Records {
        cf: usize,
        from: Vec<u8>,
    },
    Trailer,
    Done,
    /// Reading the view failed; every later read fails the same way.
    Failed(String),
}

/// A snapshot's bytes, encoded from a view of the state machine as they
/// are read; at most about [`ENCODE_CHUNK_BYTES`] are held at a time.
pub(crate) struct SnapshotEncoder {
    view: Arc<DbView>,
    meta: SnapshotMeta,
    /// Where the change feed starts: below the compacted revision it is
    /// deleted, and stepping over its tombstones one by one is slow.
    changes_from: Vec<u8>,
    stage: Stage,
    buf: Vec<u8>,
    pos: usize,
    hasher: blake3::Hasher,
    records: u64,
}

impl SnapshotEncoder {
    pub(crate) fn new(view: Arc<DbView>, meta: SnapshotMeta, changes_from: Vec<u8>) -> Self {
        Self {
            view,
            meta,
            changes_from,
            stage: Stage::Header,
            buf: Vec::new(),
            pos: 0,
            hasher: blake3::Hasher::new(),
            records: 0,
        }
    }

    fn first_key(&self, cf: usize) -> Vec<u8> {
        if Cf::STATE_MACHINE.get(cf) == Some(&Cf::KvChanges) {
            self.changes_from.clone()
        } else {
            Vec::new()
        }
    }

    /// Replaces the buffer with the next bytes of the snapshot.
    fn fill(&mut self) -> Result<(), StoreError> {
        fn encode_err(e: impl std::fmt::Display) -> StoreError {
            StoreError::Io(format!("encode snapshot record: {e}"))
        }
        self.buf.clear();
        self.pos = 0;
        // Every byte before the trailer is hashed.
        let mut unhashed_from = 0;
        while self.buf.len() < ENCODE_CHUNK_BYTES {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Header => {
                    self.buf.extend_from_slice(MAGIC);
                    ciborium::into_writer(&RecordRef::Header { meta: &self.meta }, &mut self.buf)
                        .map_err(encode_err)?;
                    self.stage = Stage::Records {
                        cf: 0,
                        from: self.first_key(0),
                    };
                }
                Stage::Records { cf, from } => {
                    let Some(&name) = Cf::STATE_MACHINE.get(cf) else {
                        self.stage = Stage::Trailer;
                        continue;
                    };
                    let view = self.view.clone();
                    let mut it = view.raw_iterator(name);
                    it.seek(&from);
                    while let (Some(key), Some(value)) = (it.key(), it.value()) {
                        ciborium::into_writer(
                            &RecordRef::Entry {
                                cf: name.name(),
                                key: serde_bytes::Bytes::new(key),
                                value: serde_bytes::Bytes::new(value),
                            },
                            &mut self.buf,
                        )
                        .map_err(encode_err)?;
                        self.records += 1;
                        if self.buf.len() >= ENCODE_CHUNK_BYTES {
                            // Resume at the key's immediate successor.
                            let mut from = key.to_vec();
                            from.push(0);
                            self.stage = Stage::Records { cf, from };
                            break;
                        }
                        it.next();
                    }
                    if matches!(self.stage, Stage::Done) {
                        it.status()?;
                        self.stage = Stage::Records {
                            cf: cf + 1,
                            from: self.first_key(cf + 1),
                        };
                    }
                }
                Stage::Trailer => {
                    self.hasher.update(&self.buf[unhashed_from..]);
                    let trailer = Record::Trailer {
                        records: self.records,
                        blake3: self.hasher.finalize().to_hex().to_string(),
                    };
                    ciborium::into_writer(&trailer, &mut self.buf).map_err(encode_err)?;
                    unhashed_from = self.buf.len();
                    break;
                }
                stage @ (Stage::Done | Stage::Failed(_)) => {
                    self.stage = stage;
                    break;
                }
            }
        }
        self.hasher.update(&self.buf[unhashed_from..]);
        Ok(())
    }
}

impl Read for SnapshotEncoder {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match &self.stage {
                Stage::Done => return Ok(0),
                Stage::Failed(e) => return Err(io::Error::other(e.clone())),
                _ => {}
            }
            if let Err(e) = self.fill() {
                self.buf.clear();
                self.pos = 0;
                self.stage = Stage::Failed(e.to_string());
                return Err(io::Error::other(e.to_string()));
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One state-machine record: column family name, key, value.
pub type SnapshotEntry = (String, Vec<u8>, Vec<u8>);

/// Reads a snapshot, verifying its hash once the trailer is reached.
pub struct SnapshotReader<R: Read> {
    path: PathBuf,
    input: HashingReader<BufReader<R>>,
    records: u64,
    pub meta: SnapshotMeta,
}

impl<R: Read> SnapshotReader<R> {
    /// Starts reading `input`; `path` names it in errors.
    pub fn open(input: R, path: &Path) -> Result<Self, StoreError> {
        let mut input = HashingReader {
            inner: BufReader::new(input),
            hasher: blake3::Hasher::new(),
        };
        let mut magic = [0u8; 12];
        input
            .read_exact(&mut magic)
            .map_err(|e| io_err("read snapshot", path, e))?;
        if &magic != MAGIC {
            return Err(io_err("read snapshot", path, "not a utopia snapshot file"));
        }
        let meta = match ciborium::from_reader::<Record, _>(&mut input) {
            Ok(Record::Header { meta }) => meta,
            Ok(_) => return Err(io_err("read snapshot", path, "missing header")),
            Err(e) => return Err(io_err("read snapshot header", path, e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            input,
            records: 0,
            meta,
        })
    }

    /// The next (column family, key, value), or `None` after a verified
    /// trailer.
    pub fn next_entry(&mut self) -> Result<Option<SnapshotEntry>, StoreError> {
        let before = self.input.hasher.clone();
        match ciborium::from_reader::<Record, _>(&mut self.input) {
            Ok(Record::Entry { cf, key, value }) => {
                self.records += 1;
                Ok(Some((cf, key.into_vec(), value.into_vec())))
            }
            Ok(Record::Trailer { records, blake3 }) => {
                let hash = before.finalize().to_hex().to_string();
                if hash != blake3 || records != self.records {
                    return Err(io_err(
                        "verify snapshot",
                        &self.path,
                        format!(
                            "checksum mismatch ({} records read, {records} expected)",
                            self.records
                        ),
                    ));
                }
                Ok(None)
            }
            Ok(Record::Header { .. }) => Err(io_err("read snapshot", &self.path, "second header")),
            Err(e) => Err(io_err(
                "read snapshot",
                &self.path,
                format!("after {} records: {e}", self.records),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_records_encode_like_owned_ones() {
        let mut owned = Vec::new();
        ciborium::into_writer(
            &Record::Entry {
                cf: "kv".into(),
                key: serde_bytes::ByteBuf::from(b"k\x00".to_vec()),
                value: serde_bytes::ByteBuf::from(b"value".to_vec()),
            },
            &mut owned,
        )
        .unwrap();
        let mut borrowed = Vec::new();
        ciborium::into_writer(
            &RecordRef::Entry {
                cf: "kv",
                key: serde_bytes::Bytes::new(b"k\x00"),
                value: serde_bytes::Bytes::new(b"value"),
            },
            &mut borrowed,
        )
        .unwrap();
        assert_eq!(owned, borrowed);

        let meta = SnapshotMeta::default();
        let (mut owned, mut borrowed) = (Vec::new(), Vec::new());
        ciborium::into_writer(&Record::Header { meta: meta.clone() }, &mut owned).unwrap();
        ciborium::into_writer(&RecordRef::Header { meta: &meta }, &mut borrowed).unwrap();
        assert_eq!(owned, borrowed);
    }

    #[test]
    fn encoded_views_read_back_verify_and_stay_at_their_moment() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::open(dir.path()).unwrap();
        let db = &store.db;
        // Enough records to refill the encoder's buffer several times.
        for i in 0..20_000u32 {
            db.db
                .put_cf(db.cf(Cf::Kv), i.to_be_bytes(), [b'v'; 100])
                .unwrap();
        }
        let view = Arc::new(db.view());
        // Written after the view was taken: not in the snapshot.
        db.db.put_cf(db.cf(Cf::Kv), b"later", b"x").unwrap();
        db.db.delete_cf(db.cf(Cf::Kv), 7u32.to_be_bytes()).unwrap();

        let meta = SnapshotMeta::default();
        let mut bytes = Vec::new();
        SnapshotEncoder::new(view, meta.clone(), Vec::new())
            .read_to_end(&mut bytes)
            .unwrap();
        let label = Path::new("test snapshot");
        let mut r = SnapshotReader::open(&bytes[..], label).unwrap();
        assert_eq!(r.meta, meta);
        let mut n = 0u32;
        while let Some((cf, k, v)) = r.next_entry().unwrap() {
            if cf != "kv" {
                continue;
            }
            assert_eq!((k, v), (n.to_be_bytes().to_vec(), vec![b'v'; 100]));
            n += 1;
        }
        assert_eq!(n, 20_000);

        // One flipped byte in the middle fails the check.
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        let mut r = SnapshotReader::open(&bytes[..], label).unwrap();
        let failed = loop {
            match r.next_entry() {
                Ok(Some(_)) => continue,
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        assert!(failed, "a corrupt snapshot was accepted");
    }
}
