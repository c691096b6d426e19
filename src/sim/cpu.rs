//! The simulated CPU address space: VMAs, a page table, interval notifiers, CPU accesses.

use super::world::{SimWorld, PAGE};
use super::{lock, Rng};
use crate::error::{Error, Result};
use crate::platform::{
    AddressSpace, CollectRequest, CpuPage, MigrateDst, MigrateRequest, MigrateSelect, MigrateSrc,
    NotifierId, OwnerId, PagemapId, Vma, VmaFlags, HUGE_ORDER, PAGE_SHIFT, PAGE_SIZE,
};
use crate::svm::Event;
use std::boxed::Box;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::vec::Vec;

/// Receives MMU-notifier callbacks (an [`Svm`](crate::Svm), or a driver's userptr wrapper).
pub trait InvalidationSink: Send + Sync {
    /// Before the CPU page tables of `[start, end)` change.
    fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event);
    /// After they changed.
    fn invalidate_end(&self, id: NotifierId, start: u64, end: u64);
}

impl<P: crate::platform::Platform> InvalidationSink for crate::Svm<P>
where
    P: Send + Sync,
    P::Mem: Send + Sync,
    <P::Mm as AddressSpace>::NotifierHandle: Send + Sync,
{
    fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event) {
        crate::Svm::invalidate_begin(self, id, start, end, event);
    }
    fn invalidate_end(&self, id: NotifierId, start: u64, end: u64) {
        crate::Svm::invalidate_end(self, id, start, end);
    }
}

/// A simulated VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimVma {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Access rights.
    pub flags: VmaFlags,
    /// Back faults with 2 MiB frames where the aligned block fits.
    pub huge: bool,
}

/// A CPU page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPte {
    /// Frame of this base page.
    pub pfn: u64,
    /// Order of the mapping it belongs to (0 or 9).
    pub order: u8,
    /// Writable by the CPU.
    pub writable: bool,
    /// Shared copy-on-write with another address space (writes copy first).
    pub cow: bool,
    /// A device-private page: `pfn` is then a device frame of this pagemap/owner.
    pub dev: Option<(PagemapId, OwnerId)>,
    /// Isolated for migration (a migration entry): not accessible until the migration ends.
    pub migrating: bool,
    /// A placeholder for an absent page being migrated (no frame behind it).
    pub placeholder: bool,
}

impl CpuPte {
    fn system(pfn: u64, order: u8, writable: bool) -> CpuPte {
        CpuPte {
            pfn,
            order,
            writable,
            cow: false,
            dev: None,
            migrating: false,
            placeholder: false,
        }
    }
}

/// Why a CPU-side access could not complete under the mmap lock.
enum Stop {
    /// A real error.
    Err(Error),
    /// The page lives in device memory: migrate it back first (outside the lock).
    Device(PagemapId, u64),
    /// The page is being migrated: wait.
    Migrating,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Err(e)
    }
}

#[derive(Debug, Default)]
/// The page tables and VMAs of a [`SimMm`] (for the checker).
pub(crate) struct MmState {
    pub(crate) vmas: BTreeMap<u64, SimVma>,
    pub(crate) ptes: BTreeMap<u64, CpuPte>,
    next_mmap: u64,
}

impl MmState {
    fn vma(&self, addr: u64) -> Option<SimVma> {
        self.vmas
            .range(..=addr)
            .next_back()
            .map(|(_, v)| *v)
            .filter(|v| addr < v.end)
    }
}

struct Reg {
    handle: u64,
    sink: usize,
    id: NotifierId,
    start: u64,
    end: u64,
}

#[derive(Default)]
struct Regs {
    sinks: Vec<Option<Weak<dyn InvalidationSink>>>,
    list: Vec<Reg>,
    next_handle: u64,
}

type CollectHook = Box<dyn FnMut(&Arc<SimMm>) + Send>;

#[derive(Default)]
struct MmInject {
    /// The next `n` collections fail with `Again`.
    collect_again: u32,
    /// Collections fail with `Again` with this probability (per million).
    collect_again_ppm: u32,
    rng: Rng,
    /// Run after a collection released the mmap lock (used to race invalidations).
    hook: Option<CollectHook>,
}

