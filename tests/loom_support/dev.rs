//! A tiny platform **with device memory** (for `loom_pagemap` and `loom_evict`): the same VMA
//! and range as the platform of `loom_support` (`mod.rs`), but the CPU page table can hold device-private pages, the address space
//! migrates (isolate / finalize, Linux `migrate_vma_*`), and every frame holds a value, so a
//! model can check that no write is lost across a migration.
//!
//! - Page-table entries are **loom** atomics accessed `Relaxed` (isolation is a `Relaxed`
//!   compare-and-swap to a migration entry): only the crate's protocol orders a collection
//!   against a migration. A collection that meets a migration entry gets [`Error::Again`] (Linux:
//!   `hmm_range_fault` waits on the entry and returns `-EBUSY`); a device page of another owner
//!   is first pulled back with [`Pagemap::migrate_to_ram`] (the platform's CPU-fault path).
//! - [`DevMm::migrate_isolate`] follows the platform contract: it delivers
//!   `invalidate_begin(.., Event::Migrate)` to every registered notifier overlapping the
//!   interval, isolates, then `invalidate_end`. Registrations are not serialised against it
//!   (the models create their ranges before their threads start).
//! - [`DevMem`] hands out frames from a free list (a released allocation's frames are reused
//!   at once), records every release, copies through its own [`LoomDma`] (a copy from or to a
//!   bus address that is not mapped is a violation).
//! - Frame contents, free lists and logs are ghost state (see the docs of `loom_support`).

use super::{ghost, LoomDma, LoomPt, BASE, END, NOTIFIER_SIZE, VMA_END, VMA_PAGES};
use gpusvm::pagemap::Pagemap;
use gpusvm::pages::Protocol;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyKind, CopyRun, CpuPage, DeviceMemory,
    DmaDirection, DmaMapper, MigrateDst, MigrateRequest, MigrateSelect, MigrateSrc, NotifierId,
    OwnerId, PagemapId, Platform, Vma, VmaFlags, PAGE_SHIFT, PAGE_SIZE,
};
use gpusvm::{Error, Event, PageEntry, Result, Svm, SvmConfig};
use loom::sync::atomic::{AtomicU64, Ordering};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as Ghost, OnceLock, Weak};

/// The owner of every pagemap here (and of the `Svm`).
pub const OWNER: OwnerId = OwnerId(7);
/// A shared pagemap of the model's device memory (on the default host's allocator).
pub type DevPagemap = gpusvm::HostArc<gpusvm::DefaultHost, Pagemap<DevMem>>;
/// The device's own pagemap.
pub const LOCAL: PagemapId = PagemapId(1);
/// A peer's pagemap (same owner).
pub const PEER: PagemapId = PagemapId(2);
/// Initial system frame of page `i` is `SYS0 + i`; its value is `VAL0 + i`.
pub const SYS0: u64 = 0x100;
/// Initial value of page `i` is `VAL0 + i`.
pub const VAL0: u64 = 10;
/// Contents of a frame nobody wrote yet (a copy that did not happen shows as this).
pub const GARBAGE: u64 = 0xdead;
/// Device frames of pagemap `id`: `id.0 * DEV_STRIDE ..`.
pub const DEV_STRIDE: u64 = 0x1000;

/// A frame: system or device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Frame {
    /// A system frame.
    Sys(u64),
    /// A device frame of a pagemap.
    Dev(PagemapId, u64),
}

/// A decoded page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// Nothing mapped.
    None,
    /// A system page.
    Sys(u64),
    /// A device-private page.
    Dev(PagemapId, u64),
    /// A migration entry (the page is isolated); `None` inside for a placeholder.
    Migrating(Option<Frame>),
}

const T_SYS: u64 = 1 << 62;
const T_DEV: u64 = 1 << 63;
const MIG: u64 = 1 << 61;
const LOW: u64 = (1 << 40) - 1;

fn enc(f: Frame) -> u64 {
    match f {
        Frame::Sys(p) => T_SYS | p,
        Frame::Dev(pm, d) => T_DEV | (u64::from(pm.0) << 40) | d,
    }
}

