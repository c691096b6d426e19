//! Device memory → RAM (CPU fault or eviction), as an explicit state machine.

use super::plan::{
    build_runs, bus_of, map_chunks, restore_sources, run_bytes, run_states, source_slots,
    unmap_chunks, DmaChunk,
};
use super::MigrateReport;
use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::pagemap::Pagemap;
use crate::platform::{
    AddressSpace, CopyKind, CopyRun, DeviceMemory, DmaDirection, MigrateDst, MigrateRequest,
    MigrateSelect, MigrateSrc, PagemapId, PAGE_SHIFT,
};
use crate::{Host, HostVec};

/// The states of a migration to RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToRamState {
    /// Isolate the device pages of the pagemap in the interval.
    Isolate,
    /// Allocate system pages.
    Allocate,
    /// DMA-map the destinations for the copy engine.
    MapDests,
    /// Copy device memory → RAM.
    Copy,
    /// Install the system pages, release the device pages.
    Install,
    /// Put every device page back, free the system pages.
    Restore,
    /// Finished.
    Done,
}

struct Machine<'a, A: AddressSpace, M: DeviceMemory, L: Host> {
    mm: &'a A,
    pm: &'a Pagemap<M, L>,
    req: MigrateRequest,
    src: HostVec<L, MigrateSrc>,
    /// Slots of `src` that are this pagemap's device pages.
    idx: HostVec<L, usize>,
    pfns: HostVec<L, u64>,
    allocated: bool,
    chunks: HostVec<L, DmaChunk>,
    runs: HostVec<L, (PagemapId, CopyRun)>,
    error: Option<Error>,
    report: MigrateReport,
}

/// Migrate the pages of `pm` in `[start, end)` back to system memory (SPEC §7 "To RAM").
/// Pages that cannot be isolated stay in device memory and are counted in `report.busy`;
/// every other device page of `pm` in the interval moves. On error every page stays where it
/// was.
///
/// Errors: [`Error::Invalid`] (bad interval); whatever
/// [`AddressSpace::migrate_isolate`] returns (nothing was isolated then); [`Error::NoMem`]
/// (system memory, DMA space, or the host's allocator); copy errors.
///
/// Context: may sleep (the platform's isolate, allocate, copy and finalize calls); allocates
/// its arrays with [`AllocCtx::MaySleep`]; takes no crate lock (the pagemap's run index only
/// through `page_free`, which the platform calls). Call it without crate locks held.
pub fn to_ram<A: AddressSpace, M: DeviceMemory, L: Host>(
    mm: &A,
    pm: &Pagemap<M, L>,
    start: u64,
    end: u64,
) -> Result<MigrateReport> {
    to_ram_traced(mm, pm, start, end, None)
}

/// [`to_ram`], reporting every state entered to `trace` (tests use it to prove that each
/// failure path restores).
///
/// Errors: as [`to_ram`].
///
/// Context: as [`to_ram`].
pub fn to_ram_traced<A: AddressSpace, M: DeviceMemory, L: Host>(
    mm: &A,
    pm: &Pagemap<M, L>,
    start: u64,
    end: u64,
    trace: Option<&mut dyn FnMut(ToRamState)>,
) -> Result<MigrateReport> {
    let src = source_slots::<L::Alloc>(start, end)?;
    let mut m = Machine {
        mm,
        pm,
        req: MigrateRequest {
            start,
            end,
            select: MigrateSelect::DEVICE_PRIVATE,
            pagemap: Some(pm.id()),
            owner: Some(pm.owner()),
        },
        src,
        idx: HostVec::<L, usize>::new(),
        pfns: HostVec::<L, u64>::new(),
        allocated: false,
        chunks: HostVec::<L, DmaChunk>::new(),
        runs: HostVec::<L, (PagemapId, CopyRun)>::new(),
        error: None,
        report: MigrateReport::default(),
    };
    run_states(
        ToRamState::Isolate,
        ToRamState::Done,
        trace,
        |state| match state {
            ToRamState::Isolate => m.isolate(),
            ToRamState::Allocate => m.allocate(),
            ToRamState::MapDests => m.map_dests(),
            ToRamState::Copy => m.copy(),
            ToRamState::Install => m.install(),
            ToRamState::Restore => m.restore(),
            ToRamState::Done => ToRamState::Done,
        },
    );
    match m.error {
        Some(e) => Err(e),
        None => Ok(m.report),
    }
}

