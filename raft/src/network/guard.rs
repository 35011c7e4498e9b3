//! What the peer port checks before Raft sees a message: the cluster id
//! every message carries, and, with peer TLS, the name on the caller's
//! certificate.
//!
//! The TLS layer has already refused callers without a certificate from
//! the peer CA; [`PeerGuard`] adds the allowed names, so that a CA that also
//! signs client certificates does not make every client a peer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tonic::Status;

/// The cluster a node belongs to, as every peer message carries it.
///
/// Zero means "not known yet": a node started with `--join` learns the id
/// from the first peer message it receives (the leader adding it) and
/// records it; from then on it refuses every other id.
#[derive(Clone)]
pub struct ClusterId {
    inner: Arc<ClusterIdInner>,
}

struct ClusterIdInner {
    id: AtomicU64,
    /// Makes an adopted id durable before it is used.
    record: Box<dyn Fn(u64) -> Result<(), String> + Send + Sync>,
    adopting: Mutex<()>,
}

impl ClusterId {
    /// `id` as recorded (0: unknown); `record` persists an adopted one.
    pub fn new(
        id: u64,
        record: impl Fn(u64) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(ClusterIdInner {
                id: AtomicU64::new(id),
                record: Box::new(record),
                adopting: Mutex::new(()),
            }),
        }
    }

    /// A fixed id that is never recorded anywhere (tests).
    pub fn fixed(id: u64) -> Self {
        Self::new(id, |_| Ok(()))
    }

    pub fn get(&self) -> u64 {
        self.inner.id.load(Ordering::Acquire)
    }

    /// Admits a message carrying `theirs`: the same id, or any id while
    /// this node knows none (it then adopts it).
    fn admit(&self, theirs: u64) -> Result<(), String> {
        let compare = |ours: u64| {
            if theirs == ours {
                Ok(())
            } else {
                Err(format!(
                    "the message is for cluster {theirs:016x}; this node belongs to cluster {ours:016x}"
                ))
            }
        };
        let ours = self.get();
        if ours != 0 {
            return compare(ours);
        }
        if theirs == 0 {
            // Neither side knows its cluster (data directories written
            // before cluster ids existed): nothing to compare.
            return Ok(());
        }
        let _one_at_a_time = self
            .inner
            .adopting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ours = self.get();
        if ours != 0 {
            return compare(ours);
        }
        (self.inner.record)(theirs).map_err(|e| format!("record cluster id {theirs:016x}: {e}"))?;
        self.inner.id.store(theirs, Ordering::Release);
        tracing::info!(cluster_id = %format!("{theirs:016x}"), "joined cluster");
        Ok(())
    }
}

impl std::fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterId({:016x})", self.get())
    }
}

/// Why the peer port refused a message; each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The message names another cluster (or none).
    ClusterId,
    /// The caller's certificate names no allowed peer.
    Certificate,
    /// A snapshot sent under a vote older than this node's.
    StaleSnapshot,
    /// A snapshot larger than the bound.
    SnapshotTooLarge,
    /// A forwarded proposal that the leader's checks refuse.
    Forwarded,
    /// A message that does not decode.
    Malformed,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::ClusterId,
        Refusal::Certificate,
        Refusal::StaleSnapshot,
        Refusal::SnapshotTooLarge,
        Refusal::Forwarded,
        Refusal::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::ClusterId => "cluster_id",
            Refusal::Certificate => "certificate",
            Refusal::StaleSnapshot => "stale_snapshot",
            Refusal::SnapshotTooLarge => "snapshot_too_large",
            Refusal::Forwarded => "forwarded_proposal",
            Refusal::Malformed => "malformed",
        }
    }
}

/// The checks every peer call passes first, and their counts.
pub struct PeerGuard {
    cluster: ClusterId,
    /// With peer TLS: a caller's certificate must be valid for one of
    /// these names (DNS names or IP addresses, matched against its
    /// subject alternative names). Empty: any certificate from the peer CA.
    allowed_names: Vec<rustls_pki_types::ServerName<'static>>,
    /// Peer TLS is on: a call without a verified certificate is refused.
    certificate_required: bool,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl PeerGuard {
    /// `allowed_names` must each be a DNS name or an IP address.
    pub fn new(
        cluster: ClusterId,
        certificate_required: bool,
        allowed_names: &[String],
    ) -> Result<Self, String> {
        let allowed_names = allowed_names
            .iter()
            .map(|n| {
                rustls_pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("peer name {n:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cluster,
            allowed_names,
            certificate_required,
            refused: Default::default(),
        })
    }

    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// How many messages were refused, by reason.
    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (*r, self.refused[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a refusal and returns the status to answer with.
    pub(crate) fn refuse(&self, why: Refusal, status: Status) -> Status {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = why.name(), error = %status.message(), "refused a peer message");
        status
    }

    /// Checks the caller of `req`: with peer TLS, its certificate must name
    /// an allowed peer.
    pub(crate) fn check_caller<T>(&self, req: &tonic::Request<T>) -> Result<(), Status> {
        if !self.certificate_required {
            return Ok(());
        }
        let certs = req.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(self.refuse(
                Refusal::Certificate,
                Status::unauthenticated("the peer port needs a peer certificate"),
            ));
        };
        if self.allowed_names.is_empty() {
            return Ok(());
        }
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            self.refuse(
                Refusal::Certificate,
                Status::unauthenticated(format!("peer certificate: {e}")),
            )
        })?;
        if self
            .allowed_names
            .iter()
            .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
        {
            return Ok(());
        }
        Err(self.refuse(
            Refusal::Certificate,
            Status::permission_denied(
                "the caller's certificate names none of this cluster's peers (tls.peer_allowed_names)",
            ),
        ))
    }

    /// Checks the cluster id a message carries.
    pub(crate) fn check_cluster(&self, theirs: u64) -> Result<(), Status> {
        self.cluster
            .admit(theirs)
            .map_err(|e| self.refuse(Refusal::ClusterId, Status::permission_denied(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_cluster_id_admits_only_itself() {
        let id = ClusterId::fixed(7);
        assert!(id.admit(7).is_ok());
        assert!(id.admit(8).is_err());
        assert!(id.admit(0).is_err());
    }

    #[test]
    fn an_unknown_cluster_id_adopts_the_first_and_records_it() {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let r = recorded.clone();
        let id = ClusterId::new(0, move |v| {
            r.lock().unwrap().push(v);
            Ok(())
        });
        assert!(id.admit(0).is_ok(), "unknown on both sides");
        assert_eq!(id.get(), 0);
        assert!(id.admit(42).is_ok());
        assert_eq!(id.get(), 42);
        assert!(id.admit(43).is_err());
        assert_eq!(*recorded.lock().unwrap(), vec![42]);

        let failing = ClusterId::new(0, |_| Err("disk full".into()));
        assert!(failing.admit(5).is_err());
        assert_eq!(failing.get(), 0, "not adopted unless recorded");
    }

    #[test]
    fn allowed_names_must_be_names() {
        assert!(PeerGuard::new(ClusterId::fixed(1), true, &["node1.example".into()]).is_ok());
        assert!(PeerGuard::new(ClusterId::fixed(1), true, &["127.0.0.1".into()]).is_ok());
        assert!(PeerGuard::new(ClusterId::fixed(1), true, &["not a name!".into()]).is_err());
    }
}
