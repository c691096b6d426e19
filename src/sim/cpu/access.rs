//! CPU accesses to the simulated address space: the CPU page-fault path (copy-on-write, device
//! pages migrated back to RAM, waits on pages under migration) and reads and writes of bytes
//! and words.

use super::{CpuPte, SimMm, Stop};
use crate::platform::{PagemapId, VmaFlags, HUGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::sim::lock;
use crate::sim::world::PAGE;
use crate::{Error, Event, Result};
use std::sync::Arc;

/// How many times a CPU access retries (migrations back to RAM, waits) before `Busy`.
pub(super) const CPU_FAULT_ATTEMPTS: u32 = 1000;

impl SimMm {
    /// Make the page at `addr` present (and writable if `write`), as a CPU page fault does.
    /// The caller holds the mmap lock. Copy-on-write breaks notify (`Clear`). A device page
    /// or a page under migration stops the fault (see [`Stop`]).
    pub(super) fn fault_in(&self, addr: u64, write: bool) -> core::result::Result<CpuPte, Stop> {
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
    pub(super) fn resolve(self: &Arc<Self>, stop: Stop, addr: u64, attempt: u32) -> Result<()> {
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
    pub(super) fn with_frame<R>(
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
}
