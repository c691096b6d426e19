//! Device memory of a simulated device and its copy engine: frames with contents (fresh ones
//! poisoned), a capacity and an allocator, copies between RAM, device memory and a linked
//! peer's memory, and [`SimDevmem`], the crate's view of it.

use super::SimDevice;
use crate::pagemap::Pagemap;
use crate::pages::Protocol;
use crate::platform::{CopyError, CopyKind, CopyRun, DeviceMemory, PAGE_SHIFT};
use crate::sim::world::PAGE;
use crate::sim::{lock, SimHost, SimMm, SimPagemapHooks};
use crate::{Error, Result};
use std::boxed::Box;
use std::collections::HashMap;
use std::string::String;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

/// Device memory: frames with contents, a capacity, an allocator.
#[derive(Debug, Default)]
pub(crate) struct Vram {
    pub(super) base: u64,
    pub(super) capacity: u64,
    /// `true` = in use.
    pub(super) used: Vec<bool>,
    pub(super) in_use: u64,
    /// Contents of pages written so far (unwritten pages read as the poison pattern).
    pub(crate) data: HashMap<u64, Box<[u8]>>,
    pub(crate) allocs: u64,
    pub(crate) releases: u64,
    pub(crate) copy_calls: u64,
    pub(crate) copy_runs: u64,
    pub(crate) violations: Vec<String>,
}

/// What fresh device memory contains before anything is copied in: a migration that forgets to
/// copy or zero a page shows up as this pattern.
pub const VRAM_POISON: u8 = 0xA5;

impl Vram {
    fn slot(&self, dpfn: u64) -> Option<usize> {
        let i = dpfn.checked_sub(self.base)?;
        (i < self.capacity).then_some(i as usize)
    }

    fn alloc(&mut self, out: &mut [u64]) -> Result<()> {
        let n = out.len() as u64;
        if n == 0 || self.in_use + n > self.capacity {
            return Err(Error::NoMem);
        }
        // Prefer one naturally aligned contiguous block (aligned to the largest power of two
        // <= n, at most 2 MiB), so that migrations can use large pages and few copy runs.
        let align = (1u64 << (63 - n.leading_zeros())).min(512);
        let mut start = 0u64;
        let mut found = None;
        while start + n <= self.capacity {
            if (start..start + n).all(|i| !self.used[i as usize]) {
                found = Some(start);
                break;
            }
            start += align;
        }
        let pages: Vec<u64> = match found {
            Some(s) => (s..s + n).collect(),
            None => (0..self.capacity)
                .filter(|i| !self.used[*i as usize])
                .take(n as usize)
                .collect(),
        };
        if pages.len() as u64 != n {
            return Err(Error::NoMem);
        }
        for (o, i) in out.iter_mut().zip(pages) {
            self.used[i as usize] = true;
            *o = self.base + i;
        }
        self.in_use += n;
        self.allocs += 1;
        Ok(())
    }

    fn release(&mut self, dpfns: &[u64]) {
        self.releases += 1;
        for d in dpfns {
            match self.slot(*d) {
                Some(i) if self.used[i] => {
                    self.used[i] = false;
                    self.in_use -= 1;
                    self.data.remove(d);
                }
                _ => self.violations.push(std::format!(
                    "release of free or foreign device frame {d:#x}"
                )),
            }
        }
    }

    pub(crate) fn read(&self, dpfn: u64, off: usize, buf: &mut [u8]) -> Result<()> {
        let i = self.slot(dpfn).ok_or(Error::Fault)?;
        if !self.used[i] {
            return Err(Error::Fault);
        }
        match self.data.get(&dpfn) {
            Some(d) => buf.copy_from_slice(d.get(off..off + buf.len()).ok_or(Error::Invalid)?),
            None => buf.fill(VRAM_POISON),
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, dpfn: u64, off: usize, buf: &[u8]) -> Result<()> {
        let i = self.slot(dpfn).ok_or(Error::Fault)?;
        if !self.used[i] {
            return Err(Error::Fault);
        }
        let d = self
            .data
            .entry(dpfn)
            .or_insert_with(|| vec![VRAM_POISON; PAGE].into_boxed_slice());
        d.get_mut(off..off + buf.len())
            .ok_or(Error::Invalid)?
            .copy_from_slice(buf);
        Ok(())
    }

    /// Device frames in use.
    pub(crate) fn used_frames(&self) -> Vec<u64> {
        (0..self.capacity)
            .filter(|i| self.used[*i as usize])
            .map(|i| self.base + i)
            .collect()
    }
}

impl SimDevice {
    /// Give the device `pages` base pages of device memory (replacing any it had; only before
    /// first use).
    pub fn set_vram_pages(&self, pages: u64) {
        let mut v = lock(&self.vram);
        v.capacity = pages;
        v.used = vec![false; pages as usize];
        v.in_use = 0;
        v.data.clear();
    }

    /// Device frames in use.
    pub fn vram_used(&self) -> Vec<u64> {
        lock(&self.vram).used_frames()
    }

    /// Device-memory allocations and releases so far.
    pub fn vram_counts(&self) -> (u64, u64) {
        let v = lock(&self.vram);
        (v.allocs, v.releases)
    }

    /// Copy-engine calls and runs so far.
    pub fn copy_counts(&self) -> (u64, u64) {
        let v = lock(&self.vram);
        (v.copy_calls, v.copy_runs)
    }

    /// Misuses of device memory seen so far (double release, access to free frames).
    pub fn vram_violations(&self) -> Vec<String> {
        lock(&self.vram).violations.clone()
    }

