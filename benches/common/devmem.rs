//! The migration benchmarks' platform, shared by `benches/migrate.rs` (the migration state
//! machine alone) and `benches/fault_devmem.rs` (a first-touch fault that migrates to device
//! memory through an `Svm`): system and device memory as two pre-touched arenas, a flat CPU page
//! table with the three-phase migration, block allocators, and a memcpy copy engine.
// Each benchmark uses a part of this module.
#![allow(dead_code)]

pub use crate::common::IdentityDma;
use gpusvm::migrate::{self, MigrateDetails, MigrateReport};
use gpusvm::pagemap::Pagemap;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyKind, CopyRun, CpuPage, DeviceMemory, MigrateDst,
    MigrateRequest, MigrateSelect, MigrateSrc, NotifierId, OwnerId, PagemapId, Vma, VmaFlags,
    PAGE_SHIFT, PAGE_SIZE,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Where the VMA starts (aligned to the default 512 MiB notifier size).
pub const BASE: u64 = 1 << 40;

/// Frames per allocator block (2 MiB).
pub const BLOCK: u64 = 512;
/// Blocks of each memory.
pub const BLOCKS: u64 = 4;
pub const SYS_PFN0: u64 = 0x10_0000;
pub const DEV_PFN0: u64 = 0x80_0000;
pub const PM: PagemapId = PagemapId(1);

/// The bench's pagemap, shared on the default host's allocator.
pub type BenchPagemap = gpusvm::HostArc<gpusvm::DefaultHost, Pagemap<BenchMem>>;
pub const OWNER: OwnerId = OwnerId(1);

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Both memories.
pub struct Arenas {
    pub sys: Vec<u8>,
    pub dev: Vec<u8>,
}

pub fn arena(bytes: u64) -> Vec<u8> {
    // Pre-touched (not calloc'ed zero pages).
    vec![0xa5; bytes as usize]
}

/// A block allocator: blocks of 512 frames from `pfn0`, LIFO, freed when their last frame is.
pub struct Blocks {
    pfn0: u64,
    pub free: Vec<u64>,
    pub live: Vec<u64>,
}

impl Blocks {
    pub fn new(pfn0: u64) -> Blocks {
        Blocks {
            pfn0,
            free: (0..BLOCKS).rev().collect(),
            live: vec![0; BLOCKS as usize],
        }
    }
    /// `out.len()` (≤ 512) contiguous frames at the start of a free block.
    fn alloc(&mut self, out: &mut [u64]) -> gpusvm::Result<()> {
        if out.len() as u64 > BLOCK {
            return Err(gpusvm::Error::NoMem);
        }
        let b = self.free.pop().ok_or(gpusvm::Error::NoMem)?;
        self.live[b as usize] = out.len() as u64;
        for (i, f) in out.iter_mut().enumerate() {
            *f = self.pfn0 + b * BLOCK + i as u64;
        }
        Ok(())
    }
    pub fn put(&mut self, pfn: u64) {
        let b = (pfn - self.pfn0) / BLOCK;
        let live = &mut self.live[b as usize];
        *live -= 1;
        if *live == 0 {
            self.free.push(b);
        }
    }
}

/// CPU page-table entry bits (0 = absent).
pub const PRESENT: u64 = 1 << 63;
pub const DEVICE: u64 = 1 << 62;
pub const MIGRATING: u64 = 1 << 61;
pub const FRAME: u64 = (1 << 48) - 1;

/// The CPU address space: one VMA `[BASE, BASE + len)`.
pub struct BenchMm {
    pub start: u64,
    pub end: u64,
    pub ptes: Mutex<Vec<u64>>,
    pub sys: Mutex<Blocks>,
    pub pagemap: OnceLock<BenchPagemap>,
}

impl BenchMm {
    pub fn slots(&self, start: u64, end: u64, n: usize) -> gpusvm::Result<std::ops::Range<usize>> {
        if start < self.start || end > self.end || start >= end {
            return Err(gpusvm::Error::Invalid);
        }
        let a = ((start - self.start) >> PAGE_SHIFT) as usize;
        let b = ((end - self.start) >> PAGE_SHIFT) as usize;
        if b - a != n {
            return Err(gpusvm::Error::Invalid);
        }
        Ok(a..b)
    }
}

impl AddressSpace for BenchMm {
    type NotifierHandle = ();

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        (self.start <= addr && addr < self.end).then_some(Vma {
            start: self.start,
            end: self.end,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        })
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> gpusvm::Result<()> {
        let slots = self.slots(req.start, req.end, out.len())?;
        let ptes = lock(&self.ptes);
        for (o, &p) in out.iter_mut().zip(&ptes[slots]) {
            *o = match p {
                0 => CpuPage::Absent,
                p if p & DEVICE != 0 => CpuPage::Device {
                    pagemap: PM,
                    owner: OWNER,
                    dpfn: p & FRAME,
                    order: 0,
                },
                p => CpuPage::System {
                    pfn: p & FRAME,
                    order: 0,
                    writable: true,
                },
            };
        }
        Ok(())
    }

