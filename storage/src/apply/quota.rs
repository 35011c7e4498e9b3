//! Quotas on devices per host, leases and device commands, and the counts
//! they are checked against.
//!
//! The quotas are part of the replicated state (`sm_meta`/`quotas`, set by
//! [`Event::QuotasChanged`](utopia_raft::event::Event::QuotasChanged)), so
//! every replica rejects the same events. The counts are kept beside what
//! they count, and a count missing from a state written before it was kept
//! is counted once from what is there, the same on every replica.

use utopia_raft::event::{Outcome, Quotas};

use super::{Applier, StateRead};
use crate::codec;
use crate::keys::{self, meta, Cf, DeviceIndex};
use crate::StoreError;

/// Settled command records removed per issued command, at most.
const COMMANDS_EXPIRED_PER_EVENT_MAX: usize = 64;

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub fn quotas(&self) -> Result<Quotas, StoreError> {
        if let Some(quotas) = self.quotas.get() {
            return Ok(quotas);
        }
        let quotas = self.get_dec(Cf::SmMeta, meta::QUOTAS)?.unwrap_or_default();
        self.quotas.set(Some(quotas));
        Ok(quotas)
    }

    pub(super) fn apply_quotas_changed(&mut self, quotas: &Quotas) -> Result<Outcome, StoreError> {
        self.put(Cf::SmMeta, meta::QUOTAS.to_vec(), codec::encode(quotas));
        Ok(Outcome::Done)
    }

    /// The count stored at `key` in `cf`, or, if there is none yet, the
    /// number of entries of `counted` from `start` to `end`.
    fn count_at(
        &self,
        (cf, key): (Cf, &[u8]),
        (counted, start, end): (Cf, &[u8], Option<&[u8]>),
    ) -> Result<u64, StoreError> {
        if let Some(n) = self.get_dec::<u64>(cf, key)? {
            return Ok(n);
        }
        let mut n = 0u64;
        self.scan_each(counted, start, end, |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    // ---- devices per host

    pub(super) fn host_devices(&self, host: &str) -> Result<u64, StoreError> {
        let prefix = keys::device_index_prefix(DeviceIndex::Host, host);
        let end = keys::prefix_end(&prefix);
        self.count_at(
            (Cf::DeviceIndex, &keys::host_devices_key(host)),
            (Cf::DeviceIndex, &prefix, end.as_deref()),
        )
    }

    /// Why a new device of `host` is refused, if the host is at its quota.
    /// Call before registering it.
    pub(super) fn device_refusal(&self, host: &str) -> Result<Option<String>, StoreError> {
        let max = self.quotas()?.devices_per_host_max;
        if max == 0 {
            return Ok(None);
        }
        let n = self.host_devices(host)?;
        Ok((n >= max)
            .then(|| format!("host {host:?} has {n} devices (devices_per_host_max = {max})")))
    }

    /// Counts a device just registered under `host` (before its host index
    /// entry is written).
    pub(super) fn count_new_device(&mut self, host: &str) -> Result<(), StoreError> {
        let n = self.host_devices(host)?;
        self.put(
            Cf::DeviceIndex,
            keys::host_devices_key(host),
            codec::encode(&(n + 1)),
        );
        Ok(())
    }

    // ---- leases

    fn leases(&self) -> Result<u64, StoreError> {
        self.count_at((Cf::SmMeta, meta::LEASE_COUNT), (Cf::Leases, &[], None))
    }

    /// Why a new lease is refused, if the leases are at their quota.
    pub(super) fn lease_refusal(&self) -> Result<Option<String>, StoreError> {
        let max = self.quotas()?.leases_max;
        if max == 0 {
            return Ok(None);
        }
        let n = self.leases()?;
        Ok((n >= max).then(|| format!("{n} leases are active (leases_max = {max})")))
    }

    /// Counts a lease granted (before its record is written) or gone.
    pub(super) fn count_lease(&mut self, granted: bool) -> Result<(), StoreError> {
        let n = self.leases()?;
        let n = if granted { n + 1 } else { n.saturating_sub(1) };
        self.put(Cf::SmMeta, meta::LEASE_COUNT.to_vec(), codec::encode(&n));
        Ok(())
    }

    // ---- device commands

    fn pending_commands(&self) -> Result<u64, StoreError> {
        let (start, end) = keys::tag_bounds(keys::commands::PENDING_PREFIX);
        self.count_at(
            (Cf::Commands, keys::commands::PENDING_COUNT),
            (Cf::Commands, &start, Some(&end)),
        )
    }

    /// Why a new command is refused, if the pending ones are at their
    /// quota. Settled records past their retention are removed first.
    pub(super) fn command_refusal(&mut self, at_ms: u64) -> Result<Option<String>, StoreError> {
        let quotas = self.quotas()?;
        if quotas.command_retention_ms > 0 {
            self.expire_settled_commands(at_ms.saturating_sub(quotas.command_retention_ms))?;
        }
        let max = quotas.commands_pending_max;
        if max == 0 {
            return Ok(None);
        }
        let n = self.pending_commands()?;
        Ok((n >= max)
            .then(|| format!("{n} device commands await a reply (commands_pending_max = {max})")))
    }

    /// Counts a command issued (before its pending entry is written), or
    /// settled at `settled_ms` (indexed by that time for expiry).
    pub(super) fn count_command(
        &mut self,
        id: u64,
        settled_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let n = self.pending_commands()?;
        let n = match settled_ms {
            None => n + 1,
            Some(at) => {
                self.put(
                    Cf::Commands,
                    keys::commands::settled_key(at, id).to_vec(),
                    Vec::new(),
                );
                n.saturating_sub(1)
            }
        };
        self.put(
            Cf::Commands,
            keys::commands::PENDING_COUNT.to_vec(),
            codec::encode(&n),
        );
        Ok(())
    }

    /// Removes the records of commands settled before `cutoff_ms`, a
    /// bounded number per call.
    fn expire_settled_commands(&mut self, cutoff_ms: u64) -> Result<(), StoreError> {
        let (start, _) = keys::tag_bounds(keys::commands::SETTLED_PREFIX);
        let end = keys::commands::settled_key(cutoff_ms, 0);
        let old = self.scan(
            Cf::Commands,
            &start,
            Some(&end),
            COMMANDS_EXPIRED_PER_EVENT_MAX,
        )?;
        for (key, _) in old {
            let (_, id) = keys::commands::parse_settled_key(&key)?;
            self.delete(Cf::Commands, keys::commands::record_key(id).to_vec());
            self.delete(Cf::Commands, key);
        }
        Ok(())
    }
}
