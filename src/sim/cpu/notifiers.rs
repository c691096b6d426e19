//! Interval notifiers of the simulated address space: sinks and their views, registration,
//! injected collection failures, and the delivery of `invalidate_begin`/`invalidate_end`
//! around every page-table change.

use super::{CollectHook, InvalidationSink, MmState, Reg, SimMm, SimMmView};
use crate::platform::NotifierId;
use crate::sim::world::SimWorld;
use crate::sim::{lock, Rng};
use crate::{Error, Event, Result};
use std::sync::{Arc, Weak};
use std::vec::Vec;

impl SimMm {
    /// Add a notifier sink; returns its slot for [`SimMm::view`].
    pub fn add_sink(&self, sink: Weak<dyn InvalidationSink>) -> usize {
        let mut r = lock(&self.regs);
        r.sinks.push(Some(sink));
        r.sinks.len() - 1
    }

    /// Reserve a sink slot to be filled later with [`SimMm::set_sink`].
    pub fn reserve_sink(&self) -> usize {
        let mut r = lock(&self.regs);
        r.sinks.push(None);
        r.sinks.len() - 1
    }

    /// Fill a reserved sink slot.
    pub fn set_sink(&self, slot: usize, sink: Weak<dyn InvalidationSink>) {
        if let Some(s) = lock(&self.regs).sinks.get_mut(slot) {
            *s = Some(sink);
        }
    }

    /// The [`AddressSpace`](crate::platform::AddressSpace) seen by the sink in `slot`.
    pub fn view(self: &Arc<Self>, slot: usize) -> SimMmView {
        SimMmView {
            mm: self.clone(),
            sink: slot,
        }
    }

    /// Register a notifier for `sink` directly (for userptr-style users).
    pub fn register(&self, sink: usize, id: NotifierId, start: u64, end: u64) -> Result<u64> {
        if start >= end {
            return Err(Error::Invalid);
        }
        let _m = lock(&self.mmap_lock);
        let mut r = lock(&self.regs);
        if r.sinks.get(sink).is_none() {
            return Err(Error::Invalid);
        }
        r.next_handle += 1;
        let handle = r.next_handle;
        r.list.push(Reg {
            handle,
            sink,
            id,
            start,
            end,
        });
        Ok(handle)
    }

    /// Unregister a notifier made by [`SimMm::register`].
    pub fn unregister(&self, handle: u64) {
        let _m = lock(&self.mmap_lock);
        lock(&self.regs).list.retain(|r| r.handle != handle);
    }

    /// Registered notifiers `(sink, id, start, end)`.
    pub fn notifiers(&self) -> Vec<(usize, NotifierId, u64, u64)> {
        lock(&self.regs)
            .list
            .iter()
            .map(|r| (r.sink, r.id, r.start, r.end))
            .collect()
    }

    /// Fail the next `n` page collections with `Again`.
    pub fn inject_collect_again(&self, n: u32) {
        lock(&self.inject).collect_again = n;
    }

    /// Fail page collections with `Again` at random (seeded), `ppm` in a million.
    pub fn inject_collect_again_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.collect_again_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// Run `hook` after every page collection (outside the mmap lock), e.g. to race an
    /// invalidation against the commit. `None` removes it.
    pub fn set_collect_hook(&self, hook: Option<CollectHook>) {
        lock(&self.inject).hook = hook;
    }

    /// Run `f` with the CPU page tables of `[start, end)` changing: notify every overlapping
    /// notifier before and after. The caller holds the mmap lock.
    pub(super) fn with_invalidation<R>(
        &self,
        start: u64,
        end: u64,
        event: Event,
        f: impl FnOnce(&mut MmState, &SimWorld) -> R,
    ) -> R {
        let targets: Vec<(Arc<dyn InvalidationSink>, NotifierId)> = {
            let r = lock(&self.regs);
            r.list
                .iter()
                .filter(|g| g.start < end && start < g.end)
                .filter_map(|g| {
                    let s = r.sinks.get(g.sink)?.as_ref()?.upgrade()?;
                    Some((s, g.id))
                })
                .collect()
        };
        for (s, id) in &targets {
            s.invalidate_begin(*id, start, end, event);
        }
        let out = {
            let mut st = lock(&self.st);
            f(&mut st, &self.world)
        };
        for (s, id) in &targets {
            s.invalidate_end(*id, start, end);
        }
        out
    }
}