    fn register_notifier(&self, _: NotifierId, _: u64, _: u64) -> gpusvm::Result<()> {
        Ok(())
    }
    fn unregister_notifier(&self, _: ()) {}

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> gpusvm::Result<()> {
        let slots = self.slots(req.start, req.end, src.len())?;
        let mut ptes = lock(&self.ptes);
        for (s, p) in src.iter_mut().zip(&mut ptes[slots]) {
            *s = match *p {
                p if p & MIGRATING != 0 => MigrateSrc::Busy,
                0 if req.select.contains(MigrateSelect::SYSTEM) => MigrateSrc::Absent,
                0 => MigrateSrc::Skip,
                v if v & DEVICE != 0 => {
                    let selected = req.select.contains(MigrateSelect::DEVICE_PRIVATE)
                        && match req.pagemap {
                            Some(want) => want == PM,
                            None => req.owner == Some(OWNER),
                        };
                    if selected {
                        MigrateSrc::Device {
                            pagemap: PM,
                            dpfn: v & FRAME,
                        }
                    } else {
                        MigrateSrc::Skip
                    }
                }
                v if req.select.contains(MigrateSelect::SYSTEM) => {
                    MigrateSrc::System { pfn: v & FRAME }
                }
                _ => MigrateSrc::Skip,
            };
            if s.isolated() {
                *p |= MIGRATING;
            }
        }
        Ok(())
    }

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let Ok(slots) = self.slots(req.start, req.end, src.len()) else {
            return;
        };
        let mut ptes = lock(&self.ptes);
        let mut sys = lock(&self.sys);
        // Device sources are freed in one batch (`Pagemap::pages_free`) after the walk.
        let mut dev_freed: Vec<u64> = Vec::with_capacity(src.len());
        for ((s, d), p) in src.iter().zip(dst).zip(&mut ptes[slots]) {
            if !s.isolated() {
                continue;
            }
            match *d {
                MigrateDst::Keep => {
                    *p = if *s == MigrateSrc::Absent {
                        0
                    } else {
                        *p & !MIGRATING
                    };
                    continue;
                }
                MigrateDst::System { pfn } => *p = PRESENT | pfn,
                MigrateDst::Device { dpfn, .. } => *p = PRESENT | DEVICE | dpfn,
            }
            match *s {
                MigrateSrc::System { pfn } => sys.put(pfn),
                MigrateSrc::Device { dpfn, .. } => dev_freed.push(dpfn),
                _ => {}
            }
        }
        if let Some(pm) = self.pagemap.get() {
            pm.pages_free(&dev_freed);
        }
    }

    fn alloc_system_pages(&self, out: &mut [u64]) -> gpusvm::Result<()> {
        lock(&self.sys).alloc(out)
    }

    fn free_system_pages(&self, pfns: &[u64]) {
        let mut sys = lock(&self.sys);
        for &p in pfns {
            sys.put(p);
        }
    }
}

/// The device memory and its memcpy copy engine.
pub struct BenchMem {
    pub dma: IdentityDma,
    pub arenas: Arc<Mutex<Arenas>>,
    pub blocks: Mutex<Blocks>,
    /// Copy commands (runs) executed.
    pub commands: AtomicUsize,
    /// `copy` calls.
    pub calls: AtomicUsize,
}

pub fn sys_off(bus: u64) -> usize {
    (((bus >> PAGE_SHIFT) - SYS_PFN0) << PAGE_SHIFT) as usize
}
pub fn dev_off(addr: u64) -> usize {
    (((addr >> PAGE_SHIFT) - DEV_PFN0) << PAGE_SHIFT) as usize
}