    /// Read device memory directly (no fault), for checks.
    pub fn vram_read_u64(&self, dpfn: u64, off: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        lock(&self.vram).read(dpfn, off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The device whose memory holds `dpfn`, reachable from this device (itself, or a peer
    /// with a link).
    pub(super) fn reach(&self, dpfn: u64) -> Result<Arc<SimDevice>> {
        let id = crate::sim::world::device_of_dpfn(dpfn);
        let world = self.world()?;
        if id != self.id && !world.has_link(self.id, id) {
            lock(&self.vram).violations.push(std::format!(
                "device {} reached device {id}'s memory without a link",
                self.id
            ));
            return Err(Error::NoLink);
        }
        world.device(id).ok_or(Error::Fault)
    }

    /// Copy one page between system memory (through this device's IOMMU) and device memory
    /// (this device's or, over a link, a peer's).
    pub(super) fn copy_page(&self, kind: CopyKind, src: u64, dst: u64) -> Result<()> {
        let mut page = vec![0u8; PAGE];
        match kind {
            CopyKind::RamToDevice => {
                let pfn = self.bus_to_pfn(src)?;
                lock(&self.world()?.frames).read(pfn, 0, &mut page)?;
                let d = self.reach(dst >> PAGE_SHIFT)?;
                let mut v = lock(&d.vram);
                v.write(dst >> PAGE_SHIFT, 0, &page)
            }
            CopyKind::DeviceToRam => {
                let s = self.reach(src >> PAGE_SHIFT)?;
                lock(&s.vram).read(src >> PAGE_SHIFT, 0, &mut page)?;
                let pfn = self.bus_to_pfn(dst)?;
                lock(&self.world()?.frames).write(pfn, 0, &page)
            }
            CopyKind::ZeroDevice => {
                let d = self.reach(dst >> PAGE_SHIFT)?;
                let mut v = lock(&d.vram);
                v.write(dst >> PAGE_SHIFT, 0, &page)
            }
            CopyKind::DeviceToDevice => {
                let s = self.reach(src >> PAGE_SHIFT)?;
                lock(&s.vram).read(src >> PAGE_SHIFT, 0, &mut page)?;
                let d = self.reach(dst >> PAGE_SHIFT)?;
                let mut v = lock(&d.vram);
                v.write(dst >> PAGE_SHIFT, 0, &page)
            }
        }
    }
}

/// The device memory of a [`SimDevice`] as the crate sees it (its [`DeviceMemory`]).
#[derive(Debug, Clone)]
pub struct SimDevmem(pub Arc<SimDevice>);

impl DeviceMemory for SimDevmem {
    type Dma = SimDevice;
    fn dma(&self) -> &SimDevice {
        &self.0
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        {
            let mut i = lock(&self.0.inject);
            if i.alloc_fail_at > 0 {
                i.alloc_fail_at -= 1;
                if i.alloc_fail_at == 0 {
                    return Err(Error::NoMem);
                }
            }
        }
        lock(&self.0.vram).alloc(out)
    }
    fn release(&self, dpfns: &[u64]) {
        lock(&self.0.vram).release(dpfns);
    }
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        let fail_after = {
            let mut i = lock(&self.0.inject);
            let mut fail = None;
            if i.copy_fail_at > 0 {
                i.copy_fail_at -= 1;
                if i.copy_fail_at == 0 {
                    fail = Some(i.copy_fail_after_runs);
                }
            }
            let ppm = i.copy_fail_ppm;
            if fail.is_none() && ppm > 0 && i.rng.below(1_000_000) < u64::from(ppm) {
                fail = Some(runs.len() / 2);
            }
            fail
        };
        {
            let mut v = lock(&self.0.vram);
            v.copy_calls += 1;
        }
        for (k, r) in runs.iter().enumerate() {
            if fail_after == Some(k) {
                return Err(CopyError {
                    completed: k,
                    error: Error::Fault,
                });
            }
            lock(&self.0.vram).copy_runs += 1;
            for p in 0..r.npages {
                let off = p << PAGE_SHIFT;
                if let Err(error) = self.0.copy_page(r.kind, r.src + off, r.dst + off) {
                    return Err(CopyError {
                        completed: k,
                        error,
                    });
                }
            }
        }
        if fail_after.is_some_and(|f| f >= runs.len()) {
            return Err(CopyError {
                completed: runs.len(),
                error: Error::Fault,
            });
        }
        Ok(())
    }
    fn now_ns(&self) -> u64 {
        self.0.world.upgrade().map_or(0, |w| w.now_ns())
    }
    fn device_map(&self, dpfn: u64, order: u8) -> Result<(u64, Protocol)> {
        let _ = order;
        Ok((dpfn << PAGE_SHIFT, SIM_P2P))
    }
}

/// The simulator's peer-to-peer protocol number.
pub const SIM_P2P: Protocol = Protocol(2);

/// A shared simulated pagemap (on the simulator's allocator).
pub type SimPagemapArc = crate::HostArc<SimHost, Pagemap<SimDevmem, SimHost>>;

impl SimPagemapHooks for SimPagemapArc {
    fn page_free(&self, dpfn: u64) {
        Pagemap::page_free(self, dpfn);
    }
    fn migrate_to_ram(&self, mm: &Arc<SimMm>, addr: u64, dpfn: u64) -> Result<()> {
        let view = mm.view(usize::MAX);
        Pagemap::migrate_to_ram(self, &view, addr, dpfn).map(|_| ())
    }
}
