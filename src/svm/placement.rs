//! Placing ranges in device memory: the [`Svm`] entry points of the migration state machine
//! (migrate a range in, evict it, make room), and the fault service's placement step.

use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::migrate::{self, MigrateDetails, MigrateReport};
use crate::pagemap::{DevmemAlloc, Pagemap};
use crate::pages::DevicePlace;
use crate::pages::PageFlags;
use crate::placement::{PagemapArc, PagemapVec};
use crate::platform::{CpuPage, DeviceMemory, OwnerId, PagemapId, Platform};
use crate::policy::DeviceTarget;
use crate::range::{Range, RangeFlags};
use crate::stats::Stats;
use crate::svm::Svm;
use crate::{HostArc, HostVec};

/// How many times an eviction retries pages that could not be isolated.
const EVICT_ATTEMPTS: u32 = 3;

/// Where a device page is, the identity of its allocation, and the run of frames `[lo, hi)` of
/// that allocation holding it (see [`Svm::resolve_device_run`]).
pub(crate) type ResolvedRun = (DevicePlace, Option<usize>, Option<(u64, u64)>);

impl<P: Platform> Svm<P> {
    /// Make room in the pagemap set for `need` more pagemaps, allocating without its lock
    /// held ([`AllocCtx::MaySleep`]): a bigger array is swapped in under the lock and the old
    /// one freed after unlocking. The room may be used up again by a concurrent attach before
    /// the caller takes the lock: callers check and retry.
    ///
    /// Errors: [`Error::NoMem`].
    ///
    /// Context: may sleep; takes the pagemap-set lock (exclusive), never while allocating.
    fn grow_pagemaps(&self, need: usize) -> Result<()> {
        let mut spare = PagemapVec::<P::Mem, P::Host>::new();
        loop {
            let want = {
                let mut set = self.pagemaps.write();
                if set.room() < need {
                    set.replace_with(&mut spare, need);
                }
                if set.room() >= need {
                    break;
                }
                let len = set.len();
                len.checked_add(need)
                    .ok_or(Error::NoMem)?
                    .max(len.saturating_mul(2))
                    .max(4)
            };
            spare = PagemapVec::<P::Mem, P::Host>::new();
            spare.reserve_exact(want, AllocCtx::MaySleep)?;
        }
        // The old array (if replaced) is freed here, unlocked.
        drop(spare);
        Ok(())
    }

