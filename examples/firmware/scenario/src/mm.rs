//! The CPU address space: a window of [`VA_PAGES`] pages at [`VA_BASE`] holding a few VMAs,
//! a CPU page table with one entry per page, notifier slots, and the CPU's load/store path.
//!
//! It implements [`AddressSpace`] in full, migration included (Linux `migrate_vma_*`): an
//! isolated page's entry becomes a migration entry that remembers its source until
//! `migrate_finalize` installs the destination or restores it. Every change to the CPU page
//! table of a registered interval is bracketed by `invalidate_begin`/`invalidate_end` on the
//! [`InvalidationSink`] (the `Svm`), and every device page that leaves the page table is handed
//! to its pagemap's [`Pagemap::page_free`] afterwards, as Linux's `dev_pagemap_ops.page_free`.
//! A CPU access to a device page migrates it back with [`Pagemap::migrate_to_ram`], as Linux's
//! `dev_pagemap_ops.migrate_to_ram`.

use crate::phys::{read_at, write_at, Phys, PAGE};
use crate::platform::FwPagemapRef;
use alloc::rc::{Rc, Weak};
use core::cell::{Cell, OnceCell, RefCell};
use gpusvm::platform::{
    AddressSpace, CollectRequest, CpuPage, MigrateDst, MigrateRequest, MigrateSelect, MigrateSrc,
    NotifierId, OwnerId, PagemapId, Vma, VmaFlags, PAGE_SIZE,
};
use gpusvm::{Error, Event, Result};

/// First byte of the address-space window (2 MiB aligned).
pub const VA_BASE: u64 = 0x4000_0000;
/// Number of pages in the window.
pub const VA_PAGES: usize = 64;
/// One past the last byte of the window.
pub const VA_END: u64 = VA_BASE + VA_PAGES as u64 * PAGE_SIZE;
/// The pagemap id of the device memory.
pub const PAGEMAP: PagemapId = PagemapId(1);
/// The device's owner (interconnect group).
pub const OWNER: OwnerId = OwnerId(7);

/// Most VMAs the window holds.
const MAX_VMAS: usize = 4;
/// Most notifier registrations.
const MAX_NOTIFIERS: usize = 4;
/// How many times a CPU access or a collection retries after migrating a device page back.
const CPU_ATTEMPTS: u32 = 4;

/// Index of the page at `va` in the window.
pub fn va_index(va: u64) -> Option<usize> {
    if !(VA_BASE..VA_END).contains(&va) {
        return None;
    }
    usize::try_from((va - VA_BASE) / PAGE_SIZE).ok()
}

/// The address of window page `i`.
fn va_of(i: usize) -> u64 {
    VA_BASE + (i as u64) * PAGE_SIZE
}

/// What a page held before it was isolated for migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saved {
    /// Nothing (never touched).
    Empty,
    /// A system frame.
    Sys(u64),
    /// A device page (frame, mapping order).
    Dev(u64, u8),
}

/// One CPU page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pte {
    /// Not present.
    Empty,
    /// A system frame.
    Sys(u64),
    /// A device-private page of [`PAGEMAP`]: device frame, order of its mapping.
    Dev(u64, u8),
    /// A migration entry: the page is isolated; what it held.
    Migrating(Saved),
}

impl Pte {
    fn restore(s: Saved) -> Pte {
        match s {
            Saved::Empty => Pte::Empty,
            Saved::Sys(p) => Pte::Sys(p),
            Saved::Dev(d, o) => Pte::Dev(d, o),
        }
    }
}

/// A registered interval notifier.
#[derive(Debug, Clone, Copy)]
struct Reg {
    id: NotifierId,
    start: u64,
    end: u64,
}

/// The mutable state of the address space.
struct MmState {
    vmas: [Option<Vma>; MAX_VMAS],
    ptes: [Pte; VA_PAGES],
    regs: [Option<Reg>; MAX_NOTIFIERS],
}

impl MmState {
    fn vma(&self, va: u64) -> Option<Vma> {
        self.vmas.iter().flatten().find(|v| v.contains(va)).copied()
    }

    /// Give every device mapping of order > 0 that touches `[start, end)` order 0: its pages
    /// are about to be handled one by one (a huge-mapping split).
    fn split_device_mappings(&mut self, start: u64, end: u64) {
        let hit: [bool; VA_PAGES] = core::array::from_fn(|i| {
            let Some(&Pte::Dev(_, order)) = self.ptes.get(i) else {
                return false;
            };
            let size = PAGE_SIZE << order.min(20);
            let g = va_of(i) & !(size - 1);
            order > 0 && g < end && start < g.saturating_add(size)
        });
        for (p, h) in self.ptes.iter_mut().zip(hit) {
            if let (true, Pte::Dev(d, _)) = (h, *p) {
                *p = Pte::Dev(d, 0);
            }
        }
    }
}

