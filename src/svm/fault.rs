//! The fault service a driver calls from its device page-fault handler (SPEC §9).
//!
//! A fault runs the garbage collector, finds or creates the range, places it (migrating it to
//! device memory when configured to, falling back to system memory), collects its pages (evicting
//! and retrying on mixed pages, retrying on invalidation races) and hands them to the driver to
//! bind.

use crate::error::{Error, Result};
use crate::pages::{PageEntry, PagesCtx};
use crate::platform::{AddressSpace, Platform};
use crate::policy::{self, DecisionInput, DeviceCaps, MigrationPolicy, RangeHistory};
use crate::range::{Range, RangeArc, RangeFlags};
use crate::stats::Stats;
use crate::svm::Svm;
use crate::types::Access;
use crate::types::Window;

/// How many times a fault is retried after its range went away under it.
const FAULT_RETRIES: u32 = 8;

impl<P: Platform> Svm<P> {
    /// Service a device fault at `addr` (SPEC §9): run the garbage collector, find or create the
    /// range, and make its pages valid for the device. The driver then binds them with
    /// [`Svm::bind`] (or uses [`Svm::handle_fault_and_bind`]).
    ///
    /// Pages are collected writable when the VMA is writable, read-only otherwise.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] (outside the mirrored interval or the
    /// window, or an empty window — checked first, before anything is counted or collected);
    /// [`Error::Fault`] (no VMA); [`Error::Perm`] (write or atomic access to a read-only
    /// VMA); [`Error::Busy`] (retry budget exhausted); [`Error::NoMem`] (the host's allocator
    /// failed); platform errors. A failed fault leaves no mapping behind.
    ///
    /// Context: may sleep (platform calls, migration copies). Allocates with
    /// [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) only, never while holding a lock the
    /// invalidation path takes: the range ([`find_or_insert`](Self::find_or_insert)), the page
    /// arrays ([`get_pages`](Self::get_pages)), the migration's vectors (placement). Takes the
    /// locks of [`gc_run`](Self::gc_run), [`find_or_insert`](Self::find_or_insert), placement and
    /// [`get_pages`](Self::get_pages) in turn, never two of those sections at once.
    pub fn handle_fault(
        &self,
        addr: u64,
        access: Access,
        window: Window,
    ) -> Result<RangeArc<P::Host>> {
        self.check_open()?;
        // Same precedence as `find_or_insert`: a malformed request is `Invalid` whether or not
        // a VMA happens to lie there, and it changes nothing (no count, no GC run).
        if !self.in_mm(addr) || window.start >= window.end || !window.contains(addr) {
            return Err(Error::Invalid);
        }
        Stats::inc(&self.stats.faults);
        Stats::inc(match access {
            Access::Read => &self.stats.faults_read,
            Access::Write => &self.stats.faults_write,
            Access::Atomic => &self.stats.faults_atomic,
        });
        self.gc_run();
        let mut attempts = 0u32;
        let mut devmem_tries = 0u32;
        let mut rebuilt = false;
        loop {
            let vma = self.platform().mm().find_vma(addr).ok_or(Error::Fault)?;
            if access.writes() && !vma.writable() {
                return Err(Error::Perm);
            }
            let attrs = self.attrs_at(addr);
            let mut ctx = PagesCtx {
                read_only: !vma.writable(),
                owner: self.owner(),
                ..PagesCtx::default()
            };
            let caps = DeviceCaps {
                has_devmem: self.pagemap().is_some(),
                default_to_devmem: self.config().prefer_devmem,
            };
            if access == Access::Atomic {
                // Refusals (atomic policy `cpu`, device memory required but absent) do not
                // depend on the range: refuse before creating one, so nothing changes.
                policy::decide(
                    &DecisionInput {
                        range_size: 0,
                        access,
                        attrs,
                        caps,
                        history: RangeHistory::default(),
                    },
                    &self.config().policy,
                )?;
            }
            let range = self.find_or_insert(addr, window, &ctx)?;
            let dec = policy::decide(
                &DecisionInput {
                    range_size: range.size(),
                    access,
                    attrs,
                    caps,
                    history: RangeHistory {
                        migrate_failed: range.flags().contains(RangeFlags::MIGRATE_FAILED),
                    },
                },
                &self.config().policy,
            )?;
            if !dec.collect_owner {
                ctx.owner = None;
            }
            ctx.devmem_only = dec.devmem_only;
            if let Some(target) = dec.migrate_to {
                let keep_device_pages = attrs.migration == MigrationPolicy::SystemPagesOnly
                    && !dec.devmem_only
                    && self.has_device_pages(&range);
                if keep_device_pages {
                    // Only system pages may move, and this range already has device pages:
                    // leave it where it is and map it mixed.
                    ctx.allow_mixed = true;
                } else {
                    let timeslice = if access == Access::Atomic {
                        self.config()
                            .atomic_timeslice_ns
                            .checked_shl(devmem_tries)
                            .unwrap_or(u64::MAX)
                    } else {
                        0
                    };
                    // A failure falls back to system memory (the range is marked
                    // MIGRATE_FAILED); with devmem_only the collection below refuses it.
                    let _ = self.place_in(&range, target, timeslice);
                }
            }
            let mut got = self.get_pages(&range, &ctx);
            if got == Err(Error::NotSupported) {
                // Mixed pages: evict the range to system memory and collect once more.
                if self.evict(&range).is_ok() {
                    got = self.get_pages(&range, &ctx);
                }
            }
            match got {
                Ok(()) => return Ok(range),
                Err(Error::Perm) if !ctx.read_only && !rebuilt => {
                    // The VMA at `addr` is writable, yet a page of the range is not: the range
                    // outlived an mprotect that split its VMA (protection changes do not split
                    // ranges). Rebuild it inside the VMA at `addr` and fault once more.
                    rebuilt = true;
                    let _ = self.evict(&range);
                    let _ = self.remove(&range);
                }
                // Again: the range went away under us. Perm: the CPU protection changed
                // between the VMA check and the collection (a read fault collected writable
                // pages of a VMA that an mprotect made read-only): look at the VMA again.
                Err(Error::Again | Error::Perm) if attempts < FAULT_RETRIES => {
                    attempts = attempts.saturating_add(1);
                    Stats::inc(&self.stats.retries);
                    self.gc_run();
                }
                Err(Error::Fault)
                    if dec.devmem_only
                        && devmem_tries < self.config().policy.devmem_only_retries =>
                {
                    devmem_tries = devmem_tries.saturating_add(1);
                    Stats::inc(&self.stats.devmem_retries);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`handle_fault`](Self::handle_fault) followed by [`bind`](Self::bind), retried while an
    /// invalidation slips in between. Returns the range and what `bind_fn` returned.
    ///
    /// Errors: as [`handle_fault`](Self::handle_fault) and [`bind`](Self::bind) (an
    /// [`Error::Again`] from `bind` is retried a few times first).
    ///
    /// Context: as [`handle_fault`](Self::handle_fault), then as [`bind`](Self::bind) (`bind_fn`
    /// runs under the notifier lock, shared, and the range's page-state lock: it must not sleep).
    pub fn handle_fault_and_bind<R>(
        &self,
        addr: u64,
        access: Access,
        window: Window,
        mut bind_fn: impl FnMut(&Range<P::Host>, &[PageEntry]) -> R,
    ) -> Result<(RangeArc<P::Host>, R)> {
        let mut attempts = 0u32;
        loop {
            let range = self.handle_fault(addr, access, window)?;
            match self.bind(&range, &mut bind_fn) {
                Ok(r) => return Ok((range, r)),
                Err(Error::Again) if attempts < FAULT_RETRIES => {
                    attempts = attempts.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
