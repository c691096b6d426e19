//! Applying policy to an [`Svm`]: setting attributes (and what that does to existing ranges),
//! reading them, and prefetching.

use crate::error::{Error, Result};
use crate::pages::PagesCtx;
use crate::platform::{AddressSpace, PagemapId, Platform, PAGE_SIZE};
use crate::policy::{
    self, AttrUpdate, Attrs, DeviceAtomics, DeviceTarget, PreferredLoc, PrefetchLoc, RawAttr,
};
use crate::range::{Range, RangeFlags};
use crate::stats::Stats;
use crate::svm::Svm;
use crate::types::Window;

/// How many times a prefetch retries a range that went away under it.
const PREFETCH_RETRIES: u32 = 8;

impl<P: Platform> Svm<P> {
    /// `[start, start+len)` checked: non-empty, page aligned, not overflowing, inside the
    /// mirrored interval. Returns the end.
    fn check_interval(&self, start: u64, len: u64) -> Result<u64> {
        if len == 0 || start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        let end = start.checked_add(len).ok_or(Error::Invalid)?;
        let c = self.config();
        if start < c.mm_start || end > c.mm_end() {
            return Err(Error::Invalid);
        }
        Ok(end)
    }

    /// A pagemap named by policy: [`Error::Invalid`] if it is not attached,
    /// [`Error::NoLink`] if it does not share this device's owner.
    fn check_pagemap(&self, id: PagemapId) -> Result<()> {
        let pm = self.pagemap_by_id(id).ok_or(Error::Invalid)?;
        if Some(pm.owner()) != self.owner() {
            return Err(Error::NoLink);
        }
        Ok(())
    }

    /// The attributes at `addr`.
    ///
    /// Context: takes the attribute lock shared (a spinning class); allocates nothing.
    pub fn attrs_at(&self, addr: u64) -> Attrs {
        self.attrs.read().get(addr)
    }

    /// Where the device may perform atomics on the pages of `range` under the current atomic
    /// policy (see [`DeviceAtomics`]): a driver sets the atomic-enable bit of each entry it
    /// writes in the [`bind`](Self::bind) callback to `device_atomics(range).allows(entry)`, so
    /// that an atomic the policy does not allow on that page faults instead of completing.
    ///
    /// Locking: takes only the attribute lock, which is never held while another lock of this
    /// `Svm` is taken, so this may be called from inside the `bind` callback. A range lies inside
    /// one attribute interval, so one answer covers all of it. If [`set_attrs`](Self::set_attrs)
    /// changes the policy meanwhile, it clears the range's device mappings afterwards (or
    /// [`bind`](Self::bind) sees the pages invalid), so a stale answer never outlives the
    /// change.
    ///
    /// ```
    /// # use gpusvm::policy::*;
    /// # use gpusvm::pages::{PageEntry, Protocol};
    /// # use gpusvm::platform::DmaDirection;
    /// let rights = device_atomics(AtomicPolicy::Global, &PolicyConfig::default());
    /// let sys = PageEntry::new(0, 0, DmaDirection::Bidirectional, Protocol::SYSTEM).unwrap();
    /// let vram = PageEntry::new(0, 0, DmaDirection::Bidirectional,
    /// Protocol::DEVICE_LOCAL).unwrap();
    /// assert!(!rights.allows(sys) && rights.allows(vram));
    /// ```
    ///
    /// Context: as [`attrs_at`](Self::attrs_at).
    pub fn device_atomics(&self, range: &Range<P::Host>) -> DeviceAtomics {
        policy::device_atomics(self.attrs_at(range.start()).atomic, &self.config().policy)
    }

    /// Set attributes on `[start, start+len)` (SPEC §8, like `madvise`).
    ///
    /// The interval's attributes are split at its edges and merged with equal neighbours. If
    /// any attribute actually changed, ranges straddling an edge of the interval are evicted to
    /// system memory and removed, and ranges inside it keep their pages but lose their device
    /// mappings — either way the next device access refaults under the new policy.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] for an empty, misaligned, overflowing or
    /// out-of-range interval, an empty update, or a preferred pagemap that is not attached;
    /// [`Error::NoLink`] for a preferred pagemap of another owner; [`Error::NoMem`] (the new
    /// attribute array). On error nothing changes.
    ///
    /// Context: may sleep. Allocates the new attribute array with
    /// [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) without any lock held, takes
    /// the attribute lock exclusively only to rebuild and swap it (no allocation under it),
    /// releases it, then walks the
    /// ranges of the interval one lookup at a time (notifier lock shared, nothing allocated) and
    /// evicts, removes or unmaps them as [`Svm::evict`], [`Svm::remove`] and the notifier lock
    /// (exclusive) require.
    pub fn set_attrs(&self, start: u64, len: u64, update: &AttrUpdate) -> Result<()> {
        self.check_open()?;
        let end = self.check_interval(start, len)?;
        if update.is_empty() {
            return Err(Error::Invalid);
        }
        if let Some(PreferredLoc::Pagemap(id)) = update.preferred {
            self.check_pagemap(id)?;
        }
        let changed = policy::set_attrs_locked(&self.attrs, start, end, update)?;
        if changed {
            Stats::inc(&self.stats.attr_changes);
            self.refault_under_new_policy(start, end);
        }
        Ok(())
    }