fn dec(v: u64) -> Pte {
    let frame = if v & T_SYS != 0 {
        Some(Frame::Sys(v & LOW))
    } else if v & T_DEV != 0 {
        Some(Frame::Dev(PagemapId(((v >> 40) & 0xff) as u32), v & LOW))
    } else {
        None
    };
    if v & MIG != 0 {
        return Pte::Migrating(frame);
    }
    match frame {
        None => Pte::None,
        Some(Frame::Sys(p)) => Pte::Sys(p),
        Some(Frame::Dev(pm, d)) => Pte::Dev(pm, d),
    }
}

/// Frame contents (shared by the address space and every device memory).
pub type Data = Arc<Ghost<BTreeMap<Frame, u64>>>;

/// The address space.
pub struct DevMm {
    ptes: Vec<AtomicU64>,
    /// Frame contents.
    pub data: Data,
    next_sys: Ghost<u64>,
    /// System frames freed (by finalize or `free_system_pages`).
    pub freed_sys: Ghost<Vec<u64>>,
    /// Every pagemap (what `page->pgmap` gives a real platform).
    pagemaps: Ghost<Vec<DevPagemap>>,
    svm: OnceLock<Weak<Svm<DevPlatform>>>,
    /// Live registrations and the last handle.
    regs: Ghost<(Vec<Registration>, u64)>,
    /// `migrate_to_ram` calls made by `collect_pages` for foreign device pages.
    pub cpu_fault_migrations: Ghost<usize>,
}

/// A live notifier registration: `(handle, id, start, end)`.
type Registration = (u64, NotifierId, u64, u64);

impl DevMm {
    fn new(data: Data) -> Self {
        {
            let mut d = ghost(&data);
            for i in 0..VMA_PAGES as u64 {
                d.insert(Frame::Sys(SYS0 + i), VAL0 + i);
            }
        }
        DevMm {
            ptes: (0..VMA_PAGES as u64)
                .map(|i| AtomicU64::new(enc(Frame::Sys(SYS0 + i))))
                .collect(),
            data,
            next_sys: Ghost::new(0x800),
            freed_sys: Ghost::new(Vec::new()),
            pagemaps: Ghost::new(Vec::new()),
            svm: OnceLock::new(),
            regs: Ghost::new((Vec::new(), 0)),
            cpu_fault_migrations: Ghost::new(0),
        }
    }

    /// The entry of page `i` of the VMA.
    pub fn pte(&self, i: usize) -> Pte {
        dec(self.ptes[i].load(Ordering::Relaxed))
    }

    /// The value of page `i` as the CPU sees it (a device page's content is what a CPU
    /// fault would copy back).
    pub fn cpu_read(&self, i: usize) -> u64 {
        let f = match self.pte(i) {
            Pte::Sys(p) => Frame::Sys(p),
            Pte::Dev(pm, d) => Frame::Dev(pm, d),
            p => panic!("cpu_read of page {i}: {p:?}"),
        };
        self.read(f)
    }

    /// The content of a frame.
    pub fn read(&self, f: Frame) -> u64 {
        ghost(&self.data).get(&f).copied().unwrap_or(GARBAGE)
    }

    /// Write a frame.
    pub fn write(&self, f: Frame, v: u64) {
        ghost(&self.data).insert(f, v);
    }

    /// The CPU writes page `i` if it maps a system page (returns whether it did).
    pub fn cpu_write(&self, i: usize, v: u64) -> bool {
        match self.pte(i) {
            Pte::Sys(p) => {
                self.write(Frame::Sys(p), v);
                true
            }
            _ => false,
        }
    }

    /// Live notifier registrations.
    pub fn registrations(&self) -> usize {
        ghost(&self.regs).0.len()
    }

    fn pagemap(&self, id: PagemapId) -> DevPagemap {
        ghost(&self.pagemaps)
            .iter()
            .find(|p| p.id() == id)
            .cloned()
            .unwrap_or_else(|| panic!("no pagemap {id:?}"))
    }

