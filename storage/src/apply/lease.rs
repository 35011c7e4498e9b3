//! Applying leases: grants, revocations and expiries, which delete the
//! keys attached in one revision.

use serde::{Deserialize, Serialize};
use utopia_raft::event::{Bytes, Outcome, Rejection};

use super::{Applier, ApplyError, StateRead};
use crate::codec;
use crate::keys::{self, meta, Cf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl_s: i64,
    pub granted_ms: u64,
}

impl LeaseRecord {
    pub fn deadline_ms(&self) -> u64 {
        self.granted_ms
            .saturating_add((self.ttl_s.max(0) as u64).saturating_mul(1000))
    }
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn apply_lease_grant(
        &mut self,
        at_ms: u64,
        id: i64,
        ttl_s: i64,
    ) -> Result<Outcome, ApplyError> {
        if id <= 0 || ttl_s <= 0 {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "lease id and ttl must be positive (id {id}, ttl {ttl_s}s)"
            ))));
        }
        let key = keys::lease_id_key(id);
        if self.get(Cf::Leases, &key)?.is_some() {
            return Ok(Outcome::Rejected(Rejection::LeaseExists(id)));
        }
        if let Some(why) = self.lease_refusal()? {
            return Ok(Outcome::Rejected(Rejection::Quota(why)));
        }
        self.count_lease(true)?;
        let lease = LeaseRecord {
            id,
            ttl_s,
            granted_ms: at_ms,
        };
        self.put(
            Cf::LeaseDeadlines,
            keys::deadline_key(lease.deadline_ms(), id).to_vec(),
            Vec::new(),
        );
        self.put(Cf::Leases, key.to_vec(), codec::encode(&lease));
        Ok(Outcome::Lease { id, ttl_s })
    }

    /// Revokes a lease and deletes its keys in one revision. With
    /// `expired_at_ms`, only if the lease's deadline has passed by then: a
    /// stale expiry proposal is rejected rather than cutting a lease short.
    pub(super) fn apply_lease_revoke(
        &mut self,
        id: i64,
        expired_at_ms: Option<u64>,
    ) -> Result<Outcome, ApplyError> {
        let key = keys::lease_id_key(id);
        let Some(lease) = self.get_dec::<LeaseRecord>(Cf::Leases, &key)? else {
            return Ok(Outcome::Rejected(Rejection::LeaseNotFound(id)));
        };
        if let Some(at) = expired_at_ms {
            if at < lease.deadline_ms() {
                return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                    "lease {id} expires at {} ms, not yet at {at} ms",
                    lease.deadline_ms()
                ))));
            }
        }
        let prefix = keys::lease_id_key(id);
        let end = keys::prefix_end(&prefix);
        let attached = self.scan(Cf::LeaseKeys, &prefix, end.as_deref(), 0)?;
        let mut victims = Vec::with_capacity(attached.len());
        for (lk, _) in attached {
            let (_, user_key) = keys::parse_lease_key(&lk)?;
            // Only the key, lease and revision are needed to delete it.
            if let Some(mut kv) = self.current(user_key)? {
                kv.value = Bytes::new();
                victims.push(kv);
            }
            self.delete(Cf::LeaseKeys, lk);
        }
        if !victims.is_empty() {
            let rev = self.get_i64(meta::REVISION)? + 1;
            let mut sub = 0;
            self.delete_keys(rev, &mut sub, victims);
            self.put(Cf::SmMeta, meta::REVISION.to_vec(), codec::encode(&rev));
        }
        self.delete(
            Cf::LeaseDeadlines,
            keys::deadline_key(lease.deadline_ms(), id).to_vec(),
        );
        self.count_lease(false)?;
        self.delete(Cf::Leases, key.to_vec());
        Ok(Outcome::Done)
    }
}