/// A simulated CPU address space (Linux `mm_struct`).
///
/// Changes (`munmap`, `mprotect`, `madvise_dontneed`, copy-on-write breaks, `fork`) call every
/// overlapping registered notifier's `invalidate_begin` *before* they touch the page table and
/// `invalidate_end` after, exactly as a kernel does.
pub struct SimMm {
    world: Arc<SimWorld>,
    mmap_lock: Mutex<()>,
    pub(crate) st: Mutex<MmState>,
    regs: Mutex<Regs>,
    inject: Mutex<MmInject>,
}

impl core::fmt::Debug for SimMm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimMm").finish_non_exhaustive()
    }
}

fn check_span(addr: u64, len: u64) -> Result<u64> {
    if len == 0 || addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(Error::Invalid);
    }
    addr.checked_add(len).ok_or(Error::Invalid)
}

impl SimMm {
    /// A new, empty address space on `world`.
    pub fn new(world: &Arc<SimWorld>) -> Arc<SimMm> {
        Arc::new(SimMm {
            world: world.clone(),
            mmap_lock: Mutex::new(()),
            st: Mutex::new(MmState {
                next_mmap: 0x1000_0000,
                ..MmState::default()
            }),
            regs: Mutex::new(Regs::default()),
            inject: Mutex::new(MmInject::default()),
        })
    }

