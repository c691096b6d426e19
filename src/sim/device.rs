//! A simulated device: an IOMMU that records every DMA mapping, device page tables that the
//! test reads and writes through, and the glue ([`SimGpu`]) that turns a device access to an
//! unmapped address into a call of the fault service.

use super::cpu::{SimMm, SimMmView};
use super::world::{SimPagemapHooks, SimWorld, PAGE};
use super::SimHost;
use super::{lock, Rng};
use crate::error::{Error, Result};
use crate::fault::Access;
use crate::pagemap::{Pagemap, PeerId};
use crate::pages::Protocol;
use crate::platform::{
    CopyError, CopyKind, CopyRun, DeviceMemory, DevicePageTable, DmaDirection, DmaMapper, OwnerId,
    PagemapId, Platform, PAGE_SHIFT, PAGE_SIZE,
};
use crate::svm::{Svm, SvmConfig, Window};
use std::boxed::Box;
use std::collections::{BTreeMap, HashMap};
use std::string::{String, ToString};
use std::sync::{Arc, Mutex, Weak};
use std::vec;
use std::vec::Vec;

/// One live DMA mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapping {
    /// First frame.
    pub pfn: u64,
    /// Order.
    pub order: u8,
    /// Direction.
    pub dir: DmaDirection,
    /// A peer-to-peer mapping: `pfn` is then a device frame of a peer device.
    pub peer: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Iommu {
    pub(crate) maps: BTreeMap<u64, DmaMapping>,
    next_iova: u64,
    pub(crate) total_maps: u64,
    pub(crate) total_unmaps: u64,
    pub(crate) violations: Vec<String>,
}

impl Iommu {
    /// The mapping containing bus address `addr`: `(base, mapping)`.
    pub(crate) fn lookup(&self, addr: u64) -> Option<(u64, DmaMapping)> {
        self.maps
            .range(..=addr)
            .next_back()
            .filter(|(b, m)| addr < *b + (PAGE_SIZE << m.order))
            .map(|(b, m)| (*b, *m))
    }
}

/// A device page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevPte {
    /// Address the device uses (bus address for system pages).
    pub addr: u64,
    /// How the address is reached.
    pub proto: Protocol,
    /// Writable by the device.
    pub writable: bool,
    /// Device atomics allowed (the atomic-enable bit, from [`Svm::device_atomics`]); an atomic
    /// through an entry without it faults.
    pub atomic: bool,
}

#[derive(Debug, Default)]
struct DevInject {
    /// The `n`-th DMA map from now fails (1 = the next one); 0 = off.
    dma_fail_at: u64,
    dma_fail_ppm: u32,
    rng: Rng,
    /// The `n`-th copy call from now fails (1 = the next one); 0 = off.
    copy_fail_at: u64,
    /// ... after completing this many of its runs (partial completion).
    copy_fail_after_runs: usize,
    copy_fail_ppm: u32,
    /// The `n`-th device-memory allocation from now fails; 0 = off.
    alloc_fail_at: u64,
}

/// Device memory: frames with contents, a capacity, an allocator.
#[derive(Debug, Default)]
pub(crate) struct Vram {
    base: u64,
    capacity: u64,
    /// `true` = in use.
    used: Vec<bool>,
    in_use: u64,
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

/// A simulated device (GPU): IOMMU and page tables.
#[derive(Debug)]
pub struct SimDevice {
    id: u32,
    /// Weak: the world holds the machine's pagemaps, which hold their devices.
    world: Weak<SimWorld>,
    pub(crate) iommu: Mutex<Iommu>,
    pub(crate) pt: Mutex<BTreeMap<u64, DevPte>>,
    zaps: std::sync::atomic::AtomicU64,
    inject: Mutex<DevInject>,
    pub(crate) vram: Mutex<Vram>,
}

impl SimDevice {
    /// A new device with id `id` on `world`.
    pub fn new(world: &Arc<SimWorld>, id: u32) -> Arc<SimDevice> {
        let dev = Arc::new(SimDevice {
            id,
            world: Arc::downgrade(world),
            iommu: Mutex::new(Iommu {
                next_iova: 0x1_0000_0000,
                ..Iommu::default()
            }),
            pt: Mutex::new(BTreeMap::new()),
            zaps: std::sync::atomic::AtomicU64::new(0),
            inject: Mutex::new(DevInject::default()),
            vram: Mutex::new(Vram {
                base: (u64::from(id) + 1) << 32,
                ..Vram::default()
            }),
        });
        world.register_device(&dev);
        dev
    }

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