/// Where CPU page-table changes are announced: the `Svm` mirroring this address space.
pub trait InvalidationSink {
    /// Before the CPU page tables of `[start, end)` in notifier `id` change.
    fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event);
    /// After they changed.
    fn invalidate_end(&self, id: NotifierId, start: u64, end: u64);
}

/// Device pages freed by one page-table change (handed to the pagemap afterwards).
type Freed = heapless::Vec<u64, VA_PAGES>;

/// The CPU address space.
pub struct FwMm {
    phys: Rc<Phys>,
    st: RefCell<MmState>,
    sink: OnceCell<Weak<dyn InvalidationSink>>,
    pagemap: OnceCell<FwPagemapRef>,
    /// CPU faults on device pages (each one a `migrate_to_ram`).
    pub cpu_device_faults: Cell<u64>,
    /// Device pages handed to `page_free`.
    pub page_frees: Cell<u64>,
    /// Inconsistencies found (frames that could not be freed, re-entrant borrows).
    pub errors: Cell<u64>,
}

impl FwMm {
    /// An address space with one read-write VMA per `(start, end)` (page aligned, inside the
    /// window, at most four). Errors: [`Error::Invalid`].
    pub fn new(phys: Rc<Phys>, vmas: &[(u64, u64)]) -> Result<Self> {
        let mut st = MmState {
            vmas: [None; MAX_VMAS],
            ptes: [Pte::Empty; VA_PAGES],
            regs: [None; MAX_NOTIFIERS],
        };
        if vmas.len() > MAX_VMAS {
            return Err(Error::Invalid);
        }
        for (slot, &(start, end)) in st.vmas.iter_mut().zip(vmas) {
            let ok = start < end
                && start % PAGE_SIZE == 0
                && end % PAGE_SIZE == 0
                && VA_BASE <= start
                && end <= VA_END;
            if !ok {
                return Err(Error::Invalid);
            }
            *slot = Some(Vma {
                start,
                end,
                flags: VmaFlags::READ | VmaFlags::WRITE,
            });
        }
        Ok(FwMm {
            phys,
            st: RefCell::new(st),
            sink: OnceCell::new(),
            pagemap: OnceCell::new(),
            cpu_device_faults: Cell::new(0),
            page_frees: Cell::new(0),
            errors: Cell::new(0),
        })
    }

    /// Connect the `Svm` that mirrors this address space. Errors: [`Error::Invalid`] if one is
    /// connected already.
    pub fn set_sink(&self, sink: Weak<dyn InvalidationSink>) -> Result<()> {
        self.sink.set(sink).map_err(|_| Error::Invalid)
    }

    /// Connect the pagemap of the device memory. Errors: [`Error::Invalid`] if one is
    /// connected already.
    pub fn set_pagemap(&self, pm: FwPagemapRef) -> Result<()> {
        self.pagemap.set(pm).map_err(|_| Error::Invalid)
    }

