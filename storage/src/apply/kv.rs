//! Applying key-value events: puts, deletes and transactions, within
//! their byte bounds, recording each change in the key history and the
//! change feed.

use serde::{Deserialize, Serialize};
use utopia_raft::event::{
    Bytes, Compare, CompareOp, CompareTarget, DeleteOp, KeyValue, Outcome, PutOp, RangeOp,
    RangeResult, Rejection, Request, StepResult, TxnOp, TxnStep,
};

use super::{Applier, ApplyError, StateRead};
use crate::codec;
use crate::keys::{self, meta, Cf};
use crate::StoreError;

/// One change to the key space, as the watch stream reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub deleted: bool,
    /// For a delete: the key, `mod_revision` = the delete's revision, the
    /// rest zero.
    pub kv: KeyValue,
    /// The revision of the key's history record this change supersedes
    /// (its previous `mod_revision`), if it existed. Compaction deletes that
    /// record by key instead of searching the history for it. Absent in
    /// records written before it was kept: such a record's predecessor
    /// stays in the history (unreachable, since reads below the compacted
    /// revision are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_revision: Option<i64>,
}

/// A key's state at one revision, in `kv_history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub deleted: bool,
    pub kv: KeyValue,
}

/// The CBOR of a `deleted` and `kv` pair of fields, as serde writes them
/// at the start of a [`HistoryRecord`] and a [`ChangeRecord`], with the
/// pair already encoded (`kv_cbor`): a put stores its pair three times
/// (current, history, change feed), and encoding it once saves the other
/// two. `fields` is the map's field count, at most 23 (one header byte).
fn record_start(fields: u8, deleted: bool, kv_cbor: &[u8], extra_bytes: usize) -> Vec<u8> {
    debug_assert!(fields < 24);
    let mut out = Vec::with_capacity(1 + 8 + 1 + 3 + kv_cbor.len() + extra_bytes);
    out.push(0xa0 | fields); // map, `fields` pairs
    out.extend_from_slice(b"\x67deleted"); // text of 7 bytes
    out.push(if deleted { 0xf5 } else { 0xf4 });
    out.extend_from_slice(b"\x62kv"); // text of 2 bytes
    out.extend_from_slice(kv_cbor);
    out
}

impl HistoryRecord {
    /// The record's encoding (`codec::encode` of it) from its pair's.
    pub(crate) fn encode_with(deleted: bool, kv_cbor: &[u8]) -> Vec<u8> {
        record_start(2, deleted, kv_cbor, 0)
    }
}

impl ChangeRecord {
    /// The record's encoding (`codec::encode` of it) from its pair's.
    pub(crate) fn encode_with(
        deleted: bool,
        kv_cbor: &[u8],
        prev_revision: Option<i64>,
    ) -> Vec<u8> {
        let Some(prev) = prev_revision else {
            return record_start(2, deleted, kv_cbor, 0);
        };
        let mut out = record_start(3, deleted, kv_cbor, 14 + 9);
        out.extend_from_slice(b"\x6dprev_revision"); // text of 13 bytes
        codec::encode_into(&prev, &mut out);
        out
    }
}

/// One change in the key-value change feed: its revision, its index within
/// the revision (the feed's key is `revision ++ sub`) and the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub revision: i64,
    pub sub: u32,
    pub change: ChangeRecord,
}

/// The key bounds etcd's range convention describes: an empty `range_end`
/// is the key alone, `[0]` is every key from `key` on, anything else is
/// `[key, range_end)`.
pub(crate) fn range_bounds(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        (key.to_vec(), Some(end))
    } else if range_end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(range_end.to_vec()))
    }
}

/// The byte bound of a transaction logged before the bound travelled in
/// the event, and of a single put or delete: the largest
/// `limits.txn_bytes_max` accepts, so that whatever a proposer allowed,
/// applying stays within it.
pub const APPLY_BYTES_MAX: u64 = 64 << 20;

/// Bytes each pair read or key touched counts beyond its own (its framing
/// in a response, its tombstone records for a delete).
pub const TOUCHED_ITEM_OVERHEAD_BYTES: u64 = 64;

