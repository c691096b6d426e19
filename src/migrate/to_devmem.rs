//! RAM (and peer device memory) → device memory, as an explicit state machine.

use super::plan::{
    build_runs, bus_of, install_orders, map_chunks, restore_sources, run_bytes, run_states,
    source_slots, unmap_chunks, DmaChunk,
};
use super::{MigrateDetails, MigrateReport, Peers};
use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::pagemap::{DevmemAlloc, Pagemap};
use crate::platform::{
    AddressSpace, CopyKind, CopyRun, DeviceMemory, DmaDirection, MigrateDst, MigrateRequest,
    MigrateSelect, MigrateSrc, PagemapId, PAGE_SHIFT,
};
use crate::{Host, HostArc, HostVec};

/// The states of a migration to device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToDevmemState {
    /// Isolate the source pages (CPU mappings replaced by migration entries).
    Isolate,
    /// Allocate destination device pages.
    Allocate,
    /// DMA-map the system source pages for the copy engine.
    MapSources,
    /// Copy (or zero-fill) into the destination.
    Copy,
    /// Install the destinations in the CPU page tables and release the sources.
    Install,
    /// Put every source back, free whatever was taken.
    Restore,
    /// Finished (successfully or not).
    Done,
}

struct Machine<'a, A: AddressSpace, M: DeviceMemory, L: Host> {
    mm: &'a A,
    pm: &'a Pagemap<M, L>,
    peers: Peers<'a, M, L>,
    details: &'a MigrateDetails,
    req: MigrateRequest,
    src: HostVec<L, MigrateSrc>,
    dpfns: HostVec<L, u64>,
    allocated: bool,
    chunks: HostVec<L, DmaChunk>,
    runs: HostVec<L, (PagemapId, CopyRun)>,
    error: Option<Error>,
    report: MigrateReport,
}

/// Migrate every page of `[start, end)` into `pm` (SPEC §7 "To device memory").
///
/// System pages (and never-touched anonymous pages, which arrive zero-filled) are copied by
/// `pm`'s copy engine. If every page already lives in `pm` nothing happens and the report says
/// `already_there`. Pages of `pm` mixed with others fail with [`Error::Busy`] unless
/// `details.can_migrate_same_pagemap`. All-or-nothing: on any error every page stays where it
/// was, nothing leaks, and the error is returned.
///
/// Errors: [`Error::Invalid`] (bad interval); whatever [`AddressSpace::migrate_isolate`]
/// returns (nothing was isolated then); [`Error::Busy`] (a page could not be isolated, is
/// outside a VMA, or is a device page this pagemap cannot copy directly); [`Error::NoMem`]
/// (device memory, DMA space, or the host's allocator); copy errors.
///
/// Context: may sleep (the platform's isolate, allocate, copy and finalize calls); allocates
/// its arrays with [`AllocCtx::MaySleep`]; holds no crate lock across a platform call (the
/// pagemap's run index lock is taken briefly to track the new allocation). Call it without
/// crate locks held.
pub fn to_devmem<A: AddressSpace, M: DeviceMemory, L: Host>(
    mm: &A,
    pm: &Pagemap<M, L>,
    start: u64,
    end: u64,
    details: &MigrateDetails,
) -> Result<MigrateReport> {
    to_devmem_traced(mm, pm, &|_| None, start, end, details, None)
}

