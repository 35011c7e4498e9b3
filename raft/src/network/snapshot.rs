//! Snapshots between peers, streamed in chunks of at most
//! `snapshot_chunk_bytes`.
//!
//! The sender reads the state machine's view as it sends, never holding the
//! whole snapshot in memory. The receiver checks the sender before it
//! writes anything (cluster id, and a vote not older than its own), writes
//! the chunks to a temporary file of its own on a blocking thread, refuses a
//! stream past `snapshot_bytes_max`, and only then hands the file to Raft.

use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;

use openraft::error::{ReplicationClosed, StreamingError};
use openraft::raft::SnapshotResponse;
use openraft::storage::RaftStateMachine;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::Raft;
use tonic::Status;
use utopia_proto::raft_v1 as pb;

use super::client::PeerClient;
use super::guard::{PeerGuard, Refusal};
use super::{network, unreachable};
use crate::event;
use crate::TypeConfig;

/// Chunks read ahead of the network (sender) or queued for the disk
/// (receiver), at most.
const CHUNKS_BUFFERED_MAX: usize = 4;

impl PeerClient {
    pub(super) async fn send_snapshot(
        &mut self,
        vote: openraft::alias::VoteOf<TypeConfig>,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, crate::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let (target, addr) = (self.target, self.addr.clone());
        let net_err = |e: String| StreamingError::Network(network(target, &addr, e));
        let mut client = self
            .client()
            .map_err(|_| StreamingError::Unreachable(unreachable(target, &addr, "no channel")))?;
        let vote_cbor = event::encode(&vote).map_err(|e| net_err(e.to_string()))?;
        let meta_cbor = event::encode(&snapshot.meta).map_err(|e| net_err(e.to_string()))?;
        let chunk_bytes = self.settings.snapshot_chunk_bytes.max(1);
        let cluster_id = self.cluster_id();
        // Read the snapshot on a blocking thread, a bounded number of chunks ahead.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(CHUNKS_BUFFERED_MAX);
        let mut data = snapshot.snapshot;
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let first = pb::SnapshotChunk {
                vote_cbor,
                meta_cbor,
                data: Vec::new(),
                cluster_id,
            };
            tx.blocking_send(first)
                .map_err(|_| "receiver closed".to_string())?;
            loop {
                let mut buf = vec![0u8; chunk_bytes];
                let n =
                    read_full(&mut data, &mut buf).map_err(|e| format!("read snapshot: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = pb::SnapshotChunk {
                    vote_cbor: Vec::new(),
                    meta_cbor: Vec::new(),
                    data: buf,
                    cluster_id,
                };
                tx.blocking_send(chunk)
                    .map_err(|_| "receiver closed".to_string())?;
            }
        });
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            reply = send => reply,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(net_err(e)),
            Err(e) => return Err(net_err(e.to_string())),
        }
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable => {
                StreamingError::Unreachable(unreachable(target, &addr, s.message()))
            }
            _ => net_err(s.to_string()),
        })?;
        let result: Result<SnapshotResponse<TypeConfig>, String> =
            event::decode(&reply.into_inner().cbor).map_err(|e| net_err(e.to_string()))?;
        result.map_err(|e| net_err(format!("remote: {e}")))
    }
}

fn read_full(data: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = data.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Removes the temporary files of snapshots whose receipt a crash cut
/// short; nothing else reads them.
pub(super) fn remove_leftovers(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".snap.tmp") {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "remove a partly received snapshot");
            }
        }
    }
}

/// Where a received snapshot goes, and how large it may be.
pub(super) struct Incoming {
    pub dir: PathBuf,
    pub bytes_max: u64,
}

/// Receives one snapshot stream and installs it. Nothing is written before
/// the first chunk has passed the cluster-id and vote checks.
pub(super) async fn receive<SM>(
    guard: &PeerGuard,
    raft: &Raft<TypeConfig, SM>,
    incoming: &Incoming,
    mut stream: tonic::Streaming<pb::SnapshotChunk>,
) -> Result<Result<SnapshotResponse<TypeConfig>, String>, Status>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>,
{
    let malformed = |what: &str, e: event::CodecError| {
        guard.refuse(
            Refusal::Malformed,
            Status::invalid_argument(format!("snapshot {what}: {e}")),
        )
    };
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
    guard.check_cluster(first.cluster_id)?;
    let vote: openraft::alias::VoteOf<TypeConfig> =
        event::decode(&first.vote_cbor).map_err(|e| malformed("vote", e))?;
    let meta: openraft::alias::SnapshotMetaOf<TypeConfig> =
        event::decode(&first.meta_cbor).map_err(|e| malformed("meta", e))?;
    super::server::check_leader_vote(guard, &vote)?;
    let current = raft.metrics().borrow_watched().vote;
    if vote < current {
        return Err(guard.refuse(
            Refusal::StaleSnapshot,
            Status::failed_precondition(format!(
                "snapshot sent under vote {vote}, older than this node's {current}"
            )),
        ));
    }

    // The file is written on a blocking thread; chunks reach it through a
    // bounded queue, so a slow disk slows the sender instead of buffering.
    let dir = incoming.dir.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_BUFFERED_MAX);
    let writer =
        tokio::task::spawn_blocking(move || -> std::io::Result<tempfile::NamedTempFile> {
            std::fs::create_dir_all(&dir)?;
            let mut file = tempfile::Builder::new()
                .prefix("incoming-")
                .suffix(".snap.tmp")
                .tempfile_in(&dir)?;
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all(&chunk)?;
            }
            file.as_file().sync_all()?;
            Ok(file)
        });
    let mut received = first.data.len() as u64;
    let mut next = Some(first.data);
    let streamed: Result<(), Status> = async {
        loop {
            if let Some(data) = next.take() {
                if received > incoming.bytes_max {
                    return Err(guard.refuse(
                        Refusal::SnapshotTooLarge,
                        Status::resource_exhausted(format!(
                            "snapshot is larger than raft.snapshot_bytes_max = {}",
                            incoming.bytes_max
                        )),
                    ));
                }
                if !data.is_empty() && tx.send(data).await.is_err() {
                    return Ok(()); // the writer failed: its error is reported below
                }
            }
            let Some(chunk) = stream.message().await? else {
                return Ok(());
            };
            guard.check_cluster(chunk.cluster_id)?;
            received = received.saturating_add(chunk.data.len() as u64);
            next = Some(chunk.data);
        }
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(|e| Status::internal(e.to_string()))?;
    streamed?;
    let file = written.map_err(|e| {
        Status::internal(format!(
            "write the snapshot under {}: {e}",
            incoming.dir.display()
        ))
    })?;
    // The state machine takes the file over (it keeps it until the install
    // is complete, to finish it after a crash); if it never does, because
    // Raft refused the snapshot, it is removed here.
    let path = file
        .into_temp_path()
        .keep()
        .map_err(|e| Status::internal(format!("keep the received snapshot: {e}")))?;
    let data = crate::SnapshotData::from_file(path.clone())
        .map_err(|e| Status::internal(format!("open the received snapshot: {e}")))?;
    let snapshot = openraft::alias::SnapshotOf::<TypeConfig, crate::SnapshotData> {
        meta,
        snapshot: data,
    };
    let result = raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(|e| e.to_string());
    if path.exists() {
        let _ = std::fs::remove_file(&path);
    }
    Ok(result)
}