impl DeviceMemory for BenchMem {
    type Dma = IdentityDma;
    fn dma(&self) -> &IdentityDma {
        &self.dma
    }
    fn alloc(&self, out: &mut [u64]) -> gpusvm::Result<()> {
        lock(&self.blocks).alloc(out)
    }
    fn release(&self, dpfns: &[u64]) {
        let mut b = lock(&self.blocks);
        for &d in dpfns {
            b.put(d);
        }
    }
    fn copy(&self, runs: &[CopyRun]) -> Result<(), CopyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut a = lock(&self.arenas);
        let Arenas { sys, dev } = &mut *a;
        for r in runs {
            self.commands.fetch_add(1, Ordering::Relaxed);
            let len = (r.npages * PAGE_SIZE) as usize;
            match r.kind {
                CopyKind::RamToDevice => {
                    let (s, d) = (sys_off(r.src), dev_off(r.dst));
                    dev[d..d + len].copy_from_slice(&sys[s..s + len]);
                }
                CopyKind::DeviceToRam => {
                    let (s, d) = (dev_off(r.src), sys_off(r.dst));
                    sys[d..d + len].copy_from_slice(&dev[s..s + len]);
                }
                CopyKind::ZeroDevice => {
                    let d = dev_off(r.dst);
                    dev[d..d + len].fill(0);
                }
                CopyKind::DeviceToDevice => {
                    let (s, d) = (dev_off(r.src), dev_off(r.dst));
                    dev.copy_within(s..s + len, d);
                }
            }
        }
        Ok(())
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// The address space (one VMA of `len` bytes at `BASE` whose pages are system frames `frames`,
/// which the allocator then holds), the pagemap, and the two memories.
pub fn build(len: u64, frames: &[u64]) -> (BenchMm, BenchPagemap, Arc<Mutex<Arenas>>) {
    let arenas = Arc::new(Mutex::new(Arenas {
        sys: arena(BLOCKS * BLOCK * PAGE_SIZE),
        dev: arena(BLOCKS * BLOCK * PAGE_SIZE),
    }));
    let mut sys = Blocks::new(SYS_PFN0);
    sys.free.clear();
    for &f in frames {
        let b = (f - SYS_PFN0) / BLOCK;
        sys.live[b as usize] += 1;
    }
    sys.free = (0..BLOCKS)
        .rev()
        .filter(|&b| sys.live[b as usize] == 0)
        .collect();
    let mm = BenchMm {
        start: BASE,
        end: BASE + len,
        ptes: Mutex::new(frames.iter().map(|&f| PRESENT | f).collect()),
        sys: Mutex::new(sys),
        pagemap: OnceLock::new(),
    };
    let pm = Pagemap::new(
        PM,
        OWNER,
        BenchMem {
            dma: IdentityDma,
            arenas: arenas.clone(),
            blocks: Mutex::new(Blocks::new(DEV_PFN0)),
            commands: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        },
    )
    .unwrap();
    assert!(mm.pagemap.set(pm.clone()).is_ok());
    (mm, pm, arenas)
}

/// One VMA of `len` bytes at `BASE` whose pages are system frames `frames`, and a pagemap.
pub struct World {
    pub mm: BenchMm,
    pub pm: BenchPagemap,
    pub arenas: Arc<Mutex<Arenas>>,
    pub len: u64,
}

impl World {
    /// The VMA's pages get system frames `frames` (which the allocator then holds).
    pub fn new(len: u64, frames: &[u64]) -> World {
        let (mm, pm, arenas) = build(len, frames);
        let w = World {
            mm,
            pm,
            arenas,
            len,
        };
        // A recognisable pattern in the range's system pages.
        {
            let mut a = lock(&w.arenas);
            for (i, &f) in frames.iter().enumerate() {
                let o = sys_off(f << PAGE_SHIFT);
                a.sys[o..o + PAGE_SIZE as usize].fill(i as u8 ^ 0x3c);
            }
        }
        w
    }

    /// A contiguous range backed by the first frames of system block 0.
    pub fn contiguous(len: u64) -> World {
        let frames: Vec<u64> = (0..len / PAGE_SIZE).map(|i| SYS_PFN0 + i).collect();
        World::new(len, &frames)
    }

    pub fn to_devmem(&self) -> MigrateReport {
        migrate::to_devmem(
            &self.mm,
            &self.pm,
            BASE,
            BASE + self.len,
            &MigrateDetails::default(),
        )
        .expect("to_devmem")
    }

    pub fn to_ram(&self) -> MigrateReport {
        migrate::to_ram(&self.mm, &self.pm, BASE, BASE + self.len).expect("to_ram")
    }

    /// (copy calls, copy commands) so far.
    pub fn counts(&self) -> (usize, usize) {
        let m = self.pm.mem();
        (
            m.calls.load(Ordering::Relaxed),
            m.commands.load(Ordering::Relaxed),
        )
    }

    /// Whether every page is in device memory (`true`) or system memory (`false`), with the
    /// pattern intact.
    pub fn check(&self, in_devmem: bool) {
        let ptes = lock(&self.mm.ptes).clone();
        let a = lock(&self.arenas);
        for (i, &p) in ptes.iter().enumerate() {
            assert_eq!(p & PRESENT, PRESENT);
            assert_eq!(p & MIGRATING, 0);
            assert_eq!(p & DEVICE != 0, in_devmem, "page {i}");
            let f = p & FRAME;
            let o = if in_devmem {
                dev_off(f << PAGE_SHIFT)
            } else {
                sys_off(f << PAGE_SHIFT)
            };
            let mem = if in_devmem { &a.dev } else { &a.sys };
            assert!(mem[o..o + PAGE_SIZE as usize]
                .iter()
                .all(|&b| b == i as u8 ^ 0x3c));
        }
    }
}