    /// Fail the `n`-th copy call from now (1 = the next one) after `after_runs` of its runs
    /// completed; 0 turns it off.
    pub fn inject_copy_fail_at(&self, n: u64, after_runs: usize) {
        let mut i = lock(&self.inject);
        i.copy_fail_at = n;
        i.copy_fail_after_runs = after_runs;
    }

    /// Fail copy calls at random (seeded), `ppm` in a million, after half their runs.
    pub fn inject_copy_fail_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.copy_fail_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// Fail the `n`-th device-memory allocation from now with `NoMem`; 0 turns it off.
    pub fn inject_alloc_fail_at(&self, n: u64) {
        lock(&self.inject).alloc_fail_at = n;
    }

    /// The countdowns of the armed `inject_*_fail_at` injections: `(dma, copy, alloc)`, 0 when
    /// off or already fired. An injection fired during a call iff its countdown went from
    /// non-zero to 0 (harnesses use this to know which errors a call may return).
    pub fn pending_injections(&self) -> (u64, u64, u64) {
        let i = lock(&self.inject);
        (i.dma_fail_at, i.copy_fail_at, i.alloc_fail_at)
    }

    /// The machine (alive while any address space or device user holds it).
    fn world(&self) -> Result<Arc<SimWorld>> {
        self.world.upgrade().ok_or(Error::Closed)
    }

    /// The device whose memory holds `dpfn`, reachable from this device (itself, or a peer
    /// with a link).
    fn reach(&self, dpfn: u64) -> Result<Arc<SimDevice>> {
        let id = super::world::device_of_dpfn(dpfn);
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
    fn copy_page(&self, kind: CopyKind, src: u64, dst: u64) -> Result<()> {
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

    fn bus_to_pfn(&self, bus: u64) -> Result<u64> {
        let io = lock(&self.iommu);
        let (base, m) = io.lookup(bus).ok_or(Error::Fault)?;
        Ok(m.pfn + ((bus - base) >> PAGE_SHIFT))
    }

    /// The device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Fail the `n`-th DMA map (of a system page or a peer's device page) from now (1 = the
    /// next one) with `NoMem`; 0 turns it off.
    pub fn inject_dma_fail_at(&self, n: u64) {
        lock(&self.inject).dma_fail_at = n;
    }

    /// An injected DMA-map failure (`map_page` and `map_peer` count alike): `NoMem` if this
    /// map is the one [`inject_dma_fail_at`](Self::inject_dma_fail_at) named or the random
    /// rate fires.
    fn dma_injected(&self) -> Result<()> {
        let mut i = lock(&self.inject);
        if i.dma_fail_at > 0 {
            i.dma_fail_at -= 1;
            if i.dma_fail_at == 0 {
                return Err(Error::NoMem);
            }
        }
        let ppm = i.dma_fail_ppm;
        if ppm > 0 && i.rng.below(1_000_000) < u64::from(ppm) {
            return Err(Error::NoMem);
        }
        Ok(())
    }

    /// Fail DMA maps at random (seeded), `ppm` in a million.
    pub fn inject_dma_fail_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.dma_fail_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// Live DMA mappings `(bus address, mapping)`.
    pub fn dma_mappings(&self) -> Vec<(u64, DmaMapping)> {
        lock(&self.iommu)
            .maps
            .iter()
            .map(|(a, m)| (*a, *m))
            .collect()
    }

    /// DMA maps and unmaps performed so far.
    pub fn dma_counts(&self) -> (u64, u64) {
        let i = lock(&self.iommu);
        (i.total_maps, i.total_unmaps)
    }

    /// Misuses of the IOMMU seen so far (unknown or mismatched unmaps, maps of dead frames).
    pub fn dma_violations(&self) -> Vec<String> {
        lock(&self.iommu).violations.clone()
    }

    /// The device page-table entries `(virtual page number, entry)`.
    pub fn ptes(&self) -> Vec<(u64, DevPte)> {
        lock(&self.pt).iter().map(|(v, p)| (*v, *p)).collect()
    }

    /// Number of zap calls.
    pub fn zap_count(&self) -> u64 {
        self.zaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Translate a device PTE to the system frame it reaches.
    fn frame_of(&self, pte: &DevPte) -> Result<u64> {
        if pte.proto != Protocol::SYSTEM {
            return Err(Error::NotSupported);
        }
        self.bus_to_pfn(pte.addr)
    }
}

impl DmaMapper for SimDevice {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        self.dma_injected()?;
        let live = lock(&self.world()?.frames).all_live(pfn, order);
        let mut io = lock(&self.iommu);
        if !live {
            io.violations
                .push(std::format!("map of dead frame {pfn:#x} order {order}"));
            return Err(Error::Fault);
        }
        let size = PAGE_SIZE << order;
        let iova = io.next_iova.next_multiple_of(size);
        io.next_iova = iova + size;
        io.maps.insert(
            iova,
            DmaMapping {
                pfn,
                order,
                dir,
                peer: false,
            },
        );
        io.total_maps += 1;
        Ok(iova)
    }

    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        self.unmap_any(addr, order, dir, false);
    }

    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        self.dma_injected()?;
        let dpfn = resource >> PAGE_SHIFT;
        let owner_dev = super::world::device_of_dpfn(dpfn);
        if !self.world()?.has_link(self.id, owner_dev) || owner_dev == self.id {
            lock(&self.iommu).violations.push(std::format!(
                "peer map of device {owner_dev}'s frame {dpfn:#x} without a link"
            ));
            return Err(Error::NoLink);
        }
        let mut io = lock(&self.iommu);
        let size = PAGE_SIZE << order;
        let iova = io.next_iova.next_multiple_of(size);
        io.next_iova = iova + size;
        io.maps.insert(
            iova,
            DmaMapping {
                pfn: dpfn,
                order,
                dir,
                peer: true,
            },
        );
        io.total_maps += 1;
        Ok(iova)
    }

    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        self.unmap_any(addr, order, dir, true);
    }
}

