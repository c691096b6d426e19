//! The garbage collector (SPEC §5): ranges the CPU unmapped are queued by the invalidation
//! path (through the intrusive link embedded in each range, so queueing allocates nothing) and
//! destroyed here, outside the notifier, at the start of every fault or from a driver worker.
//!
//! Locking: the queue has its own lock (a spinning class, see [`sync`](crate::sync)), taken
//! inside the notifier lock by the invalidation path ([`Svm::invalidate_begin`], once per
//! invalidation) and alone by [`Svm::gc_run`]; a range is queued at most once
//! (`RangeFlags::IN_GC`), and closing the instance stops queueing and drains the queue.

use crate::platform::Platform;
use crate::range::RangeFlags;
use crate::stats::Stats;
use crate::svm::Svm;
use crate::sync::Ordering;

impl<P: Platform> Svm<P> {
    /// Number of ranges waiting for the garbage collector.
    ///
    /// Context: takes the GC-queue lock (spinning) and walks the queue; allocates nothing.
    pub fn gc_pending(&self) -> usize {
        self.gc.lock().iter().count()
    }

    /// Run the garbage collector (SPEC §5): remove every queued range. Returns how many ranges
    /// it removed. Called at the start of every fault; a driver may also call it from a worker.
    ///
    /// Context: may sleep. Takes the GC-queue lock alone to pop each range, then removes it as
    /// [`Svm::remove`] does (structure lock, notifier lock exclusive, page-state lock); a partly
    /// unmapped range in device memory is first evicted as [`Svm::evict`] does, which allocates
    /// with [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) outside the invalidation locks.
    /// Nothing else is allocated.
    pub fn gc_run(&self) -> usize {
        let mut done = 0usize;
        loop {
            let next = self.gc.lock().pop_front();
            let Some(r) = next else {
                break;
            };
            r.clear_flags(RangeFlags::IN_GC);
            if r.flags().contains(RangeFlags::REMOVED) {
                continue;
            }
            let f = r.flags();
            if f.contains(RangeFlags::PARTIAL_UNMAP) && f.contains(RangeFlags::DEVMEM) {
                // The surviving part goes back to system memory so that the device allocation
                // can be released; a later fault there creates new, smaller ranges. Counted as
                // an eviction like `Svm::evict` (SPEC §7: partial unmap is one of its uses).
                if self
                    .evict_interval(r.start(), r.end())
                    .is_ok_and(|rep| rep.pages > 0)
                {
                    Stats::inc(&self.stats.evictions);
                }
            }
            if self.remove(&r).is_ok() {
                done = done.saturating_add(1);
            }
        }
        if done > 0 {
            Stats::inc(&self.stats.gc_runs);
            self.stats.gc_ranges.fetch_add(done, Ordering::Relaxed);
        }
        done
    }
}