    /// The platform contract around a page-table change: `begin` on every overlapping
    /// registered notifier, the change, `end` on the same notifiers.
    fn invalidate(&self, start: u64, end: u64, event: Event, change: impl FnOnce()) {
        let targets: Vec<NotifierId> = ghost(&self.regs)
            .0
            .iter()
            .filter(|r| r.2 < end && start < r.3)
            .map(|r| r.1)
            .collect();
        let svm = if targets.is_empty() {
            None
        } else {
            self.svm.get().and_then(Weak::upgrade)
        };
        if let Some(s) = &svm {
            for id in &targets {
                s.invalidate_begin(*id, start, end, event);
            }
        }
        change();
        if let Some(s) = &svm {
            for id in &targets {
                s.invalidate_end(*id, start, end);
            }
        }
    }

    fn index(addr: u64) -> Option<usize> {
        (BASE..VMA_END)
            .contains(&addr)
            .then(|| ((addr - BASE) / PAGE_SIZE) as usize)
    }
}

impl AddressSpace for DevMm {
    type NotifierHandle = u64;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        let v = Vma {
            start: BASE,
            end: VMA_END,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        };
        v.contains(addr).then_some(v)
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        for (k, slot) in out.iter_mut().enumerate() {
            let a = req.start + k as u64 * PAGE_SIZE;
            let Some(i) = Self::index(a) else {
                if req.fault {
                    return Err(Error::Fault);
                }
                *slot = CpuPage::Absent;
                continue;
            };
            *slot = match self.pte(i) {
                Pte::None if req.fault => return Err(Error::Fault),
                Pte::None => CpuPage::Absent,
                Pte::Migrating(_) if req.fault => return Err(Error::Again),
                Pte::Migrating(_) => CpuPage::Absent,
                Pte::Sys(pfn) => CpuPage::System {
                    pfn,
                    order: 0,
                    writable: true,
                },
                // A snapshot (no fault) reports every device page as it is.
                Pte::Dev(pagemap, dpfn) if req.owner == Some(OWNER) || !req.fault => {
                    CpuPage::Device {
                        pagemap,
                        owner: OWNER,
                        dpfn,
                        order: 0,
                    }
                }
                Pte::Dev(pm, dpfn) => {
                    // Not this owner's: the CPU-fault path pulls it back, then the
                    // collection is retried.
                    *ghost(&self.cpu_fault_migrations) += 1;
                    let _ = self.pagemap(pm).migrate_to_ram(self, a, dpfn);
                    return Err(Error::Again);
                }
            };
        }
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<u64> {
        let mut g = ghost(&self.regs);
        g.1 += 1;
        let h = g.1;
        g.0.push((h, id, start, end));
        Ok(h)
    }

