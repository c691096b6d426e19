//! The platform's view of the simulated address space: page collection, the migration hooks
//! (isolate, finalize), system-page allocation, and [`SimMmView`], the
//! [`AddressSpace`] of one device.

use super::{CpuPte, SimMm, Stop};
use crate::platform::{
    AddressSpace, CollectRequest, CpuPage, MigrateDst, MigrateRequest, MigrateSelect, MigrateSrc,
    NotifierId, PageSink, PagemapId, Vma, VmaFlags, PAGE_SHIFT, PAGE_SIZE,
};
use crate::sim::lock;
use crate::{Error, Event, Result};
use std::sync::Arc;
use std::vec::Vec;

impl SimMm {
    pub(super) fn collect(
        self: &Arc<Self>,
        req: &CollectRequest,
        out: &mut [CpuPage],
    ) -> Result<()> {
        if req.start >= req.end || req.start % PAGE_SIZE != 0 || req.end % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        if out.len() as u64 != (req.end - req.start) / PAGE_SIZE {
            return Err(Error::Invalid);
        }
        {
            let mut i = lock(&self.inject);
            if i.collect_again > 0 {
                i.collect_again -= 1;
                return Err(Error::Again);
            }
            let ppm = i.collect_again_ppm;
            if ppm > 0 && i.rng.below(1_000_000) < u64::from(ppm) {
                return Err(Error::Again);
            }
        }
        let mut attempt = 0u32;
        'restart: loop {
            let stop = {
                let _m = lock(&self.mmap_lock);
                let mut stop = None;
                for (i, slot) in out.iter_mut().enumerate() {
                    let addr = req.start + (i as u64) * PAGE_SIZE;
                    let vpn = addr >> PAGE_SHIFT;
                    let cur = lock(&self.st).ptes.get(&vpn).copied();
                    // Device pages of the requested owner are reported as they are; others
                    // must come back to RAM first (when faulting).
                    if let Some(p) = cur {
                        if let Some((pm, owner)) = p.dev {
                            if !p.migrating && (req.owner == Some(owner) || !req.fault) {
                                // Like HMM: a write fault on a read-only device-private entry
                                // faults, and the read-only VMA refuses it.
                                if req.fault && req.write && !p.writable {
                                    return Err(Error::Perm);
                                }
                                *slot = CpuPage::Device {
                                    pagemap: pm,
                                    owner,
                                    dpfn: p.pfn,
                                    order: p.order,
                                };
                                continue;
                            }
                        }
                        if p.migrating && !req.fault {
                            *slot = CpuPage::Absent;
                            continue;
                        }
                    }
                    let p = if req.fault {
                        match self.fault_in(addr, req.write) {
                            Ok(p) => Some(p),
                            Err(Stop::Migrating) => return Err(Error::Again),
                            Err(s) => {
                                stop = Some((s, addr));
                                break;
                            }
                        }
                    } else {
                        cur
                    };
                    *slot = match p {
                        None => CpuPage::Absent,
                        Some(p) => CpuPage::System {
                            pfn: p.pfn,
                            order: p.order,
                            writable: p.writable && !p.cow,
                        },
                    };
                }
                stop
            };
            match stop {
                None => break 'restart,
                Some((s, addr)) => {
                    self.resolve(s, addr, attempt)?;
                    attempt += 1;
                }
            }
        }
        let hook = lock(&self.inject).hook.take();
        if let Some(mut h) = hook {
            h(self);
            let mut i = lock(&self.inject);
            if i.hook.is_none() {
                i.hook = Some(h);
            }
        }
        Ok(())
    }

    // ---- migration (Linux migrate_vma_*) ----

    pub(super) fn migrate_isolate(
        &self,
        req: &MigrateRequest,
        src: &mut [MigrateSrc],
    ) -> Result<()> {
        if req.start >= req.end || req.start % PAGE_SIZE != 0 || req.end % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        if src.len() as u64 != (req.end - req.start) / PAGE_SIZE {
            return Err(Error::Invalid);
        }
        let _m = lock(&self.mmap_lock);
        let event = Event::Migrate { owner: req.owner };
        self.with_invalidation(req.start, req.end, event, |st, world| {
            Self::split_huge_around(st, req.start, req.end);
            let frames = lock(&world.frames);
            for (i, slot) in src.iter_mut().enumerate() {
                let addr = req.start + (i as u64) * PAGE_SIZE;
                let vpn = addr >> PAGE_SHIFT;
                *slot = MigrateSrc::Skip;
                let Some(vma) = st.vma(addr) else {
                    continue;
                };
                let _ = vma;
                match st.ptes.get_mut(&vpn) {
                    None => {
                        if req.select.contains(MigrateSelect::SYSTEM) {
                            let mut ph = CpuPte::system(0, 0, false);
                            ph.migrating = true;
                            ph.placeholder = true;
                            st.ptes.insert(vpn, ph);
                            *slot = MigrateSrc::Absent;
                        }
                    }
                    Some(p) if p.migrating => *slot = MigrateSrc::Busy,
                    Some(p) => match p.dev {
                        None if req.select.contains(MigrateSelect::SYSTEM) => {
                            // A frame another process still maps (copy-on-write after a
                            // fork) cannot move; once the other side is gone (child exit, or
                            // it broke the sharing) the write-protected page is ours alone and
                            // migrates like any other.
                            let shared = frames.map.get(&p.pfn).is_some_and(|f| f.refs > 1);
                            if shared {
                                *slot = MigrateSrc::Busy;
                            } else {
                                p.migrating = true;
                                *slot = MigrateSrc::System { pfn: p.pfn };
                            }
                        }
                        Some((pm, owner)) if req.select.contains(MigrateSelect::DEVICE_PRIVATE) => {
                            let selected = match req.pagemap {
                                Some(want) => want == pm,
                                None => req.owner == Some(owner),
                            };
                            if selected {
                                p.migrating = true;
                                *slot = MigrateSrc::Device {
                                    pagemap: pm,
                                    dpfn: p.pfn,
                                };
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        Ok(())
    }

    pub(super) fn migrate_finalize(
        &self,
        req: &MigrateRequest,
        src: &[MigrateSrc],
        dst: &[MigrateDst],
    ) {
        let mut freed_dev: Vec<(PagemapId, u64)> = Vec::new();
        {
            let _m = lock(&self.mmap_lock);
            let mut st = lock(&self.st);
            let mut frames = lock(&self.world.frames);
            for (i, s) in src.iter().enumerate() {
                if !s.isolated() {
                    continue;
                }
                let d = dst.get(i).copied().unwrap_or(MigrateDst::Keep);
                let addr = req.start + (i as u64) * PAGE_SIZE;
                let vpn = addr >> PAGE_SHIFT;
                let writable = st
                    .vma(addr)
                    .is_some_and(|v| v.flags.contains(VmaFlags::WRITE));
                let still_isolated = st.ptes.get(&vpn).is_some_and(|p| p.migrating);
                if !still_isolated {
                    // The mapping went away meanwhile (munmap): the source was already
                    // released; drop the destination.
                    match d {
                        MigrateDst::System { pfn } => {
                            frames.map.remove(&pfn);
                        }
                        MigrateDst::Device { pagemap, dpfn, .. } => freed_dev.push((pagemap, dpfn)),
                        MigrateDst::Keep => {}
                    }
                    continue;
                }
                match d {
                    MigrateDst::Keep => {
                        if let Some(p) = st.ptes.get_mut(&vpn) {
                            if p.placeholder {
                                st.ptes.remove(&vpn);
                            } else {
                                p.migrating = false;
                            }
                        }
                    }
                    MigrateDst::System { pfn } => {
                        frames.get(pfn);
                        st.ptes.insert(vpn, CpuPte::system(pfn, 0, writable));
                    }
                    MigrateDst::Device {
                        pagemap,
                        owner,
                        dpfn,
                        order,
                    } => {
                        let mut p = CpuPte::system(dpfn, order, writable);
                        p.dev = Some((pagemap, owner));
                        st.ptes.insert(vpn, p);
                    }
                }
                if d != MigrateDst::Keep {
                    match *s {
                        MigrateSrc::System { pfn } => frames.put(pfn),
                        MigrateSrc::Device { pagemap, dpfn } => freed_dev.push((pagemap, dpfn)),
                        _ => {}
                    }
                }
            }
        }
        self.free_device_pages(freed_dev);
    }

    pub(super) fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        let mut frames = lock(&self.world.frames);
        for i in 0..out.len() {
            match frames.alloc(0) {
                Ok(p) => out[i] = p,
                Err(e) => {
                    for p in &out[..i] {
                        frames.map.remove(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub(super) fn free_system_pages(&self, pfns: &[u64]) {
        let mut frames = lock(&self.world.frames);
        for p in pfns {
            frames.map.remove(p);
        }
    }
}

/// One sink's view of a [`SimMm`]: the [`AddressSpace`] of one simulated device.
#[derive(Debug, Clone)]
pub struct SimMmView {
    pub(super) mm: Arc<SimMm>,
    pub(super) sink: usize,
}

impl SimMmView {
    /// The address space.
    pub fn mm(&self) -> &Arc<SimMm> {
        &self.mm
    }
}

impl AddressSpace for SimMmView {
    type NotifierHandle = u64;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        lock(&self.mm.st).vma(addr).map(|v| Vma {
            start: v.start,
            end: v.end,
            flags: v.flags,
        })
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        self.mm.collect(req, out)
    }

    /// The packed contract, on top of the simulated page walk: one report per CPU mapping
    /// (so the simulator drives the crate's packed path, and platforms without it — the C
    /// ABI, the conformance kit's backends — drive the `collect_pages` fallback).
    fn collect_packed(&self, req: &CollectRequest, sink: &mut PageSink<'_>) -> Result<()> {
        let n = usize::try_from(req.end.saturating_sub(req.start) / PAGE_SIZE)
            .map_err(|_| Error::Invalid)?;
        let mut pages = std::vec![CpuPage::Absent; n];
        self.mm.collect(req, &mut pages)?;
        crate::pages::feed(&pages, sink);
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<u64> {
        self.mm.register(self.sink, id, start, end)
    }

    fn unregister_notifier(&self, handle: u64) {
        self.mm.unregister(handle);
    }

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        self.mm.migrate_isolate(req, src)
    }

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        self.mm.migrate_finalize(req, src, dst);
    }

    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        self.mm.alloc_system_pages(out)
    }

    fn free_system_pages(&self, pfns: &[u64]) {
        self.mm.free_system_pages(pfns);
    }
}