/// [`to_devmem`] with peers: device pages of the pagemaps `peers` resolves that share `pm`'s
/// owner are migrated too, copied over the interconnect (by the source's copy engine when
/// `details.source_peer_migrates`, else by `pm`'s); and every state entered is reported to
/// `trace` (tests use it to prove that each failure path restores).
///
/// Errors: as [`to_devmem`].
///
/// Context: as [`to_devmem`]; `peers` is called without crate locks held by this function.
pub fn to_devmem_traced<A: AddressSpace, M: DeviceMemory, L: Host>(
    mm: &A,
    pm: &Pagemap<M, L>,
    peers: Peers<'_, M, L>,
    start: u64,
    end: u64,
    details: &MigrateDetails,
    trace: Option<&mut dyn FnMut(ToDevmemState)>,
) -> Result<MigrateReport> {
    let src = source_slots::<L::Alloc>(start, end)?;
    let mut m = Machine {
        mm,
        pm,
        peers,
        details,
        req: MigrateRequest {
            start,
            end,
            select: MigrateSelect::SYSTEM | MigrateSelect::DEVICE_PRIVATE,
            pagemap: None,
            owner: Some(pm.owner()),
        },
        src,
        dpfns: HostVec::<L, u64>::new(),
        allocated: false,
        chunks: HostVec::<L, DmaChunk>::new(),
        runs: HostVec::<L, (PagemapId, CopyRun)>::new(),
        error: None,
        report: MigrateReport::default(),
    };
    run_states(
        ToDevmemState::Isolate,
        ToDevmemState::Done,
        trace,
        |state| match state {
            ToDevmemState::Isolate => m.isolate(),
            ToDevmemState::Allocate => m.allocate(),
            ToDevmemState::MapSources => m.map_sources(),
            ToDevmemState::Copy => m.copy(),
            ToDevmemState::Install => m.install(),
            ToDevmemState::Restore => m.restore(),
            ToDevmemState::Done => ToDevmemState::Done,
        },
    );
    match m.error {
        Some(e) => Err(e),
        None => Ok(m.report),
    }
}

