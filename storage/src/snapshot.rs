//! Snapshot files.
//!
//! A snapshot is one file: a CBOR header with the Raft snapshot metadata,
//! then one CBOR record per state-machine key (column family, key, value) in
//! column-family and key order, then a trailer with the record count and
//! the blake3 hash of every byte before it. Files are written to a temporary
//! name, fsynced and renamed, so a crash never leaves a half-written file
//! under a snapshot's name; a reader verifies the hash before trusting the
//! content.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utopia_raft::openraft_api::SnapshotMetaOf;
use utopia_raft::TypeConfig;

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

/// What the writer serializes: [`Record`]'s header and entries, borrowed
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

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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

/// Writes a snapshot file record by record.
pub struct SnapshotWriter {
    tmp: PathBuf,
    path: PathBuf,
    /// Buffered before hashing: CBOR is written a few bytes at a time, and
    /// blake3 is fast on large chunks and slow on tiny ones.
    out: BufWriter<HashingWriter<File>>,
    records: u64,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl SnapshotWriter {
    pub fn create(path: PathBuf, meta: &SnapshotMeta) -> Result<Self, StoreError> {
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).map_err(|e| io_err("create snapshot", &tmp, e))?;
        let mut out = BufWriter::with_capacity(
            64 << 10,
            HashingWriter {
                inner: file,
                hasher: blake3::Hasher::new(),
            },
        );
        out.write_all(MAGIC)
            .map_err(|e| io_err("write snapshot", &tmp, e))?;
        let mut w = Self {
            tmp,
            path,
            out,
            records: 0,
        };
        w.write_record(&RecordRef::Header { meta })?;
        Ok(w)
    }

    fn write_record(&mut self, rec: &RecordRef<'_>) -> Result<(), StoreError> {
        ciborium::into_writer(rec, &mut self.out)
            .map_err(|e| io_err("write snapshot", &self.tmp, e))
    }

    pub fn entry(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.records += 1;
        self.write_record(&RecordRef::Entry {
            cf,
            key: serde_bytes::Bytes::new(key),
            value: serde_bytes::Bytes::new(value),
        })
    }

    /// Entries written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Writes the trailer, syncs and renames the file into place.
    pub fn finish(self) -> Result<PathBuf, StoreError> {
        // Everything before the trailer goes through the hasher.
        let HashingWriter {
            inner: file,
            hasher,
        } = self
            .out
            .into_inner()
            .map_err(|e| io_err("flush snapshot", &self.tmp, e.error()))?;
        let trailer = Record::Trailer {
            records: self.records,
            blake3: hasher.finalize().to_hex().to_string(),
        };
        let mut file = BufWriter::new(file);
        ciborium::into_writer(&trailer, &mut file)
            .map_err(|e| io_err("write snapshot", &self.tmp, e))?;
        let file = file
            .into_inner()
            .map_err(|e| io_err("flush snapshot", &self.tmp, e.error()))?;
        file.sync_all()
            .map_err(|e| io_err("sync snapshot", &self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| io_err("rename snapshot", &self.path, e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("sync directory", dir, e))?;
        }
        Ok(self.path)
    }
}

/// One state-machine record: column family name, key, value.
pub type SnapshotEntry = (String, Vec<u8>, Vec<u8>);

/// Reads a snapshot file, verifying its hash once the trailer is reached.
pub struct SnapshotReader {
    path: PathBuf,
    input: HashingReader<BufReader<File>>,
    records: u64,
    pub meta: SnapshotMeta,
}

impl SnapshotReader {
    pub fn open(file: File, path: &Path) -> Result<Self, StoreError> {
        let mut input = HashingReader {
            inner: BufReader::new(file),
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
    fn written_snapshots_read_back_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let mut w = SnapshotWriter::create(path.clone(), &SnapshotMeta::default()).unwrap();
        // Enough records to cross the write buffer several times.
        for i in 0..20_000u32 {
            w.entry("kv", &i.to_be_bytes(), &[b'v'; 100]).unwrap();
        }
        let path = w.finish().unwrap();
        let mut r = SnapshotReader::open(File::open(&path).unwrap(), &path).unwrap();
        let mut n = 0u32;
        while let Some((cf, k, v)) = r.next_entry().unwrap() {
            assert_eq!(
                (cf.as_str(), k, v),
                ("kv", n.to_be_bytes().to_vec(), vec![b'v'; 100])
            );
            n += 1;
        }
        assert_eq!(n, 20_000);

        // One flipped byte in the middle fails the check.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = SnapshotReader::open(File::open(&path).unwrap(), &path).unwrap();
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
