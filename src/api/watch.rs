//! The Watch service: a stream of key changes in revision order.
//!
//! A watcher subscribes to the live change broadcast first, then catches up
//! from the on-disk change feed from its start revision, then follows the
//! broadcast, skipping what it already sent. A watcher that falls behind the
//! broadcast buffer goes back to the change feed; one whose next revision
//! has been compacted meanwhile gets OUT_OF_RANGE and the stream ends.
//!
//! Where a watcher is in the feed is a `Cursor`: a revision and the index
//! of a change within it (the feed's own key), so a revision that changed
//! more keys than one catch-up read holds is read in several steps and
//! nothing of it is skipped. Such a revision's events then go out in more
//! than one response, as etcd does for large revisions. Reads from disk and
//! responses are bounded in bytes as well (`limits.response_bytes_max`, one
//! change always going whatever its size).
//!
//! Watchers are tasks the server owns: when it stops, each ends its stream
//! with UNAVAILABLE, naming the revision to watch again from on another
//! member, so that an open watch never holds a shutdown up.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_storage::read::ReadError;
use utopia_storage::FeedChange;

use super::access::Need;
use super::{header, kv_to_pb};
use crate::node::{Error, Node};
use utopia_raft::event::Access;

/// Changes read from disk per catch-up step.
const CATCH_UP_BATCH_MAX: usize = 512;
/// Responses buffered per watcher before the sender waits for the client.
const WATCH_STREAM_BUFFER_MAX: usize = 64;

pub struct WatchService {
    node: Arc<Node>,
    watchers: Arc<Semaphore>,
}

impl WatchService {
    pub fn new(node: Arc<Node>) -> Self {
        let max = node.limits.watchers_max as usize;
        Self {
            node,
            watchers: Arc::new(Semaphore::new(max)),
        }
    }
}

struct Filter {
    key: Vec<u8>,
    range_end: Vec<u8>,
}

impl Filter {
    fn matches(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            k == self.key.as_slice()
        } else if self.range_end == [0] {
            k >= self.key.as_slice()
        } else {
            k >= self.key.as_slice() && k < self.range_end.as_slice()
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (key, end) = (&req.get_ref().key, &req.get_ref().range_end);
        self.node
            .authorize(&req, Need::Keys(Access::Read, key, end))?;
        let r = req.into_inner();
        self.node.check_key(&r.key, "key")?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            self.node.reject(
                "overloaded",
                Error::ResourceExhausted(format!(
                    "too many watchers (watchers_max = {})",
                    self.node.limits.watchers_max
                )),
            )
        })?;
        // Subscribe before reading the current revision so nothing applied
        // in between is missed.
        let live = self.node.reader.subscribe();
        let (current, compacted) = self.node.reader.revisions().map_err(Error::from)?;
        if r.start_revision > 0 && r.start_revision < compacted {
            return Err(self
                .node
                .reject(
                    "compacted",
                    ReadError::Compacted {
                        requested: r.start_revision,
                        compacted,
                    }
                    .into(),
                )
                .into());
        }
        let next = if r.start_revision > 0 {
            r.start_revision
        } else {
            current + 1
        };
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER_MAX);
        let filter = Filter {
            key: r.key,
            range_end: r.range_end,
        };
        let node = self.node.clone();
        let started = self.node.tasks.spawn_graceful("watcher", move |stop| {
            run_watcher(node, filter, r.prev_kv, next, live, tx, permit, stop)
        });
        if !started {
            return Err(Error::Unavailable(
                "this member is shutting down; watch on another member".into(),
            )
            .into());
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The next change a watcher sends: a position in the change feed.
/// Everything before it has been sent (or filtered out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    revision: i64,
    /// The index of the change within `revision`.
    sub: u32,
}

impl Cursor {
    fn at(c: &FeedChange) -> Cursor {
        Cursor {
            revision: c.revision,
            sub: c.sub,
        }
    }

    /// The position right after `c`.
    fn after(c: &FeedChange) -> Cursor {
        Cursor {
            revision: c.revision,
            sub: c.sub.saturating_add(1),
        }
    }

