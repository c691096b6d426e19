//! The range index of an [`Svm`]: notifier intervals, lookup snapshots, range creation
//! (`find_or_insert`: chunk selection, notifier registration) and removal (SPEC §2).

use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::pages::PagesCtx;
use crate::platform::{
    AddressSpace, CollectRequest, CpuPage, DevicePageTable, NotifierId, OwnerId, Platform,
    PAGE_SIZE,
};
use crate::range::{
    select_chunk, slot_size_for, ChunkQuery, Notifier, NotifierTree, Range, RangeArc, RangeFlags,
    RangeIndex,
};
use crate::stats::Stats;
use crate::types::Window;
use crate::HostVec;

use super::{Handle, Svm};

impl<P: Platform> Svm<P> {
    /// The notifier interval for `addr`: the notifier-size-aligned block, clipped to the
    /// mirrored interval.
    pub(super) fn notifier_interval(&self, addr: u64) -> (u64, u64) {
        let size = self.config.notifier_size;
        let start = addr & !size.wrapping_sub(1);
        let end = start.saturating_add(size);
        (
            start.max(self.config.mm_start),
            end.min(self.config.mm_end()),
        )
    }

    /// A snapshot of the CPU pages of `[start, end)`: nothing is faulted in or invalidated
    /// (Linux: `hmm_range_fault` without `HMM_PFN_REQ_FAULT`). `None` if the interval is empty
    /// or too large, memory runs out, or the platform fails.
    ///
    /// Context: may sleep (the platform's `collect_pages`); allocates the page array with
    /// [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep): call it without any crate lock held.
    pub(crate) fn snapshot(
        &self,
        start: u64,
        end: u64,
        owner: Option<OwnerId>,
    ) -> Option<HostVec<P::Host, CpuPage>> {
        self.try_snapshot(start, end, owner).ok().flatten()
    }

    /// [`snapshot`](Self::snapshot), telling a failed allocation apart: `Err(NoMem)` when the
    /// page array cannot be allocated, `Ok(None)` when the interval is empty or too large or
    /// the platform fails.
    ///
    /// Context: as [`snapshot`](Self::snapshot).
    pub(super) fn try_snapshot(
        &self,
        start: u64,
        end: u64,
        owner: Option<OwnerId>,
    ) -> Result<Option<HostVec<P::Host, CpuPage>>> {
        let Some(n) = usize::try_from(end.saturating_sub(start) / PAGE_SIZE)
            .ok()
            .filter(|&n| n > 0)
        else {
            return Ok(None);
        };
        let mut pages = HostVec::<P::Host, CpuPage>::new();
        pages.reserve_exact(n, AllocCtx::MaySleep)?;
        pages.resize(n, CpuPage::Absent, AllocCtx::MaySleep)?;
        let req = CollectRequest {
            start,
            end,
            fault: false,
            write: false,
            owner,
        };
        Ok(self
            .platform
            .mm()
            .collect_pages(&req, &mut pages)
            .ok()
            .map(|()| pages))
    }

    /// Whether every CPU page of `[start, end)` is present (snapshot, no faulting); device pages
    /// count only if they belong to `owner`. `Ok(false)` if the platform cannot tell.
    ///
    /// Errors: [`Error::NoMem`] (the snapshot's page array).
    ///
    /// Context: as [`snapshot`](Self::snapshot).
    pub(super) fn all_present(&self, start: u64, end: u64, owner: Option<OwnerId>) -> Result<bool> {
        let Some(pages) = self.try_snapshot(start, end, owner)? else {
            return Ok(false);
        };
        Ok(pages.iter().all(|p| match *p {
            CpuPage::Absent => false,
            CpuPage::System { .. } => true,
            CpuPage::Device { owner: o, .. } => Some(o) == owner,
        }))
    }