impl<A: AddressSpace, M: DeviceMemory, L: Host> Machine<'_, A, M, L> {
    fn fail(&mut self, e: Error) -> ToRamState {
        self.error = Some(e);
        ToRamState::Restore
    }

    fn isolate(&mut self) -> ToRamState {
        if let Err(e) = self.mm.migrate_isolate(&self.req, &mut self.src) {
            self.error = Some(e);
            return ToRamState::Done;
        }
        let me = self.pm.id();
        for (i, s) in self.src.iter().enumerate() {
            match *s {
                MigrateSrc::Device { pagemap, .. } if pagemap == me => {
                    if let Err(e) = self.idx.push(i, AllocCtx::MaySleep) {
                        self.error = Some(e);
                        return ToRamState::Restore;
                    }
                }
                MigrateSrc::Busy => self.report.busy = self.report.busy.saturating_add(1),
                _ => {}
            }
        }
        if self.idx.is_empty() {
            return ToRamState::Restore;
        }
        ToRamState::Allocate
    }

    fn allocate(&mut self) -> ToRamState {
        let n = self.idx.len();
        if let Err(e) = self.pfns.reserve_exact(n, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        if let Err(e) = self.pfns.resize(n, 0, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        match self.mm.alloc_system_pages(&mut self.pfns) {
            Ok(()) => {
                self.allocated = true;
                ToRamState::MapDests
            }
            Err(e) => self.fail(e),
        }
    }

    fn map_dests(&mut self) -> ToRamState {
        match map_chunks(
            self.pm.mem().dma(),
            &self.pfns,
            |p: &u64| Some(*p),
            DmaDirection::FromDevice,
            &mut self.chunks,
        ) {
            Ok(()) => ToRamState::Copy,
            Err(e) => self.fail(e),
        }
    }

    fn copy(&mut self) -> ToRamState {
        let chunks = &self.chunks;
        let src = &self.src;
        let me = self.pm.id();
        let slots = self.idx.iter().enumerate().map(|(k, &i)| match src.get(i) {
            Some(MigrateSrc::Device { dpfn, .. }) => Some((
                me,
                CopyKind::DeviceToRam,
                dpfn.checked_shl(PAGE_SHIFT)?,
                bus_of(chunks, k)?,
            )),
            _ => None,
        });
        if let Err(e) = build_runs(slots, &mut self.runs) {
            return self.fail(e);
        }
        let mut batch = HostVec::<L, CopyRun>::new();
        if let Err(e) = batch.reserve_exact(self.runs.len(), AllocCtx::MaySleep) {
            return self.fail(e);
        }
        if let Err(e) = batch.extend(self.runs.iter().map(|(_, r)| *r), AllocCtx::MaySleep) {
            return self.fail(e);
        }
        match self.pm.mem().copy(&batch) {
            Ok(()) => {
                self.report.copy_runs = self.runs.len();
                self.report.bytes = run_bytes(&self.runs);
                ToRamState::Install
            }
            Err(ce) => self.fail(ce.error),
        }
    }

    fn install(&mut self) -> ToRamState {
        unmap_chunks(
            self.pm.mem().dma(),
            &mut self.chunks,
            DmaDirection::FromDevice,
        );
        let mut dst = HostVec::<L, MigrateDst>::new();
        if let Err(e) = dst.reserve_exact(self.src.len(), AllocCtx::MaySleep) {
            return self.fail(e);
        }
        if let Err(e) = dst.resize(self.src.len(), MigrateDst::Keep, AllocCtx::MaySleep) {
            return self.fail(e);
        }
        for (k, &i) in self.idx.iter().enumerate() {
            if let (Some(d), Some(&pfn)) = (dst.get_mut(i), self.pfns.get(k)) {
                *d = MigrateDst::System { pfn };
            }
        }
        self.allocated = false;
        self.mm.migrate_finalize(&self.req, &self.src, &dst);
        self.report.pages = self.idx.len();
        ToRamState::Done
    }

    fn restore(&mut self) -> ToRamState {
        unmap_chunks(
            self.pm.mem().dma(),
            &mut self.chunks,
            DmaDirection::FromDevice,
        );
        if self.allocated {
            self.mm.free_system_pages(&self.pfns);
            self.allocated = false;
        }
        restore_sources::<_, L::Alloc>(self.mm, &self.req, &self.src);
        ToRamState::Done
    }
}