/// A transaction's bound in bytes, as applied.
fn txn_bytes_max(txn: &TxnOp) -> u64 {
    match txn.bytes_max {
        0 => APPLY_BYTES_MAX,
        n => n.min(APPLY_BYTES_MAX),
    }
}

/// What a request may still read or touch, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct ByteBudget {
    max: u64,
    left: u64,
}

impl ByteBudget {
    pub fn new(max: u64) -> Self {
        Self { max, left: max }
    }

    /// Takes `n` bytes; false, taking nothing, when fewer are left.
    fn take(&mut self, n: u64) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    fn used(&self) -> u64 {
        self.max - self.left
    }
}

/// Whether one key's state (`None`: absent) satisfies a compare.
fn compare_one(cmp: &Compare, kv: Option<&KeyValue>) -> bool {
    let ord = match (&cmp.target, kv) {
        (CompareTarget::Value(want), Some(kv)) => kv.value[..].cmp(&want[..]),
        // A missing key has no value: every value comparison fails.
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Version(n), kv) => kv.map_or(0, |k| k.version).cmp(n),
        (CompareTarget::CreateRevision(n), kv) => kv.map_or(0, |k| k.create_revision).cmp(n),
        (CompareTarget::ModRevision(n), kv) => kv.map_or(0, |k| k.mod_revision).cmp(n),
        (CompareTarget::Lease(n), kv) => kv.map_or(0, |k| k.lease).cmp(n),
    };
    match cmp.op {
        CompareOp::Equal => ord.is_eq(),
        CompareOp::NotEqual => ord.is_ne(),
        CompareOp::Greater => ord.is_gt(),
        CompareOp::Less => ord.is_lt(),
    }
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn apply_single(
        &mut self,
        _req: &Request,
        step: TxnStep,
    ) -> Result<Outcome, ApplyError> {
        if let Some(rej) = self.check_steps(std::slice::from_ref(&step))? {
            return Ok(Outcome::Rejected(rej));
        }
        let mut budget = ByteBudget::new(APPLY_BYTES_MAX);
        if !self.charge_step(&step, &mut budget, false)? {
            return Ok(Outcome::Rejected(Rejection::TooLarge {
                bytes_max: APPLY_BYTES_MAX,
            }));
        }
        let rev = self.get_i64(meta::REVISION)?;
        let (mut results, wrote) =
            self.run_steps(rev + 1, std::slice::from_ref(&step), &mut budget)?;
        if wrote {
            self.put(
                Cf::SmMeta,
                meta::REVISION.to_vec(),
                codec::encode(&(rev + 1)),
            );
        }
        Ok(match results.pop() {
            Some(StepResult::Put { prev }) => Outcome::Put { prev },
            Some(StepResult::Delete { deleted, prev }) => Outcome::Delete { deleted, prev },
            _ => Outcome::Done,
        })
    }

    /// Applies a transaction within its byte bound (`TxnOp::bytes_max`):
    /// compares and the chosen branch's deletes and `prev_kv` reads are
    /// counted before anything is written, and a transaction over the
    /// bound is rejected whole; ranges then take what is left and stop
    /// there (`more`). The proposer refuses a transaction it estimates to
    /// be over the bound, so this is the guard for a state that grew
    /// between the estimate and the commit, or a proposer that did not
    /// check: whatever reaches the log, applying it stays bounded, and the
    /// same on every replica.
    pub(super) fn apply_txn(&mut self, _req: &Request, txn: &TxnOp) -> Result<Outcome, ApplyError> {
        let bytes_max = txn_bytes_max(txn);
        let too_large = Outcome::Rejected(Rejection::TooLarge { bytes_max });
        let mut budget = ByteBudget::new(bytes_max);
        let mut succeeded = true;
        for cmp in &txn.compares {
            match self.compare(cmp, &mut budget)? {
                Some(true) => {}
                Some(false) => {
                    succeeded = false;
                    break;
                }
                None => return Ok(too_large),
            }
        }
        let steps = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        if let Some(rej) = self.check_steps(steps)? {
            return Ok(Outcome::Rejected(rej));
        }
        for step in steps {
            if !self.charge_step(step, &mut budget, false)? {
                return Ok(too_large);
            }
        }
        let rev = self.get_i64(meta::REVISION)?;
        let (results, wrote) = self.run_steps(rev + 1, steps, &mut budget)?;
        if wrote {
            self.put(
                Cf::SmMeta,
                meta::REVISION.to_vec(),
                codec::encode(&(rev + 1)),
            );
        }
        Ok(Outcome::Txn { succeeded, results })
    }

    /// The bytes `txn` would read or touch in the current state, counting
    /// both branches in full (the larger of the two) and stopping once
    /// past `bytes_max`: `None` then. What a proposer checks before
    /// proposing; the applier applies the same bound when it commits.
    pub fn txn_bytes(&self, txn: &TxnOp, bytes_max: u64) -> Result<Option<u64>, StoreError> {
        let mut budget = ByteBudget::new(bytes_max);
        for cmp in &txn.compares {
            if self.compare(cmp, &mut budget)?.is_none() {
                return Ok(None);
            }
        }
        let mut largest = 0;
        for steps in [&txn.success, &txn.failure] {
            let mut branch = budget;
            for step in steps {
                if !self.charge_step(step, &mut branch, true)? {
                    return Ok(None);
                }
            }
            largest = largest.max(branch.used());
        }
        Ok(Some(largest))
    }

    /// Counts into `budget` what `step` reads or touches now: a delete its
    /// keys (and their pairs with `prev_kv`), a put its key and value (and
    /// the previous pair with `prev_kv`), and with `ranges` a range its
    /// pairs (its keys with `keys_only`, nothing with `count_only`), up to
    /// its count limit. Sizes are of the stored records, not decoded.
    /// False, as soon as it is known, when `budget` cannot hold it all.
    pub(super) fn charge_step(
        &self,
        step: &TxnStep,
        budget: &mut ByteBudget,
        ranges: bool,
    ) -> Result<bool, StoreError> {
        match step {
            TxnStep::Range(r) => {
                if !ranges || r.count_only {
                    return Ok(true);
                }
                let (start, end) = range_bounds(&r.key, &r.range_end);
                let limit = usize::try_from(r.limit).unwrap_or(0);
                let (mut seen, mut fits) = (0usize, true);
                self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
                    seen += 1;
                    let size = if r.keys_only {
                        k.len()
                    } else {
                        k.len() + v.len()
                    };
                    fits = budget.take(size as u64 + TOUCHED_ITEM_OVERHEAD_BYTES);
                    Ok(fits && (limit == 0 || seen < limit))
                })?;
                Ok(fits)
            }
            TxnStep::Put(p) => {
                let mut size = (p.key.len() + p.value.len()) as u64;
                if p.prev_kv {
                    size += self.get(Cf::Kv, &p.key)?.map_or(0, |v| v.len() as u64);
                }
                Ok(budget.take(size + TOUCHED_ITEM_OVERHEAD_BYTES))
            }
            TxnStep::Delete(d) => {
                let (start, end) = range_bounds(&d.key, &d.range_end);
                let mut fits = true;
                self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
                    let size = if d.prev_kv {
                        k.len() + v.len()
                    } else {
                        k.len()
                    };
                    fits = budget.take(size as u64 + TOUCHED_ITEM_OVERHEAD_BYTES);
                    Ok(fits)
                })?;
                Ok(fits)
            }
        }
    }

    /// Checks what must hold before any step of a write runs, so that a
    /// rejected request writes nothing: leases exist, no key is written
    /// twice in one revision.
    pub(super) fn check_steps(&self, steps: &[TxnStep]) -> Result<Option<Rejection>, StoreError> {
        let mut put_keys = std::collections::BTreeSet::new();
        // One step (every put and delete outside a transaction) cannot
        // repeat a key.
        let one_step = steps.len() == 1;
        for step in steps {
            if let TxnStep::Put(p) = step {
                if p.lease != 0
                    && self
                        .get(Cf::Leases, &keys::lease_id_key(p.lease))?
                        .is_none()
                {
                    return Ok(Some(Rejection::LeaseNotFound(p.lease)));
                }
                if !one_step && !put_keys.insert(p.key.to_vec()) {
                    return Ok(Some(Rejection::DuplicateKey(
                        String::from_utf8_lossy(&p.key).into_owned(),
                    )));
                }
            }
        }
        if put_keys.is_empty() {
            return Ok(None);
        }
        for step in steps {
            if let TxnStep::Delete(d) = step {
                let (start, end) = range_bounds(&d.key, &d.range_end);
                if let Some(k) = put_keys
                    .iter()
                    .find(|k| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                {
                    return Ok(Some(Rejection::DuplicateKey(
                        String::from_utf8_lossy(k).into_owned(),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Runs the steps at revision `rev`; ranges take their pairs out of
    /// `budget` (what the checks before left of it).
    pub(super) fn run_steps(
        &mut self,
        rev: i64,
        steps: &[TxnStep],
        budget: &mut ByteBudget,
    ) -> Result<(Vec<StepResult>, bool), StoreError> {
        let mut results = Vec::with_capacity(steps.len());
        let mut sub = 0u32;
        for step in steps {
            results.push(match step {
                TxnStep::Range(r) => StepResult::Range(self.range_current(r, budget)?),
                TxnStep::Put(p) => self.put_key(rev, &mut sub, p)?,
                TxnStep::Delete(d) => self.delete_range(rev, &mut sub, d)?,
            });
        }
        Ok((results, sub > 0))
    }

    pub(super) fn current(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.get_dec(Cf::Kv, key)
    }

    /// `key`'s current pair without its value (empty): its revisions and
    /// lease, from the state's key cache when it holds them and this batch
    /// did not write the key, read from the store otherwise.
    fn current_facts(&self, key: &Bytes) -> Result<Option<KeyValue>, StoreError> {
        if self.overlay.contains(Cf::Kv, key) {
            return self.current(key);
        }
        let Some(facts) = self.base.key_facts(key) else {
            return self.current(key);
        };
        let kv = KeyValue {
            key: key.clone(),
            value: Bytes::new(),
            create_revision: facts.create_revision,
            mod_revision: facts.mod_revision,
            version: facts.version,
            lease: facts.lease,
        };
        #[cfg(debug_assertions)]
        {
            let read = self
                .current(key)?
                .map(|kv| crate::key_cache::KeyFacts::of(&kv));
            assert_eq!(read, Some(facts), "the key cache disagrees with the store");
        }
        Ok(Some(kv))
    }

    /// Writes `kv`'s history and change-feed records at `rev` and returns
    /// the pair's encoding, which both records hold (a put stores it as
    /// the key's current pair too).
    pub(super) fn record_change(
        &mut self,
        rev: i64,
        sub: &mut u32,
        deleted: bool,
        kv: KeyValue,
        prev_revision: Option<i64>,
    ) -> Vec<u8> {
        let kv_cbor = codec::encode(&kv);
        self.put(
            Cf::KvHistory,
            keys::history_key(&kv.key, rev),
            HistoryRecord::encode_with(deleted, &kv_cbor),
        );
        self.put(
            Cf::KvChanges,
            keys::change_key(rev, *sub).to_vec(),
            ChangeRecord::encode_with(deleted, &kv_cbor, prev_revision),
        );
        let change = ChangeRecord {
            deleted,
            kv,
            prev_revision,
        };
        self.changes.push(FeedChange {
            revision: rev,
            sub: *sub,
            change,
        });
        *sub += 1;
        kv_cbor
    }

    pub(super) fn put_key(
        &mut self,
        rev: i64,
        sub: &mut u32,
        op: &PutOp,
    ) -> Result<StepResult, StoreError> {
        let prev = if op.prev_kv {
            self.current(&op.key)?
        } else {
            self.current_facts(&op.key)?
        };
        let kv = KeyValue {
            key: op.key.clone(),
            value: op.value.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: op.lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != op.lease {
                self.delete(Cf::LeaseKeys, keys::lease_key(p.lease, &p.key));
            }
        }
        if op.lease != 0 {
            self.put(
                Cf::LeaseKeys,
                keys::lease_key(op.lease, &op.key),
                Vec::new(),
            );
        }
        let prev_revision = prev.as_ref().map(|p| p.mod_revision);
        let kv_cbor = self.record_change(rev, sub, false, kv, prev_revision);
        self.put(Cf::Kv, op.key.to_vec(), kv_cbor);
        Ok(StepResult::Put {
            prev: if op.prev_kv { prev } else { None },
        })
    }

    pub(super) fn delete_keys(&mut self, rev: i64, sub: &mut u32, victims: Vec<KeyValue>) {
        for kv in &victims {
            if kv.lease != 0 {
                self.delete(Cf::LeaseKeys, keys::lease_key(kv.lease, &kv.key));
            }
            self.delete(Cf::Kv, kv.key.to_vec());
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev,
                ..Default::default()
            };
            self.record_change(rev, sub, true, tomb, Some(kv.mod_revision));
        }
    }

    pub(super) fn delete_range(
        &mut self,
        rev: i64,
        sub: &mut u32,
        op: &DeleteOp,
    ) -> Result<StepResult, StoreError> {
        let (start, end) = range_bounds(&op.key, &op.range_end);
        // Without prev_kv a deleted pair's value is not needed: only its
        // key, lease and revision are held (the checks before counted the
        // keys against the request's bound).
        let mut victims = Vec::new();
        self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
            let mut kv: KeyValue = codec::decode(Cf::Kv, k, v)?;
            if !op.prev_kv {
                kv.value = Bytes::new();
            }
            victims.push(kv);
            Ok(true)
        })?;
        let deleted = victims.len() as i64;
        let prev = if op.prev_kv {
            victims.clone()
        } else {
            Vec::new()
        };
        self.delete_keys(rev, sub, victims);
        Ok(StepResult::Delete { deleted, prev })
    }

    /// A range inside a transaction: every key in it is counted (from the
    /// keys, without decoding), and pairs are taken while `budget` holds
    /// them and the count limit allows; `more` when some were left out.
    pub(super) fn range_current(
        &self,
        op: &RangeOp,
        budget: &mut ByteBudget,
    ) -> Result<RangeResult, StoreError> {
        let (start, end) = range_bounds(&op.key, &op.range_end);
        let limit = if op.limit > 0 {
            op.limit as usize
        } else {
            usize::MAX
        };
        let mut kvs = Vec::new();
        let mut count = 0i64;
        let mut full = op.count_only;
        self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
            count += 1;
            if full || kvs.len() >= limit {
                full = true;
                return Ok(true);
            }
            let size = if op.keys_only {
                k.len()
            } else {
                k.len() + v.len()
            };
            if !budget.take(size as u64 + TOUCHED_ITEM_OVERHEAD_BYTES) {
                full = true;
                return Ok(true);
            }
            let mut kv: KeyValue = codec::decode(Cf::Kv, k, v)?;
            if op.keys_only {
                kv.value = Bytes::new();
            }
            kvs.push(kv);
            Ok(true)
        })?;
        Ok(RangeResult {
            more: !op.count_only && (kvs.len() as i64) < count,
            count,
            kvs,
        })
    }

    /// Evaluates a compare, counting the pairs it reads into `budget`:
    /// `None` when they do not fit.
    pub(super) fn compare(
        &self,
        cmp: &Compare,
        budget: &mut ByteBudget,
    ) -> Result<Option<bool>, StoreError> {
        if cmp.range_end.is_empty() {
            let current = match self.get(Cf::Kv, &cmp.key)? {
                Some(v) => {
                    if !budget.take((cmp.key.len() + v.len()) as u64 + TOUCHED_ITEM_OVERHEAD_BYTES)
                    {
                        return Ok(None);
                    }
                    Some(codec::decode::<KeyValue>(Cf::Kv, &cmp.key, &v)?)
                }
                None => None,
            };
            return Ok(Some(compare_one(cmp, current.as_ref())));
        }
        let (start, end) = range_bounds(&cmp.key, &cmp.range_end);
        // A range compare holds when the range is not empty and every pair
        // in it matches.
        let (mut any, mut holds, mut fits) = (false, true, true);
        self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
            if !budget.take((k.len() + v.len()) as u64 + TOUCHED_ITEM_OVERHEAD_BYTES) {
                fits = false;
                return Ok(false);
            }
            any = true;
            let kv: KeyValue = codec::decode(Cf::Kv, k, v)?;
            holds = compare_one(cmp, Some(&kv));
            Ok(holds)
        })?;
        if !fits {
            return Ok(None);
        }
        Ok(Some(any && holds))
    }
}