    fn unregister_notifier(&self, handle: u64) {
        ghost(&self.regs).0.retain(|r| r.0 != handle);
    }

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        if req.start >= req.end
            || src.len() as u64 != (req.end - req.start) / PAGE_SIZE
            || req.start % PAGE_SIZE != 0
        {
            return Err(Error::Invalid);
        }
        let event = Event::Migrate { owner: req.owner };
        self.invalidate(req.start, req.end, event, || {
            for (k, slot) in src.iter_mut().enumerate() {
                *slot = MigrateSrc::Skip;
                let Some(i) = Self::index(req.start + k as u64 * PAGE_SIZE) else {
                    continue;
                };
                loop {
                    let v = self.ptes[i].load(Ordering::Relaxed);
                    let (take, s) = match dec(v) {
                        Pte::Migrating(_) => (false, MigrateSrc::Busy),
                        Pte::None if req.select.contains(MigrateSelect::SYSTEM) => {
                            (true, MigrateSrc::Absent)
                        }
                        Pte::Sys(pfn) if req.select.contains(MigrateSelect::SYSTEM) => {
                            (true, MigrateSrc::System { pfn })
                        }
                        Pte::Dev(pagemap, dpfn)
                            if req.select.contains(MigrateSelect::DEVICE_PRIVATE)
                                && match req.pagemap {
                                    Some(p) => p == pagemap,
                                    None => req.owner == Some(OWNER),
                                } =>
                        {
                            (true, MigrateSrc::Device { pagemap, dpfn })
                        }
                        _ => (false, MigrateSrc::Skip),
                    };
                    if !take {
                        *slot = s;
                        break;
                    }
                    if self.ptes[i]
                        .compare_exchange(v, v | MIG, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        *slot = s;
                        break;
                    }
                }
            }
        });
        Ok(())
    }

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let mut freed_dev: Vec<(PagemapId, u64)> = Vec::new();
        for (k, s) in src.iter().enumerate() {
            if !s.isolated() {
                continue;
            }
            let i = Self::index(req.start + k as u64 * PAGE_SIZE).expect("isolated page");
            let v = self.ptes[i].load(Ordering::Relaxed);
            assert!(v & MIG != 0, "finalize of page {i} that is not isolated");
            let new = match dst.get(k).copied().unwrap_or(MigrateDst::Keep) {
                MigrateDst::Keep => {
                    self.ptes[i].store(v & !MIG, Ordering::Relaxed);
                    continue;
                }
                MigrateDst::System { pfn } => Frame::Sys(pfn),
                MigrateDst::Device { pagemap, dpfn, .. } => Frame::Dev(pagemap, dpfn),
            };
            self.ptes[i].store(enc(new), Ordering::Relaxed);
            match *s {
                MigrateSrc::System { pfn } => ghost(&self.freed_sys).push(pfn),
                MigrateSrc::Device { pagemap, dpfn } => freed_dev.push((pagemap, dpfn)),
                _ => {}
            }
        }
        // The old device pages go after the new entries are in (Linux: the source page's
        // last reference drops in `migrate_vma_finalize`).
        for (pm, d) in freed_dev {
            self.pagemap(pm).page_free(d);
        }
    }

    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        let mut n = ghost(&self.next_sys);
        for o in out.iter_mut() {
            *o = *n;
            *n += 1;
            self.write(Frame::Sys(*o), GARBAGE);
        }
        Ok(())
    }

    fn free_system_pages(&self, pfns: &[u64]) {
        ghost(&self.freed_sys).extend_from_slice(pfns);
    }
}

/// The device memory of one pagemap.
pub struct DevMem {
    id: PagemapId,
    data: Data,
    free: Ghost<Vec<u64>>,
    /// Every release, in order.
    pub released: Ghost<Vec<Vec<u64>>>,
    /// The copy engine's DMA mapper.
    pub dma: LoomDma,
}

impl DevMem {
    fn new(id: PagemapId, frames: u64, data: Data) -> Self {
        let b = u64::from(id.0) * DEV_STRIDE;
        DevMem {
            id,
            data,
            free: Ghost::new((b..b + frames).collect()),
            released: Ghost::new(Vec::new()),
            dma: LoomDma::default(),
        }
    }
    /// Every release so far.
    pub fn releases(&self) -> Vec<Vec<u64>> {
        ghost(&self.released).clone()
    }
    /// Frames not allocated, sorted.
    pub fn free_frames(&self) -> Vec<u64> {
        let mut v = ghost(&self.free).clone();
        v.sort_unstable();
        v
    }
    fn bus_live(&self, addr: u64) -> bool {
        self.dma.live().iter().any(|m| m.0 == addr)
    }
}