    /// [`set_attrs`](Self::set_attrs) from raw attribute changes (decoded all first: one bad
    /// entry and nothing changes).
    ///
    /// Errors: [`Error::Invalid`] if an entry does not decode; then as
    /// [`set_attrs`](Self::set_attrs).
    ///
    /// Context: as [`set_attrs`](Self::set_attrs).
    pub fn set_attrs_raw(&self, start: u64, len: u64, raw: &[RawAttr]) -> Result<()> {
        self.check_open()?;
        let mut u = AttrUpdate::default();
        for r in raw {
            let d = r.decode()?;
            u.preferred = d.preferred.or(u.preferred);
            u.migration = d.migration.or(u.migration);
            u.atomic = d.atomic.or(u.atomic);
        }
        self.set_attrs(start, len, &u)
    }

    /// Ranges overlapping `[start, end)` after an attribute change: straddling ones are evicted
    /// and removed, inner ones lose their device mappings.
    ///
    /// The ranges are visited one lookup at a time (each under its own shared hold of the
    /// notifier lock), so nothing is allocated and nothing can fail for lack of memory. The
    /// store was written before the first lookup: a range inserted after it re-reads the
    /// extent under the notifier lock and cannot straddle an edge (tests/loom_attrs.rs).
    fn refault_under_new_policy(&self, start: u64, end: u64) {
        let mut at = start;
        while let Some(r) = self.first_overlapping(at, end) {
            at = r.end();
            if r.start() < start || r.end() > end {
                if r.flags().contains(RangeFlags::DEVMEM) {
                    // Pages that cannot be evicted stay in device memory, still mapped by the
                    // CPU: nothing is lost.
                    let _ = self.evict(&r);
                }
                let _ = self.remove(&r);
            } else {
                r.clear_flags(RangeFlags::MIGRATE_FAILED);
                self.clear_mappings(&r);
            }
        }
    }

    /// Move `[start, start+len)` to `loc` without a fault (SPEC §8 prefetch): ranges are
    /// created as a fault would create them, migrated (or evicted to system memory), and their
    /// pages collected, so that later device faults only bind.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] (bad interval, unknown pagemap);
    /// [`Error::NoLink`] (pagemap of another owner); [`Error::Fault`] (part of the interval has
    /// no VMA); migration and collection errors. Ranges already processed stay where they were
    /// moved.
    ///
    /// Context: may sleep; as [`handle_fault`](Self::handle_fault) for each range of the interval
    /// (it creates, places and collects them the same way).
    pub fn prefetch(&self, start: u64, len: u64, loc: PrefetchLoc) -> Result<()> {
        self.check_open()?;
        let end = self.check_interval(start, len)?;
        if let PrefetchLoc::Pagemap(id) = loc {
            self.check_pagemap(id)?;
        }
        // As a fault does: ranges unmapped since the last run (an address space re-mapped at
        // the same address) are removed first, so they are not found and placed again.
        self.gc_run();
        let mut addr = start;
        let mut retries = 0u32;
        while addr < end {
            let vma = self.platform().mm().find_vma(addr).ok_or(Error::Fault)?;
            let mut ctx = PagesCtx {
                read_only: !vma.writable(),
                owner: self.owner(),
                ..PagesCtx::default()
            };
            let range = self.find_or_insert(addr, Window::ALL, &ctx)?;
            let placed = match loc {
                PrefetchLoc::System => {
                    ctx.owner = None;
                    self.evict(&range).map(|_| ())
                }
                PrefetchLoc::Device => self.place_in(&range, DeviceTarget::Local, 0),
                PrefetchLoc::Pagemap(id) => self.place_in(&range, DeviceTarget::Pagemap(id), 0),
            };
            // A range unmapped meanwhile is `Again` from the placement as from the collection.
            match placed.and_then(|()| self.get_pages(&range, &ctx)) {
                Ok(()) => addr = range.end(),
                Err(Error::Again) if retries < PREFETCH_RETRIES => {
                    retries = retries.saturating_add(1);
                    self.gc_run();
                }
                Err(e) => return Err(e),
            }
        }
        // Counted once served: a prefetch refused up front (no VMA at `start`) changes nothing.
        Stats::inc(&self.stats.prefetches);
        Ok(())
    }
}