    fn state(&self) -> Result<core::cell::RefMut<'_, MmState>> {
        self.st.try_borrow_mut().map_err(|_| {
            Phys::bump(&self.errors, 1);
            Error::Busy
        })
    }

    /// Run `f` on the page table while `[start, end)` changes: every registered notifier
    /// overlapping it gets `invalidate_begin` before and `invalidate_end` after. Device pages
    /// `f` pushes to its `Freed` list are handed to the pagemap's `page_free` at the end.
    fn change<R>(
        &self,
        start: u64,
        end: u64,
        event: Event,
        f: impl FnOnce(&mut MmState, &mut Freed) -> R,
    ) -> Result<R> {
        let targets: heapless::Vec<NotifierId, MAX_NOTIFIERS> = self
            .state()?
            .regs
            .iter()
            .flatten()
            .filter(|r| r.start < end && start < r.end)
            .map(|r| r.id)
            .collect();
        let sink = self.sink.get().and_then(Weak::upgrade);
        if let Some(s) = &sink {
            for &id in &targets {
                s.invalidate_begin(id, start, end, event);
            }
        }
        let mut freed = Freed::new();
        let out = self.state().map(|mut st| f(&mut st, &mut freed));
        if let Some(s) = &sink {
            for &id in &targets {
                s.invalidate_end(id, start, end);
            }
        }
        self.free_device_pages(&freed);
        out
    }

    /// Hand freed device pages to their pagemap.
    fn free_device_pages(&self, dpfns: &[u64]) {
        for &d in dpfns {
            match self.pagemap.get() {
                Some(pm) => {
                    pm.page_free(d);
                    Phys::bump(&self.page_frees, 1);
                }
                None => Phys::bump(&self.errors, 1),
            }
        }
    }

    /// Release what a page-table entry that is going away holds.
    fn drop_pte(&self, p: Pte, freed: &mut Freed) {
        let held = match p {
            Pte::Empty => Saved::Empty,
            Pte::Sys(f) => Saved::Sys(f),
            Pte::Dev(d, o) => Saved::Dev(d, o),
            Pte::Migrating(s) => s,
        };
        match held {
            Saved::Empty => {}
            Saved::Sys(pfn) => {
                if self.phys.free_sys(pfn).is_err() {
                    Phys::bump(&self.errors, 1);
                }
            }
            Saved::Dev(d, _) => {
                if freed.push(d).is_err() {
                    Phys::bump(&self.errors, 1);
                }
            }
        }
    }

    /// Unmap `[start, end)` (munmap): the VMAs are cut, the pages released.
    pub fn munmap(&self, start: u64, end: u64) -> Result<()> {
        if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        self.change(start, end, Event::Unmap, |st, freed| {
            // Cut the VMAs: keep the parts below `start` and above `end`.
            let mut kept: heapless::Vec<Vma, { MAX_VMAS * 2 }> = heapless::Vec::new();
            let mut overflow = false;
            for v in st.vmas.iter().flatten() {
                for (s, e) in [(v.start, v.end.min(start)), (v.start.max(end), v.end)] {
                    if s < e
                        && kept
                            .push(Vma {
                                start: s,
                                end: e,
                                ..*v
                            })
                            .is_err()
                    {
                        overflow = true;
                    }
                }
            }
            if overflow || kept.len() > MAX_VMAS {
                return Err(Error::NoMem);
            }
            st.vmas = [None; MAX_VMAS];
            for (slot, v) in st.vmas.iter_mut().zip(kept) {
                *slot = Some(v);
            }
            st.split_device_mappings(start, end);
            for (i, p) in st.ptes.iter_mut().enumerate() {
                let va = va_of(i);
                if start <= va && va < end {
                    let old = core::mem::replace(p, Pte::Empty);
                    self.drop_pte(old, freed);
                }
            }
            Ok(())
        })?
    }

    /// Tear the whole address space down (process exit).
    pub fn exit(&self) -> Result<()> {
        self.munmap(VA_BASE, VA_END)
    }

    /// The VMAs, in slot order.
    pub fn vmas(&self) -> heapless::Vec<Vma, MAX_VMAS> {
        self.st
            .try_borrow()
            .map(|st| st.vmas.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// Number of live notifier registrations.
    pub fn notifiers(&self) -> usize {
        self.st
            .try_borrow()
            .map_or(usize::MAX, |st| st.regs.iter().flatten().count())
    }

    /// Number of pages of `[start, end)` that are device pages, and number that are present
    /// system pages.
    pub fn residency(&self, start: u64, end: u64) -> (usize, usize) {
        let Ok(st) = self.st.try_borrow() else {
            return (usize::MAX, usize::MAX);
        };
        let (mut dev, mut sys) = (0usize, 0usize);
        for (i, p) in st.ptes.iter().enumerate() {
            let va = va_of(i);
            if start <= va && va < end {
                match p {
                    Pte::Dev(..) => dev += 1,
                    Pte::Sys(_) => sys += 1,
                    _ => {}
                }
            }
        }
        (dev, sys)
    }

    /// The CPU touched device page `dpfn` at `va`: migrate it back through its pagemap.
    fn cpu_fault_device(&self, va: u64, dpfn: u64) -> Result<()> {
        let pm = self.pagemap.get().ok_or(Error::Fault)?;
        Phys::bump(&self.cpu_device_faults, 1);
        pm.migrate_to_ram(self, va & !(PAGE_SIZE - 1), dpfn)
            .map(|_| ())
    }

    /// The system frame behind `va`, faulting it in (and migrating a device page back) first.
    fn cpu_frame(&self, va: u64, write: bool) -> Result<u64> {
        for _ in 0..CPU_ATTEMPTS {
            let dev = {
                let mut st = self.state()?;
                let vma = st.vma(va).ok_or(Error::Fault)?;
                if write && !vma.writable() {
                    return Err(Error::Perm);
                }
                let slot = va_index(va)
                    .and_then(|i| st.ptes.get_mut(i))
                    .ok_or(Error::Fault)?;
                match *slot {
                    Pte::Sys(pfn) => return Ok(pfn),
                    Pte::Empty => {
                        let pfn = self.phys.alloc_sys().map_err(|_| Error::NoMem)?;
                        *slot = Pte::Sys(pfn);
                        return Ok(pfn);
                    }
                    Pte::Migrating(_) => return Err(Error::Busy),
                    Pte::Dev(d, _) => d,
                }
            };
            self.cpu_fault_device(va, dev)?;
        }
        Err(Error::Busy)
    }

    /// CPU store of `data` at `va` (within one page).
    pub fn cpu_write(&self, va: u64, data: &[u8]) -> Result<()> {
        let pfn = self.cpu_frame(va, true)?;
        let off = (va % PAGE_SIZE) as usize;
        self.phys
            .with_sys(pfn, |f| write_at(f, off, data))
            .map_err(|_| Error::Fault)?
            .map_err(|_| Error::Invalid)
    }

    /// CPU load into `buf` from `va` (within one page).
    pub fn cpu_read(&self, va: u64, buf: &mut [u8]) -> Result<()> {
        let pfn = self.cpu_frame(va, false)?;
        let off = (va % PAGE_SIZE) as usize;
        self.phys
            .with_sys(pfn, |f| read_at(f, off, buf))
            .map_err(|_| Error::Fault)?
            .map_err(|_| Error::Invalid)
    }

    /// CPU load of a whole page.
    pub fn cpu_read_page(&self, va: u64, buf: &mut [u8; PAGE]) -> Result<()> {
        self.cpu_read(va & !(PAGE_SIZE - 1), buf)
    }

    /// One pass of `collect_pages`: `Ok(None)` when done, `Ok(Some((va, dpfn)))` when a device
    /// page of another owner must come back to RAM first.
    fn collect_pass(
        &self,
        req: &CollectRequest,
        out: &mut [CpuPage],
    ) -> Result<Option<(u64, u64)>> {
        let mut st = self.state()?;
        for (i, slot) in out.iter_mut().enumerate() {
            let va = req.start.wrapping_add((i as u64).wrapping_mul(PAGE_SIZE));
            let vma = st.vma(va);
            let pte = va_index(va).and_then(|k| st.ptes.get_mut(k));
            let (Some(vma), Some(pte)) = (vma, pte) else {
                if req.fault {
                    return Err(Error::Fault);
                }
                *slot = CpuPage::Absent;
                continue;
            };
            if req.fault && req.write && !vma.writable() {
                return Err(Error::Perm);
            }
            *slot = match *pte {
                Pte::Dev(dpfn, order) if !req.fault || req.owner == Some(OWNER) => {
                    CpuPage::Device {
                        pagemap: PAGEMAP,
                        owner: OWNER,
                        dpfn,
                        order,
                    }
                }
                Pte::Dev(dpfn, _) => return Ok(Some((va, dpfn))),
                Pte::Sys(pfn) => CpuPage::System {
                    pfn,
                    order: 0,
                    writable: vma.writable(),
                },
                Pte::Migrating(_) if req.fault => return Err(Error::Again),
                Pte::Empty if req.fault => {
                    let pfn = self.phys.alloc_sys().map_err(|_| Error::NoMem)?;
                    *pte = Pte::Sys(pfn);
                    CpuPage::System {
                        pfn,
                        order: 0,
                        writable: vma.writable(),
                    }
                }
                Pte::Migrating(_) | Pte::Empty => CpuPage::Absent,
            };
        }
        Ok(None)
    }
}

/// Whether `start..end` with `n` slots is a well-formed page interval.
fn well_formed(start: u64, end: u64, n: usize) -> bool {
    start < end
        && start % PAGE_SIZE == 0
        && end % PAGE_SIZE == 0
        && (end - start) / PAGE_SIZE == n as u64
}

impl AddressSpace for FwMm {
    /// The notifier slot.
    type NotifierHandle = usize;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        self.st.try_borrow().ok().and_then(|st| st.vma(addr))
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        if !well_formed(req.start, req.end, out.len()) {
            return Err(Error::Invalid);
        }
        for _ in 0..CPU_ATTEMPTS {
            match self.collect_pass(req, out)? {
                None => return Ok(()),
                Some((va, dpfn)) => self.cpu_fault_device(va, dpfn)?,
            }
        }
        Err(Error::Busy)
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<usize> {
        if start >= end {
            return Err(Error::Invalid);
        }
        let mut st = self.state()?;
        let (i, slot) = st
            .regs
            .iter_mut()
            .enumerate()
            .find(|(_, r)| r.is_none())
            .ok_or(Error::NoMem)?;
        *slot = Some(Reg { id, start, end });
        Ok(i)
    }

    fn unregister_notifier(&self, handle: usize) {
        match self.state() {
            Ok(mut st) => {
                if let Some(r) = st.regs.get_mut(handle) {
                    *r = None;
                }
            }
            Err(_) => Phys::bump(&self.errors, 1),
        }
    }

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        if !well_formed(req.start, req.end, src.len()) {
            return Err(Error::Invalid);
        }
        let event = Event::Migrate { owner: req.owner };
        self.change(req.start, req.end, event, |st, _| {
            st.split_device_mappings(req.start, req.end);
            for (i, slot) in src.iter_mut().enumerate() {
                let va = req.start.wrapping_add((i as u64).wrapping_mul(PAGE_SIZE));
                *slot = MigrateSrc::Skip;
                if st.vma(va).is_none() {
                    continue;
                }
                let Some(pte) = va_index(va).and_then(|k| st.ptes.get_mut(k)) else {
                    continue;
                };
                let system = req.select.contains(MigrateSelect::SYSTEM);
                let device = req.select.contains(MigrateSelect::DEVICE_PRIVATE)
                    && match req.pagemap {
                        Some(want) => want == PAGEMAP,
                        None => req.owner == Some(OWNER),
                    };
                match *pte {
                    Pte::Empty if system => {
                        *pte = Pte::Migrating(Saved::Empty);
                        *slot = MigrateSrc::Absent;
                    }
                    Pte::Sys(pfn) if system => {
                        *pte = Pte::Migrating(Saved::Sys(pfn));
                        *slot = MigrateSrc::System { pfn };
                    }
                    Pte::Dev(dpfn, order) if device => {
                        *pte = Pte::Migrating(Saved::Dev(dpfn, order));
                        *slot = MigrateSrc::Device {
                            pagemap: PAGEMAP,
                            dpfn,
                        };
                    }
                    Pte::Migrating(_) => *slot = MigrateSrc::Busy,
                    _ => {}
                }
            }
        })
    }

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let mut freed = Freed::new();
        match self.state() {
            Ok(mut st) => {
                for (i, s) in src.iter().enumerate() {
                    if !s.isolated() {
                        continue;
                    }
                    let d = dst.get(i).copied().unwrap_or_default();
                    let va = req.start.wrapping_add((i as u64).wrapping_mul(PAGE_SIZE));
                    let Some(pte) = va_index(va).and_then(|k| st.ptes.get_mut(k)) else {
                        continue;
                    };
                    let Pte::Migrating(saved) = *pte else {
                        // Unmapped meanwhile: the source is gone, drop the destination.
                        self.drop_pte(dst_pte(d), &mut freed);
                        continue;
                    };
                    if d == MigrateDst::Keep {
                        *pte = Pte::restore(saved);
                        continue;
                    }
                    *pte = dst_pte(d);
                    self.drop_pte(Pte::restore(saved), &mut freed);
                }
            }
            Err(_) => Phys::bump(&self.errors, 1),
        }
        self.free_device_pages(&freed);
    }

    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        for i in 0..out.len() {
            match self.phys.alloc_sys() {
                Ok(pfn) => {
                    if let Some(o) = out.get_mut(i) {
                        *o = pfn;
                    }
                }
                Err(_) => {
                    self.free_system_pages(out.get(..i).unwrap_or_default());
                    return Err(Error::NoMem);
                }
            }
        }
        Ok(())
    }

    fn free_system_pages(&self, pfns: &[u64]) {
        for &p in pfns {
            if self.phys.free_sys(p).is_err() {
                Phys::bump(&self.errors, 1);
            }
        }
    }
}

/// The page-table entry a migration destination becomes.
fn dst_pte(d: MigrateDst) -> Pte {
    match d {
        MigrateDst::Keep => Pte::Empty,
        MigrateDst::System { pfn } => Pte::Sys(pfn),
        MigrateDst::Device { dpfn, order, .. } => Pte::Dev(dpfn, order),
    }
}
