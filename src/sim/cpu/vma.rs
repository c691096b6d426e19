//! VMA management of the simulated address space: `mmap`, `munmap`, `madvise_dontneed`,
//! `mprotect` and `fork` (each notifying before it changes the page table), and the page-table
//! queries.

use super::access::CPU_FAULT_ATTEMPTS;
use super::{check_span, CpuPte, MmState, SimMm, SimVma};
use crate::platform::{PagemapId, VmaFlags, HUGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::sim::lock;
use crate::sim::world::SimWorld;
use crate::{Error, Event, Result};
use std::sync::Arc;
use std::vec::Vec;

impl SimMm {
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
    pub(super) fn split_vma_at(st: &mut MmState, addr: u64) {
        if let Some(v) = st.vma(addr) {
            if v.start < addr {
                st.vmas.insert(v.start, SimVma { end: addr, ..v });
                st.vmas.insert(addr, SimVma { start: addr, ..v });
            }
        }
    }

    /// Huge mappings that straddle `[start, end)`'s edges are split into base pages.
    pub(super) fn split_huge_around(st: &mut MmState, start: u64, end: u64) {
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
    pub(super) fn drop_ptes(
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
    pub(super) fn free_device_pages(&self, pages: Vec<(PagemapId, u64)>) {
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
}
