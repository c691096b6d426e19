//! The CPU side changes: invalidation of an [`Svm`]'s ranges (`invalidate_begin`, its
//! non-blocking variant, `invalidate_end`) and teardown (`close`) (SPEC §4).

use crate::error::{Error, Result};
use crate::platform::{AddressSpace, DevicePageTable, NotifierId, Platform};
use crate::range::{gc_push, Notifier, RangeFlags, RangeIndex};
use crate::stats::Stats;
use crate::sync::Ordering;
use crate::types::Event;

use super::{Handle, Svm};

impl<P: Platform> Svm<P> {
    /// The platform calls this before it changes CPU page tables in `[start, end)` of the
    /// notifier `id` (SPEC §4).
    ///
    /// Takes the notifier lock for write, makes the sequence odd, zaps the device page tables
    /// over the ranges overlapping the interval, DMA-unmaps their pages, and on
    /// [`Event::Unmap`]/[`Event::Release`] marks them unmapped (and partially unmapped when the
    /// event covers only part) and queues them for the garbage collector. Calls only
    /// [`DevicePageTable::zap`] and
    /// [`DmaMapper::unmap_page`](crate::platform::DmaMapper::unmap_page). An unknown `id` is
    /// ignored.
    ///
    /// Context: allocates nothing. Takes the notifier-array lock (shared), then the notifier's
    /// own lock (exclusive; waits for it, so it may sleep if the host's notifier lock does:
    /// only faults and commits on *this* notifier hold it), then range page-state locks and
    /// the GC-queue lock (spinning classes). For a caller that must not sleep, use
    /// [`invalidate_begin_nonblock`](Self::invalidate_begin_nonblock).
    pub fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event) {
        let t = self.notifiers.read();
        let Some(n) = t.get(id.0) else {
            return;
        };
        let idx = n.ranges.write();
        self.invalidate_locked(n, &idx, start, end, event);
    }

    /// [`invalidate_begin`](Self::invalidate_begin) for a caller that must not sleep (Linux:
    /// an interval notifier called with `mmu_notifier_range_blockable() == false`, as the OOM
    /// reaper does): the notifier lock is only try-locked.
    ///
    /// Errors: [`Error::Again`] if the notifier's lock (or the notifier array's, exclusively:
    /// a notifier being added or dropped) is held by someone else right now; then
    /// nothing changed (the sequence did not move, no mapping was touched) and the platform
    /// reports "try again" to its caller (Linux: the callback returns `false`). An unknown `id`
    /// is `Ok` and ignored, as in the blocking form.
    ///
    /// Context: never sleeps; allocates nothing. Try-locks the notifier-array lock (shared)
    /// and the notifier's lock (exclusive); takes range
    /// page-state locks and the GC-queue lock, which are spinning classes (see
    /// [`sync`](crate::sync)), waiting for them only as a spin lock does.
    pub fn invalidate_begin_nonblock(
        &self,
        id: NotifierId,
        start: u64,
        end: u64,
        event: Event,
    ) -> Result<()> {
        let t = self.notifiers.try_read().ok_or(Error::Again)?;
        let Some(n) = t.get(id.0) else {
            return Ok(());
        };
        let idx = n.ranges.try_write().ok_or(Error::Again)?;
        self.invalidate_locked(n, &idx, start, end, event);
        Ok(())
    }

    /// The body of [`invalidate_begin`](Self::invalidate_begin), with the notifier's lock held
    /// exclusively (`idx` is its index).
    pub(super) fn invalidate_locked(
        &self,
        n: &Notifier<Handle<P>, P::Host>,
        idx: &RangeIndex<P::Host>,
        start: u64,
        end: u64,
        event: Event,
    ) {
        n.seq.begin();
        Stats::inc(&self.stats.invalidations);
        let s = start.max(n.start);
        let e = end.min(n.end);
        if s >= e {
            return;
        }
        // Zap once over the span of the ranges hit, before any DMA mapping goes away: the span
        // runs from the first to the last overlapping range (two descents, no walk).
        let mut it = idx.overlapping(s, e);
        let (Some(first), Some(last)) = (it.peek(), idx.last_overlapping(s, e)) else {
            return;
        };
        self.platform.page_table().zap(first.start(), last.end());
        let unmap = matches!(event, Event::Unmap | Event::Release);
        let closed = self.is_closed();
        // One GC-queue lock per invalidation (lock order: notifier, then GC queue), taken only
        // if a range is queued.
        let mut gc = None;
        loop {
            // Flags in one atomic operation; the `HostArc` is cloned only for a range that joins
            // the queue now.
            let queue_it = if unmap {
                it.peek().is_some_and(|r| {
                    let mut f = RangeFlags::UNMAPPED;
                    if s > r.start() || e < r.end() {
                        f |= RangeFlags::PARTIAL_UNMAP;
                    }
                    if !closed {
                        f |= RangeFlags::IN_GC;
                    }
                    !closed && !r.set_flags(f).contains(RangeFlags::IN_GC)
                })
            } else {
                false
            };
            let queued = if queue_it { it.peek_arc() } else { None };
            let Some(r) = it.next() else {
                break;
            };
            r.pages.lock().unmap(self.platform.dma());
            if let Some(a) = queued {
                // Allocates nothing (the link is in the range); `IN_GC` was set by this call,
                // so the range is in no queue and the push cannot be refused.
                gc_push(gc.get_or_insert_with(|| self.gc.lock()), a);
            }
        }
    }

    /// The platform calls this after it changed the CPU page tables (SPEC §4): the sequence
    /// becomes even again once the last nested invalidation ends. An unknown `id` is ignored.
    ///
    /// Context: allocates nothing. Takes the notifier-array lock shared, then the notifier's
    /// lock shared, waiting only while a writer holds it (an invalidation's begin, a range
    /// insertion or removal: short sections that call nothing that sleeps except `zap`/DMA
    /// unmap); it may sleep if the host's locks do.
    pub fn invalidate_end(&self, id: NotifierId, _start: u64, _end: u64) {
        let t = self.notifiers.read();
        if let Some(n) = t.get(id.0) {
            // Shared: the end's two steps (the last one out makes the sequence even) must not
            // interleave with a `begin` (exclusive), or a begin could make the sequence even
            // while it runs (tests/loom_invalidate.rs `commit_vs_nested_invalidations`).
            let _g = n.ranges.read();
            n.seq.end();
        }
    }

    /// Close the instance (SPEC §1): zap and unmap every range, drop them, drain the garbage
    /// collector, and unregister every notifier. Idempotent; later calls that need the
    /// instance return [`Error::Closed`]. Also run on drop.
    ///
    /// Context: may sleep. Takes the structure lock, then the notifier-array lock (exclusive),
    /// each notifier's lock (exclusive) and each range's page-state lock (zap, DMA unmap, free), then the GC-queue lock alone; drops the
    /// ranges and unregisters the notifiers with no lock held. Allocates nothing.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let all = {
            let _s = self.structure.lock();
            let mut t = self.notifiers.write();
            for n in t.iter() {
                let idx = n.ranges.write();
                for r in idx.iter() {
                    self.platform.page_table().zap(r.start(), r.end());
                    r.pages.lock().free(self.platform.dma());
                    r.set_flags(RangeFlags::REMOVED);
                }
            }
            t.take_all()
        };
        {
            let mut q = self.gc.lock();
            while let Some(r) = q.pop_front() {
                r.clear_flags(RangeFlags::IN_GC);
            }
        }
        for mut n in all {
            while let Some(r) = n.ranges.get_mut().pop_front() {
                drop(r);
                Stats::inc(&self.stats.ranges_removed);
            }
            if let Some(h) = n.handle.take() {
                self.platform.mm().unregister_notifier(h);
            }
        }
    }
}