    /// Give this device its own device memory (or take it away with `None`). The pagemap is
    /// also attached (see [`attach_pagemap`](Self::attach_pagemap)). Unless an owner was set
    /// with [`set_owner`](Self::set_owner), the device's owner is the pagemap's.
    ///
    /// When the pagemap is replaced or removed, the old one is gone for this device as in
    /// [`detach_pagemap`](Self::detach_pagemap): collections in flight retry and ranges with
    /// device pages are zapped and unmapped.
    ///
    /// Errors: [`Error::Invalid`] if a peer's pagemap (a different one than this device's
    /// current pagemap) is attached under the new pagemap's id; [`Error::NoMem`] if the
    /// pagemap set cannot grow. On error nothing changes.
    ///
    /// Context: may sleep; allocates (to grow the pagemap set) with [`AllocCtx::MaySleep`]
    /// without any lock held; takes the pagemap-set lock (exclusive), then, if a pagemap went
    /// away, the notifier lock exclusively and range page-state locks, and calls
    /// [`DevicePageTable::zap`](crate::platform::DevicePageTable::zap) and the DMA unmap.
    pub fn set_pagemap(&self, pagemap: Option<PagemapArc<P::Mem, P::Host>>) -> Result<()> {
        loop {
            if pagemap.is_some() {
                self.grow_pagemaps(1)?;
            }
            let done = self.change_pagemaps(|set| {
                if let Some(pm) = &pagemap {
                    if let Some(p) = set.get(pm.id()) {
                        let replaceable = PagemapArc::ptr_eq(p, pm)
                            || set.local.as_ref().is_some_and(|l| PagemapArc::ptr_eq(l, p));
                        if !replaceable {
                            return (Some((Err(Error::Invalid), [None, None, None])), false);
                        }
                    }
                    if set.room() == 0 {
                        // A concurrent attach took the room: grow again.
                        return (None, false);
                    }
                }
                let old = set.local.take();
                let gone = match (&old, &pagemap) {
                    (Some(o), Some(n)) => !PagemapArc::ptr_eq(o, n),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                let removed = old.as_ref().and_then(|o| set.remove(o.id()));
                let replaced = match &pagemap {
                    // Cannot fail: the room was checked above.
                    Some(pm) => set.insert_within_capacity(pm.clone()).ok().flatten(),
                    None => None,
                };
                set.local = pagemap.clone();
                // The old pagemap goes back to the caller, to be dropped after unlocking (its
                // last reference may drop the platform's device memory).
                (Some((Ok(()), [old, removed, replaced])), gone)
            });
            if let Some((r, old)) = done {
                drop(old);
                return r;
            }
        }
    }

    /// This device's pagemap.
    ///
    /// Context: may sleep (the pagemap-set lock, shared); never allocates.
    pub fn pagemap(&self) -> Option<PagemapArc<P::Mem, P::Host>> {
        self.pagemaps.read().local.clone()
    }

    /// Attach a peer's pagemap: its pages are then mapped peer-to-peer when they share this
    /// device's owner, and evicted to system memory (when they block a migration) otherwise.
    /// A driver attaches every pagemap whose pages this device's address space may hold.
    /// Attaching the same pagemap again does nothing.
    ///
    /// Errors: [`Error::Invalid`] if a different pagemap is attached under the same id (this
    /// device's own, or a peer's): an id names one pagemap, whose pages are resolved, mapped
    /// and evicted through it; [`Error::NoMem`] if the pagemap set cannot grow. On error
    /// nothing changes.
    ///
    /// Context: may sleep; allocates (to grow the pagemap set) with [`AllocCtx::MaySleep`]
    /// without any lock held; takes the pagemap-set lock (exclusive).
    pub fn attach_pagemap(&self, pagemap: PagemapArc<P::Mem, P::Host>) -> Result<()> {
        loop {
            {
                let mut set = self.pagemaps.write();
                match set.get(pagemap.id()) {
                    Some(p) if PagemapArc::ptr_eq(p, &pagemap) => return Ok(()),
                    Some(_) => return Err(Error::Invalid),
                    None => {}
                }
                if set.room() > 0 {
                    // Cannot fail: there is room, and no pagemap has this id (checked above).
                    let _ = set.insert_within_capacity(pagemap);
                    return Ok(());
                }
            }
            self.grow_pagemaps(1)?;
        }
    }

    /// Detach a peer's pagemap (before it is destroyed). Returns it. The local pagemap is not
    /// detached this way (use [`set_pagemap`](Self::set_pagemap)).
    ///
    /// Order: the peer evicts its pages first (its teardown runs
    /// [`migrate::to_ram`](crate::migrate::to_ram) over each of
    /// [`Pagemap::allocations`] until [`Pagemap::live_allocations`] is zero); pages of a
    /// detached pagemap that are still mapped
    /// by the CPU cannot be resolved or evicted by this device any more, so its faults on them
    /// return [`Error::Busy`] until the owner moves them. When it returns, no collection in
    /// flight can commit a page of the detached pagemap, and no range's committed pages point
    /// into device memory any more (ranges with device pages are zapped and unmapped; they
    /// refault).
    ///
    /// Errors: none (`None` if no peer pagemap `id` is attached).
    ///
    /// Context: may sleep; allocates nothing; takes the pagemap-set lock, then the notifier
    /// lock exclusively and range page-state locks; calls
    /// [`DevicePageTable::zap`](crate::platform::DevicePageTable::zap) and the DMA unmap.
    pub fn detach_pagemap(&self, id: PagemapId) -> Option<PagemapArc<P::Mem, P::Host>> {
        self.change_pagemaps(|set| {
            if set.local.as_ref().is_some_and(|l| l.id() == id) {
                return (None, false);
            }
            let out = set.remove(id);
            let gone = out.is_some();
            (out, gone)
        })
    }

    /// The attached pagemap `id` (local or peer), found by binary search.
    ///
    /// Context: may sleep (the pagemap-set lock, shared); never allocates.
    pub fn pagemap_by_id(&self, id: PagemapId) -> Option<PagemapArc<P::Mem, P::Host>> {
        self.pagemaps.read().get(id).cloned()
    }

    /// Set the owner explicitly (what this device's `Svm` peer got from an
    /// [`OwnerRegistry`](crate::pagemap::OwnerRegistry)), or clear it.
    ///
    /// Context: may sleep (the owner lock, exclusive); never allocates.
    pub fn set_owner(&self, owner: Option<OwnerId>) {
        *self.owner.write() = owner;
    }

    /// The owner used for page collection: the one set with [`set_owner`](Self::set_owner),
    /// else the local pagemap's, else `config.owner`.
    ///
    /// Context: may sleep (the owner lock, then the pagemap-set lock, shared); never
    /// allocates.
    pub fn owner(&self) -> Option<OwnerId> {
        if let Some(o) = *self.owner.read() {
            return Some(o);
        }
        self.pagemap().map(|p| p.owner()).or(self.config().owner)
    }

    /// Where the device page `dpfn` of `pm` is for this device: local, or a peer's reachable
    /// over the interconnect (SPEC §3, §6). Errors: [`Error::Busy`] for a pagemap that is not
    /// attached (it cannot be mapped; the caller evicts); `device_map` errors.
    ///
    /// Also returns the run of frames `[lo, hi)` of the page's allocation that holds it: every
    /// page of that run resolves the same way while the allocation lives (a collection resolves
    /// a run once).
    pub(crate) fn resolve_device_run(
        &self,
        pm: PagemapId,
        dpfn: u64,
        order: u8,
    ) -> Result<ResolvedRun> {
        let set = self.pagemaps.read();
        let p = set.get(pm).ok_or(Error::Busy)?;
        let found = p.alloc_of(dpfn);
        let alloc = found
            .as_ref()
            .map(|a| HostArc::<P::Host, DevmemAlloc<P::Host>>::as_ptr(a) as usize);
        let run = found.as_ref().and_then(|a| {
            let runs = a.runs();
            let k = runs.partition_point(|r| r.dpfn <= dpfn).checked_sub(1)?;
            runs.get(k)
                .map(|r| (r.dpfn, r.dpfn.saturating_add(r.len)))
                .filter(|&(lo, hi)| lo <= dpfn && dpfn < hi)
        });
        if set.local.as_ref().is_some_and(|l| l.id() == pm) {
            return Ok((DevicePlace::Local, alloc, run));
        }
        let (resource, proto) = p.mem().device_map(dpfn, order)?;
        Ok((DevicePlace::Peer { resource, proto }, alloc, run))
    }

    /// Migrate `range` into this device's memory (SPEC §7). Succeeds without doing anything if
    /// it is already there. On success the range's page state is stale (the migration
    /// invalidated it): collect it again with [`get_pages`](Self::get_pages).
    ///
    /// Errors: [`Error::NotSupported`] (no pagemap); [`Error::Invalid`]/[`Error::Again`] (the
    /// range is not live here); and those of [`migrate::to_devmem`]. On error nothing is lost.
    ///
    /// Context: as [`migrate::to_devmem`]: may sleep, allocates with [`AllocCtx::MaySleep`];
    /// takes the pagemap-set lock (shared) and the notifier lock (shared) briefly, never across
    /// a platform call. Call it without crate locks held.
    pub fn migrate_to_devmem(
        &self,
        range: &Range<P::Host>,
        details: &MigrateDetails,
    ) -> Result<MigrateReport> {
        let pm = self.pagemap().ok_or(Error::NotSupported)?;
        self.migrate_range(range, &pm, details)
    }

    /// Migrate `range` into `pm` (any attached pagemap of this device's owner), copying pages
    /// of peers over the interconnect.
    pub(crate) fn migrate_range(
        &self,
        range: &Range<P::Host>,
        pm: &Pagemap<P::Mem, P::Host>,
        details: &MigrateDetails,
    ) -> Result<MigrateReport> {
        self.check_open()?;
        self.check_live(range)?;
        let r = migrate::to_devmem_traced(
            self.platform().mm(),
            pm,
            &|id| self.pagemap_by_id(id),
            range.start(),
            range.end(),
            details,
            None,
        );
        match r {
            Ok(rep) => {
                if !rep.already_there {
                    range.set_flags(RangeFlags::DEVMEM);
                    range.set_placed_ns(self.platform().now_ns());
                    Stats::inc(&self.stats.migrations_to_devmem);
                    Stats::add(&self.stats.bytes_to_devmem, rep.bytes);
                    Stats::add(&self.stats.copy_runs, rep.copy_runs as u64);
                }
            }
            Err(_) => Stats::inc(&self.stats.migrate_failures),
        }
        r
    }

    /// The attached pagemaps that hold pages of `[start, end)` (from a snapshot of the CPU
    /// page tables; nothing is faulted in or invalidated), or every attached pagemap if the
    /// snapshot fails.
    ///
    /// Errors: [`Error::NoMem`].
    ///
    /// Context: may sleep; allocates with [`AllocCtx::MaySleep`] with no lock held, then
    /// fills the result under the pagemap-set lock (shared) without allocating.
    fn pagemaps_in(&self, start: u64, end: u64) -> Result<PagemapVec<P::Mem, P::Host>> {
        let mut out = PagemapVec::<P::Mem, P::Host>::new();
        if start >= end {
            return Ok(out);
        }
        let Some(pages) = self.snapshot(start, end, None) else {
            // Cannot tell: try every attached pagemap.
            let mut want = self.pagemaps.read().len();
            loop {
                out.reserve_exact(want, AllocCtx::MaySleep)?;
                let set = self.pagemaps.read();
                if set.len() <= out.capacity() {
                    for pm in set.iter() {
                        // Cannot fail: the room was checked above.
                        let _ = out.push_within_capacity(pm.clone());
                    }
                    return Ok(out);
                }
                want = set.len();
            }
        };
        // The distinct pagemaps named by the snapshot, collected without a lock held.
        let mut ids = HostVec::<P::Host, PagemapId>::new();
        for p in pages.iter() {
            if let CpuPage::Device { pagemap, .. } = p {
                if !ids.contains(pagemap) {
                    ids.push(*pagemap, AllocCtx::MaySleep)?;
                }
            }
        }
        out.reserve_exact(ids.len(), AllocCtx::MaySleep)?;
        let set = self.pagemaps.read();
        for id in ids.iter() {
            if let Some(pm) = set.get(*id) {
                // Cannot fail: there is room for every id.
                let _ = out.push_within_capacity(pm.clone());
            }
        }
        Ok(out)
    }

    /// Migrate every device page of the attached pagemaps in `[start, end)` back to system
    /// memory, retrying pages that could not be isolated up to 3 times.
    pub(crate) fn evict_interval(&self, start: u64, end: u64) -> Result<MigrateReport> {
        let mut total = MigrateReport::default();
        for pm in self.pagemaps_in(start, end)?.iter() {
            let mut done = false;
            for _ in 0..EVICT_ATTEMPTS {
                let rep = migrate::to_ram(self.platform().mm(), pm, start, end)?;
                total.pages = total.pages.saturating_add(rep.pages);
                total.copy_runs = total.copy_runs.saturating_add(rep.copy_runs);
                total.bytes = total.bytes.saturating_add(rep.bytes);
                if rep.pages > 0 {
                    Stats::inc(&self.stats.migrations_to_ram);
                    Stats::add(&self.stats.bytes_to_ram, rep.bytes);
                    Stats::add(&self.stats.copy_runs, rep.copy_runs as u64);
                }
                if rep.busy == 0 {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(Error::Busy);
            }
        }
        Ok(total)
    }

    /// Evict `range` (SPEC §7 "Evict"): migrate every device page in it back to system memory.
    /// Used on partial unmap, mixed pages, memory pressure and before populate retries.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] if the range is not in this instance
    /// (removed, or another instance's or never inserted: its interval, which may be anything,
    /// is not looked at); [`Error::Busy`] if pages could still not be isolated after 3 attempts;
    /// [`Error::NoMem`]; copy errors. On error nothing is lost (pages not moved stay in device
    /// memory).
    ///
    /// Context: may sleep; allocates (a page snapshot, the list of pagemaps, the migrations'
    /// arrays) with [`AllocCtx::MaySleep`] without crate locks held; takes the notifier lock
    /// (shared) and the pagemap-set lock (shared) briefly. Call it without crate locks held.
    pub fn evict(&self, range: &Range<P::Host>) -> Result<MigrateReport> {
        self.check_open()?;
        if !self.owns_range(range) {
            return Err(Error::Invalid);
        }
        let rep = self.evict_interval(range.start(), range.end())?;
        range.clear_flags(RangeFlags::DEVMEM);
        if rep.pages > 0 {
            Stats::inc(&self.stats.evictions);
        }
        Ok(rep)
    }

    /// Make room in device memory by evicting one other range that holds device pages: the
    /// one migrated in longest ago (so a range just migrated is not the next victim). Returns
    /// whether one was evicted.
    fn evict_one_other(&self, keep: &Range<P::Host>) -> bool {
        let mut victim: Option<(u64, u64)> = None;
        self.for_each_range(|_, r| {
            if !core::ptr::eq(r, keep)
                && r.flags().contains(RangeFlags::DEVMEM)
                && victim.is_none_or(|(t, _)| r.placed_ns() < t)
            {
                victim = Some((r.placed_ns(), r.start()));
            }
        });
        match victim.and_then(|(_, start)| self.find(start)) {
            Some(v) => self.evict(&v).is_ok_and(|rep| rep.pages > 0),
            None => false,
        }
    }

    /// The pagemap a target names, if it is attached and shares this device's owner.
    pub(crate) fn target_pagemap(
        &self,
        target: DeviceTarget,
    ) -> Option<PagemapArc<P::Mem, P::Host>> {
        match target {
            DeviceTarget::Local => self.pagemap(),
            DeviceTarget::Pagemap(id) => self
                .pagemap_by_id(id)
                .filter(|pm| Some(pm.owner()) == self.owner()),
        }
    }

    /// Whether every page of `range` already lives where `target` wants it: for `Local`, in
    /// device memory of the owner (this device's or a peer's reachable over the interconnect);
    /// for `Pagemap(id)`, in that pagemap. From the committed page state if it is valid, else
    /// from a snapshot of the CPU page tables, which faults nothing in and invalidates nothing.
    pub(crate) fn resident(
        &self,
        range: &Range<P::Host>,
        target: DeviceTarget,
        owner: OwnerId,
    ) -> bool {
        {
            let st = range.pages.lock();
            if st.valid() {
                return st.flags().contains(PageFlags::ALL_DEVMEM)
                    && match target {
                        DeviceTarget::Local => true,
                        DeviceTarget::Pagemap(id) => st.pagemap() == Some(id),
                    };
            }
        }
        self.snapshot_all(range, Some(owner), |p| match (p, target) {
            (CpuPage::Device { owner: o, .. }, DeviceTarget::Local) => *o == owner,
            (CpuPage::Device { pagemap, .. }, DeviceTarget::Pagemap(id)) => *pagemap == id,
            _ => false,
        })
    }

    /// Whether some page of `range` is in device memory (snapshot).
    pub(crate) fn has_device_pages(&self, range: &Range<P::Host>) -> bool {
        !self.snapshot_all(range, None, |p| !matches!(p, CpuPage::Device { .. }))
    }

    /// Snapshot the CPU pages of `range` (no faulting) and test `f` on all of them. `false` if
    /// the snapshot fails.
    fn snapshot_all(
        &self,
        range: &Range<P::Host>,
        owner: Option<OwnerId>,
        f: impl Fn(&CpuPage) -> bool,
    ) -> bool {
        self.snapshot(range.start(), range.end(), owner)
            .is_some_and(|pages| pages.iter().all(f))
    }

    /// Move `range` into the device memory `target` names (SPEC §7 populate, with the fault
    /// service's recovery): nothing to do if it is already there; `Busy` evicts the range to
    /// system memory and retries once; `NoMem` evicts another range and retries once. A final
    /// failure marks the range `MIGRATE_FAILED` ("migrate once") and is returned; the range's
    /// data stays intact wherever it is.
    ///
    /// Errors: [`Error::NoLink`] if the target pagemap is not attached or not of this device's
    /// owner; [`Error::NotSupported`] without device memory; [`Error::Closed`];
    /// [`Error::Invalid`]/[`Error::Again`] if the range is not live in this instance (checked
    /// before its pages are looked at); those of the migration.
    ///
    /// Context: as [`migrate_to_devmem`](Self::migrate_to_devmem) and
    /// [`evict`](Self::evict): may sleep, allocates with [`AllocCtx::MaySleep`] without crate
    /// locks held. Call it without crate locks held.
    pub fn place_in(
        &self,
        range: &Range<P::Host>,
        target: DeviceTarget,
        timeslice_ns: u64,
    ) -> Result<()> {
        let pm = match (target, self.target_pagemap(target)) {
            (_, Some(pm)) => pm,
            (DeviceTarget::Local, None) => return Err(Error::NotSupported),
            (DeviceTarget::Pagemap(_), None) => return Err(Error::NoLink),
        };
        // A range that is not ours may have any bounds: refuse it before `resident` snapshots
        // its pages (an allocation proportional to its size).
        self.check_open()?;
        self.check_live(range)?;
        if self.resident(range, target, pm.owner()) {
            return Ok(());
        }
        let details = MigrateDetails {
            timeslice_ns,
            can_migrate_same_pagemap: self.config().can_migrate_same_pagemap,
            source_peer_migrates: self.config().source_peer_migrates,
        };
        let first = self.migrate_range(range, &pm, &details);
        let retry = match first {
            Ok(_) => return Ok(()),
            Err(Error::Busy) => self.evict(range).is_ok(),
            Err(Error::NoMem) => self.evict_one_other(range),
            Err(_) => false,
        };
        let second = if retry {
            self.migrate_range(range, &pm, &details)
        } else {
            first
        };
        match second {
            Ok(_) => Ok(()),
            Err(e) => {
                range.set_flags(RangeFlags::MIGRATE_FAILED);
                Err(e)
            }
        }
    }
}

#[cfg(all(test, feature = "sim", not(loom)))]
mod tests {
    use crate::pagemap::Pagemap;
    use crate::platform::{OwnerId, PagemapId};
    use crate::sim::{SimAlloc, SimDevice, SimDevmem, SimGpu, SimMm, SimPagemapArc, SimWorld};
    use crate::Error;

    fn same(a: &Option<SimPagemapArc>, b: &SimPagemapArc) -> bool {
        a.as_ref().is_some_and(|a| SimPagemapArc::ptr_eq(a, b))
    }

    /// The sorted pagemap set: attach (insert, in any id order), lookup by id, detach
    /// (remove), growth by replacement; a failed growth changes nothing.
    #[test]
    fn pagemap_set_insert_lookup_remove_and_nomem() {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::with_devmem(&mm, 0, 16, 0).unwrap();
        let local = gpu.svm.pagemap().unwrap();
        let fresh = |id: u32| -> SimPagemapArc {
            let dev = SimDevice::new(&world, 10 + id);
            Pagemap::new(PagemapId(id), OwnerId(0), SimDevmem(dev)).unwrap()
        };
        let mut peers = std::vec::Vec::new();
        for id in [9, 3, 7, 1, 12, 5, 2] {
            let pm = fresh(id);
            gpu.svm.attach_pagemap(pm.clone()).unwrap();
            peers.push(pm);
        }
        for pm in &peers {
            assert!(same(&gpu.svm.pagemap_by_id(pm.id()), pm));
        }
        assert!(same(&gpu.svm.pagemap_by_id(PagemapId(0)), &local));
        assert!(gpu.svm.pagemap_by_id(PagemapId(4)).is_none());
        {
            let set = gpu.svm.pagemaps.read();
            let ids: std::vec::Vec<u32> = set.iter().map(|p| p.id().0).collect();
            assert_eq!(ids, [0, 1, 2, 3, 5, 7, 9, 12], "sorted by id");
        }
        // Detach two peers; the rest stay.
        assert!(gpu
            .svm
            .detach_pagemap(PagemapId(3))
            .is_some_and(|p| p.id() == PagemapId(3)));
        assert!(gpu.svm.detach_pagemap(PagemapId(3)).is_none());
        assert!(
            gpu.svm.detach_pagemap(PagemapId(0)).is_none(),
            "local stays"
        );
        assert!(gpu.svm.pagemap_by_id(PagemapId(3)).is_none());
        assert!(same(&gpu.svm.pagemap_by_id(PagemapId(5)), &peers[5]));
        // Fill the set's array, then fail its growth.
        let mut id = 20;
        while gpu.svm.pagemaps.read().room() > 0 {
            gpu.svm.attach_pagemap(fresh(id)).unwrap();
            id += 1;
        }
        let n = gpu.svm.pagemaps.read().len();
        let extra = fresh(id);
        SimAlloc::fail_next(1);
        assert_eq!(gpu.svm.attach_pagemap(extra.clone()), Err(Error::NoMem));
        SimAlloc::stop_failing();
        assert_eq!(gpu.svm.pagemaps.read().len(), n);
        assert!(gpu.svm.pagemap_by_id(PagemapId(id)).is_none());
        // `set_pagemap` of a new local pagemap under a new id needs room too.
        let new_local = fresh(id + 1);
        SimAlloc::fail_next(1);
        assert_eq!(
            gpu.svm.set_pagemap(Some(new_local.clone())),
            Err(Error::NoMem)
        );
        SimAlloc::stop_failing();
        assert!(same(&gpu.svm.pagemap(), &local), "the local pagemap stays");
        gpu.svm.attach_pagemap(extra.clone()).unwrap();
        assert!(same(&gpu.svm.pagemap_by_id(PagemapId(id)), &extra));
        gpu.svm.set_pagemap(Some(new_local.clone())).unwrap();
        assert!(same(&gpu.svm.pagemap(), &new_local));
        assert!(gpu.svm.pagemap_by_id(PagemapId(0)).is_none());
    }
}