impl DeviceMemory for DevMem {
    type Dma = LoomDma;
    fn dma(&self) -> &LoomDma {
        &self.dma
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        let mut f = ghost(&self.free);
        if f.len() < out.len() {
            return Err(Error::NoMem);
        }
        f.sort_unstable();
        let n = out.len();
        for (o, d) in out.iter_mut().zip(f.drain(..n).collect::<Vec<_>>()) {
            *o = d;
            ghost(&self.data).insert(Frame::Dev(self.id, d), GARBAGE);
        }
        Ok(())
    }
    fn release(&self, dpfns: &[u64]) {
        ghost(&self.released).push(dpfns.to_vec());
        let mut f = ghost(&self.free);
        for d in dpfns {
            assert!(!f.contains(d), "device frame {d:#x} released twice");
            f.push(*d);
        }
    }
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        for r in runs {
            for k in 0..r.npages {
                let (s, d) = (r.src + (k << PAGE_SHIFT), r.dst + (k << PAGE_SHIFT));
                let (from, to) = match r.kind {
                    CopyKind::RamToDevice => {
                        assert!(self.bus_live(s), "copy from unmapped bus address {s:#x}");
                        (
                            Some(Frame::Sys(s >> PAGE_SHIFT)),
                            Frame::Dev(self.id, d >> PAGE_SHIFT),
                        )
                    }
                    CopyKind::DeviceToRam => {
                        assert!(self.bus_live(d), "copy to unmapped bus address {d:#x}");
                        (
                            Some(Frame::Dev(self.id, s >> PAGE_SHIFT)),
                            Frame::Sys(d >> PAGE_SHIFT),
                        )
                    }
                    CopyKind::ZeroDevice => (None, Frame::Dev(self.id, d >> PAGE_SHIFT)),
                    CopyKind::DeviceToDevice => panic!("device-to-device copy not modelled"),
                };
                let mut g = ghost(&self.data);
                let v = from.map_or(0, |f| g.get(&f).copied().unwrap_or(GARBAGE));
                g.insert(to, v);
            }
        }
        Ok(())
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn device_map(&self, dpfn: u64, _order: u8) -> Result<(u64, Protocol)> {
        Ok((
            ((u64::from(self.id.0) << 40) | dpfn) << PAGE_SHIFT,
            Protocol(2),
        ))
    }
}

/// The device's DMA mapper: system pages in `sys`, peer resources in `peer` (both
/// [`LoomDma`] logs; a peer mapping's address is the resource).
#[derive(Default)]
pub struct DevDma {
    /// System-page mappings.
    pub sys: LoomDma,
    /// Peer mappings.
    pub peer: LoomDma,
}

impl DmaMapper for DevDma {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        self.sys.map_page(pfn, order, dir)
    }
    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        self.sys.unmap_page(addr, order, dir)
    }
    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        self.peer.map_page(resource >> PAGE_SHIFT, order, dir)
    }
    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        self.peer.unmap_page(addr, order, dir)
    }
}

/// The platform.
pub struct DevPlatform {
    /// The address space.
    pub mm: DevMm,
    /// The device's DMA mapper.
    pub dma: DevDma,
    /// The device page table.
    pub pt: LoomPt,
}

