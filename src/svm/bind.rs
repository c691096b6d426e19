//! A range's pages on an [`Svm`]: collect and commit them (`get_pages`), check them, hand
//! them to the driver under the notifier lock (`bind`), unmap and free them (SPEC §3, §5).

use crate::error::{Error, Result};
use crate::pages::{get_pages_loop, Commit, DevicePlace, PageEntry, PagesCtx};
use crate::placement::PagemapSet;
use crate::platform::PagemapId;
use crate::platform::{DevicePageTable, Platform};
use crate::range::Range;
use crate::stats::Stats;
use core::cell::Cell;

use super::Svm;

impl<P: Platform> Svm<P> {
    /// Collect and map the pages of `range` for the device (SPEC §3).
    ///
    /// Reuses a still-valid page state that satisfies `ctx`. Otherwise reads the notifier
    /// sequence, collects the CPU pages (faulting them in), DMA-maps them, and commits under the
    /// notifier lock unless an invalidation raced (then it unmaps and retries within
    /// `config.retry`). No lock is held while collecting.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] if the range is not in this instance;
    /// [`Error::Again`] if the range was removed or unmapped meanwhile (find it again);
    /// [`Error::Busy`] when the retry budget runs out; [`Error::NotSupported`] for mixed pages
    /// without `ctx.allow_mixed`; [`Error::Fault`] (no VMA, or `ctx.devmem_only` with system
    /// pages); [`Error::Perm`]; [`Error::NoMem`] if the host's allocator fails; and the
    /// platform's errors. On error nothing stays mapped that was not mapped before.
    ///
    /// Context: may sleep: collects the CPU pages through the platform with no crate lock held.
    /// Allocates with [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) and no lock held: the CPU page array and the entry
    /// array (counted from the collection before the notifier lock is taken; [`Error::NoMem`]
    /// leaves the state as it was). Takes the notifier lock shared (to check the range, to map the
    /// pages, to commit) and the range's page-state lock under it.
    pub fn get_pages(&self, range: &Range<P::Host>, ctx: &PagesCtx) -> Result<()> {
        self.check_open()?;
        let done = self.read_at(range.start(), |x| {
            Self::check_range_in(x.map(|(_, idx)| idx), range)
                .map(|()| range.pages.lock().satisfies(ctx))
        })?;
        if done {
            return Ok(());
        }
        // The device-page run the mapping pass last resolved: (pagemap, frames, allocation).
        let run_cache: Cell<Option<(PagemapId, u64, u64, usize)>> = Cell::new(None);
        get_pages_loop(
            &self.platform,
            &self.config.retry,
            (range.start(), range.end()),
            ctx,
            &|pm, dpfn, order| {
                // Pages of one run of a local allocation resolve alike: look the run up once.
                let n = 1u64.checked_shl(u32::from(order)).unwrap_or(u64::MAX);
                if let Some((cpm, lo, hi, a)) = run_cache.get() {
                    if cpm == pm && lo <= dpfn && dpfn.saturating_add(n) <= hi {
                        return Ok((DevicePlace::Local, Some(a)));
                    }
                }
                let (place, alloc, run) = self.resolve_device_run(pm, dpfn, order)?;
                if let (DevicePlace::Local, Some(a), Some((lo, hi))) = (place, alloc, run) {
                    run_cache.set(Some((pm, lo, hi, a)));
                }
                Ok((place, alloc))
            },
            || {
                self.read_at(range.start(), |x| {
                    Self::check_range_in(x.map(|(_, idx)| idx), range)?;
                    Ok(x.and_then(|(n, _)| n.seq.read_begin()))
                })
            },
            |seq, map| {
                // One shared hold of the range's notifier lock: the sequence is checked, the
                // pages are mapped (no invalidation can start and free them meanwhile) and
                // committed. Shared is enough: invalidations, the only writers of page state
                // besides commits, take the lock exclusively, and commits of one range
                // serialise on its page-state lock, so faults on different ranges commit in
                // parallel (and faults on different notifiers do not share a lock at all).
                self.read_at(range.start(), |x| {
                    self.check_open()?;
                    Self::check_range_in(x.map(|(_, idx)| idx), range)?;
                    match x {
                        Some((n, _)) if !n.seq.read_retry(seq) => {
                            // A run looked up in an earlier attempt may have been freed since.
                            run_cache.set(None);
                            let m = map()?;
                            range.pages.lock().commit(self.platform.dma(), m);
                            Stats::inc(&self.stats.pages_committed);
                            Ok(Commit::Done)
                        }
                        _ => Ok(Commit::Stale),
                    }
                })
            },
            || Stats::inc(&self.stats.retries),
        )
    }

    /// SPEC `pages_valid`: whether the range's pages are usable by the device right now.
    /// `false` for a range that is not in this instance (removed, or another instance's).
    ///
    /// Context: takes the notifier lock shared, then the range's page-state lock; allocates
    /// nothing.
    pub fn pages_valid(&self, range: &Range<P::Host>) -> bool {
        self.read_at(range.start(), |x| {
            x.is_some_and(|(_, idx)| Self::owns_in(idx, range)) && range.pages.lock().valid()
        })
    }