impl SimDevice {
    fn unmap_any(&self, addr: u64, order: u8, dir: DmaDirection, peer: bool) {
        let mut io = lock(&self.iommu);
        match io.maps.get(&addr).copied() {
            Some(m) if m.order == order && m.dir == dir && m.peer == peer => {
                io.maps.remove(&addr);
                io.total_unmaps += 1;
            }
            Some(m) => io.violations.push(std::format!(
                "unmap of {addr:#x} with order {order} {dir:?}, mapped as {} {:?}",
                m.order,
                m.dir
            )),
            None => io.violations.push(std::format!(
                "unmap of unknown or already unmapped {addr:#x}"
            )),
        }
    }
}

impl DevicePageTable for SimDevice {
    fn zap(&self, start: u64, end: u64) {
        self.zaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pt = lock(&self.pt);
        // Invalidation context: no allocation (the contract of `zap`; checked by
        // tests/no_alloc_invalidate.rs).
        let pages = start >> PAGE_SHIFT..end.div_ceil(PAGE_SIZE);
        while let Some(k) = pt.range(pages.clone()).next().map(|(k, _)| *k) {
            pt.remove(&k);
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

/// The [`Platform`] of one simulated device mirroring one simulated address space.
#[derive(Debug, Clone)]
pub struct SimPlatform {
    mm: SimMmView,
    dev: Arc<SimDevice>,
    world: Arc<SimWorld>,
}

impl Platform for SimPlatform {
    type Mm = SimMmView;
    type Dma = SimDevice;
    type Pt = SimDevice;
    type Mem = SimDevmem;
    type Host = super::SimHost;
    fn mm(&self) -> &SimMmView {
        &self.mm
    }
    fn dma(&self) -> &SimDevice {
        &self.dev
    }
    fn page_table(&self) -> &SimDevice {
        &self.dev
    }
    fn now_ns(&self) -> u64 {
        self.world.now_ns()
    }
}

/// A simulated GPU: a [`SimDevice`] mirroring a [`SimMm`] through an [`Svm`]. Device accesses
/// that miss in the device page tables call the fault service and bind, like a driver's fault
/// handler.
#[derive(Debug, Clone)]
pub struct SimGpu {
    /// The mirroring instance.
    pub svm: Arc<Svm<SimPlatform>>,
    /// The device.
    pub dev: Arc<SimDevice>,
    /// The address space.
    pub mm: Arc<SimMm>,
}

/// How many times a device access retries its fault before giving up with `Busy`.
const ACCESS_RETRIES: u32 = 16;

impl SimGpu {
    /// A new device `id` mirroring `mm` with `config`. Errors: those of [`Svm::new`].
    pub fn new(mm: &Arc<SimMm>, id: u32, config: SvmConfig) -> Result<SimGpu> {
        let world = mm.world().clone();
        let dev = SimDevice::new(&world, id);
        let slot = mm.reserve_sink();
        let platform = SimPlatform {
            mm: mm.view(slot),
            dev: dev.clone(),
            world,
        };
        let svm = Arc::new(Svm::new(platform, config)?);
        let weak: std::sync::Weak<Svm<SimPlatform>> = Arc::downgrade(&svm);
        mm.set_sink(slot, weak);
        // Meet the pagemaps of the devices already on the machine.
        for pm in mm.world().pagemaps() {
            // Refused only for a second pagemap with the same id: the first stays.
            let _ = svm.attach_pagemap(pm);
        }
        mm.world().register_gpu(&svm);
        Ok(SimGpu {
            svm,
            dev,
            mm: mm.clone(),
        })
    }

    /// A device `id` that joins the machine's owner registry ([`SimWorld::owners`]): it shares
    /// an owner with the devices it has links to (see [`SimWorld::link`]). With
    /// `vram_pages > 0` it gets device memory and prefers it for faulting ranges.
    pub fn join(mm: &Arc<SimMm>, id: u32, vram_pages: u64) -> Result<SimGpu> {
        let mut cfg = SvmConfig::new(0, 1 << 47);
        cfg.prefer_devmem = vram_pages > 0;
        SimGpu::join_with(mm, id, vram_pages, cfg)
    }

    /// [`SimGpu::join`] with a configuration.
    pub fn join_with(mm: &Arc<SimMm>, id: u32, vram_pages: u64, cfg: SvmConfig) -> Result<SimGpu> {
        let gpu = SimGpu::new(mm, id, cfg)?;
        let world = mm.world();
        let svm_peer = PeerId(2 * u64::from(id) + 1);
        let pm_peer = PeerId(2 * u64::from(id));
        // The device's Svm and pagemap join as one unit so they always share an owner.
        let owner = if vram_pages > 0 {
            world.owners.join_all(&[svm_peer, pm_peer])?
        } else {
            world.owners.join(svm_peer)?
        };
        gpu.svm.set_owner(Some(owner));
        if vram_pages > 0 {
            gpu.add_devmem(vram_pages, owner.0)?;
        }
        Ok(gpu)
    }

    /// Tear the device down while others may still map its pages: move every page of its
    /// device memory back to system memory (which invalidates the peers' mappings), detach
    /// its pagemap everywhere, close its `Svm`, and leave the owner registry.
    pub fn teardown(&self) -> Result<()> {
        let world = self.mm.world().clone();
        if let Some(pm) = self.svm.pagemap() {
            let view = self.mm.view(usize::MAX);
            for _ in 0..8 {
                for a in pm.allocations()?.iter() {
                    let (s, e) = a.va();
                    crate::migrate::to_ram(&view, &pm, s, e)?;
                }
                if pm.live_allocations() == 0 {
                    break;
                }
            }
            if pm.live_allocations() != 0 {
                return Err(Error::Busy);
            }
            world.forget_pagemap(pm.id());
            // Taking the pagemap away cannot be refused.
            let _ = self.svm.set_pagemap(None);
        }
        self.svm.close();
        world.forget_gpu(&self.svm);
        let _ = world.owners.leave(PeerId(2 * u64::from(self.dev.id())));
        let _ = world.owners.leave(PeerId(2 * u64::from(self.dev.id()) + 1));
        Ok(())
    }

    /// A device `id` with `vram_pages` pages of device memory in a pagemap of owner `owner`
    /// (pagemap id = `id`), preferring device memory for faulting ranges.
    pub fn with_devmem(mm: &Arc<SimMm>, id: u32, vram_pages: u64, owner: u32) -> Result<SimGpu> {
        let mut cfg = SvmConfig::new(0, 1 << 47);
        cfg.prefer_devmem = true;
        let gpu = SimGpu::new(mm, id, cfg)?;
        gpu.add_devmem(vram_pages, owner)?;
        Ok(gpu)
    }

    /// Give the device `vram_pages` pages of device memory as pagemap `PagemapId(id)` of owner
    /// `owner`, registered with the machine so CPU faults on its pages come back to it.
    ///
    /// Errors: [`Error::NoMem`] if the pagemap cannot be allocated (nothing changed then).
    pub fn add_devmem(&self, vram_pages: u64, owner: u32) -> Result<SimPagemapArc> {
        let pm = Pagemap::new(
            PagemapId(self.dev.id()),
            OwnerId(owner),
            SimDevmem(self.dev.clone()),
        )?;
        self.dev.set_vram_pages(vram_pages);
        let world = self.mm.world();
        let hooks: Arc<dyn SimPagemapHooks> = Arc::new(pm.clone());
        world.register_pagemap(pm.id(), &hooks);
        world.add_pagemap(pm.clone());
        // Refused only if a peer's pagemap has this device's id, which the machine never
        // creates (pagemap ids are device ids), or without memory for the pagemap set.
        let _ = self.svm.set_pagemap(Some(pm.clone()));
        Ok(pm)
    }

    /// A device with the default configuration over the whole 47-bit user address space.
    pub fn with_defaults(mm: &Arc<SimMm>, id: u32) -> Result<SimGpu> {
        SimGpu::new(mm, id, SvmConfig::new(0, 1 << 47))
    }

    /// The driver's part of [`Svm::bind`]: write one device PTE per page of `entries` (laid
    /// out from `range.start()`), writable as the entry is and with the atomic-enable bit from
    /// [`Svm::device_atomics`]. Returns the bytes the entries cover.
    pub fn write_ptes(&self, range: &crate::Range<SimHost>, entries: &[crate::PageEntry]) -> u64 {
        let atomics = self.svm.device_atomics(range);
        let mut pt = lock(&self.dev.pt);
        let mut vpn = range.start() >> PAGE_SHIFT;
        let mut bytes = 0u64;
        for e in entries {
            for i in 0..e.npages() {
                pt.insert(
                    vpn + i,
                    DevPte {
                        addr: e.addr() + (i << PAGE_SHIFT),
                        proto: e.protocol(),
                        writable: e.writable(),
                        atomic: atomics.allows(*e),
                    },
                );
            }
            vpn += e.npages();
            bytes = bytes.saturating_add(e.size());
        }
        bytes
    }

    /// Fault `addr` in for `access` and bind the range in the device page tables.
    pub fn fault(&self, addr: u64, access: Access) -> Result<()> {
        self.svm
            .handle_fault_and_bind(addr, access, Window::ALL, |range, entries| {
                self.write_ptes(range, entries)
            })
            .map(|_| ())
    }

    /// A device access of 8 bytes at `addr` (8-byte aligned): `op` gets the current value and
    /// returns the new one (or `None` for a read).
    fn access(
        &self,
        addr: u64,
        access: Access,
        mut op: impl FnMut(u64) -> Option<u64>,
    ) -> Result<u64> {
        if addr % 8 != 0 {
            return Err(Error::Invalid);
        }
        let vpn = addr >> PAGE_SHIFT;
        let off = (addr % PAGE_SIZE) as usize;
        for _ in 0..ACCESS_RETRIES {
            {
                let pt = lock(&self.dev.pt);
                if let Some(p) = pt.get(&vpn).copied() {
                    // Writes need a writable entry; atomics also need the atomic-enable bit.
                    let ok = match access {
                        Access::Read => true,
                        Access::Write => p.writable,
                        Access::Atomic => p.writable && p.atomic,
                    };
                    if ok && p.proto == Protocol::DEVICE_LOCAL {
                        let mut v = lock(&self.dev.vram);
                        let dpfn = p.addr >> PAGE_SHIFT;
                        let mut b = [0u8; 8];
                        if v.read(dpfn, off, &mut b).is_err() {
                            v.violations.push(std::format!(
                                "device access through free device frame {dpfn:#x} at {addr:#x}"
                            ));
                            return Err(Error::Fault);
                        }
                        let old = u64::from_le_bytes(b);
                        if let Some(new) = op(old) {
                            v.write(dpfn, off, &new.to_le_bytes())?;
                        }
                        return Ok(old);
                    }
                    if ok && p.proto == SIM_P2P {
                        let target = {
                            let io = lock(&self.dev.iommu);
                            io.lookup(p.addr)
                                .filter(|(_, m)| m.peer)
                                .map(|(b, m)| m.pfn + ((p.addr - b) >> PAGE_SHIFT))
                        };
                        let Some(dpfn) = target else {
                            lock(&self.dev.iommu).violations.push(std::format!(
                                "device access through dead peer mapping {:#x} at {addr:#x}",
                                p.addr
                            ));
                            return Err(Error::Fault);
                        };
                        let peer = self.dev.reach(dpfn)?;
                        let mut v = lock(&peer.vram);
                        let mut b = [0u8; 8];
                        v.read(dpfn, off, &mut b)?;
                        let old = u64::from_le_bytes(b);
                        if let Some(new) = op(old) {
                            v.write(dpfn, off, &new.to_le_bytes())?;
                        }
                        return Ok(old);
                    }
                    if ok {
                        let pfn = match self.dev.frame_of(&p) {
                            Ok(pfn) => pfn,
                            Err(_) => {
                                lock(&self.dev.iommu).violations.push(std::format!(
                                    "device access through dead mapping {:#x} at {addr:#x}",
                                    p.addr
                                ));
                                return Err(Error::Fault);
                            }
                        };
                        let mut frames = lock(&self.mm.world().frames);
                        let mut b = [0u8; 8];
                        frames.read(pfn, off, &mut b)?;
                        let old = u64::from_le_bytes(b);
                        if let Some(new) = op(old) {
                            frames.write(pfn, off, &new.to_le_bytes())?;
                        }
                        return Ok(old);
                    }
                }
            }
            self.fault(addr, access)?;
        }
        Err(Error::Busy)
    }

    /// Device read of a `u64`.
    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        self.access(addr, Access::Read, |_| None)
    }

    /// Device write of a `u64`.
    pub fn write_u64(&self, addr: u64, v: u64) -> Result<()> {
        self.access(addr, Access::Write, |_| Some(v)).map(|_| ())
    }

    /// Device atomic add; returns the old value.
    pub fn atomic_add(&self, addr: u64, v: u64) -> Result<u64> {
        self.access(addr, Access::Atomic, |old| Some(old.wrapping_add(v)))
    }

    /// Check this device's invariants (see [`check_invariants`](super::check_invariants)).
    pub fn check(&self) -> core::result::Result<(), String> {
        super::check_invariants(&self.mm, &[self])
    }

    /// A short description of where each range lives.
    pub fn describe(&self) -> String {
        let mut rows: Vec<(u64, u64, u64, bool, String)> = Vec::new();
        self.svm.for_each_range(|(ns, _), r| {
            rows.push((
                ns,
                r.start(),
                r.end(),
                r.pages.lock().valid(),
                std::format!("{:?}", r.flags()),
            ));
        });
        let mut s = String::new();
        for (ns, start, end, valid, flags) in rows {
            // Where the pages are, from the CPU page table.
            let (mut ram, mut absent) = (0u64, 0u64);
            let mut dev: BTreeMap<u32, u64> = BTreeMap::new();
            for vpn in start >> PAGE_SHIFT..end >> PAGE_SHIFT {
                match self.mm.pte(vpn << PAGE_SHIFT) {
                    None => absent += 1,
                    Some(p) => match p.dev {
                        Some((pm, _)) => *dev.entry(pm.0).or_default() += 1,
                        None => ram += 1,
                    },
                }
            }
            let mut at = Vec::new();
            if ram > 0 {
                at.push(std::format!("RAM {ram}"));
            }
            for (d, n) in dev {
                at.push(std::format!("gpu{d} memory {n}"));
            }
            if absent > 0 {
                at.push(std::format!("absent {absent}"));
            }
            s.push_str(&std::format!(
                "  notifier {ns:#x} range [{start:#x}, {end:#x}) {:>5} KiB  pages: {:<28} bound: {:<5} {flags}\n",
                (end - start) / 1024,
                at.join(", "),
                if valid { "yes" } else { "no" },
            ));
        }
        if s.is_empty() {
            s = "  no ranges\n".to_string();
        }
        s
    }
}