    /// Return the range containing `addr`, or create one (SPEC §2).
    ///
    /// The new range is chosen by [`select_chunk`](crate::range::select_chunk) from the VMA at
    /// `addr`, its notifier (registered with the platform on first use), `window` narrowed to
    /// the interval of equal policy attributes around `addr`
    /// ([`AttrStore::extent`](crate::policy::AttrStore::extent)), and the existing ranges.
    /// Takes the structure lock, then the notifier lock briefly.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] if `addr` is outside the mirrored interval
    /// or the window, or the window is empty or too narrow for the page at `addr`;
    /// [`Error::Fault`] if no VMA contains `addr`; [`Error::Busy`] if invalidations of the
    /// notifier (or removals of a range a concurrent fault created there) keep racing the
    /// insertion (`config.retry.max_attempts` times); [`Error::NoMem`] if the host's allocator
    /// fails (the range, a page snapshot, or the notifier array); errors of
    /// `register_notifier`. On error nothing is created.
    ///
    /// Context: may sleep (platform calls: VMA lookup, page snapshot, notifier registration,
    /// each with no crate lock held). Allocates with [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) only, never under a
    /// lock the invalidation path takes: the range and the page snapshot with no lock held,
    /// the notifier array's growth under the structure lock alone. Locks, in order: the
    /// notifier lock (shared, lookups), the attribute lock (shared, alone), the structure lock,
    /// then under it the notifier lock (exclusive) and the attribute lock (shared).
    pub fn find_or_insert(
        &self,
        addr: u64,
        window: Window,
        ctx: &PagesCtx,
    ) -> Result<RangeArc<P::Host>> {
        self.check_open()?;
        if !self.in_mm(addr) || window.start >= window.end || !window.contains(addr) {
            return Err(Error::Invalid);
        }
        if let Some(r) = self.find(addr) {
            return Ok(r);
        }
        // No crate lock is held across the platform calls below (VMA lookup, page snapshot,
        // notifier registration): the structure lock is taken only around the final insert.
        //
        // An munmap may run between the VMA lookup and the insertion: its invalidation would
        // miss the new range and leave a live range over unmapped memory. Linux holds the mmap
        // lock here; we instead insert only if no invalidation of the notifier started since a
        // second VMA lookup, and start over otherwise.
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            if attempts > self.config.retry.max_attempts {
                return Err(Error::Busy);
            }
            if let Some(range) = self.try_insert(addr, window, ctx)? {
                Stats::inc(&self.stats.ranges_created);
                return Ok(range);
            }
            crate::sync::spin_hint();
        }
    }

    /// One attempt of [`find_or_insert`](Self::find_or_insert): `Ok(None)` if an invalidation
    /// or a concurrent insert raced it (nothing was created).
    pub(super) fn try_insert(
        &self,
        addr: u64,
        window: Window,
        ctx: &PagesCtx,
    ) -> Result<Option<RangeArc<P::Host>>> {
        let vma = self.platform.mm().find_vma(addr).ok_or(Error::Fault)?;
        let notifier = self.notifier_interval(addr);
        // A new range never spans an attribute boundary (SPEC §8): it is placed by the
        // attributes at `addr`, and `set_attrs` removes ranges straddling its edges so that
        // they refault inside them. Boundaries are page aligned: a page always fits.
        let (attr_lo, attr_hi) = self.attrs.read().extent(addr);
        let q = ChunkQuery {
            addr,
            vma: (vma.start, vma.end),
            notifier,
            window: (window.start.max(attr_lo), window.end.min(attr_hi)),
            chunk_sizes: &self.config.chunk_sizes,
            check_pages_threshold: self.config.check_pages_threshold,
        };
        let no_mem = core::cell::Cell::new(None);
        let chosen = select_chunk(
            &q,
            |s, e| self.read_at(addr, |x| x.is_some_and(|(_, idx)| idx.any_overlap(s, e))),
            |s, e| match self.all_present(s, e, ctx.owner) {
                Ok(all) => all,
                Err(e) => {
                    // Out of memory for the snapshot: fail the whole insertion with NoMem
                    // (below) instead of settling for a smaller chunk.
                    no_mem.set(Some(e));
                    false
                }
            },
        );
        if let Some(e) = no_mem.get() {
            return Err(e);
        }
        let (start, end) = match chosen {
            Ok(c) => c,
            // No chunk fits. If the page at `addr` fits the window (the VMA, the notifier and
            // the attribute extent are page aligned, and the smallest chunk is one page), a
            // range holds it: the one inserted by a concurrent fault since `find_or_insert`
            // looked. Return that range; if it is gone again (an munmap and the garbage
            // collector removed it since the overlap check), nothing was created: start over.
            // A window too narrow for the page is bad input.
            Err(Error::Invalid) => {
                let page = addr & !(PAGE_SIZE - 1);
                let page_fits = q.window.0 <= page && page.saturating_add(PAGE_SIZE) <= q.window.1;
                return match self.find(addr) {
                    Some(r) => Ok(Some(r)),
                    None if page_fits => Ok(None),
                    None => Err(Error::Invalid),
                };
            }
            Err(e) => return Err(e),
        };
        let range = Range::with_host(start, end)?;

        let created = self.ensure_notifier(notifier)?;
        // The notifier is registered: from now on every change of the interval bumps its
        // sequence before it happens. Check that the VMA still holds the range.
        let seq = self
            .notifiers
            .read()
            .get(notifier.0)
            .and_then(|n| n.seq.read_begin());
        let still_mapped = seq.is_some()
            && self
                .platform
                .mm()
                .find_vma(addr)
                .is_some_and(|v| v.start <= start && end <= v.end);
        let inserted = if still_mapped {
            let _s = self.structure.lock();
            // Room in the range's slot of the index: read under the notifier's lock (shared),
            // allocated with no lock held, used under it (exclusive). The structure lock keeps
            // other insertions out meanwhile (removals only make room).
            let need = self.read_at(addr, |x| x.and_then(|(_, idx)| idx.spare_needed(start)));
            let mut spare = match need {
                Some(cap) => Some(RangeIndex::<P::Host>::alloc_spare(cap, AllocCtx::MaySleep)?),
                None => None,
            };
            let t = self.notifiers.read();
            let out = if self.is_closed() {
                Err(Error::Closed)
            } else {
                match (t.find(addr), seq) {
                    (Some(n), Some(seq)) => {
                        let mut idx = n.ranges.write();
                        if let Some(r) = idx.find_arc(addr) {
                            // Another fault created it meanwhile.
                            return Ok(Some(r));
                        }
                        // The attributes may have changed since the chunk was chosen:
                        // `set_attrs` updates them, then removes the ranges straddling the new
                        // edges under this lock. A range inserted after that removal must not
                        // straddle them either, so the extent is read again here (lock order:
                        // notifier, then attributes); a range that no longer fits is not
                        // inserted and the fault starts over (tests/loom_attrs.rs
                        // `straddling_update_vs_fault`).
                        let (lo, hi) = self.attrs.read().extent(addr);
                        if n.handle.is_some() && !n.seq.read_retry(seq) && lo <= start && end <= hi
                        {
                            // An overlap means a concurrent insert won: start over.
                            Ok(idx
                                .insert_within_capacity(range.clone(), &mut spare)
                                .is_ok())
                        } else {
                            Ok(false)
                        }
                    }
                    _ => Ok(false),
                }
            };
            drop(t);
            // A replaced slot buffer is freed here, with no lock of the invalidation path held.
            drop(spare);
            out
        } else {
            Ok(false)
        };
        match inserted {
            Ok(true) => Ok(Some(range)),
            Ok(false) | Err(_) => {
                if created {
                    self.drop_notifier_if_empty(notifier.0);
                }
                inserted.map(|_| None)
            }
        }
    }

    /// Make sure the notifier `[start, end)` exists and is registered with the platform;
    /// returns whether this call created it. No crate lock is held while the platform
    /// registers it: meanwhile the notifier sits in the tree without a handle ("registering"),
    /// so that invalidations the platform delivers for it are not lost, no range is inserted
    /// into it, and it is not removed; other callers wait for the registration to finish.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Busy`] if another registration does not finish
    /// within the retry budget; [`Error::NoMem`] if the notifier array cannot grow (nothing
    /// changed); errors of `register_notifier` (the notifier is then removed).
    ///
    /// Context: may sleep (registration); allocates with [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) under the
    /// structure lock only.
    pub(super) fn ensure_notifier(&self, (start, end): (u64, u64)) -> Result<bool> {
        let mut waited = 0u32;
        loop {
            self.check_open()?;
            let state = self.notifiers.read().get(start).map(|n| n.handle.is_some());
            match state {
                Some(true) => return Ok(false),
                Some(false) => {
                    waited = waited.saturating_add(1);
                    if waited > self.config.retry.max_attempts {
                        return Err(Error::Busy);
                    }
                    crate::sync::spin_hint();
                    continue;
                }
                None => {}
            }
            // The notifier (its range index and its lock) is made with no lock held.
            let mut fresh = Some(Notifier::new(start, end, self.slot_size())?);
            {
                // Notifiers are inserted under the structure lock only, so the room read here
                // is still there when the notifier lock is taken for the insertion; the array
                // grows (allocating) before that lock, and the old one is freed after it.
                let _s = self.structure.lock();
                let (len, cap) = {
                    let t = self.notifiers.read();
                    (t.len(), t.capacity())
                };
                let mut spare = NotifierTree::<Handle<P>, P::Host>::spare_for_insert(
                    len,
                    cap,
                    AllocCtx::MaySleep,
                )?;
                let mut t = self.notifiers.write();
                if t.get(start).is_some() {
                    continue;
                }
                let Some(fresh) = fresh.take() else {
                    continue;
                };
                // The notifier goes into the tree before the platform learns about it: from
                // the moment `register_notifier` makes it visible, the platform may call
                // `invalidate_begin` for it, and that call must find it (a dropped `begin`
                // would let a collection commit across the invalidation:
                // tests/loom_invalidate.rs `first_fault_vs_invalidate`).
                t.insert_within_capacity(fresh, &mut spare)?;
                drop(t);
                drop(spare);
            }
            let registered = self
                .platform
                .mm()
                .register_notifier(NotifierId(start), start, end);
            let mut t = self.notifiers.write();
            let closed = self.is_closed();
            let registered = match (registered, t.find_mut(start)) {
                (Ok(h), Some(n)) if n.start == start && !closed => {
                    n.handle = Some(h);
                    return Ok(true);
                }
                (r, _) => r,
            };
            // Closed meanwhile (close took the notifier out, or will find it without a handle),
            // or the registration failed: take the unregistered notifier out, and free it once
            // the lock is released.
            let gone = if t.get(start).is_some_and(|n| n.handle.is_none()) {
                t.remove(start)
            } else {
                None
            };
            drop(t);
            drop(gone);
            return match registered {
                Ok(h) => {
                    // Undo the registration ourselves.
                    self.platform.mm().unregister_notifier(h);
                    Err(Error::Closed)
                }
                Err(e) => Err(e),
            };
        }
    }

    pub(super) fn drop_notifier_if_empty(&self, start: u64) {
        let gone = {
            let mut t = self.notifiers.write();
            match t.get(start) {
                // A notifier without a handle is still being registered by another caller.
                Some(n) if n.ranges.read().is_empty() && n.handle.is_some() => t.remove(start),
                _ => None,
            }
        };
        // Its index and lock are freed here, after the notifier-array lock.
        let handle = gone.and_then(|mut n| n.handle.take());
        if let Some(h) = handle {
            self.platform.mm().unregister_notifier(h);
        }
    }

    /// Slot size of the notifiers' range indices: the largest chunk, or more so that an index
    /// has at most 256 slots.
    pub(super) fn slot_size(&self) -> u64 {
        let largest = self
            .config
            .chunk_sizes
            .first()
            .copied()
            .unwrap_or(PAGE_SIZE);
        slot_size_for(self.config.notifier_size, largest)
    }

    /// Whether `range` (the very object) is linked into the notifier index `idx` (held
    /// locked by the caller).
    pub(super) fn owns_in(idx: &RangeIndex<P::Host>, range: &Range<P::Host>) -> bool {
        idx.find(range.start())
            .is_some_and(|r| core::ptr::eq(r, range))
    }

    /// Check that `range` is live in the notifier `x` found for it (held locked by the
    /// caller, see [`read_at`](Self::read_at)).
    pub(super) fn check_range_in(
        x: Option<&RangeIndex<P::Host>>,
        range: &Range<P::Host>,
    ) -> Result<()> {
        let f = range.flags();
        if f.contains(RangeFlags::REMOVED) {
            return Err(Error::Again);
        }
        if !x.is_some_and(|idx| Self::owns_in(idx, range)) {
            return Err(Error::Invalid);
        }
        if f.contains(RangeFlags::UNMAPPED) {
            return Err(Error::Again);
        }
        Ok(())
    }

    /// Whether `range` (the very object) is linked into a notifier of this instance, unmapped
    /// or not (takes the notifier locks shared).
    pub(crate) fn owns_range(&self, range: &Range<P::Host>) -> bool {
        self.read_at(range.start(), |x| {
            x.is_some_and(|(_, idx)| Self::owns_in(idx, range))
        })
    }

    /// Check that `range` is live in this instance (takes the notifier locks shared).
    pub(crate) fn check_live(&self, range: &Range<P::Host>) -> Result<()> {
        self.read_at(range.start(), |x| {
            Self::check_range_in(x.map(|(_, idx)| idx), range)
        })
    }

    /// Remove a range (SPEC §2 `remove`): zap its device mappings, unmap and free its pages,
    /// unlink it, and drop its notifier if it was the last range. Takes the structure lock.
    ///
    /// Errors: [`Error::Closed`] after [`close`](Self::close); [`Error::Invalid`] if the range
    /// is not in this instance (already removed, or another instance's). On error nothing
    /// changes.
    ///
    /// Context: may sleep. Takes the structure lock, then the notifier-array lock (shared) and
    /// the range's notifier lock (exclusive) and the range's page-state lock, and zaps and
    /// DMA-unmaps under them; frees the page array (no allocation); if the notifier is left
    /// empty, takes the notifier-array lock exclusively to drop it, and unregisters it with
    /// the platform after releasing every lock.
    pub fn remove(&self, range: &Range<P::Host>) -> Result<()> {
        self.check_open()?;
        let handle = {
            let _s = self.structure.lock();
            self.remove_locked(range)?
        };
        if let Some(h) = handle {
            self.platform.mm().unregister_notifier(h);
        }
        Ok(())
    }

    /// Unlink `range` (structure lock held); returns the handle of its notifier if that went
    /// with it, for the caller to unregister once no crate lock is held.
    pub(super) fn remove_locked(&self, range: &Range<P::Host>) -> Result<Option<Handle<P>>> {
        let (emptied, unlinked) = self.write_at(range.start(), |x| {
            let (n, idx) = x.ok_or(Error::Invalid)?;
            let unlinked = idx.remove(range).ok_or(Error::Invalid)?;
            self.platform.page_table().zap(range.start(), range.end());
            range.pages.lock().free(self.platform.dma());
            range.set_flags(RangeFlags::REMOVED);
            Ok((
                (idx.is_empty() && n.handle.is_some()).then_some(n.start),
                unlinked,
            ))
        })?;
        // The range's last reference may go here, with no lock of the invalidation path held.
        drop(unlinked);
        Stats::inc(&self.stats.ranges_removed);
        let Some(start) = emptied else {
            return Ok(None);
        };
        // The structure lock keeps insertions out: the notifier is still empty unless a
        // registration is in flight (then it has no handle and stays).
        let gone = {
            let mut t = self.notifiers.write();
            match t.get(start) {
                Some(n) if n.ranges.read().is_empty() && n.handle.is_some() => t.remove(start),
                _ => None,
            }
        };
        // Its index and lock are freed here, after the notifier-array lock.
        Ok(gone.and_then(|mut n| n.handle.take()))
    }
}