impl Platform for DevPlatform {
    type Mm = DevMm;
    type Dma = DevDma;
    type Pt = LoomPt;
    type Mem = DevMem;
    type Host = gpusvm::DefaultHost;
    fn mm(&self) -> &DevMm {
        &self.mm
    }
    fn dma(&self) -> &DevDma {
        &self.dma
    }
    fn page_table(&self) -> &LoomPt {
        &self.pt
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// The `Svm` type of these models.
pub type DevSvm = Svm<DevPlatform>;

/// A fresh `Svm` (retry budget `max_attempts`) with two pagemaps of owner [`OWNER`], each
/// with `frames` device frames: [`LOCAL`], set as the device's own, and [`PEER`], known to
/// the platform but not attached.
pub fn new_dev_svm(max_attempts: u32, frames: u64) -> (Arc<DevSvm>, DevPagemap, DevPagemap) {
    let data: Data = Arc::default();
    let mut cfg = SvmConfig::new(0, NOTIFIER_SIZE)
        .with_chunk_sizes(&[END - BASE, PAGE_SIZE])
        .unwrap_or_else(|e| panic!("chunk sizes: {e:?}"));
    cfg.notifier_size = NOTIFIER_SIZE;
    cfg.check_pages_threshold = 0;
    cfg.retry.max_attempts = max_attempts;
    let p = DevPlatform {
        mm: DevMm::new(data.clone()),
        dma: DevDma::default(),
        pt: LoomPt::default(),
    };
    let svm = Arc::new(Svm::new(p, cfg).unwrap_or_else(|e| panic!("Svm::new: {e:?}")));
    let _ = svm.platform().mm.svm.set(Arc::downgrade(&svm));
    let local = Pagemap::new(LOCAL, OWNER, DevMem::new(LOCAL, frames, data.clone()))
        .unwrap_or_else(|e| panic!("Pagemap::new: {e:?}"));
    let peer = Pagemap::new(PEER, OWNER, DevMem::new(PEER, frames, data))
        .unwrap_or_else(|e| panic!("Pagemap::new: {e:?}"));
    ghost(&svm.platform().mm.pagemaps).extend([local.clone(), peer.clone()]);
    svm.set_pagemap(Some(local.clone()))
        .unwrap_or_else(|e| panic!("set_pagemap: {e:?}"));
    (svm, local, peer)
}

/// The frame an entry of `svm`'s page state reaches (checking its mapping is live).
pub fn entry_frame(svm: &DevSvm, e: PageEntry) -> Frame {
    let dma = &svm.platform().dma;
    match e.protocol() {
        Protocol::SYSTEM => {
            assert!(
                dma.sys.live().contains(&(e.addr(), e.order())),
                "entry {e:?} is not a live DMA mapping"
            );
            Frame::Sys(e.addr() >> PAGE_SHIFT)
        }
        Protocol::DEVICE_LOCAL => Frame::Dev(LOCAL, e.addr() >> PAGE_SHIFT),
        _ => {
            assert!(
                dma.peer.live().contains(&(e.addr(), e.order())),
                "entry {e:?} is not a live peer mapping"
            );
            let r = e.addr() >> PAGE_SHIFT;
            Frame::Dev(PagemapId((r >> 40) as u32), r & LOW)
        }
    }
}

/// The frame the CPU page table maps at page `i` (panics on a migration entry or hole).
pub fn pte_frame(svm: &DevSvm, i: usize) -> Frame {
    match svm.platform().mm.pte(i) {
        Pte::Sys(p) => Frame::Sys(p),
        Pte::Dev(pm, d) => Frame::Dev(pm, d),
        p => panic!("page {i} maps {p:?}"),
    }
}

/// Inside `bind` (no invalidation can complete meanwhile): every committed entry reaches
/// exactly the frame the CPU maps now (no stale commit). Returns the frames.
pub fn assert_entries_current(svm: &DevSvm, entries: &[PageEntry]) -> Vec<Frame> {
    assert_eq!(entries.len(), super::NPAGES, "one 4 KiB entry per page");
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let f = entry_frame(svm, *e);
            let cpu = svm.platform().mm.pte(i);
            assert_eq!(
                Some(f),
                match cpu {
                    Pte::Sys(p) => Some(Frame::Sys(p)),
                    Pte::Dev(pm, d) => Some(Frame::Dev(pm, d)),
                    _ => None,
                },
                "STALE COMMIT: page {i} entry {e:?} reaches {f:?}, the CPU maps {cpu:?}"
            );
            f
        })
        .collect()
}

/// No DMA violation anywhere; the device's live mappings are exactly the committed entries
/// of `range`; every copy-engine mapping of every pagemap is gone.
pub fn assert_dma_clean(svm: &DevSvm, range: &gpusvm::Range, pms: &[&DevPagemap]) {
    let dma = &svm.platform().dma;
    assert_eq!(dma.sys.violations(), Vec::<String>::new());
    assert_eq!(dma.peer.violations(), Vec::<String>::new());
    let committed = svm
        .bind(range, |_, es: &[PageEntry]| es.to_vec())
        .unwrap_or_default();
    let mut sys: Vec<(u64, u8)> = Vec::new();
    let mut peer: Vec<(u64, u8)> = Vec::new();
    for e in &committed {
        match e.protocol() {
            Protocol::SYSTEM => sys.push((e.addr(), e.order())),
            Protocol::DEVICE_LOCAL => {}
            _ => peer.push((e.addr(), e.order())),
        }
    }
    sys.sort_unstable();
    peer.sort_unstable();
    assert_eq!(
        dma.sys.live(),
        sys,
        "live DMA mappings vs committed entries"
    );
    assert_eq!(
        dma.peer.live(),
        peer,
        "live peer mappings vs committed entries"
    );
    for pm in pms {
        assert_eq!(pm.mem().dma.violations(), Vec::<String>::new());
        assert_eq!(pm.mem().dma.live(), vec![], "copy-engine mapping leaked");
    }
}