impl<A: AddressSpace, M: DeviceMemory, L: Host> Machine<'_, A, M, L> {
    fn fail(&mut self, e: Error) -> ToDevmemState {
        self.error = Some(e);
        ToDevmemState::Restore
    }

    fn isolate(&mut self) -> ToDevmemState {
        if let Err(e) = self.mm.migrate_isolate(&self.req, &mut self.src) {
            // Nothing is isolated after an error: no restore needed.
            self.error = Some(e);
            return ToDevmemState::Done;
        }
        let me = self.pm.id();
        let owner = self.pm.owner();
        let (mut here, mut blocked) = (0usize, 0usize);
        for s in &self.src {
            match *s {
                MigrateSrc::Device { pagemap, .. } if pagemap == me => {
                    here = here.saturating_add(1)
                }
                MigrateSrc::System { .. } | MigrateSrc::Absent => {}
                // A peer of the same owner: copied over the interconnect.
                MigrateSrc::Device { pagemap, .. }
                    if (self.peers)(pagemap).is_some_and(|p| p.owner() == owner) => {}
                // Foreign device pages, busy pages, holes: not migratable here.
                _ => blocked = blocked.saturating_add(1),
            }
        }
        if here == self.src.len() {
            self.report.already_there = true;
            return ToDevmemState::Restore;
        }
        if blocked > 0 || (here > 0 && !self.details.can_migrate_same_pagemap) {
            return self.fail(Error::Busy);
        }
        ToDevmemState::Allocate
    }

    fn allocate(&mut self) -> ToDevmemState {
        let n = self.src.len();
        if let Err(e) = self.dpfns.reserve_exact(n, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        if let Err(e) = self.dpfns.resize(n, 0, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        match self.pm.mem().alloc(&mut self.dpfns) {
            Ok(()) => {
                self.allocated = true;
                ToDevmemState::MapSources
            }
            Err(e) => self.fail(e),
        }
    }

    fn map_sources(&mut self) -> ToDevmemState {
        let system_frame = |s: &MigrateSrc| match *s {
            MigrateSrc::System { pfn } => Some(pfn),
            _ => None,
        };
        match map_chunks(
            self.pm.mem().dma(),
            &self.src,
            system_frame,
            DmaDirection::ToDevice,
            &mut self.chunks,
        ) {
            Ok(()) => ToDevmemState::Copy,
            Err(e) => self.fail(e),
        }
    }

    fn copy(&mut self) -> ToDevmemState {
        let chunks = &self.chunks;
        let dpfns = &self.dpfns;
        let me = self.pm.id();
        let peer_copies = self.details.source_peer_migrates;
        let slots = self.src.iter().enumerate().map(|(i, s)| {
            let dst = dpfns.get(i)?.checked_shl(PAGE_SHIFT)?;
            match *s {
                MigrateSrc::System { .. } => {
                    Some((me, CopyKind::RamToDevice, bus_of(chunks, i)?, dst))
                }
                MigrateSrc::Absent => Some((me, CopyKind::ZeroDevice, 0, dst)),
                MigrateSrc::Device { pagemap, dpfn } => {
                    let engine = if peer_copies { pagemap } else { me };
                    Some((
                        engine,
                        CopyKind::DeviceToDevice,
                        dpfn.checked_shl(PAGE_SHIFT)?,
                        dst,
                    ))
                }
                MigrateSrc::Skip | MigrateSrc::Busy => None,
            }
        });
        if let Err(e) = build_runs(slots, &mut self.runs) {
            return self.fail(e);
        }
        // Hand each engine its consecutive runs as one command list.
        let mut batch = HostVec::<L, CopyRun>::new();
        if let Err(e) = batch.reserve_exact(self.runs.len(), AllocCtx::MaySleep) {
            return self.fail(e);
        }
        let mut k = 0usize;
        while let Some(&(engine, _)) = self.runs.get(k) {
            batch.clear();
            // Never grows: the room for every run was reserved above.
            let same_engine = self
                .runs
                .iter()
                .skip(k)
                .take_while(|(e, _)| *e == engine)
                .map(|(_, r)| *r);
            if let Err(e) = batch.extend(same_engine, AllocCtx::MaySleep) {
                return self.fail(e);
            }
            k = k.saturating_add(batch.len());
            let res = if engine == me {
                self.pm.mem().copy(&batch)
            } else {
                match (self.peers)(engine) {
                    Some(p) => p.mem().copy(&batch),
                    None => return self.fail(Error::Busy),
                }
            };
            if let Err(ce) = res {
                return self.fail(ce.error);
            }
        }
        self.report.copy_runs = self.runs.len();
        self.report.bytes = run_bytes(&self.runs);
        ToDevmemState::Install
    }

    fn install(&mut self) -> ToDevmemState {
        // The sources must not be reachable by DMA once they are released.
        unmap_chunks(
            self.pm.mem().dma(),
            &mut self.chunks,
            DmaDirection::ToDevice,
        );
        let mut orders = HostVec::<L, u8>::new();
        if let Err(e) = install_orders(self.req.start >> PAGE_SHIFT, &self.dpfns, &mut orders) {
            return self.fail(e);
        }
        let mut dst = HostVec::<L, MigrateDst>::new();
        if let Err(e) = dst.reserve_exact(self.src.len(), AllocCtx::MaySleep) {
            return self.fail(e);
        }
        let (pagemap, owner) = (self.pm.id(), self.pm.owner());
        let device_dsts =
            self.dpfns
                .iter()
                .zip(orders.iter())
                .map(|(&dpfn, &order)| MigrateDst::Device {
                    pagemap,
                    owner,
                    dpfn,
                    order,
                });
        if let Err(e) = dst.extend(device_dsts, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        // Keep our copy of the frames until the allocation is tracked: if the allocation
        // object cannot be built or tracked, Restore must still release exactly the frames
        // that were allocated.
        let mut frames = HostVec::<L, u64>::new();
        if let Err(e) = frames.extend_from_slice(&self.dpfns, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        let alloc = match DevmemAlloc::<L>::new(pagemap, self.req.start, self.req.end, frames)
            .and_then(|a| HostArc::<L, DevmemAlloc<L>>::try_new(a, AllocCtx::MaySleep))
        {
            Ok(a) => a,
            Err(e) => return self.fail(e),
        };
        alloc.set_timeslice_end(
            self.pm
                .mem()
                .now_ns()
                .saturating_add(self.details.timeslice_ns),
        );
        if let Err(e) = self.pm.track(&alloc) {
            // Not tracked: the object goes, the frames are released by Restore.
            drop(alloc);
            return self.fail(e);
        }
        // From here on nothing fails: the allocation owns the frames.
        self.dpfns.clear();
        self.allocated = false;
        self.mm.migrate_finalize(&self.req, &self.src, &dst);
        self.report.pages = self.src.len();
        ToDevmemState::Done
    }

    fn restore(&mut self) -> ToDevmemState {
        unmap_chunks(
            self.pm.mem().dma(),
            &mut self.chunks,
            DmaDirection::ToDevice,
        );
        if self.allocated {
            self.pm.mem().release(&self.dpfns);
            self.allocated = false;
        }
        restore_sources::<_, L::Alloc>(self.mm, &self.req, &self.src);
        ToDevmemState::Done
    }
}