    /// The start of the next revision, once the current one is known to be
    /// complete (a revision is written in one atomic batch, and broadcast
    /// whole).
    fn revision_done(self) -> Cursor {
        if self.sub == 0 {
            self
        } else {
            Cursor {
                revision: self.revision + 1,
                sub: 0,
            }
        }
    }
}

/// Sends a watcher's changes until its client goes, its revision is
/// compacted, or the server stops (`stop`).
#[allow(clippy::too_many_arguments)]
async fn run_watcher(
    node: Arc<Node>,
    filter: Filter,
    prev_kv: bool,
    start_revision: i64,
    mut live: broadcast::Receiver<Arc<utopia_storage::WatchBatch>>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let mut next = Cursor {
        revision: start_revision,
        sub: 0,
    };
    // The client learns why its stream ends and where to resume; a client
    // too slow to take it then just sees the stream end.
    let stopped = |next: Cursor, tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>| {
        let _ = tx.try_send(Err(Error::Unavailable(format!(
            "this member is shutting down; watch again from revision {} on another member",
            next.revision
        ))
        .into()));
    };
    loop {
        // Catch up from disk.
        loop {
            if stop.is_cancelled() {
                return stopped(next, &tx);
            }
            let changes = match node.reader.changes_from(
                next.revision,
                next.sub,
                CATCH_UP_BATCH_MAX,
                node.limits.response_bytes_max as usize,
            ) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(Error::from(e).into())).await;
                    return;
                }
            };
            let done = changes.len() < CATCH_UP_BATCH_MAX;
            if !send(&node, &filter, prev_kv, &mut next, &changes, &tx).await {
                return;
            }
            if done {
                // The read reached the end of the feed as it was: the last
                // revision in it was complete.
                next = next.revision_done();
                break;
            }
        }
        // Follow the live feed.
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                () = stop.cancelled() => return stopped(next, &tx),
                msg = live.recv() => match msg {
                    Ok(batch) => {
                        if batch.changes.first().is_some_and(|c| Cursor::at(c) > next) {
                            // A gap (for example after a lag): read it from disk.
                            break;
                        }
                        if !send(&node, &filter, prev_kv, &mut next, &batch.changes, &tx).await {
                            return;
                        }
                        next = next.revision_done();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Sends the changes at or after `next`, grouped by revision, and advances
/// `next` past them. False when the client has gone.
async fn send(
    node: &Node,
    filter: &Filter,
    prev_kv: bool,
    next: &mut Cursor,
    changes: &[FeedChange],
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
) -> bool {
    let bytes_max = node.limits.response_bytes_max as usize;
    let mut i = 0;
    while i < changes.len() {
        let rev = changes[i].revision;
        let mut events = Vec::new();
        let mut bytes = 0usize;
        // One revision's events, in responses of about `response_bytes_max`
        // each (one event always goes, whatever its size).
        while i < changes.len()
            && changes[i].revision == rev
            && (events.is_empty() || bytes < bytes_max)
        {
            let feed = &changes[i];
            let change = &feed.change;
            i += 1;
            if Cursor::at(feed) < *next {
                continue;
            }
            *next = Cursor::after(feed);
            if !filter.matches(&change.kv.key) {
                continue;
            }
            let prev = if prev_kv {
                match node.reader.prev_kv(&change.kv.key, rev) {
                    Ok(p) => p.map(kv_to_pb),
                    Err(e) => {
                        let _ = tx.send(Err(Error::from(e).into())).await;
                        return false;
                    }
                }
            } else {
                None
            };
            bytes = bytes.saturating_add(
                change.kv.key.len()
                    + change.kv.value.len()
                    + prev.as_ref().map_or(0, |p| p.key.len() + p.value.len()),
            );
            events.push(pb::Event {
                r#type: if change.deleted {
                    pb::event::EventType::Delete
                } else {
                    pb::event::EventType::Put
                } as i32,
                kv: Some(kv_to_pb(change.kv.clone())),
                prev_kv: prev,
            });
        }
        if !events.is_empty()
            && tx
                .send(Ok(pb::WatchResponse {
                    header: header(node, rev),
                    events,
                }))
                .await
                .is_err()
        {
            return false;
        }
    }
    true
}