    /// Run `f` with the committed page entries of `range` while holding the notifier lock
    /// (shared), so no invalidation can complete meanwhile: this is where the driver writes its
    /// device page-table entries. `f` gets the range and its entries in address order, each
    /// covering `entry.size()` bytes from where the previous one ended; it must not sleep or
    /// call back into this `Svm` other than through [`device_atomics`](Self::device_atomics)
    /// (which says whether each entry may be bound with device atomics enabled).
    ///
    /// Errors: [`Error::Closed`]; [`Error::Again`] if the pages are no longer valid (an
    /// invalidation ran: fault again); [`Error::Invalid`] if the range is not in this instance.
    ///
    /// Context: takes the notifier lock shared, then the range's page-state lock, and calls `f`
    /// with both held (so `f` must not sleep); allocates nothing.
    pub fn bind<R>(
        &self,
        range: &Range<P::Host>,
        f: impl FnOnce(&Range<P::Host>, &[PageEntry]) -> R,
    ) -> Result<R> {
        self.check_open()?;
        self.read_at(range.start(), |x| {
            Self::check_range_in(x.map(|(_, idx)| idx), range)?;
            let st = range.pages.lock();
            if !st.valid() {
                return Err(Error::Again);
            }
            Ok(f(range, st.entries()))
        })
    }

    /// SPEC `unmap_pages`: DMA-unmap the range's pages and clear its flags (idempotent). The
    /// caller zaps the device mappings first if it bound them.
    ///
    /// Errors: [`Error::Closed`] after [`close`](Self::close) (which freed every page);
    /// [`Error::Invalid`] if the range is not in this instance (removed — its pages are already
    /// freed — or another instance's, whose mappings this instance's DMA mapper must not
    /// touch); nothing is unmapped then.
    ///
    /// Context: takes the notifier lock exclusive, then the range's page-state lock; DMA-unmaps
    /// under them; allocates nothing.
    pub fn unmap_pages(&self, range: &Range<P::Host>) -> Result<()> {
        self.check_open()?;
        self.write_at(range.start(), |x| {
            if !x.is_some_and(|(_, idx)| Self::owns_in(idx, range)) {
                return Err(Error::Invalid);
            }
            range.pages.lock().unmap(self.platform.dma());
            Ok(())
        })
    }

    /// Zap the device mappings of `range` and unmap its pages, so that the next device access
    /// faults and re-decides placement (used when attributes change). No-op for a range that is
    /// not in this instance.
    /// Change the pagemap set with `change` (under the pagemap-set lock only: it may allocate),
    /// then, if `change` reports that a pagemap went away, take the notifier lock exclusively,
    /// make every collection in flight retry (each notifier's sequence moves) and zap and
    /// DMA-unmap every range whose committed pages are in device memory. A collection that
    /// resolved a page of the gone pagemap before the change either committed before the
    /// notifier lock was taken here (and is unmapped here) or commits after (and retries,
    /// and the retry no longer resolves it): once the call returns, no committed entry points
    /// into the gone pagemap (`tests/loom_pagemap.rs` `detach_vs_fault_strict`).
    ///
    /// Context: takes the pagemap-set lock, releases it, then the notifier lock (exclusive)
    /// and range page-state locks; allocates only inside `change`.
    pub(crate) fn change_pagemaps<R>(
        &self,
        change: impl FnOnce(&mut PagemapSet<P::Mem, P::Host>) -> (R, bool),
    ) -> R {
        let (out, gone) = change(&mut self.pagemaps.write());
        if gone {
            let t = self.notifiers.read();
            for n in t.iter() {
                let idx = n.ranges.write();
                n.seq.begin();
                for r in idx.iter() {
                    let mut st = r.pages.lock();
                    if st
                        .flags()
                        .contains(crate::pages::PageFlags::HAS_DEVMEM_PAGES)
                    {
                        self.platform.page_table().zap(r.start(), r.end());
                        st.unmap(self.platform.dma());
                    }
                }
                n.seq.end();
            }
        }
        out
    }

    pub(crate) fn clear_mappings(&self, range: &Range<P::Host>) {
        self.write_at(range.start(), |x| {
            if x.is_some_and(|(_, idx)| Self::owns_in(idx, range)) {
                self.platform.page_table().zap(range.start(), range.end());
                range.pages.lock().unmap(self.platform.dma());
            }
        });
    }

    /// SPEC `free_pages`: unmap, then release the range's page array.
    ///
    /// Errors: as [`unmap_pages`](Self::unmap_pages).
    ///
    /// Context: as [`unmap_pages`](Self::unmap_pages); also frees the page array.
    pub fn free_pages(&self, range: &Range<P::Host>) -> Result<()> {
        self.check_open()?;
        self.write_at(range.start(), |x| {
            if !x.is_some_and(|(_, idx)| Self::owns_in(idx, range)) {
                return Err(Error::Invalid);
            }
            range.pages.lock().free(self.platform.dma());
            Ok(())
        })
    }
}