    /// The machine.
    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }

    /// Add a notifier sink; returns its slot for [`SimMm::view`].
    pub fn add_sink(&self, sink: Weak<dyn InvalidationSink>) -> usize {
        let mut r = lock(&self.regs);
        r.sinks.push(Some(sink));
        r.sinks.len() - 1
    }

    /// Reserve a sink slot to be filled later with [`SimMm::set_sink`].
    pub fn reserve_sink(&self) -> usize {
        let mut r = lock(&self.regs);
        r.sinks.push(None);
        r.sinks.len() - 1
    }

    /// Fill a reserved sink slot.
    pub fn set_sink(&self, slot: usize, sink: Weak<dyn InvalidationSink>) {
        if let Some(s) = lock(&self.regs).sinks.get_mut(slot) {
            *s = Some(sink);
        }
    }

    /// The [`AddressSpace`] seen by the sink in `slot`.
    pub fn view(self: &Arc<Self>, slot: usize) -> SimMmView {
        SimMmView {
            mm: self.clone(),
            sink: slot,
        }
    }

    /// Register a notifier for `sink` directly (for userptr-style users).
    pub fn register(&self, sink: usize, id: NotifierId, start: u64, end: u64) -> Result<u64> {
        if start >= end {
            return Err(Error::Invalid);
        }
        let _m = lock(&self.mmap_lock);
        let mut r = lock(&self.regs);
        if r.sinks.get(sink).is_none() {
            return Err(Error::Invalid);
        }
        r.next_handle += 1;
        let handle = r.next_handle;
        r.list.push(Reg {
            handle,
            sink,
            id,
            start,
            end,
        });
        Ok(handle)
    }

    /// Unregister a notifier made by [`SimMm::register`].
    pub fn unregister(&self, handle: u64) {
        let _m = lock(&self.mmap_lock);
        lock(&self.regs).list.retain(|r| r.handle != handle);
    }

    /// Registered notifiers `(sink, id, start, end)`.
    pub fn notifiers(&self) -> Vec<(usize, NotifierId, u64, u64)> {
        lock(&self.regs)
            .list
            .iter()
            .map(|r| (r.sink, r.id, r.start, r.end))
            .collect()
    }

    /// Fail the next `n` page collections with `Again`.
    pub fn inject_collect_again(&self, n: u32) {
        lock(&self.inject).collect_again = n;
    }

    /// Fail page collections with `Again` at random (seeded), `ppm` in a million.
    pub fn inject_collect_again_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.collect_again_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// Run `hook` after every page collection (outside the mmap lock), e.g. to race an
    /// invalidation against the commit. `None` removes it.
    pub fn set_collect_hook(&self, hook: Option<CollectHook>) {
        lock(&self.inject).hook = hook;
    }

    /// Run `f` with the CPU page tables of `[start, end)` changing: notify every overlapping
    /// notifier before and after. The caller holds the mmap lock.
    fn with_invalidation<R>(
        &self,
        start: u64,
        end: u64,
        event: Event,
        f: impl FnOnce(&mut MmState, &SimWorld) -> R,
    ) -> R {
        let targets: Vec<(Arc<dyn InvalidationSink>, NotifierId)> = {
            let r = lock(&self.regs);
            r.list
                .iter()
                .filter(|g| g.start < end && start < g.end)
                .filter_map(|g| {
                    let s = r.sinks.get(g.sink)?.as_ref()?.upgrade()?;
                    Some((s, g.id))
                })
                .collect()
        };
        for (s, id) in &targets {
            s.invalidate_begin(*id, start, end, event);
        }
        let out = {
            let mut st = lock(&self.st);
            f(&mut st, &self.world)
        };
        for (s, id) in &targets {
            s.invalidate_end(*id, start, end);
        }
        out
    }

    /// Map `len` bytes of anonymous memory anywhere; returns the address. `huge` backs it with
    /// 2 MiB frames where possible (the address is then 2 MiB aligned).
    pub fn mmap(&self, len: u64, flags: VmaFlags, huge: bool) -> Result<u64> {
        let _m = lock(&self.mmap_lock);
        let mut st = lock(&self.st);
        let align = if huge { 2 << 20 } else { PAGE_SIZE };
        let addr = st.next_mmap.next_multiple_of(align);
        let end = check_span(addr, len)?;
        // Leave a guard gap so that neighbouring mappings do not merge into one VMA.
        st.next_mmap = end
            .checked_add(16 * PAGE_SIZE)
            .ok_or(Error::NoMem)?
            .next_multiple_of(2 << 20);
        st.vmas.insert(
            addr,
            SimVma {
                start: addr,
                end,
                flags,
                huge,
            },
        );
        Ok(addr)
    }

    /// Map `len` bytes at exactly `addr`. Errors: `Invalid` if misaligned, empty, overflowing, or
    /// overlapping an existing VMA.
    pub fn mmap_fixed(&self, addr: u64, len: u64, flags: VmaFlags, huge: bool) -> Result<u64> {
        let end = check_span(addr, len)?;
        let _m = lock(&self.mmap_lock);
        let mut st = lock(&self.st);
        if st.vmas.values().any(|v| v.start < end && addr < v.end) {
            return Err(Error::Invalid);
        }
        st.vmas.insert(
            addr,
            SimVma {
                start: addr,
                end,
                flags,
                huge,
            },
        );
        Ok(addr)
    }

    /// Split VMAs at `addr` so that a VMA boundary falls there.
    fn split_vma_at(st: &mut MmState, addr: u64) {
        if let Some(v) = st.vma(addr) {
            if v.start < addr {
                st.vmas.insert(v.start, SimVma { end: addr, ..v });
                st.vmas.insert(addr, SimVma { start: addr, ..v });
            }
        }
    }

    /// Huge mappings that straddle `[start, end)`'s edges are split into base pages.
    fn split_huge_around(st: &mut MmState, start: u64, end: u64) {
        for edge in [start, end] {
            let vpn = edge >> PAGE_SHIFT;
            let block = vpn & !((1u64 << HUGE_ORDER) - 1);
            if block == vpn {
                continue;
            }
            let any_huge = st.ptes.get(&block).is_some_and(|p| p.order > 0)
                || st.ptes.get(&vpn).is_some_and(|p| p.order > 0);
            if any_huge {
                for (_, p) in st.ptes.range_mut(block..block + (1 << HUGE_ORDER)) {
                    p.order = 0;
                }
            }
        }
    }

    /// Remove the PTEs of `[start, end)`; returns the device pages to hand back to their
    /// pagemaps (after the locks are dropped).
    fn drop_ptes(
        st: &mut MmState,
        world: &SimWorld,
        start: u64,
        end: u64,
    ) -> Vec<(PagemapId, u64)> {
        let vpns: Vec<u64> = st
            .ptes
            .range(start >> PAGE_SHIFT..end >> PAGE_SHIFT)
            .map(|(k, _)| *k)
            .collect();
        let mut frames = lock(&world.frames);
        let mut dev = Vec::new();
        for vpn in vpns {
            if let Some(p) = st.ptes.remove(&vpn) {
                match p.dev {
                    _ if p.placeholder => {}
                    Some((pm, _)) => dev.push((pm, p.pfn)),
                    None => frames.put(p.pfn),
                }
            }
        }
        dev
    }

    /// Hand freed device pages back to their pagemaps.
    fn free_device_pages(&self, pages: Vec<(PagemapId, u64)>) {
        for (pm, dpfn) in pages {
            if let Some(h) = self.world.pagemap_hooks(pm) {
                h.page_free(dpfn);
            }
        }
    }

    /// Unmap `[addr, addr+len)` (munmap). Errors: `Invalid` for a bad span.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<()> {
        let end = check_span(addr, len)?;
        let _m = lock(&self.mmap_lock);
        let freed = self.with_invalidation(addr, end, Event::Unmap, |st, world| {
            Self::split_vma_at(st, addr);
            Self::split_vma_at(st, end);
            let keys: Vec<u64> = st.vmas.range(addr..end).map(|(k, _)| *k).collect();
            for k in keys {
                st.vmas.remove(&k);
            }
            Self::split_huge_around(st, addr, end);
            Self::drop_ptes(st, world, addr, end)
        });
        self.free_device_pages(freed);
        Ok(())
    }

    /// Drop the pages of `[addr, addr+len)` but keep the VMAs (MADV_DONTNEED).
    pub fn madvise_dontneed(&self, addr: u64, len: u64) -> Result<()> {
        let end = check_span(addr, len)?;
        let _m = lock(&self.mmap_lock);
        let freed = self.with_invalidation(addr, end, Event::Clear, |st, world| {
            Self::split_huge_around(st, addr, end);
            Self::drop_ptes(st, world, addr, end)
        });
        self.free_device_pages(freed);
        Ok(())
    }

    /// Change the protection of `[addr, addr+len)` (mprotect). Errors: `Invalid` for a bad span,
    /// `NoMem` (like Linux) if part of it is not mapped.
    pub fn mprotect(&self, addr: u64, len: u64, flags: VmaFlags) -> Result<()> {
        let end = check_span(addr, len)?;
        let _m = lock(&self.mmap_lock);
        {
            let st = lock(&self.st);
            let mut at = addr;
            while at < end {
                let v = st.vma(at).ok_or(Error::NoMem)?;
                at = v.end;
            }
        }
        self.with_invalidation(addr, end, Event::Protection, |st, _| {
            Self::split_vma_at(st, addr);
            Self::split_vma_at(st, end);
            for (_, v) in st.vmas.range_mut(addr..end) {
                v.flags = flags;
            }
            Self::split_huge_around(st, addr, end);
            let writable = flags.contains(VmaFlags::WRITE);
            for (_, p) in st.ptes.range_mut(addr >> PAGE_SHIFT..end >> PAGE_SHIFT) {
                p.writable = writable && !p.cow;
            }
        });
        Ok(())
    }

    /// Fork: a new address space sharing every page copy-on-write. Device-private pages are
    /// first migrated back to system memory; the parent's pages are then write-protected (a
    /// `Protection` invalidation of everything mapped).
    pub fn fork(self: &Arc<Self>) -> Arc<SimMm> {
        let devpages: Vec<(u64, PagemapId, u64)> = lock(&self.st)
            .ptes
            .iter()
            .filter_map(|(v, p)| p.dev.map(|(pm, _)| (v << PAGE_SHIFT, pm, p.pfn)))
            .collect();
        for (addr, pm, dpfn) in devpages {
            if let Some(h) = self.world.pagemap_hooks(pm) {
                // Inside an atomic timeslice (or busy) the page cannot come back yet: let time
                // pass, as a retried CPU fault does, instead of leaving it out of the child.
                for _ in 0..CPU_FAULT_ATTEMPTS {
                    match h.migrate_to_ram(self, addr, dpfn) {
                        Err(Error::Again) | Err(Error::Busy) => self.world.advance(1_000_000),
                        _ => break,
                    }
                }
            }
        }
        let child = SimMm::new(&self.world);
        let _m = lock(&self.mmap_lock);
        let (lo, hi) = {
            let st = lock(&self.st);
            let lo = st.vmas.keys().next().copied().unwrap_or(0);
            let hi = st.vmas.values().map(|v| v.end).max().unwrap_or(0);
            (lo, hi)
        };
        if lo < hi {
            self.with_invalidation(lo, hi, Event::Protection, |st, world| {
                let mut frames = lock(&world.frames);
                let mut cst = lock(&child.st);
                cst.vmas = st.vmas.clone();
                cst.next_mmap = st.next_mmap;
                for (vpn, p) in st.ptes.iter_mut() {
                    if p.dev.is_some() || p.migrating {
                        // Could not be migrated back: the child does not inherit it.
                        continue;
                    }
                    p.cow = true;
                    p.writable = false;
                    frames.get(p.pfn);
                    cst.ptes.insert(*vpn, *p);
                }
            });
        }
        child
    }

    /// The VMAs.
    pub fn vmas(&self) -> Vec<SimVma> {
        lock(&self.st).vmas.values().copied().collect()
    }

    /// The CPU page-table entry of the page containing `addr`.
    pub fn pte(&self, addr: u64) -> Option<CpuPte> {
        lock(&self.st).ptes.get(&(addr >> PAGE_SHIFT)).copied()
    }

    /// Every CPU page-table entry `(virtual page number, entry)`.
    pub fn ptes(&self) -> Vec<(u64, CpuPte)> {
        lock(&self.st).ptes.iter().map(|(v, p)| (*v, *p)).collect()
    }

    /// Number of present CPU pages.
    pub fn resident_pages(&self) -> usize {
        lock(&self.st).ptes.len()
    }

    /// Make the page at `addr` present (and writable if `write`), as a CPU page fault does.
    /// The caller holds the mmap lock. Copy-on-write breaks notify (`Clear`). A device page
    /// or a page under migration stops the fault (see [`Stop`]).
    fn fault_in(&self, addr: u64, write: bool) -> core::result::Result<CpuPte, Stop> {
        let vpn = addr >> PAGE_SHIFT;
        let (vma, pte) = {
            let st = lock(&self.st);
            (
                st.vma(addr).ok_or(Error::Fault)?,
                st.ptes.get(&vpn).copied(),
            )
        };
        if write && !vma.flags.contains(VmaFlags::WRITE) {
            return Err(Stop::Err(Error::Perm));
        }
        if !vma.flags.intersects(VmaFlags::READ | VmaFlags::WRITE) {
            return Err(Stop::Err(Error::Fault));
        }
        match pte {
            Some(p) if p.migrating => Err(Stop::Migrating),
            Some(p) if p.dev.is_some() => Err(Stop::Device(
                p.dev.map(|(pm, _)| pm).unwrap_or(PagemapId(0)),
                p.pfn,
            )),
            Some(p) if !write || p.writable => Ok(p),
            Some(p) if p.cow => {
                let page = vpn << PAGE_SHIFT;
                self.with_invalidation(page, page + PAGE_SIZE, Event::Clear, |st, world| {
                    // Split a huge mapping around the page being copied.
                    Self::split_huge_around(st, page, page + PAGE_SIZE);
                    let mut frames = lock(&world.frames);
                    let only_user = frames.map.get(&p.pfn).is_some_and(|f| f.refs <= 1);
                    let pfn = if only_user {
                        p.pfn
                    } else {
                        let n = frames.alloc(0)?;
                        frames.copy(p.pfn, n)?;
                        frames.get(n);
                        frames.put(p.pfn);
                        n
                    };
                    let np = CpuPte::system(pfn, 0, true);
                    st.ptes.insert(vpn, np);
                    Ok(np)
                })
                .map_err(Stop::Err)
            }
            Some(_) => Err(Stop::Err(Error::Perm)),
            None => {
                let mut st = lock(&self.st);
                let mut frames = lock(&self.world.frames);
                let writable = vma.flags.contains(VmaFlags::WRITE);
                let block = vpn & !((1u64 << HUGE_ORDER) - 1);
                let bstart = block << PAGE_SHIFT;
                let bend = bstart + (PAGE_SIZE << HUGE_ORDER);
                let huge = vma.huge
                    && vma.start <= bstart
                    && bend <= vma.end
                    && st
                        .ptes
                        .range(block..block + (1 << HUGE_ORDER))
                        .next()
                        .is_none();
                if huge {
                    if let Ok(base) = frames.alloc(HUGE_ORDER) {
                        for i in 0..1u64 << HUGE_ORDER {
                            frames.get(base + i);
                            st.ptes
                                .insert(block + i, CpuPte::system(base + i, HUGE_ORDER, writable));
                        }
                        return st.ptes.get(&vpn).copied().ok_or(Stop::Err(Error::Fault));
                    }
                }
                let pfn = frames.alloc(0)?;
                frames.get(pfn);
                let p = CpuPte::system(pfn, 0, writable);
                st.ptes.insert(vpn, p);
                Ok(p)
            }
        }
    }

    /// Resolve a [`Stop`] outside the mmap lock: migrate a device page back to RAM (through its
    /// pagemap, as the kernel's `migrate_to_ram` callback), or wait for a migration. Returns
    /// the error to give up with, if any.
    fn resolve(self: &Arc<Self>, stop: Stop, addr: u64, attempt: u32) -> Result<()> {
        if attempt >= CPU_FAULT_ATTEMPTS {
            return Err(Error::Busy);
        }
        match stop {
            Stop::Err(e) => Err(e),
            Stop::Migrating => {
                std::thread::yield_now();
                Ok(())
            }
            Stop::Device(pm, dpfn) => {
                let h = self.world.pagemap_hooks(pm).ok_or(Error::Fault)?;
                match h.migrate_to_ram(self, addr & !(PAGE_SIZE - 1), dpfn) {
                    Ok(()) => Ok(()),
                    Err(Error::Again) | Err(Error::Busy) => {
                        // Inside the timeslice (or busy): let time pass, as a retried CPU
                        // fault would.
                        self.world.advance(1_000_000);
                        std::thread::yield_now();
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Run `f(pfn)` on the system frame behind `addr`, faulting it in (and migrating it back
    /// from device memory) first.
    fn with_frame<R>(
        self: &Arc<Self>,
        addr: u64,
        write: bool,
        mut f: impl FnMut(u64) -> Result<R>,
    ) -> Result<R> {
        let mut attempt = 0u32;
        loop {
            let stop = {
                let _m = lock(&self.mmap_lock);
                match self.fault_in(addr, write) {
                    Ok(p) => return f(p.pfn),
                    Err(s) => s,
                }
            };
            self.resolve(stop, addr, attempt)?;
            attempt += 1;
        }
    }

    /// CPU read of `buf.len()` bytes at `addr` (faults pages in, migrates device pages back).
    /// Errors: `Fault` (no VMA).
    pub fn cpu_read(self: &Arc<Self>, addr: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.checked_add(done as u64).ok_or(Error::Fault)?;
            let off = (a % PAGE_SIZE) as usize;
            let n = (PAGE - off).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            self.with_frame(a, false, |pfn| {
                lock(&self.world.frames).read(pfn, off, chunk)
            })?;
            done += n;
        }
        Ok(())
    }

    /// CPU write of `data` at `addr` (faults pages in, breaks copy-on-write, migrates device
    /// pages back). Errors: `Fault` (no VMA), `Perm` (read-only).
    pub fn cpu_write(self: &Arc<Self>, addr: u64, data: &[u8]) -> Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let a = addr.checked_add(done as u64).ok_or(Error::Fault)?;
            let off = (a % PAGE_SIZE) as usize;
            let n = (PAGE - off).min(data.len() - done);
            let chunk = &data[done..done + n];
            self.with_frame(a, true, |pfn| {
                lock(&self.world.frames).write(pfn, off, chunk)
            })?;
            done += n;
        }
        Ok(())
    }

    /// CPU read of a little-endian `u64`.
    pub fn read_u64(self: &Arc<Self>, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.cpu_read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// CPU write of a little-endian `u64`.
    pub fn write_u64(self: &Arc<Self>, addr: u64, v: u64) -> Result<()> {
        self.cpu_write(addr, &v.to_le_bytes())
    }

    fn collect(self: &Arc<Self>, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
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

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
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

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
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

    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
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

    fn free_system_pages(&self, pfns: &[u64]) {
        let mut frames = lock(&self.world.frames);
        for p in pfns {
            frames.map.remove(p);
        }
    }
}

/// How many times a CPU access retries (migrations back to RAM, waits) before `Busy`.
const CPU_FAULT_ATTEMPTS: u32 = 1000;

/// One sink's view of a [`SimMm`]: the [`AddressSpace`] of one simulated device.
#[derive(Debug, Clone)]
pub struct SimMmView {
    mm: Arc<SimMm>,
    sink: usize,
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
