//! Device memory → RAM (CPU fault or eviction), as an explicit state machine.

use super::plan::{
    build_runs, bus_of, map_chunks, restore_sources, run_bytes, run_states, source_slots,
    unmap_chunks, DmaChunk,
};
use super::MigrateReport;
use crate::error::{Error, Result};
use crate::pagemap::Pagemap;
use crate::platform::{
    AddressSpace, CopyKind, CopyRun, DeviceMemory, DmaDirection, MigrateDst, MigrateRequest,
    MigrateSelect, MigrateSrc, PagemapId, PAGE_SHIFT,
};
use crate::Host;
use alloc::vec::Vec;

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
    src: Vec<MigrateSrc>,
    /// Slots of `src` that are this pagemap's device pages.
    idx: Vec<usize>,
    pfns: Vec<u64>,
    allocated: bool,
    chunks: Vec<DmaChunk>,
    runs: Vec<(PagemapId, CopyRun)>,
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
/// (system memory or DMA space); copy errors.
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
pub fn to_ram_traced<A: AddressSpace, M: DeviceMemory, L: Host>(
    mm: &A,
    pm: &Pagemap<M, L>,
    start: u64,
    end: u64,
    trace: Option<&mut dyn FnMut(ToRamState)>,
) -> Result<MigrateReport> {
    let src = source_slots(start, end)?;
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
        idx: Vec::new(),
        pfns: Vec::new(),
        allocated: false,
        chunks: Vec::new(),
        runs: Vec::new(),
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
                    if self.idx.try_reserve(1).is_err() {
                        self.error = Some(Error::NoMem);
                        return ToRamState::Restore;
                    }
                    self.idx.push(i);
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
        if self.pfns.try_reserve_exact(n).is_err() {
            return self.fail(Error::NoMem);
        }
        self.pfns.resize(n, 0);
        match self.mm.alloc_system_pages(&mut self.pfns) {
            Ok(()) => {
                self.allocated = true;
                ToRamState::MapDests
            }
            Err(e) => self.fail(e),
        }
    }

    fn map_dests(&mut self) -> ToRamState {
        let mut frames: Vec<Option<u64>> = Vec::new();
        if frames.try_reserve_exact(self.pfns.len()).is_err() {
            return self.fail(Error::NoMem);
        }
        frames.extend(self.pfns.iter().map(|p| Some(*p)));
        match map_chunks(
            self.pm.mem().dma(),
            &frames,
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
        let mut batch: Vec<CopyRun> = Vec::new();
        if batch.try_reserve_exact(self.runs.len()).is_err() {
            return self.fail(Error::NoMem);
        }
        batch.extend(self.runs.iter().map(|(_, r)| *r));
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
        let mut dst: Vec<MigrateDst> = Vec::new();
        if dst.try_reserve_exact(self.src.len()).is_err() {
            return self.fail(Error::NoMem);
        }
        dst.resize(self.src.len(), MigrateDst::Keep);
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
        restore_sources(self.mm, &self.req, &self.src);
        ToRamState::Done
    }
}
